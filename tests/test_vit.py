"""pixelvit's ViT is timm's ViT: same parameters, same logits, at every patch size down to 1."""

import dataclasses

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer as TimmViT

from pixelvit.models.vit import VisionTransformer, ViTConfig

SMALL = dict(embed_dim=64, depth=2, num_heads=4, num_classes=10)  # tiny widths: the whole file runs in seconds


def small_vit(**overrides) -> VisionTransformer:
    return VisionTransformer(ViTConfig(**{**SMALL, "img_size": 32, "patch_size": 4, **overrides}))


def test_config_defaults_are_vit_tiny_at_224():
    assert dataclasses.asdict(ViTConfig()) == dict(
        img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=192, depth=12, num_heads=3,
        mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.0,
    )  # architecture only: grad checkpointing is a run-time setting (set_grad_checkpointing)


def randomize_(model: torch.nn.Module) -> None:
    """Every parameter random, LayerNorm weights and biases included: at timm's init (LayerNorms 1 and 0)
    swapping norm1 and norm2, or dropping a norm's bias, would change nothing and pass unnoticed."""
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn_like(param) * (0.5 if param.ndim == 1 else 0.1) + (1.0 if param.ndim == 1 else 0.0))


@pytest.mark.parametrize("patch_size,img_size", [(16, 32), (16, 64), (8, 32), (4, 32), (2, 32), (1, 32)])
def test_timm_state_dict_loads_strict_and_gives_the_same_logits(patch_size, img_size):
    torch.manual_seed(0)
    timm_model = TimmViT(img_size=img_size, patch_size=patch_size, **SMALL).eval()
    randomize_(timm_model)
    ours = small_vit(img_size=img_size, patch_size=patch_size).eval()
    ours.load_state_dict(timm_model.state_dict(), strict=True)  # same names, same shapes

    images = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        assert (ours(images) - timm_model(images)).abs().max() <= 1e-5
        theirs_tokens = timm_model.forward_features(images)
        ours_tokens = ours.forward_features(images)
    assert ours_tokens.shape == theirs_tokens.shape == (2, ours.num_tokens, 64)
    assert (ours_tokens - theirs_tokens).abs().max() <= 1e-5
    assert ours.num_tokens == (img_size // patch_size) ** 2 + 1


def test_class_token_is_first_and_head_reads_it():
    model = small_vit().eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = model.forward_features(images)  # (B, N+1, D)
        assert torch.allclose(model(images), model.head(tokens[:, 0]))
    assert model.arch == "vit" and model.num_tokens == 65


def test_non_square_images():
    model = small_vit(img_size=(16, 32), patch_size=8)
    assert model.num_tokens == 2 * 4 + 1
    assert model(torch.randn(1, 3, 16, 32)).shape == (1, 10)


def test_wrong_image_size_or_channels_raise_with_both_shapes():
    model = small_vit()
    with pytest.raises(ValueError, match=r"\(batch, 3, 32, 32\).*\(2, 3, 64, 64\)"):
        model(torch.randn(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\(batch, 3, 32, 32\).*\(2, 1, 32, 32\)"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="got \\(3, 32, 32\\)"):
        model(torch.randn(3, 32, 32))  # missing batch dimension


def test_patch_size_that_does_not_divide_the_image_names_sizes_that_work():
    with pytest.raises(ValueError, match=r"32.*patch size 5.*30 or 35"):
        small_vit(img_size=32, patch_size=5)


def test_num_heads_must_divide_embed_dim():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        small_vit(num_heads=5)


def test_headless_model_returns_class_token_features():
    model = small_vit(num_classes=0).eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 64)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_on_cuda_matches_fp32():
    torch.manual_seed(0)
    model = small_vit(patch_size=1).cuda()
    images = torch.randn(2, 3, 32, 32, device="cuda")
    with torch.no_grad():
        reference = model(images)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(images)
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.float(), reference, atol=5e-2, rtol=5e-2)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        model(images).float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
