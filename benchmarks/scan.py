"""2. The SSD scan on CPU: ssd_chunked against ssd_sequential, forward + backward, time and memory.

Timing reuses benchmarks/bench_ssd.py's `run` (Adventurer-Tiny shapes: batch 1, 8 heads, headdim 64,
d_state 64, 1 group, fp32, chunk 64; alternated repetitions, medians). Memory is measured here instead of
with bench_ssd's one-process-per-case method, so that every section of the suite uses one method
(benchmarks.machine.MEMORY_METHOD) and the quick run stays short; the child process reuses bench_ssd's
inputs and implementations. The sequential loop is only run up to `max_sequential_length`; above it its
time and memory are extrapolated linearly from the longest measured length and marked "extrapolated".
Targets: chunked >= 10x faster than the loop at length 4096; chunked memory linear in the length.
"""

from __future__ import annotations

from benchmarks import bench_ssd
from benchmarks.machine import MEMORY_METHOD, measure_case, run_in_fresh_process


def memory_child(lengths: list[int], max_sequential_length: int, chunk_size: int, shape: dict) -> list[dict]:
    """Runs in a fresh process: peak RSS and saved bytes of one forward+backward per (implementation, length)."""
    fns = bench_ssd.implementations(chunk_size)
    warm, w_warm = bench_ssd.make_inputs(2 * chunk_size, **shape)  # load libraries, first-call buffers
    for fn in fns.values():
        bench_ssd.forward_backward(fn, warm, w_warm)
    del warm, w_warm
    rows = []
    for length in lengths:
        for name, fn in fns.items():
            if name == "sequential" and length > max_sequential_length:
                continue
            leaves, w = bench_ssd.make_inputs(length, **shape)
            row = measure_case(
                lambda fn=fn, leaves=leaves, w=w: (fn(*leaves) * w).sum(), exclude=[*leaves, w]
            )
            rows.append({"implementation": name, "length": length, **row})
            del leaves, w
    return rows


def run(lengths, repeats: int, max_sequential_length: int = 4096, sweep_chunk_sizes=(), log=print) -> dict:
    chunk_size = bench_ssd.CPU_CHUNK_SIZE
    shape = dict(bench_ssd.ADVENTURER_TINY)
    timing = bench_ssd.run(
        lengths=lengths,
        repeats=repeats,
        chunk_size=chunk_size,
        sweep_chunk_sizes=tuple(sweep_chunk_sizes),
        threads=2,
        shape=shape,
        max_sequential_length=max_sequential_length,
        memory=False,
        log=log,
    )
    log("  memory: one fresh process for all scan cases ...")
    memory = run_in_fresh_process(
        "benchmarks.scan",
        "memory_child",
        dict(
            lengths=list(lengths),
            max_sequential_length=max_sequential_length,
            chunk_size=chunk_size,
            shape=shape,
        ),
    )
    mem = {(m["implementation"], m["length"]): m for m in memory}

    rows = []
    measured_seq = [r for r in timing["rows"] if "sequential" in r]
    for r in timing["rows"]:
        length = r["length"]
        row = {"length": length}
        for name in ("chunked", "sequential"):
            if name in r:
                m = mem[(name, length)]
                row[name] = {
                    "fwd_bwd_ms": r[name]["fwd_bwd_ms"],
                    "fwd_ms": r[name]["fwd_ms"],
                    "fwd_bwd_all_ms": r[name]["fwd_bwd_all_ms"],
                    "peak_mb": m["peak_mb"],
                    "saved_mb": m["saved_mb"],
                    "peak_bytes_per_token": None if m["peak_mb"] is None else m["peak_mb"] * 2**20 / length,
                    "saved_bytes_per_token": m["saved_mb"] * 2**20 / length,
                    "extrapolated": False,
                }
            elif name == "sequential" and measured_seq:
                # linear extrapolation from the longest measured length: the loop's time and memory per step
                # are constant (one state update and one saved state per step), so this is the loop's own law
                base = measured_seq[-1]
                scale = length / base["length"]
                m = mem[("sequential", base["length"])]
                row[name] = {
                    "fwd_bwd_ms": base["sequential"]["fwd_bwd_ms"] * scale,
                    "fwd_ms": base["sequential"]["fwd_ms"] * scale,
                    "peak_mb": None if m["peak_mb"] is None else m["peak_mb"] * scale,
                    "saved_mb": m["saved_mb"] * scale,
                    "extrapolated": f"linearly from length {base['length']} (x{scale:g}); not run",
                }
        if "sequential" in row:
            row["speedup_fwd_bwd"] = row["sequential"]["fwd_bwd_ms"] / row["chunked"]["fwd_bwd_ms"]
            row["speedup_extrapolated"] = bool(row["sequential"]["extrapolated"])
        rows.append(row)

    at_4096 = next((r for r in rows if r["length"] == 4096 and "sequential" in r), None)
    per_token = [r["chunked"]["saved_bytes_per_token"] for r in rows]
    linear = max(per_token) / min(per_token) if per_token else None
    return {
        "description": "SSD scan forward+backward on CPU, chunked vs sequential, Adventurer-Tiny shapes",
        "shape": shape,
        "dtype": "float32",
        "chunk_size": chunk_size,
        "repeats": repeats,
        "timing_from": "benchmarks/bench_ssd.py run() (medians of alternated repetitions after one warm-up)",
        "memory_method": MEMORY_METHOD,
        "rows": rows,
        "chunk_sweep": timing.get("chunk_sweep"),
        "target": "chunked >= 10x faster than sequential at length 4096; chunked memory linear in length",
        "speedup_at_4096": at_4096["speedup_fwd_bwd"] if at_4096 else None,
        "speedup_at_4096_extrapolated": at_4096["speedup_extrapolated"] if at_4096 else None,
        # judged only on a measured (not extrapolated) loop; None = 4096 not measured in this run
        "speedup_target_met": (at_4096["speedup_fwd_bwd"] >= 10)
        if at_4096 and not at_4096["speedup_extrapolated"]
        else None,
        # max/min of the chunked saved bytes per token over the lengths: 1.0 = exactly linear
        "chunked_saved_bytes_per_token_max_over_min": linear,
    }
