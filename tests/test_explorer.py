"""The explorer's numbers and zoom on small images (the shipped 32 x 32 model), without a browser.

Before: the 32 px checkpoint read "0.0 GFLOPs · 0.00 GB" and "0.2 M parameters" (wrapping), its zoom panel showed
a 32 x 32 "zoom" of a 32 x 32 image (stretched, partly outside it), and the zoom's red square (1.2 pt) vanished on
the patch grid's lines at patch 16.
"""

from __future__ import annotations

import re

import matplotlib
import pytest

matplotlib.use("Agg")

from pixelvit import explorer  # noqa: E402

SHIPPED = "checkpoint: cifar10_adventurer_nano"  # trained at 32 x 32, in the package: offline


@pytest.mark.parametrize("value, text", [
    (3.79e7, "37.9 MFLOPs"), (2.51e9, "2.51 GFLOPs"), (2.5e9, "2.5 GFLOPs"), (1.6e13, "16 TFLOPs"),
    (812_345, "812 kFLOPs"), (999_950, "1 MFLOPs"), (0, "0 FLOPs"),
])
def test_format_flops_keeps_three_significant_digits(value, text):
    assert explorer.format_flops(value) == text


def test_format_bytes_and_params():
    assert explorer.format_bytes(541_000) == "541 kB"
    assert explorer.format_bytes(1.54e7) == "15.4 MB"
    assert explorer.format_bytes(2.1e10) == "21 GB"
    assert explorer.format_params(243_978) == "244 k params"
    assert explorer.format_params(5_717_416) == "5.72 M params"
    assert explorer.format_params(86) == "86 params"


def test_summary_of_the_32px_model_has_digits_and_wraps_only_between_quantities():
    view = explorer.compute_view("chelsea", 4, SHIPPED)
    summary = explorer.view_html(view)
    assert view.costs["gflops"] < 0.05  # the case that printed "0.0 GFLOPs"
    assert "0.0 GFLOPs" not in summary and "0.00 GB" not in summary, summary
    for what in (explorer.format_flops(view.costs["flops"]), explorer.format_bytes(view.costs["activation_mb"] * 1e6),
                 explorer.format_params(view.costs["params"])):
        assert re.match(r"[1-9]", what), what  # a non-zero leading digit
        assert what.replace(" ", "&nbsp;") in summary, (what, summary)  # no break inside a quantity
    assert "<b class='pixelvit-tokens'>65 tokens</b>" in summary  # what the browser test reads, unchanged


def test_zoom_is_smaller_than_the_image_and_inside_it():
    for size, patch in [(32, 4), (32, 16), (64, 8), (224, 16), (224, 1)]:
        for name in ("chelsea", "astronaut", "your image"):
            top, left, side = explorer.zoom_region(size, patch, name)
            assert patch <= side <= size // 2, (size, patch, side)
            assert 0 <= top <= size - side and 0 <= left <= size - side, (size, patch, name, top, left)
    assert explorer.zoom_region(224, 16, "astronaut")[2] == 32
    assert explorer.zoom_region(32, 32, "chelsea") is None  # one patch is the whole image: nothing to zoom into


def _zoom_outline(figure):
    (outline,) = [p for p in figure.axes[0].patches if p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    return outline


def test_figure_of_the_32px_model_zooms_into_part_of_it_with_a_visible_outline():
    import matplotlib.pyplot as plt

    figure = explorer.view_figure(explorer.compute_view("chelsea", 16, SHIPPED))
    left, right = figure.axes[1].get_xlim()
    bottom, top = figure.axes[1].get_ylim()
    assert right - left == 16 and bottom - top == 16, "a 16 x 16 zoom of the 32 x 32 image"
    assert left >= -0.5 and right <= 31.5 and top >= -0.5 and bottom <= 31.5, "the zoom stays inside the image"
    outline = _zoom_outline(figure)
    assert outline.get_linewidth() >= 2, "the red square must stand out from the patch grid's lines"
    assert outline.get_path_effects(), "a contrasting rim around the red square"
    plt.close(figure)

    figure = explorer.view_figure(explorer.compute_view("chelsea", 32, SHIPPED))
    assert not figure.axes[1].axison and "no zoom" in figure.axes[1].texts[0].get_text()
    assert not [p for p in figure.axes[0].patches if p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    plt.close(figure)
