"""3. Cost growth: Adventurer against ViT, forward + backward time and peak memory as the tokens grow.

Both models have the same width and depth (the CPU-sized "micro" models: embed 128, depth 6, fp32):
    vit_micro         4 heads of 32, MLP 512, fused SDPA attention   (cost per image ~ a*N + b*N^2)
    adventurer_micro  Mamba-2 mixer: d_inner 256, 8 heads of 32, d_state 16, chunk 64, SwiGLU 320,
                      reference chunked scan                          (cost per image ~ a*N)
at 32x32 and 64x64 images, patch 8, 4, 2, 1 (17 ... 4,097 tokens). At few tokens ViT's big fused
matmuls win; as N grows attention's N^2 takes over and the linear scan wins. The crossover is where the
time (or memory) ratio ViT / Adventurer passes 1: found between the two measured token counts that
bracket it, by linear interpolation of log(ratio) against log(tokens), and reported as interpolated.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from benchmarks.machine import (
    MEMORY_METHOD,
    alternate,
    measure_case,
    median,
    ratios,
    run_in_fresh_process,
    spread,
)
from benchmarks.report import fmt, table

MODELS = {"vit": "vit_micro", "adventurer": "adventurer_micro"}
NUM_CLASSES = 10


def build(arch: str, img_size: int, patch_size: int):
    from pixelvit.models import create_model

    torch.manual_seed(0)
    model = create_model(MODELS[arch], img_size=img_size, patch_size=patch_size, num_classes=NUM_CLASSES)
    return model.train()


def _inputs(batch_size: int, img_size: int):
    images = torch.randn(batch_size, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=torch.Generator().manual_seed(1))
    return images, labels


def fwd_bwd(model, images, labels):
    def step():
        for p in model.parameters():
            p.grad = None
        F.cross_entropy(model(images), labels).backward()

    return step


def memory_child(cases: list[list[int]], batch_size: int) -> list[dict]:
    """Runs in a fresh process: peak RSS and saved bytes of one forward+backward per (arch, img, patch)."""
    for arch in MODELS:  # warm-up: load libraries and first-call buffers on a small case
        fwd_bwd(build(arch, 16, 8), *_inputs(1, 16))()
    rows = []
    for img_size, patch_size in cases:
        for arch in MODELS:
            model = build(arch, img_size, patch_size)
            images, labels = _inputs(batch_size, img_size)
            loss_fn = lambda model=model, images=images, labels=labels: F.cross_entropy(model(images), labels)  # noqa: E731
            m = measure_case(loss_fn, exclude=[*model.parameters(), images])
            rows.append({"arch": arch, "img_size": img_size, "patch_size": patch_size, **m})
            del model, loss_fn
    return rows


def crossover(tokens: list[int], ratio: list[float]) -> dict:
    """Token count above which Adventurer stays cheaper (ratio = ViT cost / Adventurer cost >= 1).

    Taken after the LAST measured point where ViT is still cheaper, so that a noisy early point cannot
    fake a crossover; the token count is interpolated between that point and the next, linearly in
    log(ratio) against log(tokens). Earlier points where the ratio already exceeded 1 are listed.
    """
    points = sorted(zip(tokens, ratio, strict=True))
    below = [i for i, (_, r) in enumerate(points) if r < 1]
    if not below:
        return {
            "tokens": None,
            "note": f"Adventurer already cheaper at the fewest measured tokens ({points[0][0]})",
        }
    i = below[-1]
    if i == len(points) - 1:
        return {
            "tokens": None,
            "note": f"no crossover up to the most measured tokens ({points[-1][0]}): ViT stays cheaper",
        }
    (n0, r0), (n1, r1) = points[i], points[i + 1]
    t = -math.log(r0) / (math.log(r1) - math.log(r0))
    n = math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0)))
    result = {
        "tokens": round(n),
        "between": [n0, n1],
        "interpolated": True,
        "note": f"interpolated (log-log) between measured {n0} and {n1} tokens",
    }
    earlier = [n for n, r in points[:i] if r >= 1]
    if earlier:
        result["earlier_points_above_1"] = earlier  # isolated, followed by ViT winning again: noise
    return result


def run(img_sizes, patch_sizes, batch_size: int, repeats: int, warmup: int = 1, log=print) -> dict:
    from pixelvit.costs import estimate

    cases = [(img, patch) for img in img_sizes for patch in patch_sizes]
    points = []
    for img_size, patch_size in cases:
        models = {arch: build(arch, img_size, patch_size) for arch in MODELS}
        images, labels = _inputs(batch_size, img_size)
        times = alternate({arch: fwd_bwd(m, images, labels) for arch, m in models.items()}, repeats, warmup)
        paired = ratios(times["vit"], times["adventurer"])
        point = {
            "img_size": img_size,
            "patch_size": patch_size,
            "tokens": models["vit"].num_tokens,  # patches + class token; Adventurer's mixer sees one more
            "batch_size": batch_size,
        }
        for arch, model in models.items():
            est = estimate(MODELS[arch], img_size=img_size, patch_size=patch_size)
            point[arch] = {
                "fwd_bwd_ms_per_image": 1e3 * median(times[arch]) / batch_size,
                "fwd_bwd_all_ms": [round(1e3 * t, 2) for t in times[arch]],
                "params": sum(p.numel() for p in model.parameters()),
                "forward_gflops_per_image_estimate": est["gflops"],
            }
        point["time_ratio_vit_over_adventurer"] = median(paired)
        point["time_ratio_iqr"] = spread(paired)
        points.append(point)
        log(
            f"  {img_size}x{img_size} patch {patch_size} ({point['tokens']} tokens): ViT "
            f"{point['vit']['fwd_bwd_ms_per_image']:.1f} ms/img, Adventurer {point['adventurer']['fwd_bwd_ms_per_image']:.1f} "
            f"ms/img, ViT/Adventurer {point['time_ratio_vit_over_adventurer']:.2f}"
        )
        del models

    log("  memory: one fresh process for all cost-growth cases ...")
    memory = run_in_fresh_process(
        "benchmarks.cost_growth", "memory_child", dict(cases=cases, batch_size=batch_size)
    )
    mem = {(m["arch"], m["img_size"], m["patch_size"]): m for m in memory}
    for point in points:
        for arch in MODELS:
            m = mem[(arch, point["img_size"], point["patch_size"])]
            point[arch]["peak_mb_per_image"] = None if m["peak_mb"] is None else m["peak_mb"] / batch_size
            point[arch]["saved_mb_per_image"] = m["saved_mb"] / batch_size

    def cross(subset, key):
        if key == "time":  # paired ratios: each ViT step was timed next to an Adventurer step
            return crossover(
                [p["tokens"] for p in subset], [p["time_ratio_vit_over_adventurer"] for p in subset]
            )
        if any(p[a][key] is None for p in subset for a in MODELS):
            return {"tokens": None, "note": "not measured on this platform"}
        return crossover(
            [p["tokens"] for p in subset], [p["vit"][key] / p["adventurer"][key] for p in subset]
        )

    crossovers = {}
    for label, subset in [("all", points)] + [
        (f"{s}x{s}", [p for p in points if p["img_size"] == s]) for s in img_sizes
    ]:
        crossovers[label] = {
            "time": cross(subset, "time"),
            "peak_memory": cross(subset, "peak_mb_per_image"),
            "saved_memory": cross(subset, "saved_mb_per_image"),
        }
    return {
        "description": "forward+backward per image on CPU (fp32, 2 threads) as tokens grow: Adventurer vs ViT, same width and depth",
        "models": {
            "vit": "vit_micro: embed 128, depth 6, 4 heads of 32, MLP 512, fused SDPA",
            "adventurer": "adventurer_micro: embed 128, depth 6, Mamba-2 d_inner 256, 8 heads of 32, d_state 16, chunk 64, SwiGLU 320, reference chunked scan",
        },
        "repeats": repeats,
        "warmup": warmup,
        "memory_method": MEMORY_METHOD,
        "points": points,
        "crossover": crossovers,
        "crossover_method": (
            "ratio = ViT cost / Adventurer cost per image (time: median of paired ratios); crossover = after the "
            "last measured point with ratio < 1, interpolated linearly in log(ratio) vs log(tokens) to the next "
            "measured point; 'all' pools both image sizes (per-image cost depends on the token count)"
        ),
    }


def notebook_json(section: dict) -> dict:
    """The small JSON notebook 3 plots: one record per (image size, patch size), and the crossovers."""
    keep = (
        "fwd_bwd_ms_per_image",
        "peak_mb_per_image",
        "saved_mb_per_image",
        "params",
        "forward_gflops_per_image_estimate",
    )
    return {
        "description": section["description"],
        "models": section["models"],
        "points": [
            {
                **{
                    k: p[k]
                    for k in (
                        "img_size",
                        "patch_size",
                        "tokens",
                        "batch_size",
                        "time_ratio_vit_over_adventurer",
                    )
                },
                **{arch: {k: p[arch][k] for k in keep} for arch in MODELS},
            }
            for p in section["points"]
        ],
        "crossover": section["crossover"],
        "crossover_method": section["crossover_method"],
        "memory_method": section["memory_method"],
    }


# the section in results.md (benchmarks/suite.py writes its heading)


def _per_token(s, arch, index) -> float:
    point = sorted(s["points"], key=lambda p: p["tokens"])[index]
    return point[arch]["saved_mb_per_image"] * 2**20 / point["tokens"]


def markdown(s) -> list[str]:
    rows = [
        [
            f"{p['img_size']}x{p['img_size']}",
            p["patch_size"],
            p["tokens"],
            fmt(p["vit"]["fwd_bwd_ms_per_image"]),
            fmt(p["adventurer"]["fwd_bwd_ms_per_image"]),
            fmt(p["time_ratio_vit_over_adventurer"], ".2f"),
            fmt(p["vit"]["peak_mb_per_image"]),
            fmt(p["adventurer"]["peak_mb_per_image"]),
            fmt(p["vit"]["saved_mb_per_image"]),
            fmt(p["adventurer"]["saved_mb_per_image"]),
        ]
        for p in sorted(s["points"], key=lambda p: (p["tokens"], p["img_size"]))
    ]
    lines = [
        f"Forward+backward per image, fp32, 2 threads, batch {s['points'][0]['batch_size']}; medians of {s['repeats']} "
        f"alternated repetitions. ViT = {s['models']['vit']}; Adventurer = {s['models']['adventurer']}.",
        "",
        *table(
            [
                "image",
                "patch",
                "tokens",
                "ViT ms",
                "Adventurer ms",
                "ViT/Adv time",
                "ViT peak MB",
                "Adv peak MB",
                "ViT saved MB",
                "Adv saved MB",
            ],
            rows,
        ),
        "",
        "Memory per token (saved for backward, fewest -> most tokens): "
        + "; ".join(
            f"{arch} {_per_token(s, arch, 0):,.0f} -> {_per_token(s, arch, -1):,.0f} B/token"
            for arch in ("vit", "adventurer")
        )
        + " (constant = linear in tokens).",
        "",
        "Crossover (tokens above which Adventurer is cheaper; " + s["crossover_method"] + "):",
        "",
    ]
    for label, c in s["crossover"].items():
        lines.append(
            f"- {label}: "
            + "; ".join(
                f"{kind} {c[kind]['tokens'] if c[kind]['tokens'] is not None else 'none'} ({c[kind]['note']})"
                for kind in ("time", "peak_memory", "saved_memory")
            )
        )
    return lines
