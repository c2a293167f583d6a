"""Pictures the notebooks share: sample photos, patch grids, patch PCA, attention maps, the Adventurer layout.

Every function returns a matplotlib Figure (or draws into the Axes it is given) and computes what it shows
from pixelvit itself, so a notebook cell stays a line or two:

    image = sample_image("astronaut", 224)                   # (3, 224, 224) float in [0, 1]
    patch_grid_figure(image, [16, 8, 4, 2, 1])               # the photo cut into patches, with a zoom
    errors = patch_pca_errors(train_images, image, [16, 8, 4, 2, 1], widths=[16, 48, 192])
    attention_figure(image, model)                           # where the class token looks, per layer

Nothing here is needed to train or run a model; it only needs matplotlib (and scikit-image for the photos).
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.collections import LineCollection
from matplotlib.patches import FancyBboxPatch, Rectangle

from pixelvit.patching import check_divisible, patchify, unpatchify

# scikit-image's bundled photos (no download needed), usable by name
SAMPLE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
# where a zoom shows something interesting, as (top, left) fractions of the center square
ZOOM_AT = {"astronaut": (0.12, 0.43), "chelsea": (0.38, 0.22), "coffee": (0.35, 0.45), "rocket": (0.3, 0.45)}


def zoom_box(name: str, size: int, zoom: int = 32) -> tuple[int, int]:
    """(top, left) of a zoom x zoom crop on the interesting part of a sample image (the center otherwise)."""
    top, left = ZOOM_AT.get(name, (0.5 - zoom / size / 2, 0.5 - zoom / size / 2))
    return int(top * size), int(left * size)
GRID_COLOR = "#ffd21f"


# ---------------------------------------------------------------------------------------------
# photos
# ---------------------------------------------------------------------------------------------
def sample_image(name: str = "astronaut", size: int | None = 224) -> torch.Tensor:
    """A scikit-image sample photo as a (3, size, size) float tensor in [0, 1]: center square, resized.

    size=None keeps the center square at its own resolution.
    """
    import skimage.data

    if name not in SAMPLE_IMAGES:
        raise ValueError(f"unknown sample image {name!r}; choose one of {SAMPLE_IMAGES}")
    array = getattr(skimage.data, name)()[..., :3]  # (H, W, 3) uint8
    image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float() / 255  # (3, H, W)
    side = min(image.shape[1:])
    top, left = (image.shape[1] - side) // 2, (image.shape[2] - side) // 2
    image = image[:, top:top + side, left:left + side]  # center square
    if size is not None and size != side:
        image = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return image.clamp(0, 1)


def to_numpy_image(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor -> (H, W, 3) array for imshow, clipped to [0, 1]."""
    return image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()


