"""Position- and patch-embedding resampling: identity, class-token layouts, FlexiViT's defining property."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pixelvit.resample import resample_patch_embed, resample_pos_embed, resize_model

D = 8


def pos_embed_with_cls(grid: int, where: str, cls_value: float = 100.0) -> torch.Tensor:
    """(1, grid^2 + 1, D): grid positions ~ N(0, 1), the class token's vector = cls_value everywhere."""
    generator = torch.Generator().manual_seed(grid)
    positions = torch.randn(1, grid * grid, D, generator=generator)
    cls = torch.full((1, 1, D), cls_value)
    return torch.cat([cls, positions] if where == "first" else [positions, cls], dim=1)


@pytest.mark.parametrize("where", ["first", "last", None])
def test_same_grid_returns_the_tensor_itself(where):
    pos = pos_embed_with_cls(5, where or "first")[:, (0 if where else 1):]
    assert resample_pos_embed(pos, (5, 5), class_token=where) is pos


def test_vit_class_token_stays_first_and_grid_is_bicubic_resize():
    pos = pos_embed_with_cls(4, "first")
    out = resample_pos_embed(pos, (6, 6), class_token="first")
    assert out.shape == (1, 37, D)
    assert torch.equal(out[:, 0], pos[:, 0])
    grid = pos[:, 1:].reshape(1, 4, 4, D).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    assert torch.equal(out[:, 1:], expected.reshape(1, 36, D))


def test_adventurer_class_token_stays_last_untouched():
    pos = pos_embed_with_cls(4, "last")
    out = resample_pos_embed(pos, (8, 8), class_token="last")
    assert out.shape == (1, 65, D)
    assert torch.equal(out[:, -1], pos[:, -1])  # exact values of the class token
    assert out[:, :-1].abs().max() < 10  # no trace of the class token (100.0) in the grid


def test_first_token_assumption_corrupts_adventurer():
    """What DeiT-style code (and the official fine-tuning script) does to a class-token-last layout."""
    pos = pos_embed_with_cls(4, "last")
    wrong = resample_pos_embed(pos, (8, 8), class_token="first")
    assert not torch.equal(wrong[:, -1], pos[:, -1])  # class token lost
    assert wrong[:, 1:].abs().max() > 50  # and smeared over the grid


def test_low_precision_is_computed_in_float32_and_cast_back():
    pos = pos_embed_with_cls(4, "first").to(torch.bfloat16)
    out = resample_pos_embed(pos, (7, 7), class_token="first")
    assert out.dtype == torch.bfloat16
    reference = resample_pos_embed(pos.float(), (7, 7), class_token="first").to(torch.bfloat16)
    assert torch.equal(out, reference)


@settings(max_examples=25, deadline=None)
@given(old=st.integers(1, 6), new_h=st.integers(1, 9), new_w=st.integers(1, 9), where=st.sampled_from(["first", "last"]))
def test_any_grid_keeps_the_class_token_and_constants(old, new_h, new_w, where):
    grid = torch.full((1, old * old, D), 0.25)
    cls = torch.arange(D, dtype=torch.float32).reshape(1, 1, D)
    pos = torch.cat([cls, grid] if where == "first" else [grid, cls], dim=1)
    out = resample_pos_embed(pos, (new_h, new_w), class_token=where)
    assert out.shape == (1, new_h * new_w + 1, D)
    cls_out, grid_out = (out[:, :1], out[:, 1:]) if where == "first" else (out[:, -1:], out[:, :-1])
    assert torch.equal(cls_out, cls)
    torch.testing.assert_close(grid_out, torch.full_like(grid_out, 0.25))  # bicubic reproduces constants


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """The resize FlexiViT inverts: bicubic with antialiasing, per patch (the same map timm builds)."""
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)


