"""Longer sequences without new information: the paper's "extending" (Table 5), against "scaling".

Two ways to give a model 4x the tokens of a patch-8 model on a 32 x 32 image:

    scaling     patch 4: every token is a linear map of its own 4 x 4 pixels          -> 64 tokens
    extending   patch 8, then the 4 x 4 grid of tokens interpolated to 8 x 8          -> 64 tokens

Extending gives the sequence model the same number of tokens (and the same cost) as scaling, but the
tokens are blends of patch-8 embeddings: nothing finer than an 8 x 8 patch reaches the network. If the
gain from small patches came only from longer sequences, extending would match scaling; the paper finds
it does not (Table 5: Adventurer-Base 224 gains 0.2 points by extending to 12,544 tokens, 1.9 by scaling).

Why not simply upsample the image and keep the patch? Upsampling a 32 x 32 image 2x and cutting 8 x 8
patches gives 64 tokens that each cover the same 4 x 4 original pixels as scaling to patch 4: with
nearest-neighbour upsampling the patch-8 projection of the upsampled image IS a patch-4 projection of
the original (its weights summed over 2 x 2 blocks), so "upsample and keep the patch" is scaling in
disguise, not the paper's extending. The interpolation has to happen after the patch embedding.

    model = create_extended_model("adventurer_nano", img_size=32, coarse_patch=8, factor=4, seed=0,
                                  num_classes=10)    # 8 x 8 patches, a 4 x 4 token grid interpolated to 16 x 16
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class InterpolatedPatchProj(nn.Conv2d):
    """A patch projection at a coarse patch size whose token grid is then interpolated `factor` times larger.

    It replaces a model's `patch_embed.proj` (a Conv2d with kernel = stride = patch size), so the model's
    position embeddings, class token and blocks are those of the fine grid it was built with.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, factor: int, mode: str = "bilinear"):
        super().__init__(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.factor, self.mode = factor, mode

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = super().forward(images)  # (B, D, H/p, W/p): one embedding per coarse patch
        # (B, D, factor*H/p, factor*W/p): more tokens, each a blend of neighbouring coarse embeddings
        return F.interpolate(tokens, scale_factor=self.factor, mode=self.mode,
                             **({"align_corners": False} if self.mode in ("bilinear", "bicubic") else {}))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, then {self.mode} x{self.factor}"


def extend_patch_embedding(model: nn.Module, coarse_proj: nn.Conv2d, mode: str = "bilinear") -> nn.Module:
    """Make `model` (built at a fine patch size) embed coarse patches with `coarse_proj`'s weights and
    interpolate the token grid up to its own. Returns the same model, changed in place.

    The model keeps its token count, position embeddings and blocks; only what each token can see changes.
    `coarse_proj` is the patch projection of the same model built at the coarse patch size (so it starts
    from the init a coarse-patch model gets); its patch must be a larger multiple of the model's.
    """
    old = model.patch_embed.proj
    fine, coarse = old.kernel_size[0], coarse_proj.kernel_size[0]
    if coarse % fine or coarse <= fine:
        raise ValueError(f"the coarse patch {coarse} must be a larger multiple of the model's patch {fine}")
    new = InterpolatedPatchProj(old.in_channels, old.out_channels, coarse, coarse // fine, mode)
    new.load_state_dict(coarse_proj.state_dict())
    model.patch_embed.proj = new.to(device=old.weight.device, dtype=old.weight.dtype)
    return model


def extended_model(fresh, coarse_patch: int, factor: int) -> nn.Module:
    """fresh(patch_size) -> a new model drawing its init from torch's global generator (as create_model does).

    Returns the model at patch coarse_patch / factor whose patch projection is the coarse-patch model's,
    interpolated `factor` times per side. Both models start from the same generator state, so blocks and
    position embeddings start exactly as in the scaled model with the same token count and seed, and the
    patch projection as in the coarse-patch model. pixelvit.train builds `extend` runs with this.
    """
    if factor < 1 or coarse_patch % factor:
        raise ValueError(f"extend factor {factor} must divide the patch size {coarse_patch}")
    start = torch.get_rng_state()
    model = fresh(coarse_patch // factor)
    after = torch.get_rng_state()
    torch.set_rng_state(start)
    coarse = fresh(coarse_patch)
    torch.set_rng_state(after)  # what follows draws as it would after building the scaled model
    return extend_patch_embedding(model, coarse.patch_embed.proj)


def create_extended_model(name: str, img_size: int, coarse_patch: int, factor: int, seed: int, **kwargs):
    """`name` at `coarse_patch` with its token grid interpolated `factor` times: (img_size / coarse_patch *
    factor)^2 tokens (see extended_model), seeded with `seed`."""
    from pixelvit.models import create_model

    torch.manual_seed(seed)
    return extended_model(lambda patch: create_model(name, img_size=img_size, patch_size=patch, **kwargs),
                          coarse_patch, factor)
