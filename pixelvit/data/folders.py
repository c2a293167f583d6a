"""Any class-folder tree of image files (the layout torchvision's ImageFolder reads), as uint8 arrays.

    <path>/train/<class name>/<any name>.png|jpg|...      a split folder per split, or
    <path>/<class name>/<any name>.png|jpg|...            no split folders: pixelvit holds out 10 %

Images are decoded once, resized (shorter side to img_size, then a centre crop, with timm's
evaluation transform) and cached as arrays. The shared course copy of CIFAR-10 (JPEG class folders
in `cifar10_jpeg.tar.gz`) is extracted once into the cache root and read the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from pixelvit.data.arrays import ImageArrays
from pixelvit.data.locations import DatasetNotFoundError, data_root, extract_tar, shared_data_dir

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_NAMES = {"train": ("train",), "test": ("test", "val", "validation")}
HELD_OUT_FRACTION = 0.1  # the test share when a tree has no split folders
SHUFFLE_SEED = 0  # folder trees list classes in order; arrays are stored shuffled (see ImageArrays.subset)

SHARED_CIFAR10_ARCHIVE = "cifar10_jpeg.tar.gz"


def resize_to_square(image: Image.Image, img_size: int) -> np.ndarray:
    """RGB uint8 (img_size, img_size, 3): shorter side to img_size (bicubic), then a centre crop.

    This is timm's evaluation transform with crop_pct=1 (nothing cut away beyond making it square),
    returning uint8 so that normalisation happens later, per batch.
    """
    from timm.data import create_transform

    transform = _eval_transforms.get(img_size)
    if transform is None:
        transform = create_transform(img_size, is_training=False, crop_pct=1.0, interpolation="bicubic",
                                     use_prefetcher=True)  # use_prefetcher: uint8 tensor out, no normalisation
        _eval_transforms[img_size] = transform
    image = image.convert("RGB")
    if image.size == (img_size, img_size):
        return np.asarray(image, dtype=np.uint8)
    return transform(image).permute(1, 2, 0).numpy()  # (3, H, W) -> (H, W, 3)


_eval_transforms: dict = {}


def class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def find_split_folder(root: Path, split: str) -> Path | None:
    for name in SPLIT_NAMES[split]:
        if (root / name).is_dir():
            return root / name
    return None


def read_folder_split(root, split: str, img_size: int, progress: bool = True) -> ImageArrays:
    """Decode one split of a class-folder tree at `root` into arrays, shuffled with a fixed seed."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"no image folder at {root} (resolved to {root.resolve()}). Expected class folders of images, "
            f"either {root}/train/<class>/*.png and {root}/test/<class>/*.png, or {root}/<class>/*.png."
        )
    split_folder = find_split_folder(root, split)
    holdout = split_folder is None
    if holdout and (find_split_folder(root, "train") or find_split_folder(root, "test")):
        raise DatasetNotFoundError(
            f"{root} has split folders but none for {split!r}: looked for {', '.join(SPLIT_NAMES[split])}"
        )
    classes_root = root if holdout else split_folder
    classes = [p.name for p in class_folders(classes_root)]
    files, labels = [], []
    for label, name in enumerate(classes):
        found = image_files(classes_root / name)
        files += found
        labels += [label] * len(found)
    if not files:
        raise DatasetNotFoundError(
            f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in class folders under {classes_root}; "
            f"found class folders: {classes or 'none'}"
        )
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(files))
    if holdout:  # a fixed 10 % of the shuffled files is the test split
        n_test = max(1, int(round(len(files) * HELD_OUT_FRACTION)))
        order = order[:n_test] if split == "test" else order[n_test:]
    images = np.stack([
        resize_to_square(Image.open(files[i]), img_size)
        for i in tqdm(order, desc=f"decode {root.name}/{split}", unit="img", disable=not progress)
    ])
    return ImageArrays(images, np.asarray(labels)[order], classes, name=root.name)


def shared_cifar10_folder(root=None, progress: bool = True) -> Path:
    """The shared CIFAR-10 JPEG tree, extracted once into <cache root>/cifar10_jpeg."""
    destination = data_root(root) / "cifar10_jpeg"
    if destination.exists():
        return destination
    archive = shared_data_dir() / SHARED_CIFAR10_ARCHIVE
    if not archive.exists():
        raise DatasetNotFoundError(
            f"cifar10_jpeg reads the shared course archive, looked for {archive} "
            f"(set PIXELVIT_SHARED_DATA to the folder that holds {SHARED_CIFAR10_ARCHIVE}). "
            "Without it, use dataset 'cifar10', which downloads the official release."
        )
    return extract_tar(archive, destination, progress=progress)
