"""The patch-size explorer: pick an image, a patch size and a model; see the patch grid, the token count,
the cost and (where pretrained weights are on this machine) the model's top-5 predictions.

    from pixelvit.explorer import Explorer, show
    show("astronaut", patch_size=8, model="vit_base")   # one static view: works in any renderer
    Explorer()                                            # the same view with widgets (a running Jupyter)

The logic is plain functions so it can be tested without a browser:

    compute_view(image, patch_size, model)  -> View   (numbers, predictions, notes; nothing drawn)
    view_figure(view)                       -> matplotlib Figure
    view_html(view)                         -> HTML summary; the token count is in <b class="pixelvit-tokens">

`Explorer` only wires ipywidgets to these and redraws on every change. Its figure is a PNG in an
`ipywidgets.Image`, so a browser (or a test) sees the picture change as an `<img>` whose src changes.
"""

from __future__ import annotations

import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pixelvit import viz
from pixelvit.patching import check_divisible

ARCHITECTURES = ("vit_tiny", "vit_base", "adventurer_tiny", "adventurer_base")
PATCH_SIZES = (32, 16, 8, 4, 2, 1)
DEFAULT_IMG_SIZE = 224
MAX_PREDICT_TOKENS = 20_000  # above this, predicting on a CPU takes too long for a slider: skipped, said so


@dataclass
class View:
    """Everything one explorer view shows, computed and not yet drawn."""

    image_name: str
    patch_size: int
    model: str  # an architecture name, or "checkpoint: <name or path>"
    img_size: int
    image: torch.Tensor  # (3, img_size, img_size) in [0, 1]
    costs: dict  # pixelvit.costs.estimate(...)
    curve: list  # cost_table rows for every patch size, to place this one on the curve
    predictions: list | None = None  # [(probability, class index, name)], or None
    notes: list = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.costs["tokens"]


# ---------------------------------------------------------------------------------------------
# pretrained weights: the ones already on this machine (nothing is downloaded here)
# ---------------------------------------------------------------------------------------------
def cached_checkpoints() -> list[str]:
    """Released checkpoints already in the local Hugging Face cache (no network access)."""
    from huggingface_hub import try_to_load_from_cache

    from pixelvit.catalog import CATALOG

    found = []
    for name, entry in CATALOG.items():
        try:
            if isinstance(try_to_load_from_cache(entry.repo_id, entry.filename), str):
                found.append(name)
        except Exception:  # a malformed cache must not break the explorer
            continue
    return found


_LOADED: dict = {}
# shipped inside the package (pixelvit.assets): real predictions offline, with no download
SHIPPED = ("cifar10_adventurer_nano",)  # pixelvit.assets.CIFAR10_MODEL


def load_weights(source: str):
    """A pretrained model from a catalog name, a shipped model's name or a local path, loaded once per session."""
    if source not in _LOADED:
        from pixelvit import assets
        from pixelvit.pretrained import load_pretrained

        _LOADED[source] = load_pretrained(assets.CIFAR10_MODEL if source in SHIPPED else source)
    return _LOADED[source]


def _model_choice(model: str) -> tuple[str | None, str]:
    """'checkpoint: X' -> (X, its architecture name); an architecture name -> (None, name)."""
    if model.startswith("checkpoint: "):
        source = model.removeprefix("checkpoint: ")
        return source, source
    return None, model


# ---------------------------------------------------------------------------------------------
# the view: numbers first, pictures from the numbers
# ---------------------------------------------------------------------------------------------
def compute_view(image="astronaut", patch_size: int = 16, model: str = "vit_tiny", img_size: int | None = None,
                 max_predict_tokens: int = MAX_PREDICT_TOKENS) -> View:
    """The explorer's numbers for one choice. `image` is a sample name or a (3, H, W) tensor in [0, 1]."""
    from pixelvit.costs import cost_table, estimate

    source, arch = _model_choice(model)
    notes, net = [], None
    if source is not None:
        net = load_weights(source)
        img_size = net.patch_embed.img_size[0]
    img_size = img_size or DEFAULT_IMG_SIZE
    check_divisible(img_size, patch_size)
    if isinstance(image, str):
        name, picture = image, viz.sample_image(image, img_size)
    else:
        name = "your image"
        picture = torch.nn.functional.interpolate(image[None].float(), size=(img_size, img_size), mode="bilinear",
                                                  antialias=True, align_corners=False)[0].clamp(0, 1)
    target = net if net is not None else arch
    costs = estimate(target, img_size=img_size, patch_size=patch_size)
    sizes = [p for p in PATCH_SIZES if img_size % p == 0]
    curve = cost_table(target, img_size, sizes)
    view = View(name, patch_size, model, img_size, picture, costs, curve, notes=notes)
    if net is None:
        notes.append("random weights: no predictions (pick a pretrained checkpoint for those)")
    elif costs["tokens"] > max_predict_tokens:
        notes.append(f"{costs['tokens']:,} tokens: too slow to predict interactively on a CPU (limit "
                     f"{max_predict_tokens:,}); notebook 6 times it")
    else:
        view.predictions = predict_at_patch_size(net, picture, patch_size)
        if patch_size != net.config.patch_size:
            notes.append(f"weights trained at patch {net.config.patch_size}, resampled to {patch_size} "
                         "(pixelvit.resample.resize_model): expect worse predictions")
    return view


