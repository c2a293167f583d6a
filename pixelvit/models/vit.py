"""Vision Transformer (DeiT-style), at any patch size down to 1x1 pixels.

    image (B, C, H, W)
      -> patch embedding             (B, N, D)      N = (H/p) * (W/p) patches, p = patch_size
      -> class token FIRST           (B, N+1, D)
      -> + learned position embedding
      -> depth x pre-norm Block      x = x + Attn(LN(x));  x = x + MLP(LN(x))
      -> final LayerNorm
      -> linear head on the class token (position 0) -> logits (B, num_classes)

The timm model interface (forward_head, forward_intermediates, reset_classifier, ...) is written once for
both architectures in `pixelvit.models.base`; this file is only the transformer.

Nothing here depends on the patch size except N: at patch 16 a 224x224 image is 196 tokens, at patch 1
it is 50,176, and self-attention's cost grows with N^2 (the paper's point: accuracy keeps improving).

Parameter names and shapes are identical to timm's `VisionTransformer` (patch_embed.proj, cls_token,
pos_embed, blocks.N.norm1 / attn.qkv / attn.proj / norm2 / mlp.fc1 / mlp.fc2, norm, head), so a timm
state_dict loads with strict=True and gives the same logits (tests/test_vit.py checks this).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelvit.models.base import PatchTokenModel
from pixelvit.models.layers import DropPath, PatchEmbed


@dataclass
class ViTConfig:
    img_size: int | tuple[int, int] = 224  # an int means a square image
    patch_size: int = 16  # must divide img_size; 1 = every pixel is a token
    in_chans: int = 3
    num_classes: int = 1000  # 0 = no head, forward returns the class token's features
    embed_dim: int = 192  # ViT-Tiny; paper Table 7: 192 / 384 / 768 / 1024 for T / S / B / L
    depth: int = 12
    num_heads: int = 3  # head dim = embed_dim / num_heads = 64 for all paper sizes
    mlp_ratio: float = 4.0  # MLP hidden width = int(mlp_ratio * embed_dim)
    qkv_bias: bool = True
    drop_path_rate: float = 0.0  # stochastic depth of the last block; linear from 0 at the first (DeiT)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection and PyTorch's fused SDPA kernel."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim)  # (B, T, 3, heads, head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, heads, T, head_dim)
        y = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head_dim)) v, (B, heads, T, head_dim)
        y = y.transpose(1, 2).reshape(B, T, D)  # heads side by side again: (B, T, D)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact (erf) GELU, as timm and DeiT


class Block(nn.Module):
    """Pre-norm transformer block: the residual stream is never normalized, only the branch inputs."""

    def __init__(self, config: ViTConfig, drop_path_rate: float):
        super().__init__()
        dim = config.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, config.num_heads, config.qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(config.mlp_ratio * dim))
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class VisionTransformer(PatchTokenModel):
    """`config` is the architecture (saved with the weights); the keyword arguments are run-time choices.

    global_pool: "token" (the class token, DeiT), "avg" (mean of the patch tokens) or "" (no pooling).
    drop_rate: dropout on the pooled features before the head (timm's `drop_rate`).
    grad_checkpointing: see `set_grad_checkpointing`. device / dtype: where the parameters are created.
    """

    arch = "vit"
    cls_index = 0  # the class token comes FIRST

    def __init__(self, config: ViTConfig, *, global_pool: str = "token", drop_rate: float = 0.0,
                 grad_checkpointing: bool = False, device=None, dtype=None):
        super().__init__()
        self.config = config
        self.embed_dim = dim = config.embed_dim
        self.patch_embed = PatchEmbed(config.img_size, config.patch_size, config.in_chans, dim)
        self.num_patches = self.patch_embed.num_patches
        self.num_tokens = self.num_patches + 1  # + class token
        self.num_prefix_tokens = 1  # timm's name: tokens before the patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, dim))  # one vector per position

        # stochastic depth grows linearly with depth: 0 for block 0 ... drop_path_rate for the last block
        rates = torch.linspace(0, config.drop_path_rate, config.depth, device="cpu").tolist()
        self.blocks = nn.Sequential(*[Block(config, rate) for rate in rates])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self._init_head(config.num_classes, global_pool, drop_rate)
        self._init_features()
        self.grad_checkpointing = grad_checkpointing
        self._init_weights()
        self._finish(device, dtype)

    def _init_weights(self):
        """timm's default ViT init: truncated-normal(0.02) linears and positions, a tiny class token;
        the patch projection keeps PyTorch's default Conv2d init (as in timm)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def extra_repr(self) -> str:
        c = self.config
        return f"img_size={self.patch_embed.img_size}, patch_size={c.patch_size}, num_tokens={self.num_tokens}"
