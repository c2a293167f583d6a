"""The small CIFAR-10 model shipped in pixelvit/assets: it loads offline, is small, names CIFAR's classes,
and its accuracy on the CIFAR-10 test set is the one results/README.md states (when ../shared is present)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

from pixelvit.assets import CIFAR10_CLASSES, CIFAR10_MODEL, cifar10_model, cifar10_model_info
from pixelvit.data.locations import shared_data_dir

REPO = Path(__file__).resolve().parents[1]
README_TOP1 = re.compile(r"Test top-1 of the shipped model[^*]*\*\*([\d.]+) %\*\*")


def test_shipped_model_loads_offline_and_is_small():
    files = {f.name: f.stat().st_size for f in CIFAR10_MODEL.iterdir()}
    assert set(files) == {"model.safetensors", "config.json"}
    assert sum(files.values()) < 2_000_000
    model = cifar10_model()
    assert model.config.patch_size == 4 and model.patch_embed.img_size == (32, 32)
    assert tuple(model.pretrained_cfg["label_names"]) == CIFAR10_CLASSES
    assert torch.isfinite(torch.cat([p.flatten() for p in model.parameters()])).all()


def test_shipped_model_names_cifar_classes_and_resamples():
    from pixelvit import explorer

    for patch_size in (4, 8, 2):
        view = explorer.compute_view("chelsea", patch_size, "checkpoint: cifar10_adventurer_nano")
        assert view.tokens == (32 // patch_size) ** 2 + 1
        assert [name for _, _, name in view.predictions] and all(n in CIFAR10_CLASSES for _, _, n in view.predictions)
        assert (patch_size != 4) == any("resampled" in note for note in view.notes)


def test_shipped_model_gets_the_demo_cat_right_at_its_own_patch_size():
    """Notebooks 05 and 07 start the resampling lesson from a correct answer: the cat photo is a cat at
    patch 4 (the model shipped before this one called it a frog, 54 %)."""
    from pixelvit import explorer

    view = explorer.compute_view("chelsea", 4, "checkpoint: cifar10_adventurer_nano")
    probability, _, label = view.predictions[0]
    assert label == "cat" and probability > 0.3


@pytest.mark.shared_data
@pytest.mark.skipif(not (shared_data_dir() / "cifar10_jpeg.tar.gz").exists(),
                    reason="needs ../shared/data/cifar10_jpeg.tar.gz (the course's CIFAR-10 copy)")
def test_shipped_accuracy_matches_results_readme():
    sys.path.insert(0, str(REPO / "tools"))
    from ship_cifar_model import cifar10_test_top1

    stated = README_TOP1.search((REPO / "results" / "README.md").read_text())
    assert stated, "results/README.md should state the shipped model's test top-1"
    recorded = cifar10_model_info()
    assert recorded["test_images"] == 10_000
    measured = cifar10_test_top1(cifar10_model())  # all 10,000 test images, at the trained patch size
    assert measured == pytest.approx(float(stated.group(1)), abs=0.02)  # 0.02 points: 2 of 10,000 images
    assert measured == pytest.approx(recorded["test_top1"], abs=0.02)
