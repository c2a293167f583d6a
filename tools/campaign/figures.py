"""The campaign's figures: sweep.png (top-1 vs patch size, and during training) and extend_vs_scale.png."""

from __future__ import annotations

from pathlib import Path

from campaign import jobs
from campaign.rows import parse_epochs


def plot_sweep(rows: list[dict], summary: list[dict], path: Path):
    """sweep.png: sweep_figure, written as a PNG."""
    save_png(sweep_figure(rows, summary), path)


def plot_extend_vs_scale(ablation: list[dict], path: Path):
    """extend_vs_scale.png: extend_vs_scale_figure, written as a PNG."""
    save_png(extend_vs_scale_figure(ablation), path)


def save_png(figure, path: Path):
    from pixelvit.io import atomic_write

    with atomic_write(path, "wb") as handle:  # a killed collect never leaves half a PNG
        figure.savefig(handle, format="png", dpi=110)


def sweep_figure(rows: list[dict], summary: list[dict]):
    """Left: test top-1 vs patch size, mean and +-1 sd band over seeds (pixelvit.viz.metric_vs_patch, the panel
    of every sweep figure; dots: single seeds, n: seeds finished). Right: top-1 after each epoch."""
    from pixelvit.io import new_figure
    from pixelvit.viz import metric_vs_patch

    figure = new_figure(figsize=(11, 4.2))
    left, right = figure.subplots(1, 2)
    colours = {jobs.MODELS["adventurer"]: "tab:blue", jobs.MODELS["vit"]: "tab:orange"}
    scaled = [r for r in rows if r["method"] == "scale"]
    metric_vs_patch(left, scaled, "top1", hue="model", palette=colours,
                    hue_order=[m for m in colours if any(r["model"] == m for r in scaled)])
    for model, colour in colours.items():
        singles = [r for r in scaled if r["model"] == model]
        left.scatter([int(r["patch_size"]) for r in singles], [float(r["top1"]) for r in singles], s=12,
                     color=colour, alpha=0.5)
        for cell in (c for c in summary if c["model"] == model and c["method"] == "scale"):
            left.annotate(f"n={cell['n']}", (cell["patch_size"], cell["mean"]), textcoords="offset points",
                          xytext=(5, -12), fontsize=8, color=colour)
        for patch in sorted({int(r["patch_size"]) for r in singles}, reverse=True):
            curves = [parse_epochs(r["top1_by_epoch"]) for r in singles if int(r["patch_size"]) == patch]
            epochs = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
            if epochs:
                means = [sum(c[e] for c in curves) / len(curves) for e in epochs]
                right.plot(epochs, means, marker=".", color=colour, alpha=0.35 + 0.15 * (8 // patch).bit_length(),
                           label=f"{model} p{patch}")
    left.set(ylabel="CIFAR-10 test top-1 (%)", title="Smaller patches, same steps (mean +- sd over seeds)")
    left.legend(fontsize=8)
    if not right.get_legend_handles_labels()[0]:
        right.text(0.5, 0.5, "no per-epoch evaluations yet", ha="center", transform=right.transAxes)
    right.set(xlabel="epoch", ylabel="test top-1 (%)", title="During training (seed means)")
    right.set_xticks(range(1, jobs.BUDGET.epochs + 1))
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=7, ncol=2)
    figure.suptitle(f"nano models (64 x 4) on CIFAR-10 at 32 x 32, {jobs.BUDGET.steps} steps of {jobs.BUDGET.batch} ({jobs.BUDGET.epochs} epochs), "
                    "10,000 test images; measured here on CPU", fontsize=10)
    figure.tight_layout()
    return figure


def plain_log2(axis):
    """Log-2 x axis with plain numbers (16, 64, 256) instead of powers of two."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    axis.set_xscale("log", base=2)
    axis.xaxis.set_major_formatter(ScalarFormatter())
    axis.xaxis.set_minor_formatter(NullFormatter())


def extend_vs_scale_figure(ablation: list[dict]):
    """Ours (measured) beside the paper's Table 5 (as reported), top-1 against tokens by method."""
    from pixelvit import paper
    from pixelvit.io import new_figure

    figure = new_figure(figsize=(11, 4.2))
    ours, theirs = figure.subplots(1, 2)
    styles = {"scale": ("tab:blue", "o", "-"), "extend": ("tab:red", "s", "--"), "upsample": ("tab:green", "^", ":")}
    for method, (colour, marker, line) in styles.items():
        cells = [r for r in ablation if r["method"] == method]
        if cells:
            ours.errorbar([c["tokens"] for c in cells], [c["mean"] for c in cells],
                          yerr=[c["sd"] or 0 for c in cells], color=colour, marker=marker, linestyle=line,
                          capsize=4, label=method)
        for model in ("Adventurer-Base 224", "DeiT-Base 128"):
            points = [r for r in paper.extend_vs_scale() if r["method"] == method and r["model"] == model]
            if points:
                theirs.plot([p["tokens"] for p in points], [p["top1"] for p in points], color=colour,
                            marker=marker, linestyle=line, alpha=1.0 if model.startswith("Adv") else 0.5,
                            label=f"{model}, {method}")
    for axis in (ours, theirs):
        plain_log2(axis)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    ours.set(xlabel="patch tokens per image", ylabel="CIFAR-10 test top-1 (%)",
             title="adventurer_nano, CIFAR-10 32 px (measured here)\nextend: patch 8, token grid interpolated")
    theirs.set(xlabel="tokens", ylabel="ImageNet-1k top-1 (%)",
               title=f"Table 5, {paper.REPORTED}\n(not measured here)")
    figure.tight_layout()
    return figure


