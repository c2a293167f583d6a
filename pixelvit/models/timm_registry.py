"""pixelvit's models as timm models: names, pretrained cfgs (with the released checkpoints as tags), builders.

    import pixelvit, timm
    timm.create_model("adventurer_nano", drop_rate=0.1)                       # any pixelvit model ...
    timm.create_model("adventurer_tiny_patch1.in1k_64", pretrained=True)      # ... or released weights
    timm.list_pretrained("adventurer*")                                       # all 17 releases
    timm.create_model("vit_nano", features_only=True, out_indices=(1, 3))     # per-block feature maps

Every pixelvit name is registered under the same name, except the four paper-sized ViTs: timm's own
`vit_tiny_patch16_224` & co. are the same architecture (same parameter names), and a bare `vit_tiny`
next to them would invite confusion, so timm reaches pixelvit's class as `pixelvit_vit_tiny`, ... (TIMM_NAMES).

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


def _entrypoint(name: str):
    def build(pretrained: bool = False, **kwargs):
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

    build.__name__ = build.__qualname__ = TIMM_NAMES[name]  # timm registers a function under its __name__
    build.__module__ = __name__
    build.__doc__ = f"pixelvit's {name}: {MODELS[name][1]}"
    return build


for _name in MODELS:
    globals()[TIMM_NAMES[_name]] = register_model(_entrypoint(_name))
