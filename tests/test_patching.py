"""patchify / unpatchify: exact round trips over random shapes, and errors that say what works."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pixelvit.patching import check_divisible, num_tokens, patchify, unpatchify


@st.composite
def images_and_patch(draw):
    patch_size = draw(st.integers(1, 8))
    rows, cols = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    batch, channels = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, channels, rows * patch_size, cols * patch_size, generator=generator)
    return images, patch_size


@settings(max_examples=200, deadline=None)
@given(images_and_patch())
def test_unpatchify_inverts_patchify_exactly(case):
    images, patch_size = case
    batch, channels, height, width = images.shape
    tokens = patchify(images, patch_size)
    assert tokens.shape == (batch, num_tokens((height, width), patch_size), patch_size * patch_size * channels)
    assert torch.equal(unpatchify(tokens, patch_size, (height, width)), images)


def test_token_layout_is_row_major_grid_then_pixels_then_channels():
    images = torch.arange(2 * 4 * 6).reshape(1, 2, 4, 6)  # C=2, H=4, W=6
    tokens = patchify(images, 2)
    # token 1 is grid row 0, column 1: pixels (0..1, 2..3); values ordered (row, col, channel)
    expected = [images[0, c, r, 2 + q].item() for r in range(2) for q in range(2) for c in range(2)]
    assert tokens[0, 1].tolist() == expected
    assert tokens.shape[1] == 2 * 3


def test_patchify_matches_conv_patch_embedding():
    """A Conv2d with kernel = stride = patch size is a linear map of the patchified tokens."""
    torch.manual_seed(0)
    images = torch.randn(2, 3, 12, 8)
    conv = torch.nn.Conv2d(3, 5, kernel_size=4, stride=4)
    by_conv = conv(images).flatten(2).transpose(1, 2)  # (B, tokens, 5)
    weight = conv.weight.permute(0, 2, 3, 1).reshape(5, -1)  # (5, ph*pw*c)
    by_tokens = patchify(images, 4) @ weight.T + conv.bias
    torch.testing.assert_close(by_tokens, by_conv)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 300), st.integers(2, 32))
def test_bad_sizes_raise_a_value_error_naming_sizes_that_work(length, patch_size):
    if length % patch_size == 0:
        assert num_tokens(length, patch_size) == (length // patch_size) ** 2
        return
    with pytest.raises(ValueError) as error:
        num_tokens(length, patch_size)
    message = str(error.value)
    assert f"{length}" in message and f"patch size {patch_size}" in message
    below, above = (length // patch_size) * patch_size, (length // patch_size + 1) * patch_size
    assert str(above) in message
    if below:
        assert str(below) in message
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 1, length, length), patch_size)


def test_rectangular_images_and_error_names_the_failing_axis():
    assert check_divisible((32, 48), 16) == (2, 3)
    assert num_tokens((32, 48), 8) == 24
    with pytest.raises(ValueError, match="image width 50 is not divisible by patch size 16: use an image width of 48 or 64"):
        num_tokens((32, 50), 16)


def test_unpatchify_rejects_tokens_that_do_not_tile_the_image():
    with pytest.raises(ValueError, match="needs 16 tokens"):
        unpatchify(torch.zeros(1, 15, 12), 2, 8)


def test_a_square_image_that_fails_both_ways_is_told_once():
    """(issue 27) 30x30 at patch 4 said the same sentence twice, for the height and then the width."""
    with pytest.raises(ValueError) as error:
        num_tokens(30, 4)
    message = str(error.value)
    assert message == ("image size 30x30 is not divisible by patch size 4: use an image size of 28 or 32, "
                       "or a patch size of 3 or 5")
    with pytest.raises(ValueError) as error:  # different lengths fail differently: both are said
        num_tokens((30, 34), 4)
    assert "image height 30" in str(error.value) and "image width 34" in str(error.value)
