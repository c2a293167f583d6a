"""From uint8 arrays to normalised training batches: augmentation, a resumable order, and loaders.

    ArrayImageDataset[(index, epoch)]  ->  (uint8 (3, H, W), label)     augmentation per sample
    EpochBatchSampler                  ->  which samples form each batch, a pure function of (seed, epoch)
    timm PrefetchLoader                ->  float batches on the device, normalised there

Two choices make runs reproducible and resumable mid-epoch:

* The order of an epoch is `permutation(seed, epoch)`, so a run resumed at step s can rebuild the
  epoch and skip its first batches instead of replaying them.
* Every sample's augmentation draws from its own random generator, seeded by (seed, epoch, index),
  and leaves the global generators alone. The same sample is augmented identically whether it is
  loaded in a worker process or not, before or after a resume, by one process or by two (DDP).

Augmentation uses timm's transform factory and its pieces. timm's transforms take PIL images, so
each uint8 array is wrapped as one (cheap at these sizes); they end in `MaybePILToTensor`, which keeps
uint8, and timm's `PrefetchLoader` normalises the whole batch at once on the device, the way timm's
own training script does with `use_prefetcher`.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.loader import PrefetchLoader
from timm.data.transforms import MaybePILToTensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms

from pixelvit.data.arrays import ImageArrays

AUGMENTATIONS = {
    "none": "no augmentation (specks: its classes live in exact pixel colours)",
    "light": "random crop after reflect-padding by 1/8 of the size, horizontal flip (CIFAR recipe)",
    "timm": "timm's ImageNet training transform: random resized crop (35-100 %), flip, colour jitter",
}
# Normalisation: timm's ImageNet statistics for every dataset, so weights move between datasets and
# timm checkpoints without a change of input statistics.
MEAN, STD = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD


def train_transform(augmentation: str, img_size: int):
    """PIL image -> uint8 tensor (3, H, W) with random augmentation, or None for no augmentation."""
    if augmentation == "none":
        return None
    if augmentation == "light":
        return transforms.Compose([
            transforms.RandomCrop(img_size, padding=max(1, img_size // 8), padding_mode="reflect"),
            transforms.RandomHorizontalFlip(),
            MaybePILToTensor(),  # timm: PIL -> uint8 tensor, normalised later per batch
        ])
    if augmentation == "timm":
        return create_transform(img_size, is_training=True, scale=(0.35, 1.0), interpolation="bicubic",
                                color_jitter=0.3, use_prefetcher=True)
    raise ValueError(f"unknown augmentation {augmentation!r}; choose from {sorted(AUGMENTATIONS)}")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


@contextlib.contextmanager
def private_random_state(seed: int):
    """Seed python's and torch's global generators inside the block, and restore them after it.

    torchvision's random transforms draw from torch's global generator and timm's from python's
    `random`; this gives them a per-sample stream without disturbing the training loop's.
    """
    python_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)


class ArrayImageDataset(Dataset):
    """Samples of an ImageArrays, indexed by (index, epoch) so that augmentation is reproducible."""

    def __init__(self, arrays: ImageArrays, transform=None, seed: int = 0):
        self.arrays, self.transform, self.seed = arrays, transform, seed

    def __len__(self) -> int:
        return len(self.arrays)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image, label = self.arrays.images[index], int(self.arrays.labels[index])
        if self.transform is None:
            return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), label  # (3, H, W) uint8
        with private_random_state(sample_seed(self.seed, epoch, index)):
            return self.transform(Image.fromarray(image)), label


class Upsampled(Dataset):
    """Every image of `dataset` upsampled `factor` times per side (bicubic, still uint8): more pixels, no
    new information. The training transform runs first, at the stored size."""

    def __init__(self, dataset: Dataset, factor: int):
        self.dataset, self.factor = dataset, factor

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        image, target = self.dataset[key]  # uint8 (3, H, W)
        larger = F.interpolate(image[None].float(), scale_factor=self.factor, mode="bicubic", align_corners=False)
        return larger[0].round().clamp(0, 255).to(torch.uint8), target  # uint8 (3, factor*H, factor*W)


class EpochBatchSampler(Sampler):
    """The batches of one epoch as lists of (index, epoch), this process's share of each.

    The epoch's order is a fixed permutation of (seed, epoch); batch b holds positions
    [b * batch_size, (b + 1) * batch_size) of it (the last incomplete batch is dropped), and with
    `world_size` processes each takes a contiguous 1/world_size of every batch. Start at
    `start_batch` to resume in the middle of an epoch.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, epoch: int, start_batch: int = 0,
                 rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} is not divisible by the {world_size} processes")
        if num_samples < batch_size:
            raise ValueError(f"{num_samples} training samples are fewer than one batch of {batch_size}")
        self.num_samples, self.batch_size, self.seed, self.epoch = num_samples, batch_size, seed, epoch
        self.start_batch, self.rank, self.world_size = start_batch, rank, world_size

    def batches_per_epoch(self) -> int:
        return self.num_samples // self.batch_size

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_samples)
        share = self.batch_size // self.world_size
        for batch in range(self.start_batch, self.batches_per_epoch()):
            start = batch * self.batch_size + self.rank * share
            yield [(int(index), self.epoch) for index in order[start:start + share]]


class EvalBatchSampler(Sampler):
    """Every sample once, in order, this process's share (indices rank, rank + world_size, ...)."""

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, num_samples, world_size))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self):
        for start in range(0, len(self.indices), self.batch_size):
            yield self.indices[start:start + self.batch_size]


def make_loader(dataset: Dataset, batch_sampler: Sampler, device, num_workers: int = 0) -> PrefetchLoader:
    """Batches of float images normalised on `device`, with integer labels.

    `num_workers`: 0 decodes in the training process (best on 1-2 cores with small images);
    1-2 workers help once augmentation of larger images costs more than a training step.
    """
    device = torch.device(device)
    loader = DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
        # a private generator: creating a loader must not draw from torch's global generator,
        # which a resumed run restores exactly (DataLoader draws a base seed for its workers)
        generator=torch.Generator().manual_seed(0),
    )
    return PrefetchLoader(loader, mean=MEAN, std=STD, device=device)