# ---------------------------------------------------------------------------------------------
# patch grids
# ---------------------------------------------------------------------------------------------
def draw_patch_grid(ax, image: torch.Tensor, patch_size: int, box=None, color: str = GRID_COLOR, linewidth=None,
                    max_lines: int = 40):
    """Show `image` (3, H, W) on `ax` with the patch boundaries drawn; box=(top, left, height, width) zooms in.

    Grids with more than `max_lines` lines per side are not drawn (they would paint the image over).
    """
    _, height, width = image.shape
    check_divisible((height, width), patch_size)
    top, left, box_h, box_w = box if box is not None else (0, 0, height, width)
    ax.imshow(to_numpy_image(image[:, top:top + box_h, left:left + box_w]),
              extent=(left - 0.5, left + box_w - 0.5, top + box_h - 0.5, top - 0.5), interpolation="nearest")
    rows = np.arange(math.ceil(top / patch_size) * patch_size, top + box_h + 1, patch_size) - 0.5
    cols = np.arange(math.ceil(left / patch_size) * patch_size, left + box_w + 1, patch_size) - 0.5
    lines = [[(left - 0.5, r), (left + box_w - 0.5, r)] for r in rows]
    lines += [[(c, top - 0.5), (c, top + box_h - 0.5)] for c in cols]
    if linewidth is None:  # thinner lines when there are many of them
        linewidth = float(np.clip(60 / max(len(rows), 1), 0.3, 1.5))
    if len(rows) > max_lines:  # a grid finer than this is a solid colour at this zoom: leave it out
        lines = []
    ax.add_collection(LineCollection(lines, colors=color, linewidths=linewidth, alpha=0.9))
    ax.set_xlim(left - 0.5, left + box_w - 0.5)
    ax.set_ylim(top + box_h - 0.5, top - 0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def patch_grid_figure(image: torch.Tensor, patch_sizes, zoom_box=None, zoom: int = 32):
    """Top row: the whole image cut into each patch size. Bottom row: a zoom x zoom crop, same grids.

    zoom_box=(top, left) picks the crop (default: the image center); the crop is outlined on top.
    """
    _, height, width = image.shape
    top, left = zoom_box if zoom_box is not None else ((height - zoom) // 2, (width - zoom) // 2)
    figure, axes = plt.subplots(2, len(patch_sizes), figsize=(2.6 * len(patch_sizes), 5.6), squeeze=False)
    for column, patch_size in enumerate(patch_sizes):
        tokens = (height // patch_size) * (width // patch_size)
        draw_patch_grid(axes[0, column], image, patch_size)
        axes[0, column].add_patch(Rectangle((left - 0.5, top - 0.5), zoom, zoom, fill=False, edgecolor="red", lw=1.2))
        fine = "" if height // patch_size <= 40 else " (zoom below)"
        axes[0, column].set_title(f"{patch_size}x{patch_size}: {tokens:,} tokens{fine}", fontsize=10)
        draw_patch_grid(axes[1, column], image, patch_size, box=(top, left, zoom, zoom), linewidth=1.0)
        axes[1, column].set_title(f"zoom: {zoom}x{zoom} pixels", fontsize=9)
    figure.tight_layout()
    return figure


def token_strip_figure(image: torch.Tensor, patch_size: int, count: int = 12):
    """The first `count` tokens of the sequence, each shown as the little picture it flattens."""
    tokens = patchify(image[None], patch_size)[0]  # (N, p*p*3)
    figure, axes = plt.subplots(1, count, figsize=(0.9 * count, 1.3))
    for index, ax in enumerate(axes):
        patch = tokens[index].reshape(patch_size, patch_size, 3)  # (row, col, channel): patchify's order
        ax.imshow(patch.clamp(0, 1).numpy(), interpolation="nearest")
        ax.set_title(f"t{index}", fontsize=8)
        ax.axis("off")
    figure.suptitle(f"tokens 0..{count - 1} at patch {patch_size}: each is a vector of {tokens.shape[1]} numbers",
                    fontsize=10, y=1.08)
    return figure


# ---------------------------------------------------------------------------------------------
# costs
# ---------------------------------------------------------------------------------------------
def cost_figure(tables: dict, paper_memory_mb: dict | None = None):
    """Tokens, forward GFLOPs and training activation memory per patch size, log axes, one line per model.

    tables: {label: pixelvit.costs.cost_table(...) rows}. paper_memory_mb: {patch: MB} drawn as crosses.
    """
    panels = [("tokens", "tokens through the blocks"), ("gflops", "forward GFLOPs / image"),
              ("activation_mb", "training activations (MB / image)")]
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for label, rows in tables.items():
        sizes = [row["patch_size"] for row in rows]
        for ax, (key, _) in zip(axes, panels):
            ax.plot(sizes, [row[key] for row in rows], marker="o", label=label)
    if paper_memory_mb:
        sizes = sorted(paper_memory_mb, reverse=True)
        axes[2].plot(sizes, [paper_memory_mb[p] for p in sizes], "kx", ms=9, mew=2, label="paper Table 6 (ViT)")
    for ax, (_, ylabel) in zip(axes, panels):
        ax.set(xscale="log", yscale="log", xlabel="patch size", ylabel=ylabel)
        ax.set_xticks(sizes, [str(p) for p in sizes])
        ax.minorticks_off()
        ax.invert_xaxis()  # smaller patches (more tokens) to the right
        ax.grid(True, which="major", alpha=0.3)
    axes[2].legend(fontsize=8)
    figure.suptitle("What one image costs at each patch size (forward pass; training activations)", fontsize=11)
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------------------------------------
# what a patch embedding of width D can keep: PCA of patch vectors
# ---------------------------------------------------------------------------------------------
def sample_patches(images, patch_size: int, stride: int | None = None, max_patches: int = 20000, seed: int = 0):
    """Patch vectors (M, p*p*3) cut from a list of (3, H, W) images at every `stride` pixels (default p / 2)."""
    stride = stride or max(1, patch_size // 2)
    pieces = []
    for image in images:
        cols = F.unfold(image[None], kernel_size=patch_size, stride=stride)  # (1, 3*p*p, M) in (c, ph, pw) order
        cols = cols[0].T.reshape(-1, 3, patch_size, patch_size).permute(0, 2, 3, 1)  # (M, p, p, 3)
        pieces.append(cols.reshape(cols.shape[0], -1))  # (M, p*p*3): patchify's (ph pw c) order
    patches = torch.cat(pieces).double()
    if patches.shape[0] > max_patches:
        keep = torch.randperm(patches.shape[0], generator=torch.Generator().manual_seed(seed))[:max_patches]
        patches = patches[keep]
    return patches


def fit_patch_pca(patches: torch.Tensor):
    """(mean (K,), components (K, K) rows sorted by variance) of patch vectors (M, K)."""
    mean = patches.mean(0)
    _, _, vh = torch.linalg.svd(patches - mean, full_matrices=False)
    return mean, vh


def pca_reconstruct(image: torch.Tensor, patch_size: int, mean, components, width: int) -> torch.Tensor:
    """Encode every patch of `image` with the best rank-`width` affine map, decode, put the image back."""
    tokens = patchify(image[None].double(), patch_size)[0]  # (N, K)
    basis = components[:width]  # (D, K): the D directions a width-D patch embedding can keep
    codes = (tokens - mean) @ basis.T  # (N, D): what the embedding keeps
    restored = codes @ basis + mean  # (N, K)
    return unpatchify(restored[None], patch_size, tuple(image.shape[1:]))[0].float()


def patch_pca_errors(train_images, test_image, patch_sizes, widths, max_patches: int = 20000) -> dict:
    """Relative squared reconstruction error of `test_image` for each (patch size, width D).

    The PCA is fit on patches of `train_images` (not the test image). Returns {width: [error per patch size]}.
    Zero error once p*p*3 <= D: the patch vector fits in the embedding without loss.
    """
    total = ((test_image - test_image.mean()) ** 2).sum().item()
    errors = {width: [] for width in widths}
    for patch_size in patch_sizes:
        mean, components = fit_patch_pca(sample_patches(train_images, patch_size, max_patches=max_patches))
        for width in widths:
            restored = pca_reconstruct(test_image, patch_size, mean, components, width)
            errors[width].append(((restored - test_image) ** 2).sum().item() / total)
    return errors


# ---------------------------------------------------------------------------------------------
# attention maps (ViT)
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def attention_maps(model, images: torch.Tensor) -> list[torch.Tensor]:
    """Softmax attention of every block of a pixelvit ViT: a list of (B, heads, T, T), one per block.

    The model's own forward uses a fused kernel that never forms the matrix; hooks catch each block's
    attention input and recompute softmax(q k^T / sqrt(head_dim)) from the same weights.
    """
    if getattr(model, "arch", None) != "vit":
        raise ValueError("attention maps exist only for ViT; Adventurer has no attention matrix (it scans)")
    maps, handles = [], []

    def hook(module, inputs, _output):
        x = inputs[0]  # (B, T, D), the LayerNorm'ed residual stream
        B, T, D = x.shape
        qkv = module.qkv(x).reshape(B, T, 3, module.num_heads, module.head_dim).permute(2, 0, 3, 1, 4)
        q, k = qkv[0], qkv[1]  # (B, heads, T, head_dim)
        maps.append((q @ k.transpose(-2, -1) * module.head_dim**-0.5).softmax(-1))  # (B, heads, T, T)

    for block in model.blocks:
        handles.append(block.attn.register_forward_hook(hook))
    try:
        was_training = model.training
        model.eval()
        model(images)
        model.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return maps


def cls_attention_grid(attention: torch.Tensor, grid) -> torch.Tensor:
    """Class-token row of one block's attention (B, heads, T, T), mean over heads, as a (B, rows, cols) map."""
    rows, cols = grid
    return attention[:, :, 0, 1:].mean(1).reshape(-1, rows, cols)  # ViT: class token first


def attention_figure(images: torch.Tensor, models: dict, inputs: torch.Tensor | None = None, block: int = -1,
                     titles=None):
    """One row per image: the image, then where the class token attends in `block` for each model.

    images: (B, 3, H, W) in [0, 1] for display; inputs: what the models get (e.g. normalised), default images.
    """
    inputs = images if inputs is None else inputs
    figure, axes = plt.subplots(len(images), len(models) + 1, figsize=(2.4 * (len(models) + 1), 2.4 * len(images)),
                                squeeze=False)
    for column, (label, model) in enumerate(models.items(), start=1):
        maps = cls_attention_grid(attention_maps(model, inputs)[block], model.patch_embed.grid_size)
        for row in range(len(images)):  # the map alone (bright = attended), upsampled to the image's pixels
            heat = F.interpolate(maps[row][None, None], size=images.shape[-2:], mode="nearest")[0, 0]
            axes[row, column].imshow(heat.numpy(), cmap="inferno", interpolation="nearest")
            axes[row, column].set_title(label, fontsize=9)
    for row in range(len(images)):
        axes[row, 0].imshow(to_numpy_image(images[row]), interpolation="nearest")
        axes[row, 0].set_title(titles[row] if titles else "input", fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    figure.tight_layout()
    return figure


def examples_figure(images: torch.Tensor, titles, columns: int = 8):
    """A grid of (B, 3, H, W) images in [0, 1], each with its title, drawn pixel-sharp."""
    rows = math.ceil(len(images) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(to_numpy_image(image), interpolation="nearest")
        ax.set_title(title, fontsize=8)
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------------------------------------
# Adventurer's token layout
# ---------------------------------------------------------------------------------------------
def _token_box(ax, x, y, text, color, width=0.9):
    ax.add_patch(FancyBboxPatch((x, y), width, 0.8, boxstyle="round,pad=0.02", facecolor=color, edgecolor="0.3"))
    ax.text(x + width / 2, y + 0.4, text, ha="center", va="center", fontsize=8)


def adventurer_layout_figure(depth: int = 12, flip_rules=("released", "every_two"), num_patches: int = 6):
    """The sequence each Adventurer mixer scans, layer by layer, one panel per flip rule.

    [mean | patches | cls]: the class token sits last so the causal scan lets it see every patch; the mean
    ("heading average") token sits first so even the first patch sees a summary of the whole image (its own
    output is dropped after the mixer); in flipped layers the patches are scanned in reverse order while
    the class token stays last.
    """
    from pixelvit.models.adventurer import flipped_layers

    if isinstance(flip_rules, str):
        flip_rules = (flip_rules,)
    figure, axes = plt.subplots(1, len(flip_rules), figsize=(5.2 * len(flip_rules), 0.36 * depth + 1.0), squeeze=False)
    for ax, rule in zip(axes[0], flip_rules):
        flips = set(flipped_layers(depth, rule))
        for layer in range(depth):
            y = depth - 1 - layer
            order = list(range(num_patches))[::-1] if layer in flips else list(range(num_patches))
            ax.text(-0.15, y + 0.4, f"layer {layer}", ha="right", va="center", fontsize=8,
                    color="C3" if layer in flips else "0.2", fontweight="bold" if layer in flips else "normal")
            _token_box(ax, 0, y, "mean", "#cfe8ff")
            for slot, patch in enumerate(order):
                _token_box(ax, 1 + slot, y, f"p{patch}", "#ffe9a8" if layer in flips else "#f2f2f2")
            _token_box(ax, 1 + num_patches, y, "cls", "#c8f0c8")
        ax.set_xlim(-1.6, num_patches + 2)
        ax.set_ylim(-0.3, depth)
        ax.axis("off")
        ax.set_title(f"flip_rule={rule!r}: flipped layers {sorted(flips)}", fontsize=9)
    figure.suptitle("Adventurer: the token order each layer scans, left to right", fontsize=10)
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------------------------------------
# measured cost growth: live timings and benchmarks/results/cost_growth.json
# ---------------------------------------------------------------------------------------------
def cost_growth_figure(stored: dict):
    """Whole-model forward+backward time and peak memory per image against tokens, ViT vs Adventurer.

    `stored` is benchmarks/results/cost_growth.json: {"points": [{"tokens", "img_size", "vit": {...},
    "adventurer": {...}}], "crossover": {...}}. The time crossover (ViT slower from there on) is marked.
    """
    points = sorted(stored["points"], key=lambda point: point["tokens"])
    panels = [("fwd_bwd_ms_per_image", "forward + backward (ms / image)"), ("peak_mb_per_image", "peak memory (MB / image)")]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, (key, ylabel) in zip(axes, panels):
        for arch, color in (("vit", "C0"), ("adventurer", "C1")):
            for img_size, marker in zip(sorted({p["img_size"] for p in points}), ("o", "s", "^", "D")):
                mine = [p for p in points if p["img_size"] == img_size and p[arch].get(key) is not None]
                ax.plot([p["tokens"] for p in mine], [p[arch][key] for p in mine], marker=marker, color=color,
                        label=f"{arch}, {img_size}x{img_size} images")
        ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel=ylabel)
        ax.grid(True, alpha=0.3)
    crossover = stored.get("crossover", {}).get("all", {}).get("time", {}).get("tokens")
    if crossover:
        axes[0].axvline(crossover, color="0.4", ls="--", lw=1)
        axes[0].text(crossover, axes[0].get_ylim()[1], f" time crossover\n ~{crossover:,} tokens", va="top", fontsize=8)
    axes[0].legend(fontsize=7)
    figure.suptitle(stored.get("description", "stored benchmark"), fontsize=9)
    figure.tight_layout()
    return figure


def growth_figure(lengths, series: dict, guides: dict | None = None, title: str = ""):
    """Seconds against tokens, log-log, with guide lines of slope `guides[name]` through that series' last point."""
    figure, ax = plt.subplots(figsize=(6.2, 4))
    for label, seconds in series.items():
        ax.plot(lengths, seconds, marker="o", label=label)
    for name, power in (guides or {}).items():
        anchor = series[name][-1]
        ax.plot(lengths, [anchor * (n / lengths[-1]) ** power for n in lengths], "k" + (":" if power == 1 else "--"),
                lw=0.9, label=f"slope {power} (~ tokens^{power})")
    ax.set(xscale="log", yscale="log", xlabel="tokens", ylabel="seconds", title=title)
    ax.set_xticks(lengths, [f"{n:,}" for n in lengths])
    ax.minorticks_off()
    ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


# ---------------------------------------------------------------------------------------------
# the patch-size sweep (pixelvit.sweep writes it as sweep.png; every sweep panel is metric_vs_patch)
# ---------------------------------------------------------------------------------------------
# classes per dataset, for the chance line (100 / classes %); other datasets get no line
CLASS_COUNTS = {"specks": 8, "cifar10": 10, "cifar10_jpeg": 10, "cifar100": 100}


def _plain_log_ticks(axis) -> None:
    """Log-axis ticks at 1, 2, 5 x 10^k written as plain numbers (matplotlib's minor labels overlap)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_formatter(NullFormatter())


def patch_size_axis(ax, patch_sizes, tokens: dict | None = None, margin: float = 0.08) -> None:
    """The x axis of every sweep panel: patch sizes on a log-2 scale, one tick each (with its token count
    when `tokens` maps size -> count), smaller patches (more tokens) to the right."""
    sizes = sorted(int(p) for p in set(patch_sizes))
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [f"{p}\n({tokens[p]:,} tokens)" if tokens else str(p) for p in sizes])
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.margins(x=margin)


def metric_vs_patch(ax, rows, metric: str = "top1", hue: str = "label", style: str | None = None,
                    show_tokens: bool = True, **line_options) -> int:
    """`metric` against patch size, one line per `hue` value (and a line style per `style` value): the mean
    over seeds, with a +-1 sd band where a point has several. Returns the most seeds behind one point.

    The panel every sweep figure is built on: sweep_figure below (`pixelvit sweep`),
    pixelvit.dense.report.sweep_figure (mIoU) and tools/campaign (the CIFAR-10 campaign). rows: dicts (or a
    DataFrame) with patch_size, `metric`, tokens and the `hue` column; numbers read from a CSV as text are
    converted. line_options go to seaborn.lineplot (palette, dashes, legend, ...).
    """
    import pandas as pd
    import seaborn as sns

    frame = pd.DataFrame(rows)
    for column in ("patch_size", metric, "tokens"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column])
    seeds = int(frame.groupby([hue, "patch_size"] + ([style] if style else [])).size().max())
    sns.lineplot(frame, x="patch_size", y=metric, hue=hue, style=style, marker="o",
                 errorbar="sd" if seeds > 1 else None, ax=ax, **line_options)
    sizes = sorted(frame["patch_size"].unique())
    tokens = {int(p): int(frame[frame.patch_size == p].tokens.iloc[0]) for p in sizes} \
        if show_tokens and "tokens" in frame else None
    patch_size_axis(ax, sizes, tokens)
    ax.set_xlabel("patch size (pixels per side)")
    return seeds


def sweep_figure(rows: list[dict], reference: list[dict] | None = None):
    """Test top-1 against patch size and against training compute, one line per model; a chance line.

    rows: pixelvit.sweep result rows (model, dataset, img_size, patch_size, tokens, train_tflops, top1, steps;
    several seeds per point draw the mean and a +-1 sd band). reference: the authors' ImageNet numbers
    (sweep.paper_reference()), drawn in a separate, labelled panel below. Returns a bare Figure.
    """
    import pandas as pd
    import seaborn as sns

    from pixelvit.io import new_figure

    frame = pd.DataFrame(rows)
    for column in ("patch_size", "top1", "train_tflops", "tokens", "img_size", "steps"):
        frame[column] = pd.to_numeric(frame[column])
    frame["label"] = frame["model"] + ", " + frame["dataset"] + " " + frame["img_size"].astype(int).astype(str) + " px"
    with sns.axes_style("whitegrid"):
        figure = new_figure(figsize=(11, 7.8 if reference else 4.6), layout="constrained")
        if reference:  # the paper's panel below the measured ones: each panel half the page wide, not a third
            axes = figure.subplot_mosaic([["patch", "compute"], ["paper", "paper"]], height_ratios=[1, 0.7])
        else:
            axes = figure.subplot_mosaic([["patch", "compute"]])
    chance = {100 / CLASS_COUNTS[d] for d in frame["dataset"] if d in CLASS_COUNTS}

    ax = axes["patch"]
    seeds = metric_vs_patch(ax, frame, "top1", hue="label")
    errorbar = "sd" if seeds > 1 else None
    ax.set(ylabel="test top-1 (%)", title="Accuracy vs patch size")

    ax = axes["compute"]
    sns.lineplot(frame, x="train_tflops", y="top1", hue="label", marker="o", errorbar=errorbar, ax=ax, legend=False)
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    ax.margins(x=0.12, y=0.1)  # room for the p-labels at both ends
    means = frame.groupby(["label", "patch_size"], as_index=False).mean(numeric_only=True)
    for _, row in means.iterrows():
        ax.annotate(f"p{int(row.patch_size)}", (row.train_tflops, row.top1), textcoords="offset points",
                    xytext=(0, 7), ha="center", fontsize=9)
    ax.set(xlabel="training compute (TFLOPs: 3 x forward FLOPs x images seen)", ylabel="test top-1 (%)",
           title="Accuracy vs training compute")

    for level in sorted(chance):
        for name in ("patch", "compute"):
            axes[name].axhline(level, color="0.35", ls=":", lw=1.2, label=f"chance ({level:g}%)")
    axes["patch"].legend(title=None, fontsize=9, loc="best")
    if chance:
        axes["compute"].legend(fontsize=9, loc="lower right")

    if reference:
        ax = axes["paper"]
        paper = pd.DataFrame(reference)
        sns.lineplot(paper, x="patch_size", y="top1", hue="model", marker="s", linestyle="--", ax=ax)
        patch_size_axis(ax, paper["patch_size"].unique(), margin=0.05)
        ax.set(xlabel="patch size (pixels per side), 224 x 224 images", ylabel="ImageNet-1k top-1 (%)",
               title="The paper (Wang et al. 2025): as reported by the authors, not measured here")
        ax.legend(title=None, fontsize=9)
    steps = "/".join(str(s) for s in sorted(frame["steps"].astype(int).unique()))
    spread = f"; mean and +-1 sd band over {seeds} seeds" if seeds > 1 else "; one seed"
    figure.suptitle(f"pixelvit sweep: the same {steps} training steps at every patch size{spread}", fontsize=12)
    return figure


# ---------------------------------------------------------------------------------------------
# the explorer's cost panel
# ---------------------------------------------------------------------------------------------
def cost_curve_axes(ax, curve: list[dict], patch_size: int):
    """Forward GFLOPs (left axis) and training memory in GB (right axis) per image against patch size.

    curve: pixelvit.costs.cost_table rows; the current `patch_size` is circled. Two quantities with two
    units get two labelled axes, never one shared unlabelled one. Returns the right-hand (memory) Axes.
    """
    sizes = [row["patch_size"] for row in curve]
    row = next(r for r in curve if r["patch_size"] == patch_size)
    memory = ax.twinx()
    flops_line, = ax.plot(sizes, [r["gflops"] for r in curve], "o-", color="C0", label="forward GFLOPs")
    memory_line, = memory.plot(sizes, [r["activation_mb"] / 1e3 for r in curve], "s--", color="C1",
                               label="training memory (GB)")
    ax.plot([patch_size], [row["gflops"]], "o", ms=13, mfc="none", mec="red", mew=2)
    memory.plot([patch_size], [row["activation_mb"] / 1e3], "s", ms=13, mfc="none", mec="red", mew=2)
    for axis, ylabel, color in ((ax, "forward GFLOPs / image", "C0"),
                                (memory, "training activations (GB / image)", "C1")):
        axis.set_yscale("log")
        axis.set_ylabel(ylabel, color=color)
        axis.tick_params(axis="y", colors=color)
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.invert_xaxis()  # smaller patches (more tokens) to the right
    ax.set(xlabel="patch size (pixels per side)", title=f"cost per image at patch {patch_size}: "
           f"{row['tokens']:,} tokens")
    ax.grid(True, alpha=0.3)
    ax.legend([flops_line, memory_line], [flops_line.get_label(), memory_line.get_label()], fontsize=8,
              loc="upper left")
    return memory
