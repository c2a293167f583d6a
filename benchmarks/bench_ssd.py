"""Benchmark the SSD scans the models run on CPU against the step-by-step loop: time, memory, chunk length.

    python benchmarks/bench_ssd.py [--lengths 256 1024 4096] [--repeats 5] [--threads 2]
                                   [--out benchmarks/results/quick/ssd_cpu.json]

The committed figures come from `python -m benchmarks` (benchmarks/results/results.json, section "scan"),
which reuses this file's timing; this script alone is for exploring and writes to the git-ignored
benchmarks/results/quick/ by default, so that no second copy of the same figure is committed.

What runs in Adventurer on a CPU (pixelvit.models.mamba2, pixelvit.ops.mixer), and so what is timed here:
  * training  - `ssd_trainable` (pixelvit.ops.ssd_autograd: the chunked scan with a hand-derived backward):
                its forward and backward are the pieces the mixer's training Function runs
                (pixelvit.ops.mixer_autograd; it also recomputes the scan's output in backward, reusing the
                Q x Q matrices the backward builds anyway). Timed as forward + backward.
  * inference - `ssd_fast` on blocks of BLOCK_TOKENS (1,024) tokens, the state passed from block to block:
                the calls MixerStream (pixelvit.ops.mixer) makes. Timed as a forward without gradients.
  * sequential - `ssd_sequential`, the recurrence one step at a time, forward + backward: the ground truth
                the two are tested against, and what the chunked algorithm is meant to beat.
`ssd_chunked`, the readable version of the algorithm, is tested equal to all three and runs in no model.

Shapes are Adventurer-Tiny's SSD: 8 heads, headdim 64, d_state 64, 1 group, float32, batch 1 (one image's
token sequence; the chunked scan's time grows about linearly with batch, the loop's much less, because the
loop is dominated by per-step overhead, so batch 1 is the conservative choice for the speed-up).

How: `y = scan(...)` then `(y * w).sum().backward()` with a fixed random cotangent w, grads of all inputs
(x, dt, A, B, C, D) required. One warm-up call each, then `repeats` rounds in which the implementations run
in alternating order (A B, B A, ...), so slow phases of a shared machine hit both; medians are reported.

The chunk-length sweep times both scans that run (inference forward, training forward + backward) at each
chunk length in `sweep_chunk_sizes` and each length in `sweep_lengths`: by default 65, 257 and 1,025 tokens
(8x8, 16x16 and 32x32 patches + the class token: adventurer_nano's CIFAR-10 runs) and 50,178 (224x224 at patch
1, + the class and the average token: what the paper's patch-1 mixer sees). The CPU default of
pixelvit.ops.ssd.CPU_CHUNK_SIZE is the length this sweep supports.

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
import math  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pixelvit.ops import mixer  # noqa: E402
from pixelvit.ops.ssd import CPU_CHUNK_SIZE, ssd_scan, ssd_sequential, ssd_streaming  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks` importable
from benchmarks.machine import machine_info, status_kb  # noqa: E402

ADVENTURER_TINY = {"batch": 1, "nheads": 8, "headdim": 64, "dstate": 64, "ngroups": 1}
SWEEP_LENGTHS = (65, 257, 1025, 50178)  # the token counts that matter (module docstring)
SWEEP_CHUNK_SIZES = (32, 64, 128)


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
    """The scans timed with gradients (forward + backward), by name: the loop, and the training scan."""
    return {
        "sequential": lambda x, dt, A, B, C, D: ssd_sequential(x, dt, A, B, C, D=D),
        # gradients are required, so ssd_scan runs ssd_trainable: the call Mamba2Mixer's forward makes
        "training": lambda x, dt, A, B, C, D: ssd_scan(x, dt, A, B, C, chunk_size=chunk_size, D=D, backend="reference"),
    }


@torch.no_grad()
def inference_scan(x, dt, A, B, C, D, chunk_size=CPU_CHUNK_SIZE):
    """The scan of a model's inference forward: ssd_fast on blocks of mixer.BLOCK_TOKENS tokens, passing the
    state on, as MixerStream calls it for one image (ssd_streaming makes exactly those ssd_fast calls)."""
    block_chunks = max(1, mixer.BLOCK_TOKENS // chunk_size)
    return ssd_streaming(x, dt, A, B, C, chunk_size=chunk_size, D=D, block_chunks=block_chunks)


def forward_only(fn, leaves):
    """Seconds for one forward without gradients."""
    t0 = time.perf_counter()
    fn(*leaves)
    return time.perf_counter() - t0


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


def chunk_sweep(lengths=SWEEP_LENGTHS, chunk_sizes=SWEEP_CHUNK_SIZES, repeats=5, shape=None, log=print) -> dict:
    """Both scans that run, at every chunk length and length: median ms, and the fastest chunk of each case.

    At each length the chunk lengths alternate (A B C, C B A, ...) on the same inputs: inference =
    `inference_scan` forward, training = the training scan's forward + backward."""
    shape = dict(ADVENTURER_TINY if shape is None else shape)
    rows = []
    for length in lengths:
        leaves, w = make_inputs(length, **shape)
        with torch.no_grad():
            inference = time_alternating_forward(
                {q: lambda *a, q=q: inference_scan(*a, chunk_size=q) for q in chunk_sizes}, leaves, repeats)
        training = time_alternating({q: implementations(q)["training"] for q in chunk_sizes}, leaves, w, repeats)
        row = {"length": length,
               "inference_fwd_ms": {str(q): inference[q] for q in chunk_sizes},
               "training_fwd_bwd_ms": {str(q): training[q]["fwd_bwd_ms"] for q in chunk_sizes}}
        for kind in ("inference_fwd_ms", "training_fwd_bwd_ms"):
            row[f"fastest_{kind.split('_')[0]}"] = int(min(row[kind], key=row[kind].get))
        rows.append(row)
        log(f"  chunk sweep at {length}: " + ", ".join(
            f"Q={q} {row['inference_fwd_ms'][str(q)]:.1f} / {row['training_fwd_bwd_ms'][str(q)]:.1f} ms"
            for q in chunk_sizes) + " (inference / training)")
        del leaves, w
    # each chunk against the fastest chunk of each case (a length, inference or training): the geometric mean
    # of its time / the fastest time over all cases, 1.0 = fastest everywhere. The smallest is the best overall.
    kinds = ("inference_fwd_ms", "training_fwd_bwd_ms")
    over_fastest = {str(q): math.exp(statistics.fmean(
        math.log(row[kind][str(q)] / min(row[kind].values())) for row in rows for kind in kinds))
        for q in chunk_sizes}
    return {"lengths": list(lengths), "chunk_sizes": list(chunk_sizes), "repeats": repeats, "rows": rows,
            "time_over_fastest_geomean": over_fastest, "best_chunk_size": int(min(over_fastest, key=over_fastest.get)),
            "default_chunk_size": CPU_CHUNK_SIZE}


