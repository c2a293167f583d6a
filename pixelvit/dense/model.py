"""A segmentation model = a pixelvit backbone (ViT or Adventurer, any patch size) + a head, by name.

    create_segmentation_model("vit_nano_seg_linear", img_size=16, patch_size=2, num_classes=6)
    create_segmentation_model("adventurer_nano_seg_decoder", img_size=32, patch_size=4, num_classes=10)
    list_segmentation_models("*_nano_*")

A name is `<backbone>_seg_<head>`: any backbone name of pixelvit.models (the paper's sizes and the CPU-sized
nano/micro ones) and a head of pixelvit.dense.heads.HEADS (linear, pixelshuffle, decoder). The names are also
registered with timm, so `timm.create_model("vit_nano_seg_decoder", img_size=16, patch_size=4)` works.

    images (B, 3, H, W) -> backbone blocks -> patch tokens of some blocks as maps (B, D, H/p, W/p)
                        -> head -> logits (B, classes, H, W)

The config dataclass holds the architecture only: the backbone's arch and config fields (with no
classification head) and the head's; `pixelvit.io.save_model` stores it, `segmentation_model_from_config`
rebuilds it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from pixelvit.dense.heads import HEADS, DecoderHead, LinearHead, dense_features, feature_indices


@dataclass
class SegmentationConfig:
    backbone_arch: str = "vit"  # "vit" | "adventurer" (pixelvit.models.ARCHS)
    backbone: dict = field(default_factory=dict)  # the backbone's other config fields (embed_dim, depth, ...)
    img_size: int | tuple[int, int] = 224  # the backbone's, at the top so that runs and sweeps can read them
    patch_size: int = 16
    num_classes: int = 150  # classes per pixel (ADE20k has 150); the backbone itself has no classifier
    head: str = "linear"  # linear | pixelshuffle | decoder (pixelvit.dense.heads.HEADS)
    decoder_levels: int = 4  # decoder: how many blocks it fuses (spread evenly, ending at the last)
    decoder_width: int = 64  # decoder: channels of its convolutions

    def backbone_fields(self) -> dict:
        grid = dict(img_size=self.img_size, patch_size=self.patch_size, num_classes=0)
        return {**self.backbone, **grid}


class SegmentationModel(nn.Module):
    arch = "segmentation"

    def __init__(self, config: SegmentationConfig, **runtime):
        """`runtime`: the backbone's run-time settings (pixelvit.models.RUNTIME_ARGS, e.g. chunk_size)."""
        super().__init__()
        from pixelvit.models import model_from_config

        if config.head not in HEADS:
            raise ValueError(f"unknown head {config.head!r}; choose from {sorted(HEADS)}")
        self.config = config
        self.backbone = model_from_config(config.backbone_arch, config.backbone_fields(), **runtime)
        dim, p, depth = self.backbone.embed_dim, config.patch_size, len(self.backbone.trunk)
        if config.head == "decoder":
            self.indices = feature_indices(depth, config.decoder_levels)
            self.head = DecoderHead(dim, config.num_classes, p, len(self.indices), config.decoder_width)
        else:
            self.indices = [depth - 1]
            upsample = "pixel_shuffle" if config.head == "pixelshuffle" else "bilinear"
            self.head = LinearHead(dim, config.num_classes, p, upsample)

    # what pixelvit.train reads of any model
    @property
    def num_tokens(self) -> int:
        return self.backbone.num_tokens

    def set_grad_checkpointing(self, enable: bool = True):
        self.backbone.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{name}" for name in self.backbone.no_weight_decay()}

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        return dense_features(self.backbone, images, self.indices)  # each (B, D, H/p, W/p)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))  # (B, classes, H, W)

    def extra_repr(self) -> str:
        return f"head={self.config.head!r}, blocks read={self.indices}"


# ---- names ----------------------------------------------------------------------------------------

SEPARATOR = "_seg_"


def backbone_names() -> list[str]:
    """Backbones a segmentation name may use: every pixelvit.models name except the official-release aliases."""
    from pixelvit.models import list_models

    return [name for name in list_models() if "_patch" not in name]


def list_segmentation_models(pattern: str = "*") -> list[str]:
    names = [f"{backbone}{SEPARATOR}{head}" for backbone in backbone_names() for head in HEADS]
    return sorted(name for name in names if fnmatch.fnmatch(name, pattern))


def parse_name(name: str) -> tuple[str, str]:
    """"vit_nano_seg_decoder" -> ("vit_nano", "decoder"); a clear ValueError for anything else."""
    backbone, separator, head = name.rpartition(SEPARATOR)
    if not separator or head not in HEADS or backbone not in backbone_names():
        raise ValueError(
            f"unknown segmentation model {name!r}: expected <backbone>{SEPARATOR}<head> with a backbone from "
            f"{backbone_names()} and a head from {sorted(HEADS)}, e.g. vit_nano{SEPARATOR}linear"
        )
    return backbone, head


