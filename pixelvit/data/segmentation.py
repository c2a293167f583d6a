"""Segmentation datasets: images with one class label per pixel, as uint8 arrays (like the classification sets).

    scribbles        generated, no files: touching regions, 1-pixel strokes and single-pixel dots (16 px default)
    cifar10_mosaic   real photographs: 2-3 CIFAR-10 images cut along irregular borders and put together,
                     every pixel labelled with its source image's class (32 px)

    load_segmentation("scribbles", "train", img_size=16)  ->  SegmentationArrays(images, masks, classes)

Both are deterministic (a pure function of split, size and seed) and cached as .npz under
<cache root>/arrays, so later runs start in about a second.

## scribbles: why it shows the patch-size effect on dense prediction

Each 16x16 image is a few touching regions (a warped Voronoi partition, each cell a random one of four
region classes), crossed by 1-pixel strokes and sprinkled with single-pixel dots:

    background  greyish, any brightness        red / green / blue   saturated regions of that hue
    stroke      yellow, 1 pixel wide lines      dot                  magenta, single pixels

A pixel's class can be read from its colour alone (up to jitter and noise): nothing here asks the model to
*recognise* anything hard. All the difficulty is *where*: the labels change at single-pixel scale. A token
of an 8x8 patch must describe the exact layout of 64 labels, strokes and dots included, in one D-dim
vector, and the head must draw it back out; a 1x1-patch token only has to say "my pixel is yellow". So
mIoU falls as the patch grows, and a decoder (extra non-linear layers between the tokens and the pixels)
matters most where the tokens are coarsest: the paper's Table 2 observation, small enough for a CPU.

## cifar10_mosaic

Real images for the same question: each mosaic (32x32 natively; smaller sizes resize the photos first) takes 2 or 3 CIFAR-10 images of different classes
and shows, at every pixel, the pixel of one of them (the one whose warped Voronoi cell it falls in), so the
borders between classes are irregular and cut through objects. The label is the source image's class. It
reads the shared course copy (`../shared/data/cifar10_jpeg.tar.gz`, dataset `cifar10_jpeg`) when present,
else the official CIFAR-10 download (dataset `cifar10`); which one is recorded in the cache file's name.
Masks are far harder to predict here (a pixel's class is a property of the whole source image), so expect
mIoU well below the scribbles'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixelvit.data.arrays import SplitArrays, check_images, load_arrays, save_arrays
from pixelvit.data.specks import hsv_to_rgb

SEGMENTATION_DATASETS = {
    "scribbles": "touching regions, 1-px strokes and 1-px dots of 6 classes; generated, no download (16 px)",
    "cifar10_mosaic": "2-3 CIFAR-10 photos per image cut along irregular borders; pixel label = source class (32 px)",
}
NATIVE_SIZES = {"scribbles": 16, "cifar10_mosaic": 32}


class SegmentationDataError(ValueError):
    """Images and masks that do not fit together (sizes differ, labels outside the class range)."""


@dataclass
class SegmentationArrays(SplitArrays):
    """One split of a segmentation dataset (len, img_size, num_classes, subset: pixelvit.data.arrays.SplitArrays).

    images: uint8 (N, H, W, 3), channels last as image files store them
    masks:  uint8 (N, H, W), the class index of every pixel (0 .. len(classes) - 1)
    """

    TARGETS = "masks"
    images: np.ndarray
    masks: np.ndarray
    classes: list[str]
    name: str = ""

    def __post_init__(self):
        check_pairs(self.images, self.masks, len(self.classes))
        self.masks = self.masks.astype(np.uint8)


def check_pairs(images: np.ndarray, masks: np.ndarray, num_classes: int) -> None:
    """Raise SegmentationDataError, in one line naming the problem, unless every mask fits its image."""
    check_images(images, SegmentationDataError)
    if masks.ndim != 3:
        raise SegmentationDataError(f"masks must be (N, H, W) class indices, got shape {masks.shape}")
    if masks.shape != images.shape[:3]:
        raise SegmentationDataError(
            f"mask size {masks.shape} differs from image size {images.shape[:3]} (N, H, W): every image needs "
            "a mask of exactly its height and width; resize both together (nearest-neighbour for the mask)"
        )
    if masks.size and (masks.min() < 0 or masks.max() >= num_classes):
        raise SegmentationDataError(
            f"mask labels span {int(masks.min())}..{int(masks.max())} but there are {num_classes} classes "
            f"(valid labels 0..{num_classes - 1}); fix the masks or pass the full class list"
        )


def save_segmentation(arrays: SegmentationArrays, path) -> Path:
    """Write `arrays` to a .npz atomically (pixelvit.data.arrays.save_arrays: images, masks, classes)."""
    return save_arrays(arrays, path)


def load_segmentation_file(path, name: str = "") -> SegmentationArrays:
    return load_arrays(path, name, kind=SegmentationArrays)


# ---------------------------------------------------------------------------------------------
# Shared geometry: a warped Voronoi partition (touching regions with irregular borders)
# ---------------------------------------------------------------------------------------------


def warped_voronoi(count: int, img_size: int, cells: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """int (count, H, W): for every pixel, which of up to cells.max() seeds it is nearest to, after warping.

    Pixel coordinates are displaced by a random smooth wave (amplitude up to 1/8 of the image) before the
    nearest-seed test, so region borders wiggle instead of being straight Voronoi edges. `cells[i]` seeds
    are used for image i (the rest are pushed far away).
    """
    most = int(cells.max())
    y, x = np.mgrid[0:img_size, 0:img_size] / img_size  # (H, W), 0..1
    amp = rng.uniform(0.03, 0.12, (count, 2, 1, 1))
    freq = rng.uniform(1.0, 3.0, (count, 2, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (count, 2, 1, 1))
    wy = y + amp[:, 0] * np.sin(2 * np.pi * freq[:, 0] * x + phase[:, 0])  # (count, H, W)
    wx = x + amp[:, 1] * np.sin(2 * np.pi * freq[:, 1] * y + phase[:, 1])
    seeds = rng.random((count, most, 2))  # (count, K, 2) in 0..1
    seeds[np.arange(most)[None, :] >= cells[:, None]] = 1e3  # unused seeds: never nearest
    distance = (wy[:, None] - seeds[:, :, 0, None, None]) ** 2 + (wx[:, None] - seeds[:, :, 1, None, None]) ** 2
    return distance.argmin(axis=1)  # (count, H, W)


# ---------------------------------------------------------------------------------------------
# scribbles (generated)
# ---------------------------------------------------------------------------------------------

SCRIBBLE_CLASSES = ["background", "red", "green", "blue", "stroke", "dot"]
REGION_HUES = {"red": 0.0, "green": 1 / 3, "blue": 2 / 3}
STROKE_HUE, DOT_HUE = 1 / 6, 5 / 6  # yellow, magenta
HUE_JITTER = 0.04  # +- around each class hue
PIXEL_NOISE = 0.03  # std of Gaussian noise on every pixel (colours in 0..1)
SPLIT_SIZES = {"train": 10_000, "test": 1_000}
SPLIT_STREAMS = {"train": 0, "test": 1}  # independent random streams per split


def draw_strokes(masks: np.ndarray, rng: np.random.Generator, label: int, strokes=(1, 3)) -> None:
    """Draw 1-pixel-wide straight strokes of `label` into masks (N, H, W) in place (dense sampling of the segment)."""
    count, size = masks.shape[0], masks.shape[1]
    n = rng.integers(strokes[0], strokes[1] + 1, count)
    t = np.linspace(0.0, 1.0, 4 * size)  # enough samples that a segment has no gaps
    for i in range(count):
        for _ in range(n[i]):
            (y0, x0), (y1, x1) = rng.uniform(0, size, (2, 2))
            rows = np.clip((y0 + (y1 - y0) * t).astype(int), 0, size - 1)
            cols = np.clip((x0 + (x1 - x0) * t).astype(int), 0, size - 1)
            masks[i, rows, cols] = label


def scribble_masks(count: int, img_size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (count, H, W) label maps: regions, then strokes on top, then dots on top."""
    cells = rng.integers(2, 6, count)  # 2-5 touching regions
    region_of_pixel = warped_voronoi(count, img_size, cells, rng)  # (count, H, W)
    region_class = rng.integers(0, 4, (count, int(cells.max())))  # background, red, green or blue per cell
    masks = np.take_along_axis(region_class, region_of_pixel.reshape(count, -1), axis=1)
    masks = masks.reshape(count, img_size, img_size).astype(np.uint8)
    draw_strokes(masks, rng, SCRIBBLE_CLASSES.index("stroke"))
    dots = rng.random((count, img_size, img_size)) < rng.uniform(0.01, 0.04, (count, 1, 1))  # 1-4 % of pixels
    masks[dots] = SCRIBBLE_CLASSES.index("dot")
    return masks


