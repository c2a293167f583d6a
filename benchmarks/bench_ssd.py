"""Benchmark the chunked SSD scan against the step-by-step loop on CPU: forward + backward, and memory.

    python benchmarks/bench_ssd.py [--lengths 256 1024 4096] [--repeats 5] [--threads 2]
                                   [--out benchmarks/results/quick/ssd_cpu.json]

The committed figures come from `python -m benchmarks` (benchmarks/results/results.json, section "scan"),
which reuses this file's timing; this script alone is for exploring and writes to the git-ignored
benchmarks/results/quick/ by default, so that no second copy of the same figure is committed.

Shapes are Adventurer-Tiny's SSD: 8 heads, headdim 64, d_state 64, 1 group, float32, batch 1 (one image's
token sequence; the chunked scan's time grows about linearly with batch, the loop's much less, because the
loop is dominated by per-step overhead, so batch 1 is the conservative choice for the speed-up).

What is timed: `y = scan(...)` then `(y * w).sum().backward()` with a fixed random cotangent w, grads of all
inputs (x, dt, A, B, C, D) required. One warm-up call each, then `repeats` rounds in which the
implementations run in alternating order (A B, B A, ...), so slow phases of a shared machine hit both;
medians are reported (min too). At the longest length a second table sweeps the chunk size.

Memory, two honest numbers (tracemalloc does not see torch's allocations):
  * saved_mb - bytes of the distinct tensors autograd keeps for the backward pass (saved_tensors_hooks),
    inputs excluded: exact and deterministic; what "linear in the length" is about.
  * peak_mb  - peak resident memory added by one forward+backward, measured in a fresh subprocess: inputs
    built, one warm-up run at length 1, malloc_trim, peak counter reset (/proc/self/clear_refs), then
    VmHWM - VmRSS around one forward+backward. Includes transients, gradients and allocator overhead;
    Linux only (null elsewhere).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle OpenMP threads sleep, not spin

import argparse  # noqa: E402
import ctypes  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pixelvit.ops.ssd import CPU_CHUNK_SIZE, ssd_chunked, ssd_sequential  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks` importable
from benchmarks.machine import machine_info, status_kb  # noqa: E402

ADVENTURER_TINY = {"batch": 1, "nheads": 8, "headdim": 64, "dstate": 64, "ngroups": 1}


def make_inputs(length, batch, nheads, headdim, dstate, ngroups, seed=0):
    """float32 leaves x, dt, A, B, C, D with Mamba-2-like magnitudes, and a cotangent w for the backward."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, nheads, headdim, generator=g)
    dt = F.softplus(torch.randn(batch, length, nheads, generator=g) - 3)    # ~0.05, as softplus(dt_bias)
    A = -torch.empty(nheads).uniform_(1, 16, generator=g)                   # Mamba-2's A init range
    B = torch.randn(batch, length, ngroups, dstate, generator=g)
    C = torch.randn(batch, length, ngroups, dstate, generator=g)
    D = torch.ones(nheads)
    w = torch.randn(batch, length, nheads, headdim, generator=g)
    leaves = [t.requires_grad_() for t in (x, dt, A, B, C, D)]
    return leaves, w


def implementations(chunk_size):
    return {
        "sequential": lambda x, dt, A, B, C, D: ssd_sequential(x, dt, A, B, C, D=D),
        "chunked": lambda x, dt, A, B, C, D: ssd_chunked(x, dt, A, B, C, chunk_size=chunk_size, D=D),
    }


def forward_backward(fn, leaves, w):
    """Seconds for the forward, and for forward + backward."""
    for t in leaves:
        t.grad = None
    t0 = time.perf_counter()
    y = fn(*leaves)
    t1 = time.perf_counter()
    (y * w).sum().backward()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t0


