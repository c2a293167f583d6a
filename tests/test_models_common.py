"""The model registry: names, configs, timm registration, rebuilding from a config, shared input checks."""

import dataclasses
import json

import pytest
import timm
import torch

import pixelvit
from pixelvit.models import (
    Adventurer,
    AdventurerConfig,
    VisionTransformer,
    ViTConfig,
    create_model,
    get_config,
    list_models,
    model_from_config,
)

PAPER_SIZES = {  # paper Table 7: (embed_dim, depth, num_heads)
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
    "vit_large": (1024, 24, 16),
}
ADVENTURER_SIZES = {"tiny": (256, 12), "small": (512, 12), "base": (768, 12), "large": (1024, 24)}


def test_list_models():
    names = list_models()
    for name in ["vit_nano", "vit_micro", *PAPER_SIZES, "adventurer_nano", "adventurer_micro"]:
        assert name in names
    for size in ADVENTURER_SIZES:
        assert {f"adventurer_{size}", f"adventurer_{size}_patch16", f"adventurer_{size}_patch1"} <= set(names)
    assert list_models("vit_*") == sorted(["vit_nano", "vit_micro", *PAPER_SIZES])
    assert list_models("*_patch1") == [f"adventurer_{s}_patch1" for s in ("base", "large", "small", "tiny")]
    assert pixelvit.list_models is list_models and pixelvit.create_model is create_model


@pytest.mark.parametrize("name", list(PAPER_SIZES))
def test_vit_paper_configs(name):
    config = get_config(name)
    assert isinstance(config, ViTConfig)
    assert (config.embed_dim, config.depth, config.num_heads) == PAPER_SIZES[name]
    assert (config.img_size, config.patch_size, config.mlp_ratio) == (224, 16, 4.0)


@pytest.mark.parametrize("size", list(ADVENTURER_SIZES))
def test_adventurer_paper_configs(size):
    dim, depth = ADVENTURER_SIZES[size]
    for name, patch in [(f"adventurer_{size}", 16), (f"adventurer_{size}_patch16", 16), (f"adventurer_{size}_patch1", 1)]:
        config = get_config(name)
        assert isinstance(config, AdventurerConfig)
        assert (config.embed_dim, config.depth, config.img_size, config.patch_size) == (dim, depth, 224, patch)
        assert (config.d_state, config.expand, config.headdim, config.flip_rule) == (64, 2, 64, "released")


def test_nano_models_are_the_64_wide_4_deep_configs_of_the_sweeps():
    vit = get_config("vit_nano")
    assert (vit.embed_dim, vit.depth, vit.num_heads, vit.img_size, vit.patch_size, vit.num_classes) == (64, 4, 4, 32, 4, 10)
    adventurer = get_config("adventurer_nano")
    assert (adventurer.embed_dim, adventurer.depth, adventurer.img_size, adventurer.patch_size) == (64, 4, 32, 4)
    assert (adventurer.d_state, adventurer.headdim, adventurer.num_classes) == (16, 32, 10)


def test_micro_models_are_cpu_sized():
    vit = get_config("vit_micro")
    assert (vit.embed_dim, vit.depth, vit.num_heads, vit.img_size) == (128, 6, 4, 32)
    adventurer = get_config("adventurer_micro")
    assert (adventurer.embed_dim, adventurer.depth, adventurer.img_size) == (128, 6, 32)
    assert adventurer.d_state < 64 and adventurer.headdim < 64


def test_create_model_overrides():
    model = create_model("vit_micro", img_size=16, patch_size=2, num_classes=3, depth=1)
    assert isinstance(model, VisionTransformer)
    assert (model.num_tokens, model.config.depth, model.head.out_features) == (65, 1, 3)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    model = create_model("adventurer_micro", img_size=8, patch_size=1, num_classes=4, depth=1)
    assert isinstance(model, Adventurer) and model.arch == "adventurer"
    assert model.num_tokens == 65
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 4)


def test_unknown_names_and_fields_raise_value_errors_with_suggestions():
    with pytest.raises(ValueError, match="unknown model 'vit_tiyn'.*vit_tiny"):
        create_model("vit_tiyn")
    with pytest.raises(ValueError, match="adventurer_tiny_patch16"):
        get_config("adventurer_tiny_patch61")
    with pytest.raises(ValueError, match="has no field.*'depht'"):
        create_model("vit_micro", depht=3)
    with pytest.raises(TypeError, match="has no field.*'depht'"):  # timm's convention for unknown arguments
        create_model("vit_micro", depht=3)
    with pytest.raises(ValueError, match="unknown arch 'vt'.*vit"):
        model_from_config("vt", {})


def test_pretrained_without_released_weights_points_to_load_pretrained():
    with pytest.raises(ValueError, match="vit_nano has no released weights.*adventurer_tiny_patch1.in1k_64.*pixelvit.load_pretrained"):
        create_model("vit_nano", pretrained=True)