def is_segmentation_name(name: str) -> bool:
    try:
        parse_name(name)
    except ValueError:
        return False
    return True


HEAD_FIELDS = ("decoder_levels", "decoder_width")


def segmentation_config(name: str, img_size=None, patch_size=None, num_classes: int | None = None,
                        **overrides) -> tuple[SegmentationConfig, dict]:
    """(the config of `<backbone>_seg_<head>`, the backbone's run-time settings); see create_segmentation_model."""
    from pixelvit.models import MODELS, RUNTIME_ARGS, get_config

    backbone, head = parse_name(name)
    arch = MODELS[backbone][0]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    head_args = {key: overrides.pop(key) for key in HEAD_FIELDS if key in overrides}
    runtime = {key: overrides.pop(key) for key in RUNTIME_ARGS[arch] if key in overrides}
    fields = dataclasses.asdict(get_config(backbone, img_size=img_size, patch_size=patch_size, **overrides))
    grid = {key: fields.pop(key) for key in ("img_size", "patch_size")}
    fields.pop("num_classes")
    config = SegmentationConfig(backbone_arch=arch, backbone=fields, **grid, head=head,
                                num_classes=num_classes or SegmentationConfig.num_classes, **head_args)
    return config, runtime


def create_segmentation_model(name: str, img_size=None, patch_size=None, num_classes: int | None = None,
                              **overrides) -> SegmentationModel:
    """Build `<backbone>_seg_<head>`. `overrides`: backbone config fields, the backbone's run-time settings
    (pixelvit.models.RUNTIME_ARGS, e.g. chunk_size, grad_checkpointing) and decoder_levels / decoder_width."""
    config, runtime = segmentation_config(name, img_size, patch_size, num_classes, **overrides)
    return SegmentationModel(config, **runtime)


def segmentation_model_from_config(config: dict, **runtime) -> SegmentationModel:
    """Rebuild from `dataclasses.asdict(model.config)`, as pixelvit.io.save_model stores it."""
    return SegmentationModel(SegmentationConfig(**config), **runtime)


def load_segmentation_model(directory, **runtime) -> SegmentationModel:
    """A model folder written by pixelvit.io.save_model (a run's model/ or a checkpoint) -> the model, weights loaded.

    `runtime`: the backbone's run-time settings (never saved), e.g. chunk_size=16."""
    from pixelvit.io import read_model_files

    meta, state = read_model_files(directory)
    if meta.get("arch") != SegmentationModel.arch:
        raise ValueError(f"{directory} holds a {meta.get('arch')!r} model, not a segmentation model")
    model = segmentation_model_from_config(meta["config"], **runtime)
    model.load_state_dict(state)
    return model


# ---- timm registration: timm.create_model("vit_nano_seg_linear", img_size=16, patch_size=2) ----------

_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _timm_entrypoint(name: str):
    def entrypoint(pretrained=False, **kwargs):
        if pretrained:
            raise NotImplementedError("no pretrained segmentation weights exist for pixelvit models")
        for key in _TIMM_ONLY_KWARGS:
            kwargs.pop(key, None)
        return create_segmentation_model(name, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"pixelvit segmentation model {name}"
    return entrypoint


def register_with_timm() -> list[str]:
    """Register every segmentation name with timm (once); returns the names."""
    from timm.models import is_model, register_model

    names = list_segmentation_models()
    for name in names:
        if not is_model(name):
            globals()[name] = register_model(_timm_entrypoint(name))
    return names


# ---- compute ------------------------------------------------------------------------------------------


def segmentation_gflops(model: SegmentationModel) -> dict:
    """Forward GFLOPs per image: the backbone from pixelvit.costs (analytic, attention / scan included) and
    the head counted by torch's FlopCounterMode on one image's features (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    from pixelvit.costs import estimate

    backbone = estimate(model.backbone)["flops"]
    height, width = model.backbone.patch_embed.img_size
    with torch.no_grad():
        reference = next(model.parameters())
        features = model.features(torch.zeros(1, 3, height, width, device=reference.device, dtype=reference.dtype))
        with FlopCounterMode(display=False) as counter:
            model.head(features)
    head = counter.get_total_flops()
    return {"backbone_gflops": backbone / 1e9, "head_gflops": head / 1e9, "gflops": (backbone + head) / 1e9}


register_with_timm()  # importing pixelvit.dense makes timm.create_model("vit_nano_seg_linear", ...) work