def scribble_images(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, H, W, 3) images for label maps (N, H, W): a jittered colour per class, per image, plus noise."""
    count = masks.shape[0]
    classes = len(SCRIBBLE_CLASSES)
    # one colour per (image, class): hue near the class hue; background is greyish with any hue
    hue = np.zeros((count, classes))
    for name, base in {**REGION_HUES, "stroke": STROKE_HUE, "dot": DOT_HUE}.items():
        hue[:, SCRIBBLE_CLASSES.index(name)] = base
    hue = (hue + rng.uniform(-HUE_JITTER, HUE_JITTER, hue.shape)) % 1.0
    hue[:, 0] = rng.random(count)
    saturation = rng.uniform(0.55, 0.95, (count, classes))
    saturation[:, 0] = rng.uniform(0.0, 0.2, count)
    value = rng.uniform(0.5, 0.95, (count, classes))
    value[:, 0] = rng.uniform(0.2, 0.9, count)
    palette = hsv_to_rgb(hue, saturation, value)  # (count, classes, 3)
    images = np.take_along_axis(palette, masks.reshape(count, -1, 1).astype(np.int64), axis=1)  # (count, H*W, 3)
    images = images.reshape(*masks.shape, 3) + rng.normal(0.0, PIXEL_NOISE, (*masks.shape, 3))
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8)


def generate_scribbles(count: int, img_size: int = 16, seed: int = 0, stream: int = 0) -> SegmentationArrays:
    """`count` scribble images and their masks, fully determined by (seed, stream, img_size)."""
    rng = np.random.default_rng([seed, stream, img_size])
    masks = np.concatenate([scribble_masks(min(CHUNK, count - start), img_size, rng)
                            for start in range(0, count, CHUNK)])  # chunks bound the float64 working memory
    images = scribble_images(masks, rng)
    return SegmentationArrays(images, masks, list(SCRIBBLE_CLASSES), name="scribbles")


CHUNK = 1_000  # images drawn at a time


# ---------------------------------------------------------------------------------------------
# cifar10_mosaic (real photographs)
# ---------------------------------------------------------------------------------------------

MOSAIC_SPLIT_SIZES = {"train": 10_000, "test": 1_000}


def mosaic_from(source_images: np.ndarray, source_labels: np.ndarray, classes: list[str], count: int,
                seed: int = 0, stream: int = 0, name: str = "cifar10_mosaic") -> SegmentationArrays:
    """`count` mosaics of 2-3 source images of different classes each, cut along warped Voronoi borders.

    source_images: uint8 (M, H, W, 3); source_labels: int (M,). Deterministic in (seed, stream).
    """
    rng = np.random.default_rng([seed, stream, 7])
    size = source_images.shape[1]
    cells = rng.integers(2, 4, count)  # 2-3 pieces
    piece = np.concatenate([warped_voronoi(len(part), size, part, rng)  # (count, H, W): which source each pixel shows
                            for part in np.array_split(cells, max(1, count // CHUNK))])
    by_class = [np.flatnonzero(source_labels == c) for c in range(len(classes))]
    images = np.empty((count, size, size, 3), np.uint8)
    masks = np.empty((count, size, size), np.uint8)
    for i in range(count):
        chosen_classes = rng.choice(len(classes), size=cells[i], replace=False)  # different classes
        sources = [rng.choice(by_class[c]) for c in chosen_classes]
        for k, (c, s) in enumerate(zip(chosen_classes, sources)):
            where = piece[i] == k
            images[i][where] = source_images[s][where]
            masks[i][where] = c
    return SegmentationArrays(images, masks, list(classes), name=name)


def cifar_source(root=None) -> str:
    """'cifar10_jpeg' (the shared course copy) when its archive or extracted copy is there, else 'cifar10'."""
    from pixelvit.data.folders import SHARED_CIFAR10_ARCHIVE
    from pixelvit.data.locations import data_root, shared_data_dir

    present = (shared_data_dir() / SHARED_CIFAR10_ARCHIVE).exists() or (data_root(root) / "cifar10_jpeg").exists()
    return "cifar10_jpeg" if present else "cifar10"


# ---------------------------------------------------------------------------------------------
# By name, cached
# ---------------------------------------------------------------------------------------------


def default_segmentation_size(name: str) -> int:
    return NATIVE_SIZES.get(name, 32)


def load_segmentation(name: str, split: str = "train", img_size: int | None = None, root=None,
                      progress: bool = True) -> SegmentationArrays:
    """The `split` of segmentation dataset `name` at img_size x img_size, generated or built once and cached."""
    from pixelvit.data.locations import DatasetNotFoundError, data_root

    if name not in SEGMENTATION_DATASETS:
        known = "; ".join(f"{k}: {v}" for k, v in SEGMENTATION_DATASETS.items())
        raise DatasetNotFoundError(f"unknown segmentation dataset {name!r}. Known: {known}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    img_size = img_size or default_segmentation_size(name)
    cache = data_root(root) / "arrays"

    if name == "scribbles":
        build = lambda: generate_scribbles(SPLIT_SIZES[split], img_size, 0, SPLIT_STREAMS[split])  # noqa: E731
        path = cache / f"scribbles-v1-{img_size}px-{split}.npz"
    else:
        source = cifar_source(root)

        def build():
            from pixelvit.data.catalog import load_split, resized

            # the 32 px photos (cached by pixelvit.data), resized here: no second decode of 60,000 JPEGs
            photos = resized(load_split(source, split, 32, root, progress=progress), img_size)
            return mosaic_from(photos.images, photos.labels, photos.classes, MOSAIC_SPLIT_SIZES[split],
                               0, SPLIT_STREAMS[split])
        path = cache / f"cifar10_mosaic-v1-from-{source}-{img_size}px-{split}.npz"

    if path.exists():
        return load_segmentation_file(path, name)
    arrays = build()
    arrays.name = name
    save_segmentation(arrays, path)
    return arrays


# ---------------------------------------------------------------------------------------------
# Training samples: (image, mask) pairs indexed by (index, epoch), augmented together
# ---------------------------------------------------------------------------------------------

SEGMENTATION_AUGMENTATIONS = {
    "none": "no augmentation (the default for both sets)",
    "flip": "random horizontal flip of image and mask together",
}


class SegmentationDataset:
    """Samples of SegmentationArrays as (uint8 image (3, H, W), int64 mask (H, W)), keyed by (index, epoch).

    Works with pixelvit.data.loading's EpochBatchSampler / EvalBatchSampler and make_loader (timm's
    PrefetchLoader normalises the images on the device and moves the masks there as they are). A flip draws
    from its own generator seeded by (seed, epoch, index), so a resumed run augments identically.
    """

    def __init__(self, arrays: SegmentationArrays, augmentation: str = "none", seed: int = 0):
        if augmentation not in SEGMENTATION_AUGMENTATIONS:
            raise ValueError(f"unknown segmentation augmentation {augmentation!r}; "
                             f"choose from {sorted(SEGMENTATION_AUGMENTATIONS)}")
        self.arrays, self.augmentation, self.seed = arrays, augmentation, seed

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, key):
        import torch

        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image, mask = self.arrays.images[index], self.arrays.masks[index]  # (H, W, 3), (H, W)
        if self.augmentation == "flip" and np.random.default_rng([self.seed, epoch, index]).random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, H, W) uint8
        return image, torch.from_numpy(np.ascontiguousarray(mask)).long()  # (H, W) int64
