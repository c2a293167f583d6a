"""The two pieces ViT and Adventurer share: cutting an image into patch tokens, and stochastic depth.

Both models name these `patch_embed.proj` and (for stochastic depth) keep no parameters, exactly as timm
and the official Adventurer code do, so checkpoints from either load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pixelvit.patching import as_hw, check_divisible


class PatchEmbed(nn.Module):
    """Image -> sequence of patch tokens: one linear map per non-overlapping patch_size x patch_size patch.

    A Conv2d with kernel = stride = patch_size is exactly "flatten each patch, multiply by one shared
    matrix"; with patch_size 1 it is a per-pixel linear map and every pixel becomes a token.
    """

    def __init__(self, img_size, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size = as_hw(img_size)  # (height, width)
        self.patch_size = patch_size
        self.in_chans = in_chans
        # (rows, cols) of the token grid; a ValueError naming the nearest sizes that work otherwise
        self.grid_size = check_divisible(self.img_size, patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        expected = (self.in_chans, *self.img_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"expected images of shape (batch, {expected[0]}, {expected[1]}, {expected[2]}) "
                f"(channels, height, width), got {tuple(images.shape)}"
            )
        tokens = self.proj(images)  # (B, D, H/p, W/p)
        return tokens.flatten(2).transpose(1, 2)  # (B, N, D), patches in row-major (raster) order


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a residual branch for a random subset of samples.

    Each sample's branch is kept with probability 1 - drop_rate and scaled by 1 / (1 - drop_rate),
    so its expected value is unchanged; at evaluation it is the identity.
    """

    def __init__(self, drop_rate: float = 0.0):
        super().__init__()
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_rate == 0.0 or not self.training:
            return x
        keep_prob = 1.0 - self.drop_rate
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)  # one coin per sample: (B, 1, 1)
        keep = x.new_empty(mask_shape).bernoulli_(keep_prob)
        return x * keep / keep_prob

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}"
