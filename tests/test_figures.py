"""Every figure a student sees: a title, labelled axes (with units where there are units), a legend
wherever more than one line is drawn, and nothing cut off at the edges.

`figure_problems` checks a matplotlib Figure by drawing it (Agg) and measuring every text it holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

from pixelvit import sweep, viz  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _texts(figure):
    """Every text the figure draws: titles, labels, tick labels inside the view, annotations, legends."""
    hidden = set()  # tick labels of ticks outside the axis' view limits: matplotlib keeps but never draws them
    for ax in figure.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                outside = not low - 1e-9 * abs(high - low) <= tick.get_loc() <= high + 1e-9 * abs(high - low)
                if outside or not ax.axison:  # ax.axis("off") hides every tick label
                    hidden.update((tick.label1, tick.label2))
    for artist in figure.findobj(matplotlib.text.Text):
        if artist.get_visible() and artist.get_text().strip() and artist not in hidden:
            yield artist


def figure_problems(figure, slack_px: float = 1.0) -> list[str]:
    """What is wrong with a figure, as lines (empty = fine)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    found = []
    canvas = FigureCanvasAgg(figure)  # a bare Figure (pixelvit.io.new_figure) has no renderer of its own
    canvas.draw()
    renderer = canvas.get_renderer()
    width, height = canvas.get_width_height()
    has_title = bool(figure._suptitle and figure._suptitle.get_text())
    legends = [ax.get_legend() for ax in figure.axes if ax.get_legend() is not None] + list(figure.legends)
    legend_labels = {text.get_text() for legend in legends for text in legend.get_texts()}
    for index, ax in enumerate(figure.axes):
        if not ax.axison or not ax.get_visible():
            continue
        name = f"axes {index} ({ax.get_title() or 'untitled'})"
        has_title = has_title or bool(ax.get_title())
        # a twin (ax.twinx()) shares the x axis and its label; pictures need no axis labels
        xlabel = " ".join(sibling.get_xlabel() for sibling in ax.get_shared_x_axes().get_siblings(ax))
        if not ax.images and (not xlabel.strip() or not ax.get_ylabel()):
            found.append(f"{name}: missing an axis label (x: {xlabel!r}, y: {ax.get_ylabel()!r})")
        data_lines = [line for line in ax.get_lines() if len(line.get_xdata()) > 1]
        # a legend elsewhere in the figure that names every line here serves this panel too
        shared = all(str(line.get_label()) in legend_labels for line in data_lines)
        if len(data_lines) > 1 and ax.get_legend() is None and not shared:
            found.append(f"{name}: {len(data_lines)} lines and no legend")
    if not has_title:
        found.append("no title (neither a suptitle nor an axes title)")
    for text in _texts(figure):
        box = text.get_window_extent(renderer)
        if box.x0 < -slack_px or box.y0 < -slack_px or box.x1 > width + slack_px or box.y1 > height + slack_px:
            found.append(f"text {text.get_text()!r} is cut off: {box} outside 0..{width} x 0..{height} px")
    return found


def test_checker_sees_clipping_and_missing_labels():
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3, 2))
    ax = figure.subplots()
    ax.plot([1, 2], [1, 2])
    ax.plot([1, 2], [2, 1])
    ax.annotate("far right", (2, 1), xytext=(60, 0), textcoords="offset points")
    found = "\n".join(figure_problems(figure))
    for expected in ("missing an axis label", "no legend", "no title", "'far right' is cut off"):
        assert expected in found


def _rows(seeds=(0,), dataset="specks"):
    return [dict(model="vit_micro", dataset=dataset, img_size=16, patch_size=p, tokens=(16 // p) ** 2 + 1,
                 train_tflops=0.06 * 3.4 ** i, top1=13 + 27 * i + seed, steps=300)
            for i, p in enumerate([8, 4, 2, 1]) for seed in seeds]


@pytest.mark.parametrize("paper", [False, True])
@pytest.mark.parametrize("seeds", [(0,), (0, 1, 2)])
def test_sweep_figure(paper, seeds):
    figure = viz.sweep_figure(_rows(seeds), sweep.paper_reference() if paper else None)
    assert figure_problems(figure) == []
    compute = figure.axes[1]
    labels = [t.get_text() for t in compute.get_xticklabels() if t.get_text()]
    assert labels and all("times" not in label and "^" not in label for label in labels), labels  # plain numbers
    chance = [line for line in figure.axes[0].get_lines() if "chance" in str(line.get_label())]
    assert len(chance) == 1 and chance[0].get_ydata()[0] == pytest.approx(12.5)  # specks: 8 classes


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in REPO.glob("results/*/sweep.json")))
def test_committed_sweeps_replot_cleanly(folder):
    rows = json.loads((REPO / "results" / folder / "sweep.json").read_text())["rows"]
    assert figure_problems(viz.sweep_figure(rows, sweep.paper_reference())) == []


def test_cost_figures():
    from pixelvit import costs

    tables = {name: costs.cost_table(name, 224, [16, 8, 4, 2, 1]) for name in ("vit_tiny", "adventurer_tiny")}
    assert figure_problems(viz.cost_figure(tables, paper_memory_mb={16: 62, 1: 16_000})) == []
    assert figure_problems(viz.growth_figure([256, 512, 1024], {"attention": [1, 3, 9], "scan": [1, 2, 4]},
                                             {"attention": 2, "scan": 1}, title="seconds per call")) == []
    stored = json.loads((REPO / "benchmarks" / "results" / "cost_growth.json").read_text())
    assert figure_problems(viz.cost_growth_figure(stored)) == []
    assert figure_problems(viz.adventurer_layout_figure()) == []


def test_explorer_figure():
    from pixelvit import explorer

    view = explorer.compute_view("astronaut", 16, "vit_tiny", img_size=64)
    figure = explorer.view_figure(view)
    assert figure_problems(figure) == []


def test_every_sweep_figure_draws_its_measured_panel_with_one_function(monkeypatch):
    """`pixelvit sweep` (viz.sweep_figure), segmentation sweeps (pixelvit.dense.report.sweep_figure) and the
    CIFAR-10 campaign (tools/campaign/figures.py) draw metric vs patch size with viz.metric_vs_patch, so the
    three share one patch-size axis (log 2, token counts under the sizes, smaller patches to the right)."""
    import csv

    from pixelvit.dense import report

    monkeypatch.syspath_prepend(str(REPO / "tools"))
    from campaign import figures, rows

    calls = []
    original = viz.metric_vs_patch

    def spy(ax, data, metric="top1", **options):
        calls.append(metric)
        return original(ax, data, metric, **options)

    monkeypatch.setattr(viz, "metric_vs_patch", spy)
    monkeypatch.setattr(report, "metric_vs_patch", spy)
    dense = json.loads((REPO / "results" / "dense_scribbles" / "sweep.json").read_text())["rows"]
    with open(REPO / "results" / "cifar10_nano" / "runs.csv") as handle:
        runs = list(csv.DictReader(handle))
    summary = rows.summarise(runs)
    drawn = [viz.sweep_figure(_rows((0, 1))), report.sweep_figure(dense, paper=True),
             figures.sweep_figure(runs, summary), figures.extend_vs_scale_figure(rows.extend_vs_scale_rows(summary))]
    assert calls == ["top1", "miou", "top1"]
    for figure in drawn:
        assert figure_problems(figure) == []
    for figure in drawn[:3]:
        patch_axis = figure.axes[0]
        assert patch_axis.xaxis_inverted() and patch_axis.get_xscale() == "log"
        assert any("tokens" in label.get_text() for label in patch_axis.get_xticklabels())