def plot_gap(gaps: list[dict], seed_sd: float | None, path: Path):
    """gap.png: gap_figure, written as a PNG."""
    save_png(gap_figure(gaps, seed_sd), path)


def gap_figure(gaps: list[dict], seed_sd: float | None):
    """The patch-1 pilot (campaign.patch1), one line per setting, top to bottom in queue order. Left: top-1 at
    patch 2 and patch 1. Right: the gap (patch 1 minus patch 2), +-1 sd of seed noise (rows.gap_rows), the
    baseline's gap dashed, 0 dotted. Settings that have not finished at both patch sizes say "pending"."""
    import math

    from pixelvit.io import new_figure

    figure = new_figure(figsize=(11, 0.45 * len(gaps) + 1.8))
    left, right = figure.subplots(1, 2, sharey=True)
    labels = [f"{g['setting']} ({g['varies']})" for g in gaps]
    places = list(range(len(gaps)))[::-1]  # the first setting on top
    done = [(y, g) for y, g in zip(places, gaps) if g["gap"] != ""]
    for patch, colour, marker in ((2, "tab:blue", "o"), (1, "tab:red", "s")):
        left.scatter([float(g[f"top1_p{patch}"]) for _, g in done], [y for y, _ in done], color=colour, marker=marker,
                     label=f"patch {patch} ({(jobs.IMG_SIZE // patch) ** 2} tokens)", zorder=3)
    left.hlines([y for y, _ in done], [float(g["top1_p2"]) for _, g in done], [float(g["top1_p1"]) for _, g in done],
                color="grey", linewidth=1, zorder=2)
    errors = [seed_sd * math.sqrt(1 / g["n_p2"] + 1 / g["n_p1"]) if seed_sd else 0 for _, g in done]
    right.barh([y for y, _ in done], [float(g["gap"]) for _, g in done], xerr=errors or None, color="tab:purple",
               alpha=0.7, capsize=3, label="patch 1 - patch 2" + (" (+-1 sd of seed noise)" if seed_sd else ""))
    for (y, g), error in zip(done, errors):
        gap = float(g["gap"])
        right.annotate(f"{gap:+.2f}", (gap - error if gap < 0 else gap + error, y), textcoords="offset points",
                       xytext=(-4 if gap < 0 else 4, 0), ha="right" if gap < 0 else "left", va="center", fontsize=8)
    reach = max([abs(float(g["gap"])) + e for (_, g), e in zip(done, errors)] + [1.0])
    right.set_xlim(-1.25 * reach, max(1.0, 0.25 * reach, *[float(g["gap"]) * 1.25 for _, g in done]))
    right.axvline(0, color="black", linestyle=":", linewidth=1)
    base = next((g for g in gaps if g["setting"] == "base" and g["gap"] != ""), None)
    if base is not None:
        right.axvline(float(base["gap"]), color="tab:purple", linestyle="--", linewidth=1, label="baseline's gap")
    for y, g in zip(places, gaps):
        if g["gap"] == "":
            for axis in (left, right):
                axis.text(0.5, y, "pending", transform=axis.get_yaxis_transform(), ha="center", va="center",
                          fontsize=8, color="grey")
    left.set_yticks(places, labels, fontsize=8)
    left.set_ylim(-0.7, len(gaps) - 0.3)
    left.set(xlabel="CIFAR-10 test top-1 (%)", ylabel="setting (one factor changed from base)",
             title="top-1 at patch 2 and patch 1")
    right.set(xlabel="gap: patch-1 top-1 minus patch-2 top-1 (points)", ylabel="setting (as on the left)",
              title="the gap per setting")
    for axis in (left, right):
        axis.grid(axis="x", alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7, loc="lower right")
    figure.suptitle(f"Why patch 1 loses to patch 2: adventurer_nano on CIFAR-10 at 32 x 32, seed 0, "
                    f"{jobs.BUDGET.steps} steps of {jobs.BUDGET.batch} unless the setting changes it; "
                    "measured here on CPU", fontsize=9)
    figure.tight_layout()
    return figure