def test_flexivit_property_exact_when_patch_grows():
    """<x, w> = <resize(x), w'> for every patch x when the new patch is larger (4 -> 8)."""
    torch.manual_seed(0)
    w = torch.randn(6, 3, 4, 4, dtype=torch.float64)  # (D, C, p, p)
    w_new = resample_patch_embed(w, 8)
    assert w_new.shape == (6, 3, 8, 8) and w_new.dtype == torch.float64
    x = torch.randn(10, 3, 4, 4, dtype=torch.float64)
    before = torch.einsum("bchw,dchw->bd", x, w)
    after = torch.einsum("bchw,dchw->bd", resize(x, 8), w_new)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_flexivit_property_when_patch_shrinks():
    """16 -> 8 loses information, so the property holds for patches the resize keeps: x = B^T y
    (B = the resize matrix); for other patches w' is the least-squares best."""
    torch.manual_seed(0)
    w = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    w_new = resample_patch_embed(w, 8)
    basis = torch.eye(256, dtype=torch.float64).reshape(256, 1, 16, 16)
    B = resize(basis, 8).reshape(256, 64).T  # (64, 256): one column per input pixel
    x = (torch.randn(10, 64, dtype=torch.float64) @ B).reshape(10, 1, 16, 16).expand(10, 3, 16, 16)
    before = torch.einsum("bchw,dchw->bd", x, w)
    after = torch.einsum("bchw,dchw->bd", resize(x, 8), w_new)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_same_patch_size_is_identity():
    w = torch.randn(2, 3, 4, 4)
    assert resample_patch_embed(w, 4) is w


# ---- resize_model on real (tiny) models ------------------------------------------------------
def tiny(arch: str, **kwargs):
    from pixelvit.models import create_model

    torch.manual_seed(0)
    name = "vit_tiny" if arch == "vit" else "adventurer_tiny"
    extra = dict(num_heads=2) if arch == "vit" else {}
    return create_model(name, embed_dim=32, depth=2, num_classes=5, **{**extra, **kwargs}).eval()


def patchwise_resize(images: torch.Tensor, patch: int, new_patch: int) -> torch.Tensor:
    """Resize every patch on its own (the image FlexiViT's property is about)."""
    B, C, H, W = images.shape
    gh, gw = H // patch, W // patch
    patches = images.reshape(B, C, gh, patch, gw, patch).permute(0, 2, 4, 1, 3, 5).reshape(-1, C, patch, patch)
    patches = resize(patches, new_patch).reshape(B, gh, gw, C, new_patch, new_patch)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(B, C, gh * new_patch, gw * new_patch)


@pytest.mark.parametrize("arch", ["vit", "adventurer"])
def test_resize_model_same_size_gives_identical_outputs(arch):
    model = tiny(arch, img_size=16, patch_size=4)
    same = resize_model(model)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(same(x), model(x))


@pytest.mark.parametrize("arch", ["vit", "adventurer"])
def test_resize_model_to_larger_patches_keeps_the_tokens(arch):
    """Patch 4 at 16 px -> patch 8 at 32 px: same grid, and with each patch resized the patch tokens
    (and so the logits) are those of the original model."""
    model = tiny(arch, img_size=16, patch_size=4)
    big = resize_model(model, img_size=32, patch_size=8)
    assert big.config.patch_size == 8 and big.patch_embed.img_size == (32, 32)
    assert torch.equal(big.pos_embed, model.pos_embed)  # same 4x4 grid: untouched
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(big(patchwise_resize(x, 4, 8)), model(x), rtol=1e-4, atol=1e-4)


def test_resize_model_adventurer_grid_keeps_class_token_last():
    model = tiny("adventurer", img_size=16, patch_size=4)
    bigger = resize_model(model, img_size=32)  # grid 4x4 -> 8x8
    assert bigger.pos_embed.shape == (1, 65, 32)
    assert torch.equal(bigger.pos_embed[:, -1], model.pos_embed[:, -1])
    with torch.no_grad():
        assert bigger(torch.randn(1, 3, 32, 32)).shape == (1, 5)


def test_resize_model_16_to_8_runs():
    """A patch-16 model at patch 8 (the FlexiViT use): 32 px, grid 2x2 -> 4x4."""
    model = tiny("vit", img_size=32, patch_size=16)
    small_patches = resize_model(model, patch_size=8)
    assert small_patches.patch_embed.proj.weight.shape[-2:] == (8, 8)
    assert small_patches.pos_embed.shape == (1, 17, 32)
    with torch.no_grad():
        assert torch.isfinite(small_patches(torch.randn(1, 3, 32, 32))).all()
