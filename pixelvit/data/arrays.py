"""A dataset split held in memory as uint8 arrays, and its on-disk cache.

Small images are cheapest to keep decoded: CIFAR-10's 50,000 training images are 150 MB as uint8,
load from a .npz in about a second, and need no image decoding while training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixelvit.io import atomic_write


class SplitArrays:
    """What every dataset split held in memory shares: uint8 images (N, H, W, 3), one target per image
    in the field that `TARGETS` names (labels, masks, ...), and the class names the targets index.

    ImageArrays (classification) and pixelvit.data.segmentation.SegmentationArrays are the two kinds: each
    a dataclass of (images, <targets>, classes, name) that checks its arrays in __post_init__.
    """

    TARGETS = "labels"
    images: np.ndarray
    classes: list[str]
    name: str

    @property
    def targets(self) -> np.ndarray:
        return getattr(self, self.TARGETS)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def img_size(self) -> int:
        return self.images.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, count: int | None):
        """The first `count` samples (all when None); datasets here are stored in shuffled order."""
        if count is None or count >= len(self):
            return self
        return type(self)(self.images[:count], self.targets[:count], self.classes, self.name)


def check_images(images: np.ndarray, error=ValueError) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise error(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")


@dataclass
class ImageArrays(SplitArrays):
    """One split of an image-classification dataset.

    images: uint8 (N, H, W, 3), channels last as image files store them
    labels: int64 (N,), indices into `classes`
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    name: str = ""

    def __post_init__(self):
        check_images(self.images)
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.labels = self.labels.astype(np.int64)


def save_arrays(arrays: SplitArrays, path) -> Path:
    """Write `arrays` to a .npz atomically (a crash never leaves a truncated cache file): images, the
    targets under their own name (labels, masks) and classes."""
    with atomic_write(path) as handle:
        np.savez(handle, images=arrays.images, **{arrays.TARGETS: arrays.targets}, classes=np.array(arrays.classes))
    return Path(path)


def load_arrays(path, name: str = "", kind: type[SplitArrays] = ImageArrays) -> SplitArrays:
    """The arrays save_arrays wrote, as `kind` (ImageArrays, SegmentationArrays)."""
    with np.load(path, allow_pickle=False) as data:  # no pickles: loading runs no code
        return kind(data["images"], data[kind.TARGETS], [str(c) for c in data["classes"]], name)


def cached(path, build, name: str = "") -> ImageArrays:
    """Load the arrays cached at `path`, or call `build()` once and cache what it returns."""
    path = Path(path)
    if path.exists():
        return load_arrays(path, name)
    arrays = build()
    arrays.name = name
    save_arrays(arrays, path)
    return arrays
