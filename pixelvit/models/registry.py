"""The registry of pixelvit's models: names -> (architecture, config), and the functions that build them.

pixelvit.models re-exports everything here (read its docstring for examples); pixelvit.models.timm_registry
hands the same names to timm. This module imports the model classes and nothing above them.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch

import torch.nn as nn

from pixelvit.catalog import Checkpoint
from pixelvit.models.adventurer import Adventurer, AdventurerConfig
from pixelvit.models.base import data_cfg
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
    # at patch 2 (257 tokens) 800 steps of 64 images (about one epoch of CIFAR-10) took 465 s (ViT) and
    # 1,158 s (Adventurer) on 2 shared CPU cores (wall_s in results/cifar10_{vit,adventurer}_nano/results.csv;
    # tests/test_prose.py checks these two numbers against those files).
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
        return create_pretrained(name, **kwargs)
    if name not in MODELS:
        raise _unknown("model", name, MODELS)
    arch = MODELS[name][0]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    runtime = {k: kwargs.pop(k) for k in RUNTIME_ARGS[arch] if k in kwargs}
    model = ARCHS[arch][1](get_config(name, **kwargs), **runtime)
    # the name's cfg (paper ids, ...) with this instance's own input size and head
    model.pretrained_cfg = model.default_cfg = {**model_cfg(name), **model.pretrained_cfg, "architecture": name}
    return model


# ---------------------------------------------------------------------------------------------
# The same models under timm's names (pixelvit.models.timm_registry registers them)
# ---------------------------------------------------------------------------------------------
PAPER = dict(paper_ids="arXiv:2502.03738", paper_name="Scaling Laws in Patchification: An Image Is Worth 50,176 "
             "Tokens And More")
# pixelvit name -> timm name: the same, except the four paper-sized ViTs (timm has its own vit_tiny & co.)
TIMM_NAMES = {name: f"pixelvit_{name}" if name in ("vit_tiny", "vit_small", "vit_base", "vit_large") else name
              for name in MODELS}


def model_cfg(name: str, **extra) -> dict:
    """The pretrained cfg of a named model without weights (or the base of a tag's cfg)."""
    return {**data_cfg(get_config(name)), **PAPER, **extra}


def pretrained_tag(entry: Checkpoint) -> str | None:
    """The timm name of a released checkpoint: adventurer_tiny_patch1_64 -> 'adventurer_tiny_patch1.in1k_64'
    (None for a catalog entry whose model and patch size have no registered name)."""
    name = TIMM_NAMES.get(f"{entry.model}_patch{entry.patch_size}")
    return f"{name}.in1k_{entry.img_size}" if name else None


def create_pretrained(name: str, **kwargs) -> nn.Module:
    """pixelvit.create_model(name, pretrained=True): the name's default released weights, through timm
    (whose registry holds pixelvit's names once pixelvit.models is imported, as it is before this module)."""
    import timm

    timm_name = TIMM_NAMES.get(name.split(".")[0], name)
    tagged = timm.list_pretrained(f"{timm_name}.*")
    if not tagged:
        released = [n for n in timm.list_pretrained("*") if n.split(".")[0] in TIMM_NAMES.values()]
        raise ValueError(f"{name} has no released weights; these do: {', '.join(released)}. Local files, URLs "
                         "and training checkpoints: pixelvit.load_pretrained.")
    return timm.create_model(timm_name, pretrained=True, **kwargs)
