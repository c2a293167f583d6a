"""pixelvit's models as timm models: names, pretrained cfgs (with the released checkpoints as tags), builders.

    import pixelvit, timm
    timm.create_model("adventurer_nano", drop_rate=0.1)                       # any pixelvit model ...
    timm.create_model("adventurer_tiny_patch1.in1k_64", pretrained=True)      # ... or released weights
    timm.list_pretrained("adventurer*")                                       # all 17 releases
    timm.create_model("vit_nano", features_only=True, out_indices=(1, 3))     # per-block feature maps

One entry point per pixelvit name, written out below (`def adventurer_nano(pretrained=False, **kwargs)`),
each under the same name, except the four paper-sized ViTs: timm's own `vit_tiny_patch16_224` & co. are the
same architecture (same parameter names), and a bare `vit_tiny` next to them would invite confusion, so timm
reaches pixelvit's class as `pixelvit_vit_tiny`, ... (TIMM_NAMES; pixelvit.models' docstring has the table
of all the names).

Each model's `pretrained_cfg` says how to feed it (input size, mean/std, crop, interpolation) in the keys
timm's `resolve_data_config` reads; `fixed_input_size` is True because the position embedding has one
vector per grid position (pixelvit.resample.resize_model moves a model to another size). A pretrained tag
is `in1k_<input size>`: `adventurer_base_patch1.in1k_224` is the released `adventurer_base_patch1_224.pth`.
Its weights come from the Hugging Face hub through timm (huggingface_hub, so HF_ENDPOINT / HF_HUB_OFFLINE
apply) and are read by pixelvit's safe loader (`PatchTokenModel.load_pretrained`): no code from the file runs.
"""

from __future__ import annotations

from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from pixelvit.catalog import CATALOG
from pixelvit.models.registry import (  # noqa: F401  (TIMM_NAMES & co. have always been importable from here)
    MODELS,
    PAPER,
    TIMM_NAMES,
    create_model,
    create_pretrained,
    get_config,
    model_cfg,
    pretrained_tag,
)


def _released_cfgs() -> dict:
    """'<timm name>.in1k_<size>' -> cfg, for every released checkpoint in pixelvit.catalog."""
    cfgs = {}
    for entry in sorted(CATALOG.values(), key=lambda e: -e.img_size):  # the largest input is each name's default
        name = f"{entry.model}_patch{entry.patch_size}"
        if pretrained_tag(entry) is None:
            continue
        cfgs[pretrained_tag(entry)] = model_cfg(
            name, input_size=(3, entry.img_size, entry.img_size), crop_pct=entry.crop_pct,
            hf_hub_id=entry.repo_id, hf_hub_filename=entry.filename,
            custom_load="hf",  # timm downloads the file, then calls model.load_pretrained(path): pixelvit's safe loader
            origin_url=entry.source, notes=(f"ImageNet-1k top-1 {entry.top1} % as reported by the authors",),
        )
    return cfgs


# timm's register_model reads `default_cfgs` from the module that defines each entrypoint
_RELEASED = _released_cfgs()
_WITH_WEIGHTS = {key.split(".")[0] for key in _RELEASED}
default_cfgs = generate_default_cfgs({
    **_RELEASED,
    **{TIMM_NAMES[n]: model_cfg(n) for n in MODELS if TIMM_NAMES[n] not in _WITH_WEIGHTS},  # untagged: no weights
})


def _build(name: str, pretrained: bool = False, **kwargs):
    """What every entry point below does: timm's build_model_with_cfg around pixelvit's create_model(name)."""

    def model_cls(img_size=None, **model_kwargs):
        if isinstance(img_size, (tuple, list)) and len(set(img_size)) == 1:
            img_size = img_size[0]  # timm passes input_size[-2:]; keep the config's plain int for squares
        return create_model(name, img_size=img_size, **model_kwargs)

    out_indices = kwargs.pop("out_indices", get_config(name).depth)  # features_only: every block by default
    model = build_model_with_cfg(
        model_cls, TIMM_NAMES[name], pretrained,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs,
    )
    # the cfg describes the name's default size; this instance may have been built at another one
    patch_embed = getattr(model, "model", model).patch_embed  # (features_only wraps the model)
    model.pretrained_cfg["input_size"] = (patch_embed.in_chans, *patch_embed.img_size)
    return model


# ---------------------------------------------------------------------------------------------
# The entry points: one per name of pixelvit.models.registry.MODELS (tests/test_timm_contract.py checks
# that none is missing and that timm's registry holds these very functions)
# ---------------------------------------------------------------------------------------------


# CPU-sized, 32x32 CIFAR-10 images (MODELS in pixelvit.models.registry has the sizes and why)
@register_model
def vit_nano(pretrained=False, **kwargs):
    """ViT 64 wide x 4 deep, 4 heads; 32x32 images, patch 4, 10 classes."""
    return _build("vit_nano", pretrained, **kwargs)


@register_model
def vit_micro(pretrained=False, **kwargs):
    """ViT 128 wide x 6 deep, 4 heads; 32x32 images, patch 4, 10 classes."""
    return _build("vit_micro", pretrained, **kwargs)


