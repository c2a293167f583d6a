"""Move a trained model to another input size or patch size: resample its position and patch embeddings.

Two tensors in a ViT or an Adventurer depend on the geometry of the input; everything else (blocks, norms,
head) works on tokens and does not care how many there are:

    pos_embed               (1, N + 1, D)   one vector per grid position, + one for the class token
    patch_embed.proj.weight (D, C, p, p)    one linear filter per output channel, as large as a patch

Changing the image size changes the grid (N); changing the patch size changes the filter and the grid.

* `resample_pos_embed` treats the N position vectors as a D-channel image of size grid x grid and resizes
  it (bicubic, in float32). The class token has no grid position, so it is set aside and put back where
  it was: FIRST for ViT, LAST for Adventurer. Getting this wrong is silent: DeiT-style code (also the
  official Adventurer `main.py` / `utils.interpolate_pos_embed`) assumes "extra tokens first", so for
  Adventurer it keeps patch (0, 0) as if it were the class token and resizes the class token into the grid.
* `resample_patch_embed` is FlexiViT's pseudo-inverse resize (Beyer et al. 2023): it picks new filters w'
  such that <resize(x), w'> = <x, w> for every patch x (exactly when the patch grows, in the least-squares
  sense when it shrinks), so a token's value barely changes when image and patch are resized together.
* `resize_model` builds a model of the same class with the new size and loads the resampled weights.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from pixelvit.patching import as_hw, check_divisible

# Where each architecture keeps its class token in the token sequence (and so in pos_embed).
CLASS_TOKEN_POSITION = {"vit": "first", "adventurer": "last"}


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid,
    old_grid=None,
    class_token: str | None = "first",
    interpolation: str = "bicubic",
    antialias: bool = False,
) -> torch.Tensor:
    """Resize a learned position embedding (1, [cls +] H*W [+ cls], D) to a new grid.

    class_token: "first" (ViT: [cls, p_0 ... p_N-1]), "last" (Adventurer: [p_0 ... p_N-1, cls]) or None.
    The class token's vector is carried over untouched. The same grid returns `pos_embed` itself.
    antialias=False matches the fine-tuning code of DeiT and Adventurer (upsampling ignores it anyway).
    """
    new_grid = as_hw(new_grid)
    n_cls = 0 if class_token is None else 1
    n_grid = pos_embed.shape[1] - n_cls
    if old_grid is None:
        side = round(n_grid**0.5)
        if side * side != n_grid:
            raise ValueError(f"pos_embed has {n_grid} grid positions, not a square: pass old_grid=(H, W)")
        old_grid = (side, side)
    old_grid = as_hw(old_grid)
    if old_grid[0] * old_grid[1] != n_grid:
        raise ValueError(f"pos_embed has {n_grid} grid positions but old_grid is {old_grid}")
    if old_grid == new_grid:
        return pos_embed

    if class_token == "first":
        cls, grid = pos_embed[:, :n_cls], pos_embed[:, n_cls:]
    elif class_token == "last":
        grid, cls = pos_embed[:, :n_grid], pos_embed[:, n_grid:]
    elif class_token is None:
        cls, grid = pos_embed[:, :0], pos_embed
    else:
        raise ValueError(f"class_token must be 'first', 'last' or None, got {class_token!r}")

    B, _, D = grid.shape
    image = grid.float().reshape(B, *old_grid, D).permute(0, 3, 1, 2)  # (B, D, H, W): channels = embed dims
    image = F.interpolate(image, size=new_grid, mode=interpolation, align_corners=False, antialias=antialias)
    grid = image.permute(0, 2, 3, 1).reshape(B, new_grid[0] * new_grid[1], D).to(pos_embed.dtype)  # (B, H'W', D)
    return torch.cat([grid, cls] if class_token == "last" else [cls, grid], dim=1)


def resample_patch_embed(weight: torch.Tensor, new_patch_size) -> torch.Tensor:
    """FlexiViT's pseudo-inverse resize of patch-embedding filters (D, C, p, p) -> (D, C, p', p').

    With B the (p'^2 x p^2) matrix of the bicubic resize of one patch (antialiased), the new filters are
    w' = pinv(B^T) w: the solution of B^T w' = w, which is exact when p' >= p (B^T is onto) and the
    least-squares one when p' < p. This is timm's `resample_patch_embed` (computed in float32, cast back);
    we call it rather than copy it, and tests/test_resample.py checks the defining property.
    """
    from timm.layers import resample_patch_embed as timm_resample_patch_embed

    return timm_resample_patch_embed(weight, list(as_hw(new_patch_size)), interpolation="bicubic", antialias=True)


def resize_model(model, img_size=None, patch_size=None):
    """A new model of the same architecture at another input size and/or patch size, weights resampled.

    Used for the paper's multi-stage training (e.g. 128 -> 224 px) and to run a 16x16 model at 8x8.
    Run-time settings (pooling, head dropout, scan kernel) are the class defaults in the new model.
    The returned model is on the same device and dtype, in the same train/eval mode, as `model`.
    """
    config = model.config
    img_size = config.img_size if img_size is None else img_size
    patch_size = config.patch_size if patch_size is None else patch_size
    old_grid = check_divisible(config.img_size, config.patch_size)
    new_grid = check_divisible(img_size, patch_size)

    new_config = dataclasses.replace(config, img_size=img_size, patch_size=patch_size)
    state = model.state_dict()
    state["pos_embed"] = resample_pos_embed(
        state["pos_embed"], new_grid, old_grid, class_token=CLASS_TOKEN_POSITION[model.arch]
    )
    state["patch_embed.proj.weight"] = resample_patch_embed(state["patch_embed.proj.weight"], patch_size)

    reference = next(model.parameters())
    new_model = type(model)(new_config)  # the model's own class: this module sits below the model registry
    new_model.to(device=reference.device, dtype=reference.dtype)
    new_model.load_state_dict(state, strict=True)
    new_model.train(model.training)
    if getattr(model, "pretrained_cfg", None) is not None:
        h, w = as_hw(img_size)
        channels = state["patch_embed.proj.weight"].shape[1]
        new_model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (channels, h, w)}
    return new_model
