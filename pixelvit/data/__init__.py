"""Data for pixelvit: datasets by name as uint8 arrays, and reproducible, resumable batches.

    load_split(name, split, img_size)   pixelvit.data.catalog   specks | cifar10 | cifar100 | cifar10_jpeg | folder:<path>
    ImageArrays                         pixelvit.data.arrays    images uint8 (N, H, W, 3), labels, class names
    ArrayImageDataset, EpochBatchSampler, make_loader           pixelvit.data.loading
"""

from pixelvit.data.arrays import ImageArrays
from pixelvit.data.catalog import (
    default_augmentation,
    default_img_size,
    list_datasets,
    load_split,
)
from pixelvit.data.loading import (
    AUGMENTATIONS,
    ArrayImageDataset,
    EpochBatchSampler,
    EvalBatchSampler,
    Upsampled,
    make_loader,
    train_transform,
)
from pixelvit.data.locations import DatasetNotFoundError, data_root, shared_data_dir

__all__ = [
    "AUGMENTATIONS", "ArrayImageDataset", "DatasetNotFoundError", "EpochBatchSampler", "EvalBatchSampler",
    "ImageArrays", "data_root", "default_augmentation", "default_img_size", "list_datasets", "load_split",
    "make_loader", "shared_data_dir", "train_transform", "Upsampled",
]
