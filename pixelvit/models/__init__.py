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

Keyword arguments are of two kinds. Config fields (the dataclasses below) are the architecture: saved with
the weights, part of a run's identity. Run-time settings (RUNTIME_ARGS: the scan kernel and chunk length,
gradient checkpointing, pooling, head dropout, device, dtype) change how the model runs, never what it
computes, and are never saved. Anything else is a TypeError, as in timm.

`import pixelvit` registers these models with timm (pixelvit.models.timm_registry), so
`timm.create_model("adventurer_nano")` works too.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch

import torch.nn as nn

from pixelvit.models.adventurer import Adventurer, AdventurerConfig, flipped_layers
from pixelvit.models.vit import VisionTransformer, ViTConfig

# arch -> (config class, model class)
ARCHS = {
    "vit": (ViTConfig, VisionTransformer),
    "adventurer": (AdventurerConfig, Adventurer),
}
# keyword arguments of each model class that are not architecture (see the module docstring)
RUNTIME_ARGS = {
    "vit": ("global_pool", "drop_rate", "grad_checkpointing", "device", "dtype"),
    "adventurer": ("global_pool", "drop_rate", "grad_checkpointing", "device", "dtype", "scan_backend", "chunk_size"),
}
# Config keys that older pixelvit versions saved but that are run-time settings now: dropped when read.
LEGACY_RUNTIME_KEYS = ("grad_checkpointing", "scan_backend", "chunk_size")

# name -> (arch, config fields that differ from the dataclass defaults)
MODELS: dict[str, tuple[str, dict]] = {
    # CPU-sized, for 32x32 CIFAR-10 (patch 4 = 64 tokens by default; pass patch_size=1 for 1,024).
    # nano: 64 wide x 4 deep (~0.2 M parameters), what the sweeps, notebooks and committed results train;
    # at patch 2 (257 tokens) one epoch of CIFAR-10 took 566 s (ViT) and 769 s (Adventurer) on 2 shared
    # CPU cores (results/README.md).
    "vit_nano": ("vit", dict(img_size=32, patch_size=4, num_classes=10, embed_dim=64, depth=4, num_heads=4)),
    "vit_micro": ("vit", dict(img_size=32, patch_size=4, num_classes=10, embed_dim=128, depth=6, num_heads=4)),
    # paper Table 7 (DeiT sizes); head dim 64 throughout
    "vit_tiny": ("vit", dict(embed_dim=192, depth=12, num_heads=3)),
    "vit_small": ("vit", dict(embed_dim=384, depth=12, num_heads=6)),
    "vit_base": ("vit", dict(embed_dim=768, depth=12, num_heads=12)),
    "vit_large": ("vit", dict(embed_dim=1024, depth=24, num_heads=16)),
    # CPU-sized Adventurer, same widths and depths as vit_nano / vit_micro. d_state 16, headdim 32: 4 (nano)
    # or 8 (micro) heads with a 32x16 state each, 4x less state memory than 64x64; at these widths they
    # barely change the speed (the linear layers dominate). The scan's chunk length is a run-time setting
    # (None: ssd_scan picks 64 on CPU, where the reference scan's intra-chunk work grows with the chunk).
    "adventurer_nano": (
        "adventurer",
        dict(img_size=32, patch_size=4, num_classes=10, embed_dim=64, depth=4, d_state=16, headdim=32),
    ),
    "adventurer_micro": (
        "adventurer",
        dict(img_size=32, patch_size=4, num_classes=10, embed_dim=128, depth=6, d_state=16, headdim=32),
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
MODELS["adventurer_base_patch8"] = ("adventurer", dict(embed_dim=768, depth=12, patch_size=8))  # a released baseline


class ModelArgumentError(TypeError, ValueError):
    """An argument the model does not take, or one given twice. A TypeError as in timm (unknown keyword
    arguments), and a ValueError for callers that validate user input."""


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
        runtime = ", ".join(RUNTIME_ARGS[arch])
        raise ModelArgumentError(
            f"{config_cls.__name__} has no field(s) {unknown}; its fields are {sorted(valid)} "
            f"(run-time settings: {runtime})"
        )
    fields = dict(fields)
    if isinstance(fields.get("img_size"), list):  # a config that went through JSON
        fields["img_size"] = tuple(fields["img_size"])
    return config_cls(**fields)


def get_config(name: str, **overrides) -> ViTConfig | AdventurerConfig:
    """The config dataclass of a named model, with any field replaced by `overrides` (None = the default).

    `dataclasses.asdict(get_config(name, **overrides))` is the normalized form of a model choice: two
    spellings of the same architecture (patch_size=None, or the default written out) give the same dict.
    """
    if name not in MODELS:
        raise _unknown("model", name, MODELS)
    arch, fields = MODELS[name]
    return _make_config(arch, {**fields, **{k: v for k, v in overrides.items() if v is not None}})


def merge_overrides(explicit: dict, model_args: dict) -> dict:
    """Config overrides from named options (e.g. --patch-size) and free-form ones (--model-arg): one dict,
    or one clear error when both set the same field to different values. None in `explicit` = not given."""
    explicit = {k: v for k, v in explicit.items() if v is not None}
    clashes = [k for k in explicit if k in model_args and model_args[k] != explicit[k]]
    if clashes:
        parts = ", ".join(f"{k}={explicit[k]!r} and {k}={model_args[k]!r}" for k in clashes)
        raise ModelArgumentError(f"{parts} given twice (as an option and as a model argument): give each once")
    return {**model_args, **explicit}


def model_from_config(arch: str, config: dict, **runtime) -> nn.Module:
    """Rebuild a model from its arch and `dataclasses.asdict(model.config)` (how pixelvit saves it).

    Keys older versions saved that are run-time settings now (grad_checkpointing, scan_backend, chunk_size)
    are ignored, so an old folder saved with e.g. scan_backend="mamba_ssm" loads and runs on a CPU."""
    if arch not in ARCHS:
        raise _unknown("arch", arch, ARCHS)
    config = {k: v for k, v in config.items() if k not in LEGACY_RUNTIME_KEYS}
    return ARCHS[arch][1](_make_config(arch, config), **runtime)


def create_model(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """Build a named model: config fields override the architecture, run-time settings go to the model,
    None means "the model's default". pretrained=True loads the name's released weights (timm's default
    tag for it, see pixelvit.models.timm_registry); pixelvit.load_pretrained takes any checkpoint."""
    if pretrained:
        from pixelvit.models.timm_registry import create_pretrained

        return create_pretrained(name, **kwargs)
    if name not in MODELS:
        raise _unknown("model", name, MODELS)
    arch = MODELS[name][0]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    runtime = {k: kwargs.pop(k) for k in RUNTIME_ARGS[arch] if k in kwargs}
    model = ARCHS[arch][1](get_config(name, **kwargs), **runtime)
    # the name's cfg (paper ids, ...) with this instance's own input size and head
    model.pretrained_cfg = model.default_cfg = {**timm_registry.model_cfg(name), **model.pretrained_cfg,
                                                "architecture": name}
    return model


__all__ = [
    "ARCHS",
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

from pixelvit.models import timm_registry  # noqa: E402,F401  (registers every model with timm)
