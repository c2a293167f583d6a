"""Every model pixelvit knows, by name, and how to build it at any image and patch size.

    create_model("vit_nano", patch_size=2)          # 64 wide x 4 deep, 32x32 images, 10 classes: CPU-sized
    create_model("vit_tiny", patch_size=4, img_size=64, num_classes=10)
    create_model("adventurer_tiny_patch1")          # the official name: 224x224, every pixel a token
    create_model("adventurer_nano", chunk_size=32, grad_checkpointing=True)   # run-time settings
    list_models("adventurer_*")
    get_config("vit_small", patch_size=8)           # the dataclass, without building anything
    model_from_config("vit", dataclasses.asdict(model.config))   # rebuild (checkpoint loading)

Sizes follow the paper (Table 7). The "nano" and "micro" models are not from the paper: they are small
enough to train on a laptop CPU on 32x32 CIFAR-10 images, down to patch size 1.

Keyword arguments are of two kinds. Config fields (the dataclasses in vit.py and adventurer.py) are the architecture: saved with
the weights, part of a run's identity. Run-time settings (RUNTIME_ARGS: the scan kernel and chunk length,
gradient checkpointing, pooling, head dropout, device, dtype) change how the model runs, never what it
computes, and are never saved. Anything else is a TypeError, as in timm.

Names. Four kinds, each with users (notebooks, assignments, the README, timm's own API), so all four stay;
this is how they map:

    kind                    pixelvit (create_model)     timm (timm.create_model)         mapping
    a model                 adventurer_tiny_patch1      adventurer_tiny_patch1           the same name
    a paper-sized ViT       vit_tiny                    pixelvit_vit_tiny                registry.TIMM_NAMES
    a released checkpoint   adventurer_tiny_patch1_64   adventurer_tiny_patch1.in1k_64   registry.pretrained_tag

* Models: 21 names (MODELS in registry.py). Every one is the same in timm except vit_tiny, vit_small, vit_base
  and vit_large, which timm knows as pixelvit_vit_tiny & co.: timm has its own vit_tiny_patch16_224 & co. (the
  same architecture), and a bare vit_tiny among them would read as one of timm's. adventurer_<size> is
  adventurer_<size>_patch16, the official name (patch 16 is the default), and the official names spell out
  the patch: adventurer_tiny_patch1 is every pixel a token.
* Released checkpoints (pixelvit.catalog): the catalog name is the file's name, <model>_<input size>
  (adventurer_tiny_patch1_64.pth); pixelvit.load_pretrained and `pixelvit predict --model` take it. timm
  spells the same file as a pretrained tag, <model>.in1k_<input size>; load_pretrained takes that too.
  create_model(name, pretrained=True) loads the name's default tag (its largest input).

`import pixelvit` registers these models with timm: timm_registry.py holds one plain entry point per name,
`def adventurer_tiny_patch1(pretrained=False, **kwargs)` decorated with timm's register_model, so a reader who
greps for a name finds its function, and `timm.create_model("adventurer_nano")` works too.

Inside, bottom to top: layers.py and mamba2.py (building blocks), base.py (what timm expects of a model),
vit.py and adventurer.py (the two architectures), registry.py (names, configs, create_model: the MODELS table
lives there), timm_registry.py (the same names handed to timm). Nothing here imports pixelvit.pretrained:
timm's `pretrained=True` reads the file with pixelvit.checkpoints, which sits below the models.
"""

from __future__ import annotations

from pixelvit.models import timm_registry  # noqa: F401  (registers every model with timm)
from pixelvit.models.adventurer import Adventurer, AdventurerConfig, flipped_layers
from pixelvit.models.registry import (
    ARCHS,
    LEGACY_RUNTIME_KEYS,
    MODELS,
    RUNTIME_ARGS,
    ModelArgumentError,
    create_model,
    get_config,
    list_models,
    merge_overrides,
    model_from_config,
)
from pixelvit.models.vit import VisionTransformer, ViTConfig

__all__ = [
    "ARCHS",
    "LEGACY_RUNTIME_KEYS",
    "MODELS",
    "RUNTIME_ARGS",
    "Adventurer",
    "AdventurerConfig",
    "ModelArgumentError",
    "VisionTransformer",
    "ViTConfig",
    "create_model",
    "flipped_layers",
    "get_config",
    "list_models",
    "merge_overrides",
    "model_from_config",
]
