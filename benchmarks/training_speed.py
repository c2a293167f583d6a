"""7. Training throughput: images/s, GFLOP/s and the fraction of this process's own fp32 matmul rate, 1 and 2 threads.

What a user's training step costs, as pixelvit's trainer runs it: the model from `create_model` in train mode
with its defaults (Adventurer: the mixer as one hand-differentiated autograd Function, run on pieces of the
batch and on two threads a piece per thread, pixelvit.ops.mixer_autograd), cross-entropy, backward, gradient
clipping at 1.0 and AdamW, on a batch of random 32x32 images. Work per image = 3 x the
forward FLOPs of `pixelvit.costs.estimate` (backward ~ 2 x forward). The matmul rate is a 1024^3 fp32
matmul measured in the same process at the same thread count, alternated with the steps, so the fraction
does not depend on which CPU ran it or on what else the machine did at that moment.

Also per case: page faults and system seconds per step (the malloc setting of pixelvit.runtime is what keeps
them near zero), and for Adventurer the readable mixer (`memory_lean = False`) beside the default. Then one
profile of the default adventurer_nano patch-1 step on one thread: where the time goes now.

Targets (for adventurer_nano at patch 1): >= 0.35 x the matmul rate on 1 thread; 2 threads >= 1.5 x 1 thread.
"""

from __future__ import annotations

import resource
import time

import torch
import torch.nn.functional as F

from benchmarks.machine import median, spread
from benchmarks.report import table

TARGET_FRACTION, TARGET_SPEEDUP = 0.35, 1.5
MATMUL_OPS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm")  # the profile's matrix products


def matmul_gflops(size: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def make_step(name: str, patch_size: int, batch_size: int, img_size: int, memory_lean: bool = True):
    """One training step of `name` at `patch_size` as a function, and its work in FLOPs."""
    from pixelvit.costs import estimate
    from pixelvit.models import create_model

    torch.manual_seed(0)
    model = create_model(name, patch_size=patch_size, img_size=img_size).train()
    for block in getattr(model, "layers", []):
        block.mixer.memory_lean = memory_lean
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(batch_size, 3, img_size, img_size)
    labels = torch.randint(0, 10, (batch_size,))

    def step():
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    flops = 3 * estimate(name, img_size=img_size, patch_size=patch_size)["flops"] * batch_size
    return step, flops


def measure(step, threads: list[int], repeats: int, warmup: int) -> dict:
    """Step seconds (and matmul GFLOP/s, faults, system time) per thread count, thread counts alternated."""
    out = {t: {"seconds": [], "matmul_gflops": [], "faults": [], "system_s": []} for t in threads}
    for t in threads:
        torch.set_num_threads(t)
        for _ in range(warmup):
            step()
    for i in range(repeats):
        for t in threads if i % 2 == 0 else list(reversed(threads)):
            torch.set_num_threads(t)
            before = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            step()
            out[t]["seconds"].append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_SELF)
            out[t]["faults"].append(after.ru_minflt - before.ru_minflt)
            out[t]["system_s"].append(after.ru_stime - before.ru_stime)
            out[t]["matmul_gflops"].append(matmul_gflops())
    return out


