"""The pieces ViT and Adventurer share: cutting an image into patch tokens, and stochastic depth.

Both models name the patch projection `patch_embed.proj`, exactly as timm and the official Adventurer code
do, so checkpoints from either load without renaming. Stochastic depth is timm's `DropPath` (parameter-free:
per sample, drop a residual branch with probability p and scale the kept ones by 1 / (1 - p)).
"""

from __future__ import annotations

import torch
import torch.fx
import torch.nn as nn
from timm.layers import DropPath  # noqa: F401  (re-exported for both models)
from torch.utils.checkpoint import checkpoint

from pixelvit.patching import as_hw, check_divisible


def check_images(images: torch.Tensor, expected: tuple[int, int, int]) -> None:
    """One clear error for images of the wrong shape; expected = (channels, height, width)."""
    if images.ndim != 4 or tuple(images.shape[1:]) != tuple(expected):
        raise ValueError(
            f"expected images of shape (batch, {expected[0]}, {expected[1]}, {expected[2]}) "
            f"(channels, height, width), got {tuple(images.shape)}"
        )


# torch.fx (and timm's feature extraction) trace a model with symbolic tensors, whose shapes are unknown:
# these calls are kept as calls in the traced graph and run on real tensors later.
torch.fx.wrap("check_images")


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """x in float32 (float64 stays float64): norms and the SSM's discretization are computed this way."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


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
        check_images(images, (self.in_chans, *self.img_size))
        tokens = self.proj(images)  # (B, D, H/p, W/p)
        return tokens.flatten(2).transpose(1, 2)  # (B, N, D), patches in row-major (raster) order


def run_layers(layers: nn.Module, x: torch.Tensor, grad_checkpointing: bool) -> torch.Tensor:
    """Pass x through each layer in turn. With gradient checkpointing (and gradients on), keep only each
    layer's input and recompute the inside during backward: far less memory at 50k tokens, ~30% slower."""
    for layer in layers:
        if grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(layer, x, use_reentrant=False)
        else:
            x = layer(x)
    return x

