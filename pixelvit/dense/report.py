"""Tables and figures of segmentation sweeps: mIoU vs patch size, linear head vs decoder, beside Table 2.

    rows = list(csv.DictReader(open("results/dense_scribbles/results.csv")))   # or pandas' to_dict("records")
    decoder_leads(rows)          one row per backbone and patch size: linear, decoder, lead = decoder - linear
    sweep_figure(rows, paper)    (1) mIoU vs patch size per backbone and head, (2) the decoder's lead,
                                 (3) with paper=True, the paper's Table 2 (ADE20k, as reported)

`pixelvit sweep --task segmentation` draws sweep_figure into its sweep.png; its mIoU panel is the panel every
sweep figure is built on, pixelvit.viz.metric_vs_patch.
"""

from __future__ import annotations

from pixelvit.dense.model import parse_name
from pixelvit.viz import metric_vs_patch, patch_size_axis

HEAD_DASHES = {"decoder": "", "linear": (4, 1.5), "pixelshuffle": (1, 1)}  # solid, dashed, dotted (seaborn dashes)
BACKBONE_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")


def _number(value):
    return None if value in (None, "", "None") else float(value)


def curves(rows: list[dict]) -> dict[tuple[str, str], dict[int, float]]:
    """{(backbone, head): {patch_size: mIoU}} (the mean over seeds where a sweep has several)."""
    sums: dict[tuple[str, str], dict[int, list[float]]] = {}
    for row in rows:
        miou = _number(row.get("miou"))
        if miou is None:
            continue
        backbone, head = parse_name(row["model"])
        sums.setdefault((backbone, head), {}).setdefault(int(row["patch_size"]), []).append(miou)
    return {key: {p: sum(v) / len(v) for p, v in by_patch.items()} for key, by_patch in sums.items()}


def decoder_leads(rows: list[dict]) -> list[dict]:
    """Per backbone and patch size with both heads: linear mIoU, decoder mIoU, lead = decoder - linear."""
    found = curves(rows)
    leads = []
    for backbone in sorted({b for b, _ in found}):
        linear, decoder = found.get((backbone, "linear"), {}), found.get((backbone, "decoder"), {})
        for patch in sorted(set(linear) & set(decoder), reverse=True):
            leads.append({"backbone": backbone, "patch_size": patch, "linear": round(linear[patch], 2),
                          "decoder": round(decoder[patch], 2), "lead": round(decoder[patch] - linear[patch], 2)})
    return leads


def lead_shrinks(rows: list[dict]) -> dict[str, dict]:
    """Per backbone: the lead at patch 8 (or the largest patch), at the smallest patch, and whether it shrank."""
    verdicts = {}
    for backbone in sorted({r["backbone"] for r in decoder_leads(rows)}):
        mine = {r["patch_size"]: r["lead"] for r in decoder_leads(rows) if r["backbone"] == backbone}
        large, small = (8 if 8 in mine else max(mine)), min(mine)
        verdicts[backbone] = {"large_patch": large, "lead_large": mine[large], "small_patch": small,
                              "lead_small": mine[small], "shrinks": mine[small] < mine[large]}
    return verdicts


def format_leads(rows: list[dict]) -> str:
    """A Markdown table of decoder_leads."""
    lines = ["| backbone | patch | linear mIoU | decoder mIoU | decoder lead |", "|---|---|---|---|---|"]
    lines += [f"| {r['backbone']} | {r['patch_size']} | {r['linear']:.2f} | {r['decoder']:.2f} | {r['lead']:+.2f} |"
              for r in decoder_leads(rows)]
    return "\n".join(lines)


def _patch_axis(ax, patches):
    """pixelvit.viz's patch-size axis (log 2, smaller patches to the right), with a light grid."""
    patch_size_axis(ax, patches)
    ax.grid(True, alpha=0.3)


def draw_paper_table2(ax):
    """The paper's Table 2 (ADE20k mIoU), labelled as reported: decoder-free lines and UperNet at patch 16."""
    from pixelvit.paper import REPORTED, TABLE_2

    patches = [16, 8, 4, 2]
    for color, model in zip(("tab:purple", "tab:brown"), ("Adventurer-T", "Adventurer-B")):
        for record in TABLE_2.records():
            if record["model"] != model:
                continue
            values = [(p, record[f"p{p}"]) for p in patches if record[f"p{p}"] is not None]
            xs, ys = zip(*values)
            if record["decoder"] == "none":
                ax.plot(xs, ys, "--o", color=color, label=f"{model}, linear (decoder-free)")
            else:
                ax.plot(xs, ys, "s", color=color, markersize=9, label=f"{model}, {record['decoder']}")
    _patch_axis(ax, patches)
    ax.set(xlabel="patch size", ylabel="ADE20k mIoU (%)", title="Paper, Table 2: ADE20k at 512 px, as reported")
    ax.text(0.02, 0.02, REPORTED, transform=ax.transAxes, fontsize=7, color="0.35")
    ax.legend(fontsize=8)


def sweep_figure(rows: list[dict], paper: bool = False):
    """mIoU vs patch size (one colour per backbone, solid = decoder, dashed = linear head), the decoder's
    lead, and with `paper` the paper's Table 2 beside them. Returns a bare matplotlib Figure."""
    from pixelvit.io import new_figure

    found = curves(rows)
    patches = sorted({p for by_patch in found.values() for p in by_patch}, reverse=True)
    backbones = sorted({b for b, _ in found})
    colors = dict(zip(backbones, BACKBONE_COLORS))
    dataset = rows[0]["dataset"] if rows else ""
    size = rows[0].get("img_size", "") if rows else ""

    # the paper's panel goes below the measured two (as in viz.sweep_figure), so the PNG stays 1,210 px wide
    # and shows whole in JupyterLab's image viewer (tests/test_browser.py)
    figure = new_figure(figsize=(11, 8.4 if paper else 4.2), layout="constrained")
    if paper:
        panels = figure.subplot_mosaic([["measured", "lead"], ["paper", "paper"]])
        axes = [panels["measured"], panels["lead"], panels["paper"]]
    else:
        axes = figure.subplots(1, 2)
    ax = axes[0]  # the panel every sweep figure shares (pixelvit.viz.metric_vs_patch), in mIoU
    measured = []
    for row in rows:
        if _number(row.get("miou")) is not None:
            backbone, head = parse_name(row["model"])
            measured.append({**row, "backbone": backbone, "head": head})
    heads = sorted({r["head"] for r in measured})
    metric_vs_patch(ax, measured, "miou", hue="backbone", style="head", palette=colors, hue_order=backbones,
                    style_order=heads, dashes={head: HEAD_DASHES.get(head, (3, 1, 1, 1)) for head in heads})
    ax.grid(True, alpha=0.3)
    ax.set(ylabel="test mIoU (%)", title=f"Measured: {dataset} {size} px, mIoU vs patch size")
    ax.legend(fontsize=8, handlelength=3.5)  # long enough to tell the heads' dashes apart

    ax = axes[1]
    for backbone in backbones:
        mine = [r for r in decoder_leads(rows) if r["backbone"] == backbone]
        if mine:
            ax.plot([r["patch_size"] for r in mine], [r["lead"] for r in mine], "-o", color=colors[backbone],
                    label=backbone)
    ax.axhline(0, color="0.3", lw=1)
    _patch_axis(ax, patches)
    ax.set(xlabel="patch size (pixels per side)", ylabel="decoder mIoU - linear mIoU (points)",
           title="Measured: the decoder's lead over the linear head")
    ax.legend(fontsize=8)
    if paper:
        draw_paper_table2(axes[2])
    return figure