@register_model
def adventurer_nano(pretrained=False, **kwargs):
    """Adventurer 64 wide x 4 deep; 32x32 images, patch 4, 10 classes."""
    return _build("adventurer_nano", pretrained, **kwargs)


@register_model
def adventurer_micro(pretrained=False, **kwargs):
    """Adventurer 128 wide x 6 deep; 32x32 images, patch 4, 10 classes."""
    return _build("adventurer_micro", pretrained, **kwargs)


# the paper's ViTs (DeiT sizes, 224x224, patch 16 by default): `pixelvit_` + the pixelvit name, beside timm's own vit_*
@register_model
def pixelvit_vit_tiny(pretrained=False, **kwargs):
    """pixelvit's vit_tiny: ViT 192 wide x 12 deep, 3 heads; 224x224 images, patch 16, 1000 classes."""
    return _build("vit_tiny", pretrained, **kwargs)


@register_model
def pixelvit_vit_small(pretrained=False, **kwargs):
    """pixelvit's vit_small: ViT 384 wide x 12 deep, 6 heads; 224x224 images, patch 16, 1000 classes."""
    return _build("vit_small", pretrained, **kwargs)


@register_model
def pixelvit_vit_base(pretrained=False, **kwargs):
    """pixelvit's vit_base: ViT 768 wide x 12 deep, 12 heads; 224x224 images, patch 16, 1000 classes."""
    return _build("vit_base", pretrained, **kwargs)


@register_model
def pixelvit_vit_large(pretrained=False, **kwargs):
    """pixelvit's vit_large: ViT 1024 wide x 24 deep, 16 heads; 224x224 images, patch 16, 1000 classes."""
    return _build("vit_large", pretrained, **kwargs)


# the paper's Adventurers at patch 16 by default (224x224)
@register_model
def adventurer_tiny(pretrained=False, **kwargs):
    """Adventurer 256 wide x 12 deep; 224x224 images, patch 16, 1000 classes."""
    return _build("adventurer_tiny", pretrained, **kwargs)


@register_model
def adventurer_small(pretrained=False, **kwargs):
    """Adventurer 512 wide x 12 deep; 224x224 images, patch 16, 1000 classes."""
    return _build("adventurer_small", pretrained, **kwargs)


@register_model
def adventurer_base(pretrained=False, **kwargs):
    """Adventurer 768 wide x 12 deep; 224x224 images, patch 16, 1000 classes."""
    return _build("adventurer_base", pretrained, **kwargs)


@register_model
def adventurer_large(pretrained=False, **kwargs):
    """Adventurer 1024 wide x 24 deep; 224x224 images, patch 16, 1000 classes."""
    return _build("adventurer_large", pretrained, **kwargs)


# the official names (wangf3014/Adventurer, wangf3014/Patch_Scaling): patch in the name; those with released
# weights have pretrained tags (.in1k_<input size>, from pixelvit.catalog)
@register_model
def adventurer_tiny_patch16(pretrained=False, **kwargs):
    """Adventurer 256 wide x 12 deep; 224x224 images, patch 16, 1000 classes."""
    return _build("adventurer_tiny_patch16", pretrained, **kwargs)


@register_model
def adventurer_tiny_patch1(pretrained=False, **kwargs):
    """Adventurer 256 wide x 12 deep; 224x224 images, patch 1, 1000 classes."""
    return _build("adventurer_tiny_patch1", pretrained, **kwargs)


@register_model
def adventurer_small_patch16(pretrained=False, **kwargs):
    """Adventurer 512 wide x 12 deep; 224x224 images, patch 16, 1000 classes."""
    return _build("adventurer_small_patch16", pretrained, **kwargs)


@register_model
def adventurer_small_patch1(pretrained=False, **kwargs):
    """Adventurer 512 wide x 12 deep; 224x224 images, patch 1, 1000 classes."""
    return _build("adventurer_small_patch1", pretrained, **kwargs)


@register_model
def adventurer_base_patch16(pretrained=False, **kwargs):
    """Adventurer 768 wide x 12 deep; 224x224 images, patch 16, 1000 classes."""
    return _build("adventurer_base_patch16", pretrained, **kwargs)


@register_model
def adventurer_base_patch1(pretrained=False, **kwargs):
    """Adventurer 768 wide x 12 deep; 224x224 images, patch 1, 1000 classes."""
    return _build("adventurer_base_patch1", pretrained, **kwargs)


@register_model
def adventurer_large_patch16(pretrained=False, **kwargs):
    """Adventurer 1024 wide x 24 deep; 224x224 images, patch 16, 1000 classes."""
    return _build("adventurer_large_patch16", pretrained, **kwargs)


@register_model
def adventurer_large_patch1(pretrained=False, **kwargs):
    """Adventurer 1024 wide x 24 deep; 224x224 images, patch 1, 1000 classes."""
    return _build("adventurer_large_patch1", pretrained, **kwargs)


@register_model
def adventurer_base_patch8(pretrained=False, **kwargs):
    """Adventurer 768 wide x 12 deep; 224x224 images, patch 8, 1000 classes."""
    return _build("adventurer_base_patch8", pretrained, **kwargs)