def time_alternating(fns, leaves, w, repeats):
    """Median and min milliseconds per implementation; one warm-up each, then A B / B A alternation."""
    names = list(fns)
    for name in names:
        forward_backward(fns[name], leaves, w)
    fwd, total = {n: [] for n in names}, {n: [] for n in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            f, t = forward_backward(fns[name], leaves, w)
            fwd[name].append(1e3 * f)
            total[name].append(1e3 * t)
    return {n: {"fwd_ms": statistics.median(fwd[n]), "fwd_bwd_ms": statistics.median(total[n]),
                "fwd_bwd_min_ms": min(total[n]), "fwd_bwd_all_ms": [round(t, 2) for t in total[n]]}
            for n in names}


def saved_tensor_mb(fn, leaves):
    """MB of distinct storages autograd saves for backward during one forward, the inputs' own excluded."""
    inputs = {t.untyped_storage().data_ptr() for t in leaves}
    saved = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in inputs:
            saved[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*leaves)
    return sum(saved.values()) / 2**20


def _peak_rss_child(impl, length, chunk_size, shape, threads):
    """Runs in a fresh process: peak resident MB added by one forward+backward."""
    torch.set_num_threads(threads)
    fn = implementations(chunk_size)[impl]
    warm, w_warm = make_inputs(1, **shape)                      # load libraries, first-call buffers
    forward_backward(fn, warm, w_warm)
    leaves, w = make_inputs(length, **shape)
    del warm, w_warm
    try:                                                        # hand freed heap back, so it is not reused
        ctypes.CDLL("libc.so.6").malloc_trim(0)                 # unseen by the peak counter
    except (OSError, AttributeError):
        pass
    Path("/proc/self/clear_refs").write_text("5")               # reset VmHWM to the current RSS
    before = status_kb("VmRSS")
    forward_backward(fn, leaves, w)
    return (status_kb("VmHWM") - before) / 1024


def peak_rss_mb(impl, length, chunk_size, shape, threads):
    if not Path("/proc/self/clear_refs").exists():
        return None
    cmd = [sys.executable, __file__, "--_peak-rss", json.dumps([impl, length, chunk_size, shape, threads])]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(lengths=(256, 1024, 4096), repeats=5, chunk_size=CPU_CHUNK_SIZE, sweep_chunk_sizes=(16, 32, 64, 128, 256),
        threads=2, shape=None, max_sequential_length=16384, memory=True, command=None, log=print):
    """Time and measure both implementations at each length; returns a JSON-able dict."""
    shape = dict(ADVENTURER_TINY if shape is None else shape)
    torch.set_num_threads(threads)
    result = {"benchmark": "ssd_cpu", "command": command, "machine": machine_info(), "shape": shape,
              "dtype": "float32", "chunk_size": chunk_size, "repeats": repeats, "rows": [], "chunk_sweep": None}
    for length in lengths:
        fns = implementations(chunk_size)
        if length > max_sequential_length:
            del fns["sequential"]
        leaves, w = make_inputs(length, **shape)
        row = {"length": length, **time_alternating(fns, leaves, w, repeats)}
        if "sequential" in row:
            row["speedup_fwd_bwd"] = row["sequential"]["fwd_bwd_ms"] / row["chunked"]["fwd_bwd_ms"]
            row["speedup_fwd"] = row["sequential"]["fwd_ms"] / row["chunked"]["fwd_ms"]
            # rounds alternate, so round i's two runs saw the same phase of a shared machine
            row["speedup_fwd_bwd_paired"] = statistics.median(
                s / c for s, c in zip(row["sequential"]["fwd_bwd_all_ms"], row["chunked"]["fwd_bwd_all_ms"],
                                      strict=True))
        if memory:
            for name, fn in fns.items():
                row[name]["saved_mb"] = saved_tensor_mb(fn, leaves)
                row[name]["peak_mb"] = peak_rss_mb(name, length, chunk_size, shape, threads)
        result["rows"].append(row)
        log(f"  length {length}: " + ", ".join(f"{n} {row[n]['fwd_bwd_ms']:.1f} ms" for n in fns))
    if sweep_chunk_sizes:
        length = max(lengths)
        leaves, w = make_inputs(length, **shape)
        fns = {f"Q={q}": implementations(q)["chunked"] for q in sweep_chunk_sizes}
        times = time_alternating(fns, leaves, w, repeats)
        result["chunk_sweep"] = {"length": length, **{name: t for name, t in times.items()}}
        log(f"  chunk sweep at {length}: " + ", ".join(f"{n} {t['fwd_bwd_ms']:.1f} ms" for n, t in times.items()))
    result["machine"]["load_average_1min_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return result


def to_markdown(result):
    m, s = result["machine"], result["shape"]
    lines = [
        "# SSD scan on CPU: chunked vs sequential (forward + backward)",
        "",
        f"`{result['command']}`" if result["command"] else "",
        "",
        f"{m['cpu_model']}, {m['cpus_usable']} usable cores, torch {m['torch']} with {m['torch_num_threads']} threads; "
        f"load average {m['load_average_1_5_15'][0]:.1f} before, {m['load_average_1min_after']:.1f} after "
        "(a shared machine: other jobs were running). "
        f"Shapes: batch {s['batch']}, {s['nheads']} heads, headdim {s['headdim']}, d_state {s['dstate']}, "
        f"{s['ngroups']} group, float32, chunk size {result['chunk_size']}. Medians of {result['repeats']} "
        "alternated repetitions after a warm-up.",
        "",
        "| length | sequential fwd+bwd ms | chunked fwd+bwd ms | speed-up | speed-up, paired | sequential fwd ms "
        "| chunked fwd ms | saved for backward MB (seq / chunked) | peak RSS added MB (seq / chunked) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(x, spec=".1f"):
        return "-" if x is None else format(x, spec)

    for row in result["rows"]:
        seq, ch = row.get("sequential", {}), row["chunked"]
        lines.append(
            f"| {row['length']} | {fmt(seq.get('fwd_bwd_ms'))} | {fmt(ch['fwd_bwd_ms'])} | "
            f"{fmt(row.get('speedup_fwd_bwd'))}{'x' if 'speedup_fwd_bwd' in row else ''} | "
            f"{fmt(row.get('speedup_fwd_bwd_paired'))}{'x' if 'speedup_fwd_bwd' in row else ''} | {fmt(seq.get('fwd_ms'))} | {fmt(ch['fwd_ms'])} | "
            f"{fmt(seq.get('saved_mb'))} / {fmt(ch.get('saved_mb'))} | {fmt(seq.get('peak_mb'))} / "
            f"{fmt(ch.get('peak_mb'))} |")
    lines += ["", "speed-up: ratio of the medians; paired: median over rounds of that round's ratio (each round "
              "runs both, back to back, so it is less sensitive to other jobs on the machine).",
              "saved for backward: distinct tensors autograd keeps (exact). Peak RSS: fresh process, one "
              "forward+backward, includes gradients, transients and allocator overhead (noisier)."]
    sweep = result["chunk_sweep"]
    if sweep:
        names = [k for k in sweep if k != "length"]
        lines += ["", f"Chunk size sweep, chunked forward+backward at length {sweep['length']} (median ms):", "",
                  "| " + " | ".join(names) + " |", "|" + "---:|" * len(names),
                  "| " + " | ".join(f"{sweep[n]['fwd_bwd_ms']:.1f}" for n in names) + " |"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk-size", type=int, default=CPU_CHUNK_SIZE)
    parser.add_argument("--sweep-chunk-sizes", type=int, nargs="*", default=[16, 32, 64, 128, 256],
                        help="chunk sizes compared at the longest length (none to skip)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-sequential-length", type=int, default=16384,
                        help="skip the (slow, memory-hungry) loop above this length")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quick/ssd_cpu.json"))
    parser.add_argument("--_peak-rss", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._peak_rss:                                        # child process of peak_rss_mb
        print(json.dumps(_peak_rss_child(*json.loads(args._peak_rss))))
        return

    command = "python " + shlex.join([sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    print(f"SSD CPU benchmark: {command}")
    result = run(args.lengths, args.repeats, args.chunk_size, args.sweep_chunk_sizes, args.threads,
                 max_sequential_length=args.max_sequential_length, memory=not args.no_memory, command=command)
    markdown = to_markdown(result)
    print(markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
