"""5. Full scale: Adventurer at patch 1 and 224x224 (50,177 tokens), one image, inference, on 2 CPU threads.

Each model runs in its own fresh python process, so that its peak resident memory (VmHWM) is the whole
process's: python, torch, the model and the forward. In that process: the RSS after the imports and after
building the model; a 2048 x 2048 fp32 matmul rate measured before and after the forward (5 repetitions
each, median; the higher of the two is the reference, so the ratio is the conservative one); a one-block
warm-up at 256 tokens; then one forward of one image in torch.inference_mode(). Achieved GFLOP/s = forward
FLOPs by pixelvit.costs (matrix products only, the scan over its real length) / seconds; the same ratio is
also given in CPU time (GFLOP per process CPU-second, forward and matmul alike), which other jobs on a
shared machine distort less than wall time. For the smaller
model a torch.profiler run of one block at the full length says where the time goes (self CPU time by op).
Targets: Adventurer-Tiny >= 0.4x the matmul rate and <= 1.5 GB peak RSS; Adventurer-Base <= 2.0 GB.
"""

from __future__ import annotations

import time

import torch

from benchmarks.machine import run_in_fresh_process
from benchmarks.report import fmt, table

MATMUL_N = 2048
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")


def _rss_mb(key: str) -> float:
    import benchmarks.machine as machine

    status_kb = getattr(machine, "status_kb", None) or machine._status_kb  # renamed by the machine.py dedupe
    return status_kb(key) / 1024


