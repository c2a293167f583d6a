"""2. The SSD scans Adventurer runs on CPU, against the step-by-step loop: time, memory, and the chunk length.

What runs (benchmarks/bench_ssd.py says it in full): for training, `ssd_scan` with gradients, i.e. `ssd_trainable`
(the chunked scan with a hand-derived backward), timed as forward + backward; for inference (and the forward
of a training step), `ssd_fast` on the 1,024-token blocks pixelvit.ops.mixer streams, timed as a forward.
Both at the CPU default chunk (pixelvit.ops.ssd.CPU_CHUNK_SIZE), beside `ssd_sequential`, the recurrence one
step at a time (forward + backward). Timing reuses bench_ssd's `run` (Adventurer-Tiny shapes: batch 1,
8 heads, headdim 64, d_state 64, 1 group, fp32; alternated repetitions, medians). Memory is measured here
instead of with bench_ssd's one-process-per-case method, so that every section of the suite uses one method
(benchmarks.machine.MEMORY_METHOD) and the quick run stays short. The loop is only run up to
`max_sequential_length`; above it its time and memory are extrapolated linearly from the longest measured
length and marked "extrapolated". Then the chunk-length sweep: both scans at chunk 32, 64 and 128, at the
token counts of adventurer_nano's CIFAR-10 runs (65, 257, 1,025) and of a 224x224 image at patch 1 (50,178):
the evidence for the CPU default.
Targets: the training scan >= 10x faster than the loop at length 4096; its memory linear in the length.
"""

from __future__ import annotations

from benchmarks import bench_ssd
from benchmarks.machine import MEMORY_METHOD, measure_case, run_in_fresh_process
from benchmarks.report import fmt, table


def memory_child(lengths: list[int], max_sequential_length: int, chunk_size: int, shape: dict) -> list[dict]:
    """Runs in a fresh process: peak RSS and saved bytes of one forward+backward per (implementation, length)."""
    fns = bench_ssd.implementations(chunk_size)  # the loop and the training scan (forward + backward)
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


def run(lengths, repeats: int, max_sequential_length: int = 4096, sweep_chunk_sizes=bench_ssd.SWEEP_CHUNK_SIZES,
        sweep_lengths=bench_ssd.SWEEP_LENGTHS, log=print) -> dict:
    chunk_size = bench_ssd.CPU_CHUNK_SIZE
    shape = dict(bench_ssd.ADVENTURER_TINY)
    timing = bench_ssd.run(
        lengths=lengths,
        repeats=repeats,
        chunk_size=chunk_size,
        sweep_chunk_sizes=tuple(sweep_chunk_sizes),
        sweep_lengths=tuple(sweep_lengths),
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
        row["inference"] = {"fwd_ms": r["inference"]["fwd_ms"]}
        for name in ("training", "sequential"):
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
            row["speedup_fwd_bwd"] = row["sequential"]["fwd_bwd_ms"] / row["training"]["fwd_bwd_ms"]
            row["speedup_extrapolated"] = bool(row["sequential"]["extrapolated"])
        rows.append(row)

    at_4096 = next((r for r in rows if r["length"] == 4096 and "sequential" in r), None)
    per_token = [r["training"]["saved_bytes_per_token"] for r in rows]
    linear = max(per_token) / min(per_token) if per_token else None
    return {
        "description": "the SSD scans the models run on CPU (training: forward+backward, inference: forward) "
                       "against the step-by-step loop, Adventurer-Tiny shapes",
        "runs": {"training": "ssd_scan with gradients = pixelvit.ops.ssd_autograd.ssd_trainable",
                 "inference": "ssd_fast on pixelvit.ops.mixer.BLOCK_TOKENS-token blocks (as MixerStream calls it)",
                 "sequential": "ssd_sequential (the definition, one step at a time)"},
        "shape": shape,
        "dtype": "float32",
        "chunk_size": chunk_size,
        "repeats": repeats,
        "timing_from": "benchmarks/bench_ssd.py run() (medians of alternated repetitions after one warm-up)",
        "memory_method": MEMORY_METHOD,
        "rows": rows,
        "chunk_sweep": timing.get("chunk_sweep"),
        "target": "training scan >= 10x faster than sequential at length 4096; its memory linear in length",
        "speedup_at_4096": at_4096["speedup_fwd_bwd"] if at_4096 else None,
        "speedup_at_4096_extrapolated": at_4096["speedup_extrapolated"] if at_4096 else None,
        # judged only on a measured (not extrapolated) loop; None = 4096 not measured in this run
        "speedup_target_met": (at_4096["speedup_fwd_bwd"] >= 10)
        if at_4096 and not at_4096["speedup_extrapolated"]
        else None,
        # max/min of the training scan's saved bytes per token over the lengths: 1.0 = exactly linear
        "training_saved_bytes_per_token_max_over_min": linear,
    }


# the section in results.md (benchmarks/suite.py writes its heading)


def markdown(s) -> list[str]:
    rows = []
    for r in s["rows"]:
        c, q = r["training"], r.get("sequential")
        star = "*" if q and q["extrapolated"] else ""
        rows.append([
            r["length"], fmt(c["fwd_bwd_ms"]), fmt(r["inference"]["fwd_ms"]), fmt(q["fwd_bwd_ms"]) + star if q else "-",
            fmt(r.get("speedup_fwd_bwd")) + ("x" + star if q else ""), fmt(c["peak_mb"]),
            fmt(c["peak_bytes_per_token"], ".0f"), fmt(c["saved_bytes_per_token"], ".0f"),
            fmt(q["peak_mb"]) + star if q else "-", fmt(q["saved_mb"]) + star if q else "-",
        ])  # fmt: skip
    shape = s["shape"]
    lines = [
        f"What runs: training = {s['runs']['training']}, forward + backward; inference = {s['runs']['inference']}, "
        f"forward only; sequential = {s['runs']['sequential']}, forward + backward. Batch {shape['batch']}, "
        f"{shape['nheads']} heads, headdim {shape['headdim']}, d_state {shape['dstate']}, fp32, chunk "
        f"{s['chunk_size']}; medians of {s['repeats']} alternated repetitions. B/token = bytes per token.",
        "",
        *table(["length", "training ms", "inference ms", "sequential ms", "speed-up (training)", "training peak MB",
                "training peak B/token", "training saved B/token", "sequential peak MB", "sequential saved MB"],
               rows),
    ]
    if any(r.get("sequential", {}).get("extrapolated") for r in s["rows"]):
        lines += ["", "\\* extrapolated linearly from the longest length the loop was run at, not measured."]
    if s.get("chunk_sweep"):
        lines += ["", *bench_ssd.sweep_markdown(s["chunk_sweep"])]
    met = s["speedup_target_met"]
    lines += [
        "",
        f"Target ({s['target']}): speed-up at 4096 "
        + (f"{s['speedup_at_4096']:.1f}x, {'met' if met else 'NOT met'}" if met is not None
           else "not measured in this run")
        + f"; training saved bytes/token max/min over lengths = {s['training_saved_bytes_per_token_max_over_min']:.3f}"
        " (1 = linear).",
    ]
    return lines