def predict_at_patch_size(net, picture: torch.Tensor, patch_size: int, top: int = 5) -> list:
    """Top-k (probability, index, name) for a (3, H, W) picture in [0, 1], the model resampled to `patch_size`."""
    from pixelvit.predict import normalize, predict

    if patch_size != net.config.patch_size:
        from pixelvit.resample import resize_model

        net = resize_model(net, patch_size=patch_size)
    return predict(net, normalize(net, picture[None]), top=top)[0]


ZOOM = 32  # pixels per side of the zoom panel, on images large enough for it to be a zoom


def zoom_region(img_size: int, patch_size: int, image_name: str = "") -> tuple[int, int, int] | None:
    """(top, left, side) of the zoom panel's square, inside the image; None when no zoom would help.

    A zoom is at most half the image (a 32 x 32 image gets a 16 x 16 zoom, not itself again) and at least one
    patch; when that is the whole image (patch 32 on a 32 x 32 image), there is nothing to zoom into.
    """
    side = max(min(ZOOM, img_size // 2), patch_size)
    if side >= img_size:
        return None
    top, left = viz.zoom_box(image_name, img_size, side)  # the interesting part of a sample photo
    return min(max(top, 0), img_size - side), min(max(left, 0), img_size - side), side


def view_figure(view: View):
    """Left: the image with its patch grid. Middle: a zoom (at most half the image). Right: this patch size on
    the cost curve."""
    import matplotlib.pyplot as plt
    from matplotlib import patheffects

    figure, axes = plt.subplots(1, 3, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1, 1, 1.4]})
    size, p = view.img_size, view.patch_size
    viz.draw_patch_grid(axes[0], view.image, p)
    axes[0].set_title(f"{view.image_name}, {size}x{size}, patch {p}x{p}", fontsize=10)
    region = zoom_region(size, p, view.image_name)
    if region is None:
        axes[1].axis("off")
        axes[1].text(0.5, 0.5, f"no zoom: at patch {p} the {size}x{size} image\nis a single patch (left)",
                     ha="center", va="center", fontsize=10, transform=axes[1].transAxes)
    else:
        top, left, side = region
        # red with a white rim: visible on the yellow grid lines it often lies on, and on dark or light pixels
        outline = plt.Rectangle((left - 0.5, top - 0.5), side, side, fill=False, edgecolor="red", lw=2.2,
                                path_effects=[patheffects.Stroke(linewidth=4.5, foreground="white"),
                                              patheffects.Normal()], zorder=5)
        axes[0].add_patch(outline)
        viz.draw_patch_grid(axes[1], view.image, p, box=(top, left, side, side), linewidth=1.0)
        axes[1].set_title(f"zoom (red square): {side}x{side} pixels", fontsize=10)
    viz.cost_curve_axes(axes[2], view.curve, p)  # GFLOPs and GB, each on its own labelled axis
    figure.tight_layout()
    return figure


def scaled(value: float, digits: int = 3) -> tuple[str, str]:
    """(number, SI prefix) with `digits` significant digits: 2.46e9 -> ("2.46", "G"), 40_500 -> ("40.5", "k").

    Decimal prefixes (k = 1e3, M = 1e6, G = 1e9, T = 1e12, P = 1e15), as pixelvit counts GB everywhere.
    """
    prefixes = ("", "k", "M", "G", "T", "P")
    value, index = float(f"{value:.{digits}g}"), 0  # round first, so 999.7 k becomes 1 M, not "1e+03 k"
    while abs(value) >= 1000 and index < len(prefixes) - 1:
        value, index = value / 1000, index + 1
    return f"{float(f'{value:.{digits}g}'):g}", prefixes[index]


def format_flops(flops: float) -> str:
    """4.05e7 -> "40.5 MFLOPs", 2.46e9 -> "2.46 GFLOPs": small models get digits instead of "0.0 GFLOPs"."""
    number, prefix = scaled(flops)
    return f"{number} {prefix}FLOPs"


