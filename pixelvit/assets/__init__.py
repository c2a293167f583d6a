"""Files shipped inside the package: one small trained model, so that predictions work offline.

    from pixelvit.assets import cifar10_model
    model = cifar10_model()                  # adventurer_nano, trained on CIFAR-10 at patch 4 (65 tokens)
    coarse = cifar10_model(patch_size=8)     # the same weights resampled to patch 8, no retraining (FlexiViT)

The model (about 1 MB: safetensors weights + config.json with the class names and the measured test
accuracy) is made by `tools/ship_cifar_model.py`; results/README.md gives the command and the numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

CIFAR10_MODEL = Path(__file__).parent / "cifar10_adventurer_nano"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cifar10_model(patch_size: int | None = None):
    """The shipped CIFAR-10 model in eval mode; `patch_size` resamples its patch and position embeddings."""
    from pixelvit.pretrained import load_pretrained

    return load_pretrained(CIFAR10_MODEL, patch_size=patch_size, verbose=False)


def cifar10_model_info() -> dict:
    """What config.json records about the shipped model: how it was trained and its measured test top-1."""
    return json.loads((CIFAR10_MODEL / "config.json").read_text())["shipped"]
