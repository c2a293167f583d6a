"""pixelvit.extend: the paper's "extending" (interpolated patch-8 tokens) against "scaling" (smaller patches)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixelvit.extend import InterpolatedPatchProj, create_extended_model
from pixelvit.models import create_model

SMALL = {"embed_dim": 32, "depth": 1, "num_classes": 10}


@pytest.mark.parametrize("name", ["vit_nano", "adventurer_nano"])
@pytest.mark.parametrize("factor", [2, 4])
def test_extended_model_has_the_scaled_token_count_and_coarse_tokens(name, factor):
    extended = create_extended_model(name, img_size=32, coarse_patch=8, factor=factor, seed=3, **SMALL)
    scaled = create_model(name, img_size=32, patch_size=8 // factor, **SMALL)
    coarse = create_model(name, img_size=32, patch_size=8, **SMALL)
    assert extended.num_tokens == scaled.num_tokens == (4 * factor) ** 2 + 1

    images = torch.randn(2, 3, 32, 32)
    tokens = extended.patch_embed(images)  # (B, N, D)
    assert tokens.shape == (2, (4 * factor) ** 2, 32)
    # every token is an interpolation of the patch-8 embeddings: nothing finer reaches the network
    coarse.patch_embed.proj.load_state_dict({k: v for k, v in extended.patch_embed.proj.state_dict().items()})
    grid = coarse.patch_embed.proj(images)  # (B, D, 4, 4)
    expected = F.interpolate(grid, scale_factor=factor, mode="bilinear", align_corners=False)
    torch.testing.assert_close(tokens, expected.flatten(2).transpose(1, 2))
    assert extended(images).shape == (2, 10)


def test_extended_model_starts_like_the_scaled_and_the_coarse_model():
    """Same seed: blocks and position embeddings as the scaled model, patch projection as the coarse one."""
    extended = create_extended_model("adventurer_nano", img_size=32, coarse_patch=8, factor=2, seed=5, **SMALL)
    torch.manual_seed(5)
    scaled = create_model("adventurer_nano", img_size=32, patch_size=4, **SMALL)
    torch.manual_seed(5)
    coarse = create_model("adventurer_nano", img_size=32, patch_size=8, **SMALL)
    for key, value in extended.state_dict().items():
        source = coarse if key.startswith("patch_embed.proj") else scaled
        torch.testing.assert_close(value, source.state_dict()[key], rtol=0, atol=0, msg=key)


def test_an_image_detail_invisible_to_patch_8_is_invisible_to_the_extended_model():
    """A change inside one 8 x 8 patch that the coarse projection maps to zero changes nothing downstream,
    while the scaled (patch 2) model with the same token count sees it."""
    torch.manual_seed(0)
    extended = create_extended_model("vit_nano", img_size=32, coarse_patch=8, factor=4, seed=0, **SMALL).eval()
    scaled = create_model("vit_nano", img_size=32, patch_size=2, **SMALL).eval()
    weight = extended.patch_embed.proj.weight.reshape(32, -1)  # (D, 3*8*8): 32 rows in a 192-dim space
    null = torch.linalg.svd(weight, full_matrices=True).Vh[-1]  # orthogonal to every row
    detail = torch.zeros(1, 3, 32, 32)
    detail[0, :, 8:16, 16:24] = 5 * null.reshape(3, 8, 8)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(extended(images + detail), extended(images), atol=1e-4, rtol=0)
        torch.testing.assert_close(extended.patch_embed(images + detail), extended.patch_embed(images),
                                   atol=1e-4, rtol=0)
        assert (scaled.patch_embed(images + detail) - scaled.patch_embed(images)).abs().max() > 0.1


def test_upsampling_the_image_and_keeping_the_patch_is_scaling_in_disguise():
    """Why pixelvit.extend interpolates tokens, not images: a patch-8 projection of a 2x nearest-upsampled
    image equals a patch-4 projection of the original whose weights are the 2 x 2 block sums."""
    conv8 = torch.nn.Conv2d(3, 16, kernel_size=8, stride=8)
    conv4 = torch.nn.Conv2d(3, 16, kernel_size=4, stride=4)
    with torch.no_grad():
        conv4.weight.copy_(conv8.weight.reshape(16, 3, 4, 2, 4, 2).sum(dim=(3, 5)))
        conv4.bias.copy_(conv8.bias)
    images = torch.randn(2, 3, 32, 32)
    upsampled = F.interpolate(images, scale_factor=2, mode="nearest")  # (2, 3, 64, 64)
    torch.testing.assert_close(conv8(upsampled), conv4(images), rtol=1e-5, atol=1e-5)


def test_bad_factors_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="must divide the patch size 8"):
        create_extended_model("vit_nano", img_size=32, coarse_patch=8, factor=3, seed=0, **SMALL)
    with pytest.raises(ValueError, match="larger multiple"):
        from pixelvit.extend import extend_patch_embedding

        model = create_model("vit_nano", img_size=32, patch_size=4, **SMALL)
        extend_patch_embedding(model, InterpolatedPatchProj(3, 32, 4, 1))


# ---------------------------------------------------------------------------------------------
# The training options: TrainConfig(extend=...) and TrainConfig(upsample=...)
# ---------------------------------------------------------------------------------------------
def tiny_config(tmp_path, **changes):
    from pixelvit.train import TrainConfig

    return TrainConfig(model="adventurer_nano", dataset="specks", img_size=16, patch_size=8, steps=2, batch_size=8,
                       model_args={"embed_dim": 16, "depth": 1}, eval_samples=16, device="cpu",
                       runs_dir=str(tmp_path), data_root=str(tmp_path / "data"), **changes)


@pytest.mark.parametrize(("changes", "tokens", "model_img_size"), [
    ({}, 2 * 2 + 1, 16),
    ({"extend": 4}, 8 * 8 + 1, 16),  # patch 8 on 16 px: a 2 x 2 grid interpolated to 8 x 8
    ({"upsample": 2}, 4 * 4 + 1, 32),  # 32 px images, patch 8: a 4 x 4 grid
])
def test_training_options_give_the_expected_tokens_and_image_size(tmp_path, changes, tokens, model_img_size):
    from pixelvit.tasks import get_task
    from pixelvit.train import train

    config = tiny_config(tmp_path, **changes)
    data = get_task("classification").build_data(config, 16, progress=False)
    image, _ = data.train_set[(0, 0)]
    assert data.img_size == model_img_size and image.shape == (3, model_img_size, model_img_size)
    assert image.dtype == torch.uint8 and data.test_set[0][0].shape == (3, model_img_size, model_img_size)
    result = train(config, progress=False)
    assert result.tokens == tokens


def test_upsampled_images_are_the_bicubic_interpolation_of_the_stored_ones(tmp_path):
    """A function of the stored pixels only (no new information): flat regions stay flat, and every image is
    the bicubic upsampling of the stored one, rounded back to uint8."""
    from pixelvit.data import ArrayImageDataset, ImageArrays, Upsampled, load_split

    arrays = load_split("specks", "test", 16, root=tmp_path, progress=False).subset(4)
    original = ArrayImageDataset(arrays)
    for factor in (2, 4):
        image, label = Upsampled(original, factor)[1]
        assert image.shape == (3, 16 * factor, 16 * factor) and image.dtype == torch.uint8 and label == original[1][1]
        source = original[1][0][None].float()
        reference = F.interpolate(source, scale_factor=factor, mode="bicubic", align_corners=False)
        assert (image.float() - reference[0].clamp(0, 255)).abs().max() <= 0.5
    flat = ImageArrays(np.full((1, 8, 8, 3), 77, np.uint8), np.zeros(1, np.int64), ["x"], "flat")
    assert (Upsampled(ArrayImageDataset(flat), 4)[0][0] == 77).all()


def test_options_enter_the_hash_only_when_on(tmp_path):
    from pixelvit.train import ConfigError, check_config, config_hash

    base = tiny_config(tmp_path)
    hashes = {config_hash(base), config_hash(tiny_config(tmp_path, extend=2)),
              config_hash(tiny_config(tmp_path, upsample=2))}
    assert len(hashes) == 3
    with pytest.raises(ConfigError, match="must divide the patch size 8"):
        check_config(tiny_config(tmp_path, extend=3))
    with pytest.raises(ConfigError, match="use 1 \\(off\\) or more"):
        check_config(tiny_config(tmp_path, upsample=0))
