"""Every model pixelvit knows, by name, and how to build it at any image and patch size.

    create_model("vit_tiny", patch_size=4, img_size=64, num_classes=10)
    create_model("adventurer_tiny_patch1")          # the official name: 224x224, every pixel a token
    list_models("adventurer_*")
    get_config("vit_small", patch_size=8)           # the dataclass, without building anything
    model_from_config("vit", dataclasses.asdict(model.config))   # rebuild (checkpoint loading)

Sizes follow the paper (Table 7). The "micro" models are not from the paper: they are small enough to
train on a laptop CPU on 32x32 CIFAR-10 images, down to patch size 1.

Importing this module registers the Adventurer names with timm, so `timm.create_model(
"adventurer_tiny_patch16")` works too. The ViT names are not registered: timm has its own vit_* models.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch

import torch.nn as nn
from timm.models import register_model

from pixelvit.models.adventurer import Adventurer, AdventurerConfig, flipped_layers
from pixelvit.models.vit import VisionTransformer, ViTConfig

# arch -> (config class, model class)
ARCHS = {
    "vit": (ViTConfig, VisionTransformer),
    "adventurer": (AdventurerConfig, Adventurer),
}

# name -> (arch, config fields that differ from the dataclass defaults)
MODELS: dict[str, tuple[str, dict]] = {
    # CPU-sized, for 32x32 CIFAR-10 (patch 4 = 64 tokens by default; pass patch_size=1 for 1,024)
    "vit_micro": ("vit", dict(img_size=32, patch_size=4, num_classes=10, embed_dim=128, depth=6, num_heads=4)),
    # paper Table 7 (DeiT sizes); head dim 64 throughout
    "vit_tiny": ("vit", dict(embed_dim=192, depth=12, num_heads=3)),
    "vit_small": ("vit", dict(embed_dim=384, depth=12, num_heads=6)),
    "vit_base": ("vit", dict(embed_dim=768, depth=12, num_heads=12)),
    "vit_large": ("vit", dict(embed_dim=1024, depth=24, num_heads=16)),
    # CPU-sized Adventurer, same width and depth as vit_micro. Mixer choices, measured on 2 busy CPU cores at
    # 32x32, patch 1 (1,026 tokens through the mixer), batch 8, forward + backward:
    #   chunk_size 64 (pixelvit.ops.ssd.CPU_CHUNK_SIZE): ~5.4 s a step, against ~10-12 s with the GPU
    #     kernels' 256, because the reference scan's intra-chunk work grows with the chunk length;
    #   d_state 16, headdim 32: 8 heads (as in Tiny) with a 32x16 state each, 4x less state memory than
    #     64x64; at this width they barely change the speed (the linear layers dominate).
    "adventurer_micro": (
        "adventurer",
        dict(img_size=32, patch_size=4, num_classes=10, embed_dim=128, depth=6, d_state=16, headdim=32, chunk_size=64),
    ),
}
_ADVENTURER_SIZES = {"tiny": (256, 12), "small": (512, 12), "base": (768, 12), "large": (1024, 24)}
for _size, (_dim, _depth) in _ADVENTURER_SIZES.items():
    MODELS[f"adventurer_{_size}"] = ("adventurer", dict(embed_dim=_dim, depth=_depth))
for _size, (_dim, _depth) in _ADVENTURER_SIZES.items():
    # the official names (wangf3014/Patch_Scaling): 224x224 images, patch 16 or patch 1
    for _patch in (16, 1):
        MODELS[f"adventurer_{_size}_patch{_patch}"] = (
            "adventurer",
            dict(embed_dim=_dim, depth=_depth, patch_size=_patch),
        )


def list_models(pattern: str = "*") -> list[str]:
    """Model names matching a shell-style pattern, e.g. "vit_*" or "*_patch1"."""
    return sorted(name for name in MODELS if fnmatch.fnmatch(name, pattern))


def _unknown(kind: str, value: str, known) -> ValueError:
    close = difflib.get_close_matches(value, list(known), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(known))}"
    return ValueError(f"unknown {kind} {value!r}{hint}")


def _make_config(arch: str, fields: dict):
    config_cls = ARCHS[arch][0]
    valid = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(fields) - valid)
    if unknown:
        raise ValueError(f"{config_cls.__name__} has no field(s) {unknown}; its fields are {sorted(valid)}")
    fields = dict(fields)
    if isinstance(fields.get("img_size"), list):  # a config that went through JSON
        fields["img_size"] = tuple(fields["img_size"])
    return config_cls(**fields)


def get_config(name: str, **overrides) -> ViTConfig | AdventurerConfig:
    """The config dataclass of a named model, with any field replaced by `overrides`."""
    if name not in MODELS:
        raise _unknown("model", name, MODELS)
    arch, fields = MODELS[name]
    return _make_config(arch, {**fields, **overrides})


def model_from_config(arch: str, config: dict) -> nn.Module:
    """Rebuild a model from its arch and `dataclasses.asdict(model.config)` (how checkpoints store it)."""
    if arch not in ARCHS:
        raise _unknown("arch", arch, ARCHS)
    return ARCHS[arch][1](_make_config(arch, config))


def create_model(name: str, img_size=None, patch_size=None, num_classes=None, pretrained: bool = False, **overrides):
    """Build a named model; any config field can be overridden (None means "the model's default")."""
    if pretrained:
        raise NotImplementedError("use pixelvit.load_pretrained")
    given = dict(img_size=img_size, patch_size=patch_size, num_classes=num_classes)
    config = get_config(name, **{k: v for k, v in given.items() if v is not None}, **overrides)
    return ARCHS[MODELS[name][0]][1](config)


# ---- timm registration: timm.create_model("adventurer_tiny_patch16", num_classes=10) ----------------

_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _timm_entrypoint(name: str):
    def entrypoint(pretrained=False, **kwargs):
        for key in _TIMM_ONLY_KWARGS:  # timm passes these to every entrypoint; pixelvit has no use for them
            kwargs.pop(key, None)
        return create_model(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name  # timm registers a function under its __name__
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"pixelvit's {name}: {MODELS[name][1]}"
    return entrypoint


__all__ = [
    "ARCHS",
    "MODELS",
    "Adventurer",
    "AdventurerConfig",
    "VisionTransformer",
    "ViTConfig",
    "create_model",
    "flipped_layers",
    "get_config",
    "list_models",
    "model_from_config",
]  # register_model below appends each Adventurer name

for _name in list_models("adventurer_*"):
    globals()[_name] = register_model(_timm_entrypoint(_name))