def profile_step(step, rows: int = 10) -> list[dict]:
    """The step's top ops by self CPU time, one thread (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    ops = [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
            "calls": e.count} for e in events[:rows]]
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / total
    return ops, matmul


def run(cases, batch_size=64, img_size=32, threads=(1, 2), repeats=3, warmup=1, profile_case=None):
    """cases: [(model name, patch size, variant)] with variant "default" or "readable_mixer"."""
    threads = list(threads)
    rows = []
    for name, patch_size, variant in cases:
        step, flops = make_step(name, patch_size, batch_size, img_size, memory_lean=variant == "default")
        measured = measure(step, threads, repeats, warmup)
        row = {"model": name, "patch_size": patch_size, "variant": variant, "batch_size": batch_size,
               "tokens": (img_size // patch_size) ** 2 + 1, "gflop_per_step": flops / 1e9}
        for t in threads:
            m = measured[t]
            seconds = median(m["seconds"])
            row[f"t{t}"] = {
                "step_s": seconds, "step_s_spread": spread(m["seconds"]), "img_per_s": batch_size / seconds,
                "gflops": flops / seconds / 1e9, "matmul_gflops": median(m["matmul_gflops"]),
                "fraction_of_matmul": flops / seconds / 1e9 / median(m["matmul_gflops"]),
                "faults_per_step": median(m["faults"]), "system_s_per_step": median(m["system_s"]),
            }
        if len(threads) > 1:
            row["speedup"] = row[f"t{threads[0]}"]["step_s"] / row[f"t{threads[-1]}"]["step_s"]
        rows.append(row)
        print(f"  {name} patch {patch_size} {variant}: " + ", ".join(
            f"{t} thread(s) {row[f't{t}']['img_per_s']:.1f} img/s ({row[f't{t}']['fraction_of_matmul']:.2f} of matmul)"
            for t in threads))
    result = {"rows": rows, "threads": threads, "img_size": img_size, "batch_size": batch_size,
              "targets": {"fraction_of_matmul": TARGET_FRACTION, "speedup": TARGET_SPEEDUP}}
    if profile_case:
        name, patch_size = profile_case
        step, _ = make_step(name, patch_size, batch_size, img_size)
        ops, matmul_share = profile_step(step)
        result["profile"] = {"model": name, "patch_size": patch_size, "ops": ops, "matmul_share": matmul_share}
    return result


def markdown(section: dict) -> list[str]:
    threads = section["threads"]
    header = ["model", "patch (tokens)", "variant"]
    for t in threads:
        header += [f"{t} thr: img/s", f"{t} thr: GFLOP/s", f"{t} thr: of matmul", f"{t} thr: faults/step",
                   f"{t} thr: system s/step"]
    header += [f"{threads[-1]} vs {threads[0]} threads"] if len(threads) > 1 else []
    rows = []
    for r in section["rows"]:
        cells = [r["model"], f"{r['patch_size']} ({r['tokens']:,})", r["variant"]]
        for t in threads:
            m = r[f"t{t}"]
            cells += [f"{m['img_per_s']:.1f}", f"{m['gflops']:.1f}", f"{m['fraction_of_matmul']:.2f}",
                      f"{m['faults_per_step']:,.0f}", f"{m['system_s_per_step']:.2f}"]
        cells += [f"{r['speedup']:.2f}x"] if "speedup" in r else []
        rows.append(cells)
    lines = table(header, rows)
    lines += ["", f"Batch {section['batch_size']} of random {section['img_size']}x{section['img_size']} images; "
              "cross-entropy, backward, clip 1.0, AdamW; work = 3 x forward FLOPs (pixelvit.costs); "
              "'of matmul' = GFLOP/s over a 1024^3 fp32 matmul measured in the same process at the same "
              "thread count (medians of alternated repetitions). "
              f"Targets for adventurer_nano at patch 1: >= {TARGET_FRACTION} of matmul on 1 thread, "
              f">= {TARGET_SPEEDUP}x from the second thread."]
    for r in section["rows"]:
        if r["model"].startswith("adventurer") and r["patch_size"] == 1 and r["variant"] == "default":
            t1 = r[f"t{threads[0]}"]["fraction_of_matmul"]
            verdict = [f"adventurer_nano patch 1: {t1:.2f} of the matmul rate on {threads[0]} thread "
                       f"({'met' if t1 >= TARGET_FRACTION else 'NOT met'})"]
            if "speedup" in r:
                verdict.append(f"{r['speedup']:.2f}x from {threads[-1]} threads "
                               f"({'met' if r['speedup'] >= TARGET_SPEEDUP else 'NOT met'})")
            lines += ["", "**" + "; ".join(verdict) + ".**"]
    if "profile" in section:
        p = section["profile"]
        lines += ["", f"Where the time goes: {p['model']} patch {p['patch_size']}, default path, 1 thread, one "
                  "step (torch.profiler, self CPU time):", "", "| op | self ms | share | calls |", "|---|---|---|---|"]
        lines += [f"| `{o['op']}` | {o['self_ms']:.0f} | {o['share']:.0%} | {o['calls']} |" for o in p["ops"]]
        if "matmul_share" in p:
            lines += ["", matmul_bound(section, p)]
    return lines


def matmul_bound(section: dict, p: dict) -> str:
    """What limits the step: the share of matmul ops, and the fraction reached if nothing else cost time."""
    fraction = next((r[f"t{section['threads'][0]}"]["fraction_of_matmul"] for r in section["rows"]
                     if (r["model"], r["patch_size"], r["variant"]) == (p["model"], p["patch_size"], "default")), None)
    text = (f"Matrix products (`{'`, `'.join(MATMUL_OPS)}`) take {p['matmul_share']:.0%} of the profiled step; "
            f"the other {1 - p['matmul_share']:.0%} is elementwise work, copies and reductions, each a pass over "
            "memory at a few GFLOP/s.")
    if fraction:
        ceiling = fraction / p["matmul_share"]
        cut = 1 - (fraction / TARGET_FRACTION - p["matmul_share"]) / (1 - p["matmul_share"])
        text += (f" Even if all of that cost nothing, the step would run at about {ceiling:.2f} of the matmul rate "
                 "(the products themselves run below the 1024^3 rate: small, chunk-sized batched products); ")
        if fraction >= TARGET_FRACTION:
            text += f"the target {TARGET_FRACTION} is met with the rest as it is."
        elif cut <= 1:
            text += f"the target {TARGET_FRACTION} needs the non-matmul time cut by about {cut:.0%}."
        else:
            text += f"the target {TARGET_FRACTION} is out of reach by removing non-matmul time alone."
    return text
