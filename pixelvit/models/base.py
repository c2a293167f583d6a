"""What timm expects of a model, written once for ViT and Adventurer.

Both models are "patch tokens + one class token -> residual blocks -> final norm -> head"; they differ in the
blocks and in WHERE the class token sits (ViT: first, Adventurer: last, so a causal scan ends on it). This
class holds everything else timm's own `VisionTransformer` offers, so timm's training script, optimizer
factory (`layer_decay`), data config and feature extraction work on pixelvit models unchanged:

    forward(x)                      = forward_head(forward_features(x))
    forward_features(x)             (B, N+1, D) all tokens after the final norm, in the model's token order
    forward_head(x, pre_logits)     pool (class token, or the mean of the N patch tokens) -> dropout -> head
    forward_intermediates(x, ...)   each chosen block's patch tokens, as (B, D, H/p, W/p) images by default
    in_chans / num_classes / num_features / head_hidden_size, get_classifier(), reset_classifier(n, global_pool)
    feature_info, prune_intermediate_layers, no_weight_decay, group_matcher, set_grad_checkpointing

A subclass names its block list and final norm (`blocks_attr`, `norm_attr`: Adventurer keeps the official
names `layers` and `norm_f` so official checkpoints load), sets `cls_index` (0 or -1), and calls
`_init_head`, `_init_features` and `_finish` in its constructor.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models._features import feature_take_indices

from pixelvit.checkpoints import load_into
from pixelvit.models.layers import run_layers
from pixelvit.ops.mixer import is_tracing
from pixelvit.patching import as_hw

GLOBAL_POOLS = ("token", "avg", "")  # class token, mean of the patch tokens, no pooling (all tokens)


def data_cfg(config) -> dict:
    """How to feed a model of this config, in timm's pretrained_cfg keys (what resolve_data_config reads).

    fixed_input_size: the position embedding has one vector per grid position, so the model takes exactly
    img_size (pixelvit.resample.resize_model moves it to another). Every dataset is normalized with the
    ImageNet mean and std (pixelvit.data). Small images (below 64 px: CIFAR, specks) are evaluated whole
    (crop 1.0), as pixelvit's training does; ImageNet-sized ones with DeiT's center crop (0.875). A released
    checkpoint's own crop is in its tag's cfg.
    """
    h, w = as_hw(config.img_size)
    return dict(
        num_classes=config.num_classes, input_size=(config.in_chans, h, w), fixed_input_size=True,
        interpolation="bicubic", crop_pct=1.0 if max(h, w) < 64 else 0.875, crop_mode="center",
        mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="patch_embed.proj", classifier="head",
    )


def norm_in_place(norm: nn.Module, x: torch.Tensor, tokens: int = 4096) -> torch.Tensor:
    """norm(x) written over x, `tokens` tokens at a time: the final norm acts on each token alone, so this is
    norm(x) (tests check it) without holding a second copy of the residual stream, 154 MB for one image of
    Adventurer-Base at 50,177 tokens and the peak of its forward. Inference only: x is overwritten."""
    for part in x.split(tokens, dim=1):  # views of x
        part.copy_(norm(part))
    return x


class PatchTokenModel(nn.Module):
    arch: str  # "vit" | "adventurer": how pixelvit.io stores it and pixelvit.models rebuilds it
    cls_index: int  # where the class token sits in the token sequence: 0 (ViT) or -1 (Adventurer)
    blocks_attr: str = "blocks"  # the attribute holding the blocks
    norm_attr: str = "norm"  # the attribute holding the final norm

    @property
    def trunk(self) -> nn.Module:
        """The blocks, in order."""
        return getattr(self, self.blocks_attr)

    @property
    def final_norm(self) -> nn.Module:
        return getattr(self, self.norm_attr)

    @property
    def in_chans(self) -> int:
        """Input channels, as timm models have them (timm's tests check it equals pretrained_cfg's input_size[0])."""
        return self.patch_embed.in_chans

    def _init_head(self, num_classes: int, global_pool: str, drop_rate: float) -> None:
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.head_hidden_size = self.embed_dim  # features the head reads
        self.head_drop = nn.Dropout(drop_rate)  # timm's drop_rate: dropout on the pooled features
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    def _init_features(self) -> None:
        """timm's feature_info: one entry per block, every one at stride patch_size (ViT-style features)."""
        p = self.patch_embed.patch_size
        self.feature_info = [
            dict(module=f"{self.blocks_attr}.{i}", num_chs=self.embed_dim, reduction=p) for i in range(len(self.trunk))
        ]

    def _finish(self, device=None, dtype=None) -> None:
        """Every instance gets a pretrained_cfg (timm's builder replaces it with the name's or tag's);
        timm's `device=` / `dtype=` arguments move the freshly initialized parameters."""
        self.pretrained_cfg = self.default_cfg = data_cfg(self.config)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    # ---- run-time settings (never part of the config, never saved) ----------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in backward: far less memory at many tokens, ~30% slower."""
        self.grad_checkpointing = enable

    # ---- forward ------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, N+1, D): patch tokens, the class token at `cls_index`, + position embedding."""
        x = self.patch_embed(images)  # (B, N, D), raster order
        cls_token = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = torch.cat([cls_token, x] if self.cls_index == 0 else [x, cls_token], dim=1)
        return x + self.pos_embed

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        x = run_layers(self.trunk, self.embed(images), self.grad_checkpointing)  # (B, N+1, D)
        if torch.is_grad_enabled() or is_tracing():
            return self.final_norm(x)
        return norm_in_place(self.final_norm, x)  # inference: the same numbers, no second (B, N+1, D) tensor

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        """(B, N+1, D) -> (B, D): the class token ("token") or the mean of the N patch tokens ("avg")."""
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type == "token":
            return x[:, self.cls_index]
        if pool_type == "avg":
            return (x[:, 1:] if self.cls_index == 0 else x[:, :-1]).mean(dim=1)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.pool(x))  # (B, D)
        return x if pre_logits else self.head(x)  # (B, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def forward_intermediates(
        self,
        images: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        """The residual stream after chosen blocks, as timm's ViT returns it.

        indices: None = every block, an int n = the last n blocks, a list = those blocks (negative from the end).
        Each intermediate holds the N PATCH tokens only (the class token is left out, wherever the model keeps
        it), in raster order (row by row, as in the image; Adventurer's flipped layers are already undone):
            output_fmt="NCHW": (B, D, H/p, W/p), a feature map per block (e.g. for a segmentation head)
            output_fmt="NLC":  (B, N, D)
        return_prefix_tokens: each entry becomes (patch tokens, class token (B, 1, D)).
        norm: apply the final norm to each intermediate. Returns the intermediates (intermediates_only) or
        (forward_features(images), intermediates).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.trunk), indices)
        x = self.embed(images)  # (B, N+1, D)
        blocks = self.trunk[: max_index + 1] if stop_early else self.trunk
        intermediates = []
        for i, block in enumerate(blocks):
            x = run_layers([block], x, self.grad_checkpointing)
            if i in take_indices:
                intermediates.append(self.final_norm(x) if norm else x)
        rows, cols = self.patch_embed.grid_size
        outputs = []
        for y in intermediates:
            cls_token = y[:, :1] if self.cls_index == 0 else y[:, -1:]  # (B, 1, D)
            patches = y[:, 1:] if self.cls_index == 0 else y[:, :-1]  # (B, N, D)
            if output_fmt == "NCHW":
                patches = patches.reshape(y.shape[0], rows, cols, -1).permute(0, 3, 1, 2).contiguous()  # (B, D, H/p, W/p)
            outputs.append((patches, cls_token) if return_prefix_tokens else patches)
        if intermediates_only:
            return outputs
        return self.final_norm(x), outputs

    # ---- what timm's builder, feature wrapper and optimizer factory ask for ---------------------
    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        """Drop the blocks after the last one in `indices` (and the norm / head): a lighter feature extractor."""
        take_indices, max_index = feature_take_indices(len(self.trunk), indices)
        setattr(self, self.blocks_attr, self.trunk[: max_index + 1])
        if prune_norm:
            setattr(self, self.norm_attr, nn.Identity())
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new (randomly initialized) head for `num_classes` classes (0 = none: forward returns features)."""
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        reference = self.pos_embed
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.head.to(device=reference.device, dtype=reference.dtype).train(self.training)  # as the model is
        self.config.num_classes = num_classes

    def no_weight_decay(self) -> set[str]:
        """Parameters timm's optimizer factory keeps out of weight decay (besides every 1-d tensor)."""
        return {"pos_embed", "cls_token"}

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups for timm's layer-wise lr decay: embeddings first, then each block, the final
        norm last (the head, unmatched, gets the full learning rate)."""
        return dict(
            stem=r"^cls_token|^pos_embed|^patch_embed",
            blocks=[(rf"^{self.blocks_attr}\.(\d+)", None), (rf"^{self.norm_attr}\.", (99999,))],
        )

    def load_pretrained(self, path) -> None:
        """timm's hook for `pretrained=True` (the cfg's custom_load): pixelvit's safe loader reads the file."""
        load_into(self, path)
