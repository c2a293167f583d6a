"""Train, measure and ship the small CIFAR-10 model that the explorer and notebook 05 use offline.

    OMP_NUM_THREADS=1 nice -n 10 python tools/ship_cifar_model.py   # train 10 epochs (83 min on one core beside other jobs), measure, ship
    python tools/ship_cifar_model.py --measure-only         # re-measure the shipped files only

Needs the course's CIFAR-10 copy (../shared/data/cifar10_jpeg.tar.gz, read in place, never copied here).
1. Trains adventurer_nano (64 wide x 4 deep, 0.25 M parameters) at patch 4 (65 tokens) with pixelvit's
   own trainer; the same run as
       pixelvit train --model adventurer_nano --dataset cifar10_jpeg --patch-size 4 --steps 7810 \\
           --batch-size 64 --lr 2e-3 --eval-every 781 --runs-dir ~/.cache/pixelvit/runs
2. Copies its weights (safetensors, about 1 MB) and config into pixelvit/assets/cifar10_adventurer_nano/,
   adding the class names (timm's `label_names`) so predictions read "cat", not "class 3".
3. Measures top-1 on the full 10,000-image test set at patch 4 and, on the first 2,000 test images, at
   patch 8, 4 and 2 (the weights resampled without retraining: FlexiViT, pixelvit.resample.resize_model);
   stores them in config.json ("shipped").
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from pixelvit.assets import CIFAR10_CLASSES, CIFAR10_MODEL, cifar10_model
from pixelvit.data import load_split
from pixelvit.io import WEIGHTS_NAME, atomic_write_json
from pixelvit.predict import accuracy, normalize

RECIPE = dict(model="adventurer_nano", dataset="cifar10_jpeg", patch_size=4, steps=7810, batch_size=64, lr=2e-3,
              seed=0)
COMMAND = ("pixelvit train --model adventurer_nano --dataset cifar10_jpeg --patch-size 4 --steps {steps} "
           "--batch-size 64 --lr 2e-3 --eval-every {eval_every} --runs-dir ~/.cache/pixelvit/runs")
EPOCH_STEPS = 781  # 50,000 training images / 64: evaluate on the test set once per epoch
PATCH_SIZES = (8, 4, 2)  # the trained one and one either side, resampled without retraining
COMPARE_IMAGES = 2000  # the first test images, for the patch-size comparison (patch 2 costs 4x per image)


def cifar10_test_top1(model, split=None, batch_size: int = 250) -> float:
    """Top-1 (%) on CIFAR-10's test set (cifar10_jpeg), pictures normalized as in training."""
    split = split or load_split("cifar10_jpeg", "test", progress=False)
    pictures = torch.from_numpy(split.images).permute(0, 3, 1, 2).float() / 255  # (N, 3, 32, 32) in [0, 1]
    return accuracy(model, normalize(model, pictures), torch.from_numpy(split.labels).long(), batch_size=batch_size)


def train_and_copy(steps: int) -> dict:
    from pixelvit.train import TrainConfig, train

    config = TrainConfig(**{**RECIPE, "steps": steps}, eval_every=EPOCH_STEPS,
                         runs_dir=str(Path("~/.cache/pixelvit/runs").expanduser()))
    result = train(config)
    source = Path(result.run_dir) / "model"
    meta = json.loads((source / "config.json").read_text())
    classes = tuple(load_split("cifar10_jpeg", "test", progress=False).classes)
    assert classes == CIFAR10_CLASSES, classes
    meta["pretrained_cfg"] = {"label_names": list(classes), "crop_pct": 1.0, "interpolation": "bicubic"}
    meta["shipped"] = {"command": COMMAND.format(steps=steps, eval_every=EPOCH_STEPS), "recipe": {**RECIPE, "steps": steps},
                       "train_wall_s": round(result.wall_s, 1), "train_top1_eval": round(result.top1, 2)}
    CIFAR10_MODEL.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / WEIGHTS_NAME, CIFAR10_MODEL / WEIGHTS_NAME)
    atomic_write_json(CIFAR10_MODEL / "config.json", meta)
    return meta


def measure(compare_images: int = COMPARE_IMAGES) -> dict:
    """Top-1 at the trained patch on the whole test set; the patch-size comparison on its first images."""
    split = load_split("cifar10_jpeg", "test", progress=False)
    start = time.perf_counter()
    full = round(cifar10_test_top1(cifar10_model(), split), 2)
    print(f"patch {RECIPE['patch_size']}: top-1 {full:.2f}% on {len(split.labels):,} test images "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    first = split.subset(compare_images)
    resampled = {}
    for patch_size in PATCH_SIZES:
        resampled[str(patch_size)] = round(cifar10_test_top1(cifar10_model(patch_size=patch_size), first), 2)
        print(f"  patch {patch_size}: top-1 {resampled[str(patch_size)]:.2f}% on the first {compare_images:,}", flush=True)
    meta = json.loads((CIFAR10_MODEL / "config.json").read_text())
    meta["shipped"].update(test_top1=full, test_images=len(split.labels),
                           resampled_top1=resampled, resampled_images=compare_images)
    atomic_write_json(CIFAR10_MODEL / "config.json", meta)
    return meta["shipped"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=RECIPE["steps"])
    parser.add_argument("--measure-only", action="store_true", help="re-measure the shipped model, no training")
    args = parser.parse_args(argv)
    if not args.measure_only:
        train_and_copy(args.steps)
    measure()
    size = sum(f.stat().st_size for f in CIFAR10_MODEL.iterdir())
    print(f"shipped {CIFAR10_MODEL} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