def format_bytes(num_bytes: float) -> str:
    """1.23e7 -> "12.3 MB", 2.1e10 -> "21 GB"."""
    number, prefix = scaled(num_bytes)
    return f"{number} {prefix}B"


def format_params(params: float) -> str:
    """253_450 -> "253 k params", 5_717_416 -> "5.72 M params": short enough not to wrap."""
    number, prefix = scaled(params)
    return f"{number} {prefix} params".replace("  ", " ")


def _nowrap(text: str) -> str:
    """A quantity that a narrow output wraps between quantities, never inside one ("0.25 M" / "params")."""
    return html.escape(text).replace(" ", "&nbsp;")


def view_html(view: View) -> str:
    """A short HTML summary; the token count sits in <b class="pixelvit-tokens"> (tests read it)."""
    c = view.costs
    parts = [
        f"<div class='pixelvit-summary'><b>{html.escape(view.model)}</b> at {view.img_size}x{view.img_size}, "
        f"patch {view.patch_size}x{view.patch_size}: <b class='pixelvit-tokens'>{c['tokens']:,} tokens</b> "
        f"&middot; {_nowrap(format_flops(c['flops']))} forward &middot; {_nowrap(format_bytes(c['activation_mb'] * 1e6))} "
        f"training activations per image &middot; {_nowrap(format_params(c['params']))}</div>"
    ]
    if view.predictions:
        rows = "".join(f"<li>{p:6.1%} {html.escape(name)}</li>" for p, _, name in view.predictions)
        parts.append(f"<div class='pixelvit-predictions'>top-{len(view.predictions)}:<ol>{rows}</ol></div>")
    for note in view.notes:
        parts.append(f"<div class='pixelvit-note'><i>{html.escape(note)}</i></div>")
    return "".join(parts)


def figure_png(figure, dpi: int = 80) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    return buffer.getvalue()


def show(image="astronaut", patch_size: int = 16, model: str = "vit_tiny", img_size: int | None = None):
    """Draw one view as plain outputs (a figure and HTML): what static renderings and CI show."""
    from IPython.display import HTML, display

    view = compute_view(image, patch_size, model, img_size)
    display(HTML(view_html(view)))
    figure = view_figure(view)
    display(figure)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return view


# ---------------------------------------------------------------------------------------------
# the widget app
# ---------------------------------------------------------------------------------------------
def model_options(checkpoints=()) -> list[str]:
    """Architectures (random weights, costs only), then the shipped model and every pretrained checkpoint on
    this machine."""
    found = list(dict.fromkeys([*SHIPPED, *map(str, checkpoints), *cached_checkpoints()]))
    return [*ARCHITECTURES, *(f"checkpoint: {name}" for name in found)]


class Explorer:
    """ipywidgets app: image dropdown, patch-size slider, model dropdown -> figure + summary, redrawn live."""

    def __init__(self, image="astronaut", patch_size: int = 16, model: str = "vit_tiny", checkpoints=(),
                 images=viz.SAMPLE_IMAGES, dpi: int = 80):
        import ipywidgets as widgets

        self.dpi = dpi
        self.image = widgets.Dropdown(options=list(images), value=image, description="image")
        self.patch_size = widgets.SelectionSlider(options=[(str(p), p) for p in PATCH_SIZES], value=patch_size,
                                                  description="patch size", continuous_update=False)
        options = model_options([Path(c).as_posix() if isinstance(c, Path) else c for c in checkpoints])
        self.model = widgets.Dropdown(options=options, value=model if model in options else options[0],
                                      description="model", layout=widgets.Layout(width="420px"))
        self.picture = widgets.Image(format="png")
        self.summary = widgets.HTML()
        self.status = widgets.HTML()
        controls = widgets.HBox([self.image, self.patch_size, self.model])
        self.widget = widgets.VBox([controls, self.summary, self.picture, self.status])
        self.widget.add_class("pixelvit-explorer")
        for control in (self.image, self.patch_size, self.model):
            control.observe(self.redraw, names="value")
        self.view = None
        self.redraw()

    def redraw(self, _change=None):
        self.status.value = "<i>computing ...</i>"
        try:
            self.view = compute_view(self.image.value, self.patch_size.value, self.model.value)
        except Exception as error:  # e.g. a patch size that does not divide a checkpoint's image size
            self.status.value = f"<span style='color:#b00'>{html.escape(str(error))}</span>"
            return
        self.picture.value = figure_png(view_figure(self.view), dpi=self.dpi)
        self.summary.value = view_html(self.view)
        self.status.value = ""

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)
