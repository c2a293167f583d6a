"""A dataset split held in memory as uint8 arrays, and its on-disk cache.

Small images are cheapest to keep decoded: CIFAR-10's 50,000 training images are 150 MB as uint8,
load from a .npz in about a second, and need no image decoding while training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pixelvit.io import atomic_write


@dataclass
class ImageArrays:
    """One split of an image-classification dataset.

    images: uint8 (N, H, W, 3), channels last as image files store them
    labels: int64 (N,), indices into `classes`
    """

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    name: str = ""

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.labels = self.labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def img_size(self) -> int:
        return self.images.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, count: int | None) -> ImageArrays:
        """The first `count` samples (all when None); datasets here are stored in shuffled order."""
        if count is None or count >= len(self):
            return self
        return ImageArrays(self.images[:count], self.labels[:count], self.classes, self.name)


def save_arrays(arrays: ImageArrays, path) -> Path:
    """Write `arrays` to a .npz atomically (a crash never leaves a truncated cache file)."""
    with atomic_write(path) as handle:
        np.savez(handle, images=arrays.images, labels=arrays.labels, classes=np.array(arrays.classes))
    return Path(path)


def load_arrays(path, name: str = "") -> ImageArrays:
    with np.load(path, allow_pickle=False) as data:  # no pickles: loading runs no code
        return ImageArrays(data["images"], data["labels"], [str(c) for c in data["classes"]], name)


def cached(path, build, name: str = "") -> ImageArrays:
    """Load the arrays cached at `path`, or call `build()` once and cache what it returns."""
    path = Path(path)
    if path.exists():
        return load_arrays(path, name)
    arrays = build()
    arrays.name = name
    save_arrays(arrays, path)
    return arrays