def matmul_gflops(repeats: int = 5) -> tuple[float, float]:
    """(GFLOP/s of wall time, GFLOP per CPU-second) of a 2048 x 2048 fp32 matmul, medians of `repeats`."""
    a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)
    a @ b
    wall, cpu = [], []
    for _ in range(repeats):
        cpu0, start = time.process_time(), time.perf_counter()
        a @ b
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu0)
    flop = 2 * MATMUL_N**3 / 1e9
    return flop / sorted(wall)[len(wall) // 2], flop / sorted(cpu)[len(cpu) // 2]


def profile_block(model, tokens: int, top: int = 8) -> dict:
    """Self CPU seconds by op for one block at `tokens` tokens (inference): where the time goes."""
    from torch.profiler import profile

    x = torch.randn(1, tokens, model.embed_dim)
    with torch.inference_mode(), profile() as prof:
        model.layers[0](x)
    ops = sorted(((e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages()), key=lambda kv: -kv[1])
    total = sum(s for _, s in ops)
    matmul = sum(s for name, s in ops if name in MATMUL_OPS)
    return {"block_self_cpu_s": total, "matmul_share": matmul / total if total else None,
            "top_ops_self_cpu_s": {name: round(s, 3) for name, s in ops[:top]}}


def child(name: str, img_size: int, patch_size: int, profile: bool) -> dict:
    """Runs in a fresh process (benchmarks.machine.run_in_fresh_process)."""
    from pixelvit.costs import estimate
    from pixelvit.models import create_model

    rss_imports = _rss_mb("VmRSS")
    torch.manual_seed(0)
    model = create_model(name, img_size=img_size, patch_size=patch_size).eval()
    rss_model = _rss_mb("VmRSS")
    matmul_before, matmul_cpu_before = matmul_gflops()
    images = torch.randn(1, 3, img_size, img_size)
    with torch.inference_mode():
        model.layers[0](torch.randn(1, 256, model.embed_dim))  # warm-up: first-call costs, small
        cpu0, start = time.process_time(), time.perf_counter()
        logits = model(images)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu0
    peak = _rss_mb("VmHWM")
    matmul_after, matmul_cpu_after = matmul_gflops()
    flops = estimate(model)["flops"]
    matmul, matmul_cpu = max(matmul_before, matmul_after), max(matmul_cpu_before, matmul_cpu_after)
    result = {
        "model": name, "img_size": img_size, "patch_size": patch_size, "tokens": model.num_tokens,
        "params": sum(p.numel() for p in model.parameters()), "gflops": flops / 1e9,
        "seconds": seconds, "cpu_seconds": cpu_seconds, "achieved_gflops_per_s": flops / seconds / 1e9,
        "matmul_gflops_per_s_before": matmul_before, "matmul_gflops_per_s_after": matmul_after,
        "ratio_to_matmul": flops / seconds / 1e9 / matmul,
        # the same ratio in CPU time (GFLOP per CPU-second, both): what a busy shared machine distorts less
        "matmul_gflops_per_cpu_s": matmul_cpu,
        "ratio_to_matmul_cpu_time": flops / cpu_seconds / 1e9 / matmul_cpu,
        "peak_rss_mb": peak, "rss_after_imports_mb": rss_imports, "rss_after_model_mb": rss_model,
        "logits_finite": bool(torch.isfinite(logits).all()),
    }
    if profile:
        result["profile_one_block"] = profile_block(model, model.num_tokens)
    return result


def run(models, log=print) -> dict:
    """models: [(name, img_size, patch_size, profile_one_block), ...]; one fresh process each."""
    rows = []
    for name, img_size, patch_size, profile in models:
        log(f"  {name} at {img_size}px patch {patch_size}: fresh process ...")
        row = run_in_fresh_process("benchmarks.full_scale", "child",
                                   dict(name=name, img_size=img_size, patch_size=patch_size, profile=profile))
        log(f"    {row['seconds']:.1f} s, {row['achieved_gflops_per_s']:.1f} GFLOP/s = "
            f"{row['ratio_to_matmul']:.2f}x the matmul rate, peak RSS {row['peak_rss_mb']:.0f} MB")
        rows.append(row)
    targets = {"adventurer_tiny": {"ratio_to_matmul": 0.4, "peak_rss_mb": 1536},
               "adventurer_base": {"peak_rss_mb": 2048}}
    verdicts = {}
    for row in rows:
        if row["img_size"] == 224 and row["patch_size"] == 1 and row["model"] in targets:
            want = targets[row["model"]]
            verdicts[row["model"]] = {
                key: {"target": (">= " if key == "ratio_to_matmul" else "<= ") + str(value),
                      "measured": row[key],
                      "met": row[key] >= value if key == "ratio_to_matmul" else row[key] <= value}
                for key, value in want.items()}
    return {
        "description": "one-image inference at full scale on CPU, each model in its own process",
        "method": __doc__.split("\n\n")[1].replace("\n", " "),
        "rows": rows,
        "targets": "Tiny >= 0.4x matmul rate and <= 1.5 GB (1536 MB) peak RSS; Base <= 2.0 GB (2048 MB)",
        "verdicts": verdicts,
    }


# the section in results.md (benchmarks/suite.py writes its heading)


def markdown(s) -> list[str]:
    rows = [
        [r["model"], f"{r['img_size']}x{r['img_size']}", r["patch_size"], f"{r['tokens']:,}", fmt(r["gflops"], ",.0f"),
         fmt(r["seconds"]), fmt(r["achieved_gflops_per_s"]), fmt(r["matmul_gflops_per_s_before"]),
         fmt(r["matmul_gflops_per_s_after"]), fmt(r["ratio_to_matmul"], ".2f"), fmt(r["ratio_to_matmul_cpu_time"], ".2f"),
         fmt(r["peak_rss_mb"], ",.0f"), fmt(r["rss_after_imports_mb"], ",.0f"), fmt(r["rss_after_model_mb"], ",.0f")]
        for r in s["rows"]
    ]  # fmt: skip
    lines = [
        s["method"],
        "",
        *table(["model", "image", "patch", "tokens", "GFLOP", "seconds", "GFLOP/s", "matmul GFLOP/s before",
                 "after", "x matmul", "x matmul (CPU time)", "peak RSS MB", "RSS after imports MB",
                 "RSS after model MB"], rows),
    ]
    for row in s["rows"]:
        prof = row.get("profile_one_block")
        if prof:
            top = ", ".join(f"{name} {sec:.2f}" for name, sec in prof["top_ops_self_cpu_s"].items())
            lines += ["", f"Profile of one {row['model']} block at {row['tokens']:,} tokens: {prof['block_self_cpu_s']:.2f} "
                      f"s self CPU time, {prof['matmul_share']:.0%} in matrix products; top ops (s): {top}."]
    for model, verdict in s["verdicts"].items():
        lines += ["", f"Target {model}: " + "; ".join(
            f"{key} {v['target']}: measured {v['measured']:.2f}, {'met' if v['met'] else 'NOT met'}"
            for key, v in verdict.items())]
    return lines
