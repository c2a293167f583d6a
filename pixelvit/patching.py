"""Cutting images into patches and putting them back together.

A ViT sees an image as a sequence of tokens: the image is cut into non-overlapping
`patch_size x patch_size` squares and each square is flattened into one vector. With
`patch_size = 1` every pixel is a token; a 224x224 image then has 50,176 tokens.

    images (B, C, H, W)  --patchify-->  tokens (B, num_tokens, patch_size * patch_size * C)

where num_tokens = (H / patch_size) * (W / patch_size). The values inside one token are ordered
(row within the patch, column within the patch, channel), the same order as a Conv2d patch
embedding's weight after `rearrange(w, "d c ph pw -> d (ph pw c)")`.
"""

from __future__ import annotations

import torch
from einops import rearrange


def as_hw(size) -> tuple[int, int]:
    """An image or patch size given as 32 or (32, 48) -> (height, width)."""
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _nearest_working_sizes(length: int, patch_size: int) -> list[int]:
    """Image lengths closest to `length` that `patch_size` divides."""
    below = (length // patch_size) * patch_size
    above = below + patch_size
    return [size for size in (below, above) if size > 0]


def _patch_sizes_that_divide(length: int, near: int) -> list[int]:
    """Divisors of `length`, the two closest to `near`."""
    divisors = [d for d in range(1, length + 1) if length % d == 0]
    return sorted(sorted(divisors, key=lambda d: (abs(d - near), d))[:2])


def check_divisible(img_size, patch_size) -> tuple[int, int]:
    """Return the token grid (rows, cols); raise a ValueError that says what would work otherwise."""
    img_h, img_w = as_hw(img_size)
    patch_h, patch_w = as_hw(patch_size)
    if patch_h < 1 or patch_w < 1:
        raise ValueError(f"patch size must be a positive integer, got {patch_size}")
    axes = [("height", img_h, patch_h), ("width", img_w, patch_w)]
    if (img_h, patch_h) == (img_w, patch_w):  # square image, square patch: one sentence, not the same one twice
        axes = [("size", img_h, patch_h)]
    problems = []
    for axis, length, patch in axes:
        if length % patch:
            shown = f"{length}x{length}" if axis == "size" else length
            problems.append(
                f"image {axis} {shown} is not divisible by patch size {patch}: "
                f"use an image {axis} of {' or '.join(map(str, _nearest_working_sizes(length, patch)))}, "
                f"or a patch size of {' or '.join(map(str, _patch_sizes_that_divide(length, patch)))}"
            )
    if problems:
        raise ValueError("; ".join(problems))
    return img_h // patch_h, img_w // patch_w


def num_tokens(img_size, patch_size) -> int:
    """Number of patch tokens (no class token) for an image of `img_size` cut into `patch_size` patches."""
    grid_h, grid_w = check_divisible(img_size, patch_size)
    return grid_h * grid_w


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, num_tokens, patch_size * patch_size * C), tokens in row-major grid order."""
    if images.ndim != 4:
        raise ValueError(f"patchify expects images of shape (B, C, H, W), got shape {tuple(images.shape)}")
    check_divisible(tuple(images.shape[-2:]), patch_size)
    return rearrange(
        images, "b c (rows ph) (cols pw) -> b (rows cols) (ph pw c)", ph=patch_size, pw=patch_size
    )


def unpatchify(tokens: torch.Tensor, patch_size: int, img_size, channels: int | None = None) -> torch.Tensor:
    """The exact inverse of `patchify`: (B, num_tokens, patch_size * patch_size * C) -> (B, C, H, W)."""
    img_h, img_w = as_hw(img_size)
    grid_h, grid_w = check_divisible((img_h, img_w), patch_size)
    if tokens.ndim != 3:
        raise ValueError(f"unpatchify expects tokens of shape (B, num_tokens, dim), got {tuple(tokens.shape)}")
    if tokens.shape[1] != grid_h * grid_w:
        raise ValueError(
            f"{tokens.shape[1]} tokens do not tile a {img_h}x{img_w} image with {patch_size}x{patch_size} "
            f"patches, which needs {grid_h * grid_w} tokens"
        )
    if channels is None:
        channels, remainder = divmod(tokens.shape[2], patch_size * patch_size)
        if remainder:
            raise ValueError(
                f"token width {tokens.shape[2]} is not a multiple of patch_size**2 = {patch_size**2}"
            )
    return rearrange(
        tokens, "b (rows cols) (ph pw c) -> b c (rows ph) (cols pw)",
        rows=grid_h, cols=grid_w, ph=patch_size, pw=patch_size, c=channels,
    )
