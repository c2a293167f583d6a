"""Segmentation heads on a plain backbone's token grid: one linear layer, or a light decoder.

Both read `dense_features(backbone, images)`: the patch tokens of chosen blocks as feature maps
(B, D, H/p, W/p), in image order (the class token, first in ViT and last in Adventurer, is not a patch and is
left out), after the backbone's final norm. Both return logits for every pixel, (B, classes, H, W).

    LinearHead   the paper's "decoder-free" head (Table 2: "one linear layer on the dense features"):
                     (B, H/p, W/p, D) -> Linear(D, classes) -> bilinear upsampling by p -> (B, classes, H, W)
                 or, with upsample="pixel_shuffle", each token predicts all p x p pixels of its own patch:
                     (B, H/p, W/p, D) -> Linear(D, classes * p * p) -> (B, classes, H, W)
    DecoderHead  a light decoder for comparison: fuses several blocks (UperNet's idea of reading more than
                 the last block), then upsamples x2 at a time with 3x3 convolutions (SETR's "progressive
                 upsampling"), so each output pixel comes out of a few non-linear layers that see neighbours.

Which linear head is the paper's? The paper says only "one linear layer on the dense features"; its code
for segmentation is not released. We take linear + bilinear upsampling as the default ("linear" in model
names) because that is what a linear segmentation head means in the code bases such experiments are run
with (SETR's naive head, Segmenter's linear baseline, and mmsegmentation, which resizes any head's logits
bilinearly to the label size): the linear layer sees one token and the label map is only as fine as the
token grid, which is exactly what the paper's argument is about - the finer the tokens, the less a
decoder has to restore. The pixel-shuffle reading ("pixelshuffle" in model names) is the mirror image of
the patch embedding and can paint sharp detail inside a patch if the token encodes it; it is offered for
comparison. At patch 1 the two coincide: a 1x1 convolution over the pixel grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

HEADS = {
    "linear": "decoder-free (the paper's): one linear layer per token to classes, then bilinear upsampling by p",
    "pixelshuffle": "decoder-free variant: one linear layer per token predicting its own p x p pixels",
    "decoder": "light decoder: fuse several blocks, then x2 upsampling steps with 3x3 convolutions",
}


def feature_indices(depth: int, levels: int) -> list[int]:
    """`levels` block indices spread evenly over `depth` blocks, always ending at the last block.

    depth 12, levels 4 -> [2, 5, 8, 11] (UperNet on a plain ViT reads blocks 3, 6, 9, 12 counting from 1).
    """
    levels = max(1, min(levels, depth))
    return [round((k + 1) * depth / levels) - 1 for k in range(levels)]


def dense_features(backbone: nn.Module, images: torch.Tensor, indices: list[int] | None = None) -> list[torch.Tensor]:
    """The patch tokens after blocks `indices` (default: the last) as maps (B, D, H/p, W/p), final norm applied.

    Uses the backbone's timm-style `forward_intermediates` (patch tokens only, class token dropped wherever
    the model keeps it, raster order). `stop_early` skips blocks after the last one asked for.
    """
    depth = len(backbone.trunk) if hasattr(backbone, "trunk") else backbone.config.depth
    indices = [depth - 1] if indices is None else list(indices)
    return backbone.forward_intermediates(images, indices=indices, norm=True, stop_early=True,
                                         output_fmt="NCHW", intermediates_only=True)


class LinearHead(nn.Module):
    """One linear layer per token: D -> classes then bilinear upsampling by p (`upsample="bilinear"`, the
    default), or D -> classes x p x p painted into the token's own patch (`upsample="pixel_shuffle"`)."""

    def __init__(self, embed_dim: int, num_classes: int, patch_size: int, upsample: str = "bilinear"):
        super().__init__()
        if upsample not in ("pixel_shuffle", "bilinear"):
            raise ValueError(f"upsample must be 'pixel_shuffle' or 'bilinear', got {upsample!r}")
        self.num_classes, self.patch_size, self.upsample = num_classes, patch_size, upsample
        outputs = num_classes * patch_size**2 if upsample == "pixel_shuffle" else num_classes
        self.proj = nn.Linear(embed_dim, outputs)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]  # (B, D, h, w): the last block's tokens, h = H/p
        logits = self.proj(rearrange(x, "b d h w -> b h w d"))  # (B, h, w, classes) or (B, h, w, classes * p * p)
        p = self.patch_size
        if self.upsample == "pixel_shuffle":
            # token (i, j) paints pixels [i*p:(i+1)*p, j*p:(j+1)*p]; same channel order as F.pixel_shuffle
            return rearrange(logits, "b h w (c p1 p2) -> b c (h p1) (w p2)", p1=p, p2=p)  # (B, classes, H, W)
        logits = rearrange(logits, "b h w c -> b c h w")  # (B, classes, h, w)
        return logits if p == 1 else F.interpolate(logits, scale_factor=p, mode="bilinear", align_corners=False)


def conv_block(in_chans: int, out_chans: int, kernel: int = 3) -> nn.Sequential:
    """Conv (no bias) -> GroupNorm -> GELU: the decoder's one building block."""
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, kernel, padding=kernel // 2, bias=False),
        nn.GroupNorm(min(8, out_chans), out_chans),
        nn.GELU(),
    )


class DecoderHead(nn.Module):
    """A light decoder: fuse `levels` blocks, refine on the token grid, then ceil(log2 p) x2 upsampling steps.

        L maps (B, D, h, w) -> concat (B, L*D, h, w) -> 1x1 conv block -> 3x3 conv block     (B, W, h, w)
        repeat: 3x3 conv to 4W channels -> pixel shuffle x2 -> GroupNorm -> GELU              (B, W, 2h, 2w)
        -> 1x1 conv to classes (bilinear resize only if p is not a power of two)              (B, classes, H, W)

    Each x2 step decides the four children of every position from its 3x3 neighbourhood: non-linear,
    learned upsampling that a single linear layer cannot do. At patch 1 no step is needed and the decoder
    is a few 3x3 convolutions over the pixels.
    """

    def __init__(self, embed_dim: int, num_classes: int, patch_size: int, levels: int = 4, width: int = 64):
        super().__init__()
        self.patch_size, self.levels = patch_size, levels
        self.fuse = conv_block(levels * embed_dim, width, kernel=1)
        self.refine = conv_block(width, width)
        steps = math.ceil(math.log2(patch_size)) if patch_size > 1 else 0
        self.up = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, 4 * width, 3, padding=1, bias=False), nn.PixelShuffle(2),
                          nn.GroupNorm(min(8, width), width), nn.GELU())
            for _ in range(steps)
        )
        self.classify = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        if len(features) != self.levels:
            raise ValueError(f"the decoder fuses {self.levels} blocks, got {len(features)} feature maps")
        h, w = features[-1].shape[-2:]
        x = self.refine(self.fuse(torch.cat(features, dim=1)))  # (B, W, h, w)
        for step in self.up:
            x = step(x)  # (B, W, 2h, 2w)
        x = self.classify(x)  # (B, classes, h * 2^steps, w * 2^steps)
        size = (h * self.patch_size, w * self.patch_size)
        return x if x.shape[-2:] == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