@pytest.mark.parametrize("name", ["vit_micro", "adventurer_micro"])
def test_model_from_config_round_trips_through_json(name):
    torch.manual_seed(0)
    model = create_model(name, img_size=(8, 16), patch_size=2, depth=2).eval()
    stored = json.loads(json.dumps(dataclasses.asdict(model.config)))  # as a checkpoint would store it
    rebuilt = model_from_config(model.arch, stored).eval()
    assert rebuilt.config == model.config  # img_size came back from JSON as a list; it is a tuple again
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    images = torch.randn(1, 3, 8, 16)
    with torch.no_grad():
        assert torch.equal(rebuilt(images), model(images))


def test_timm_knows_every_model_and_timm_vits_are_untouched():
    timm_names = set(timm.list_models("adventurer_*"))
    assert set(list_models("adventurer_*")) <= timm_names
    model = timm.create_model("adventurer_tiny_patch16", num_classes=10, img_size=32, depth=1)
    assert isinstance(model, Adventurer)
    assert (model.config.embed_dim, model.config.patch_size, model.num_tokens) == (256, 16, 5)
    assert isinstance(timm.create_model("vit_nano"), VisionTransformer)
    assert isinstance(timm.create_model("pixelvit_vit_tiny", img_size=32, depth=1), VisionTransformer)
    assert not timm.is_model("vit_tiny")  # next to timm's vit_tiny_patch16_224 & co: pixelvit_vit_tiny instead
    # timm's own ViTs are untouched: vit_tiny_patch16_224 is still timm's class
    assert not isinstance(timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1), VisionTransformer)


@pytest.mark.parametrize("name", ["vit_micro", "adventurer_micro"])
def test_both_archs_check_inputs_the_same_way(name):
    model = create_model(name, depth=1)  # 32x32, 3 channels
    with pytest.raises(ValueError, match=r"expected images of shape \(batch, 3, 32, 32\).*got \(2, 3, 28, 28\)"):
        model(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"got \(2, 1, 32, 32\)"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="image size 32x32 is not divisible by patch size 6"):
        create_model(name, patch_size=6)


@pytest.mark.parametrize("name", ["vit_micro", "adventurer_micro"])
def test_common_interface(name):
    model = create_model(name, img_size=8, patch_size=2, depth=1)
    assert model.num_tokens == 17
    assert model.forward_features(torch.randn(2, 3, 8, 8)).shape == (2, 17, 128)
    model.set_grad_checkpointing()
    assert model.grad_checkpointing and not hasattr(model.config, "grad_checkpointing")  # never saved
    model.set_grad_checkpointing(False)
    assert not model.grad_checkpointing


@pytest.mark.parametrize("name, img_size, overrides", [
    ("vit_tiny", 32, dict(embed_dim=64, depth=2, num_heads=2, patch_size=4, drop_path_rate=0.2)),
    ("adventurer_tiny", 8, dict(embed_dim=64, depth=4, headdim=32, d_state=16, patch_size=2, chunk_size=8,
                                drop_path_rate=0.3)),
])
def test_grad_checkpointing_gives_identical_outputs_and_grads(name, img_size, overrides):
    """Random drop path is on: checkpointing must replay the RNG and reproduce every gradient."""
    torch.manual_seed(0)
    model = create_model(name, img_size=img_size, num_classes=10, **overrides).train()
    images = torch.randn(3, 3, img_size, img_size)

    def run(enable):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        torch.manual_seed(1)
        out = model(images)
        out.square().sum().backward()
        return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    out_plain, grads_plain = run(False)
    out_ckpt, grads_ckpt = run(True)
    assert model.grad_checkpointing is True
    assert torch.equal(out_plain, out_ckpt)
    for param_name, grad in grads_plain.items():
        assert torch.allclose(grad, grads_ckpt[param_name], rtol=0, atol=1e-6), param_name



@pytest.mark.parametrize("name", ["vit_micro", "adventurer_micro"])
def test_inference_final_norm_in_place_gives_the_plain_features(name):
    """Without gradients forward_features norms the residual stream in place (pixelvit.models.base.norm_in_place):
    the same numbers as the plain norm, a few tokens at a time, and no second copy of the stream."""
    from pixelvit.models.base import norm_in_place
    from pixelvit.models.layers import run_layers

    torch.manual_seed(0)
    model = create_model(name, img_size=16, patch_size=2).eval()
    for parameter in model.final_norm.parameters():  # not the initial ones and zeros
        parameter.data.normal_()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        stream = run_layers(model.trunk, model.embed(images), False)  # (B, N+1, D) before the final norm
        plain = model.final_norm(stream)
        assert torch.equal(model.forward_features(images), plain)
    with torch.inference_mode():
        assert torch.equal(model(images), model.forward_head(plain))

    x = torch.randn(2, 65, model.embed_dim)
    expected = model.final_norm(x).detach()
    with torch.no_grad():
        out = norm_in_place(model.final_norm, x, tokens=7)  # 65 tokens: ten blocks, the last one short
    assert out.data_ptr() == x.data_ptr() and torch.equal(out, expected)