def time_alternating_forward(fns, leaves, repeats):
    """Median milliseconds of one forward per implementation (no gradients), alternated after a warm-up."""
    names = list(fns)
    for name in names:
        forward_only(fns[name], leaves)
    times = {n: [] for n in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            times[name].append(1e3 * forward_only(fns[name], leaves))
    return {n: statistics.median(times[n]) for n in names}


def run(lengths=(256, 1024, 4096), repeats=5, chunk_size=CPU_CHUNK_SIZE, sweep_chunk_sizes=SWEEP_CHUNK_SIZES,
        sweep_lengths=SWEEP_LENGTHS, threads=2, shape=None, max_sequential_length=16384, memory=True, command=None,
        log=print):
    """Time (and measure) the loop and the two scans that run at each length, then the chunk sweep."""
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
        row["inference"] = {"fwd_ms": time_alternating_forward(
            {"inference": lambda *a: inference_scan(*a, chunk_size=chunk_size)}, leaves, repeats)["inference"]}
        if "sequential" in row:
            row["speedup_fwd_bwd"] = row["sequential"]["fwd_bwd_ms"] / row["training"]["fwd_bwd_ms"]
            # rounds alternate, so round i's two runs saw the same phase of a shared machine
            row["speedup_fwd_bwd_paired"] = statistics.median(
                s / c for s, c in zip(row["sequential"]["fwd_bwd_all_ms"], row["training"]["fwd_bwd_all_ms"],
                                      strict=True))
        if memory:
            for name, fn in fns.items():
                row[name]["saved_mb"] = saved_tensor_mb(fn, leaves)
                row[name]["peak_mb"] = peak_rss_mb(name, length, chunk_size, shape, threads)
        result["rows"].append(row)
        log(f"  length {length}: " + ", ".join(f"{n} {row[n]['fwd_bwd_ms']:.1f} ms" for n in fns)
            + f", inference {row['inference']['fwd_ms']:.1f} ms (forward only)")
    if sweep_chunk_sizes and sweep_lengths:
        result["chunk_sweep"] = chunk_sweep(sweep_lengths, sweep_chunk_sizes, repeats, shape, log)
    result["machine"]["load_average_1min_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return result


def sweep_markdown(sweep) -> list[str]:
    """The chunk-length sweep as a table, and the verdict on CPU_CHUNK_SIZE."""
    qs = [str(q) for q in sweep["chunk_sizes"]]
    header = "| tokens | " + " | ".join(f"inference Q={q}" for q in qs) + " | " + " | ".join(
        f"training Q={q}" for q in qs) + " | fastest (inference / training) |"
    lines = [f"Chunk length sweep of the two scans that run (median ms of {sweep['repeats']} alternated "
             "repetitions; inference = forward without gradients, training = forward + backward):", "",
             header, "|" + "---:|" * (2 * len(qs) + 2)]
    for r in sweep["rows"]:
        lines.append(f"| {r['length']:,} | " + " | ".join(f"{r['inference_fwd_ms'][q]:.1f}" for q in qs) + " | "
                     + " | ".join(f"{r['training_fwd_bwd_ms'][q]:.1f}" for q in qs)
                     + f" | {r['fastest_inference']} / {r['fastest_training']} |")
    gm = sweep["time_over_fastest_geomean"]
    default = str(sweep["default_chunk_size"])
    lines += ["", "Time over the fastest chunk's, geometric mean over the cases above: " + ", ".join(
        f"Q={q} {gm[q]:.2f}x" for q in gm) + f". Best overall: {sweep['best_chunk_size']}; the CPU default "
        f"(pixelvit.ops.ssd.CPU_CHUNK_SIZE) is {default}"
        + (f", {gm[default] / gm[str(sweep['best_chunk_size'])]:.2f}x the best." if default in gm else ", not swept.")]
    return lines


def to_markdown(result):
    m, s = result["machine"], result["shape"]
    lines = [
        "# SSD scans on CPU: the training and inference scans the models run, and the step-by-step loop",
        "",
        f"`{result['command']}`" if result["command"] else "",
        "",
        f"{m['cpu_model']}, {m['cpus_usable']} usable cores, torch {m['torch']} with {m['torch_num_threads']} threads; "
        f"load average {m['load_average_1_5_15'][0]:.1f} before, {m['load_average_1min_after']:.1f} after. "
        f"Shapes: batch {s['batch']}, {s['nheads']} heads, headdim {s['headdim']}, d_state {s['dstate']}, "
        f"{s['ngroups']} group, float32, chunk size {result['chunk_size']}. Medians of {result['repeats']} "
        "alternated repetitions after a warm-up.",
        "",
        "| length | sequential fwd+bwd ms | training fwd+bwd ms | speed-up | speed-up, paired | inference fwd ms "
        "| saved for backward MB (seq / training) | peak RSS added MB (seq / training) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(x, spec=".1f"):
        return "-" if x is None else format(x, spec)

    for row in result["rows"]:
        seq, tr = row.get("sequential", {}), row["training"]
        x = "x" if "speedup_fwd_bwd" in row else ""
        lines.append(
            f"| {row['length']} | {fmt(seq.get('fwd_bwd_ms'))} | {fmt(tr['fwd_bwd_ms'])} | "
            f"{fmt(row.get('speedup_fwd_bwd'))}{x} | {fmt(row.get('speedup_fwd_bwd_paired'))}{x} | "
            f"{fmt(row['inference']['fwd_ms'])} | {fmt(seq.get('saved_mb'))} / {fmt(tr.get('saved_mb'))} | "
            f"{fmt(seq.get('peak_mb'))} / {fmt(tr.get('peak_mb'))} |")
    if result["chunk_sweep"]:
        lines += ["", *sweep_markdown(result["chunk_sweep"])]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk-size", type=int, default=CPU_CHUNK_SIZE)
    parser.add_argument("--sweep-chunk-sizes", type=int, nargs="*", default=list(SWEEP_CHUNK_SIZES),
                        help="chunk lengths the sweep compares (none to skip it)")
    parser.add_argument("--sweep-lengths", type=int, nargs="*", default=list(SWEEP_LENGTHS),
                        help="lengths the sweep runs at (none to skip it)")
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
    result = run(args.lengths, args.repeats, args.chunk_size, args.sweep_chunk_sizes, args.sweep_lengths, args.threads,
                 max_sequential_length=args.max_sequential_length, memory=not args.no_memory, command=command)
    markdown = to_markdown(result)
    print(markdown)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
