"""Datasets by name: one function, `load_split(name, split, img_size)`, returns uint8 arrays.

    specks           made up on the spot, no files (the default; see pixelvit.data.specks)
    cifar10          official CIFAR-10, downloaded and verified on first use (pixelvit.data.cifar)
    cifar100         official CIFAR-100 (fine labels)
    cifar10_jpeg     the shared course copy of CIFAR-10 (JPEG class folders, ../shared/data)
    folder:<path>    any class-folder tree of images (pixelvit.data.folders)

Every split is decoded (or generated) once per image size and cached as .npz under
<cache root>/arrays, so later runs start in about a second.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from pixelvit.data import cifar, folders, specks
from pixelvit.data.arrays import ImageArrays, cached
from pixelvit.data.locations import DatasetNotFoundError, data_root
from pixelvit.io import DownloadError

DATASETS = {
    "specks": "8 kinds of single-pixel specks on random backgrounds; generated, no download",
    "cifar10": "CIFAR-10 (10 classes, 32x32), official release, downloaded on first use",
    "cifar100": "CIFAR-100 (100 classes, 32x32), official release, downloaded on first use",
    "cifar10_jpeg": "CIFAR-10 as JPEG class folders from the shared course data (../shared/data)",
    "folder:<path>": "any class-folder tree of images, resized to img_size",
}
NATIVE_SIZES = {"specks": 16, "cifar10": 32, "cifar100": 32, "cifar10_jpeg": 32}

# Per-dataset default augmentation (pixelvit.data.loading): specks' classes live in exact pixel
# colours and positions do not matter, so crops and flips add nothing; photos get crop + flip.
DEFAULT_AUGMENTATION = {"specks": "none"}


def default_img_size(name: str) -> int:
    return NATIVE_SIZES.get(name, 32)


def default_augmentation(name: str) -> str:
    return DEFAULT_AUGMENTATION.get(name, "light")


def list_datasets() -> dict[str, str]:
    return dict(DATASETS)


def load_split(name: str, split: str = "train", img_size: int | None = None, root=None,
               progress: bool = True, **source) -> ImageArrays:
    """The `split` ("train" or "test") of dataset `name` as uint8 arrays at img_size x img_size.

    `root` is the cache root (default $PIXELVIT_DATA or ~/.cache/pixelvit). `source` passes url= and
    md5= to the CIFAR download (a mirror, or a test server).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    img_size = img_size or default_img_size(name)
    cache = data_root(root) / "arrays"

    if name == "specks":
        return cached(cache / f"specks-v1-{img_size}px-{split}.npz",
                      lambda: specks.load_specks(split, img_size), name)

    if name in cifar.CIFAR:
        def build():
            try:
                folder = cifar.extracted_folder(name, root, progress=progress, **source)
            except DownloadError as error:
                raise DatasetNotFoundError(f"{name} is not in {data_root(root)} and could not be fetched: "
                                           f"{error}\n{cifar.how_to_get(name, root)}") from error
            return resized(cifar.read_split(folder, name, split), img_size)
        return cached(cache / f"{name}-{img_size}px-{split}.npz", build, name)

    if name == "cifar10_jpeg":
        return cached(cache / f"cifar10_jpeg-{img_size}px-{split}.npz",
                      lambda: folders.read_folder_split(folders.shared_cifar10_folder(root, progress), split,
                                                        img_size, progress), name)

    if name.startswith("folder:"):
        path = Path(name.removeprefix("folder:")).expanduser().resolve()
        key = hashlib.sha256(str(path).encode()).hexdigest()[:10]  # one cache per folder path
        return cached(cache / f"folder-{path.name}-{key}-{img_size}px-{split}.npz",
                      lambda: folders.read_folder_split(path, split, img_size, progress), name)

    raise DatasetNotFoundError(
        f"unknown dataset {name!r}. Known: " + "; ".join(f"{k}: {v}" for k, v in DATASETS.items())
    )


def resized(arrays: ImageArrays, img_size: int) -> ImageArrays:
    """`arrays` at img_size x img_size (unchanged when already that size)."""
    if arrays.img_size == img_size:
        return arrays
    from PIL import Image

    images = [folders.resize_to_square(Image.fromarray(image), img_size) for image in arrays.images]
    return ImageArrays(np.stack(images), arrays.labels, arrays.classes, arrays.name)
