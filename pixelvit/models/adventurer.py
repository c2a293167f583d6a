"""Adventurer: a Mamba-2 vision backbone that reads the image as one causal token sequence.

Adventurer (Wang et al., "Causal Image Modeling for Efficient Visual Understanding", 2024) is the
linear-cost model of the patch-scaling paper: at patch size 1 a 224x224 image is 50,176 tokens, and the
Mamba-2 mixer's cost grows like N (not N^2), so every pixel can be a token.

    image (B, C, H, W)
      -> patch embedding                 (B, N, D)    as ViT
      -> class token appended LAST       (B, N+1, D)  a causal scan only lets the last token see all
      -> + learned position embedding
      -> depth x Block
      -> final RMSNorm
      -> linear head on the last token (the class token) -> logits (B, num_classes)

One Block (residual stream x: (B, N+1, D), patch tokens then class token):

    h = RMSNorm(x)
    if this layer flips:  reverse the N patch tokens (the class token stays last)
    h = [mean(h over all N+1 tokens), h]       (B, N+2, D)  "heading average": an image summary first,
                                                             so even the first patch sees global context
    h = Mamba2Mixer(h)[:, 1:]                  drop the output at the average token -> (B, N+1, D)
    if this layer flips:  reverse the patch tokens back
    x = x + DropPath(h)
    x = x + DropPath(SwiGLU(RMSNorm(x)))

Which layers flip (`flip_rule`) - read this before training or loading weights:
    The released code (wangf3014/Adventurer and wangf3014/Patch_Scaling, `models_mamba.py`) flips in
    the layers with `n // 2 == 1`, i.e. only layers 2 and 3 (counting from 0). The paper describes
    flipping the token order every two layers, and the author has called the released expression a bug.
    The released checkpoints were most likely trained with the released code, but a checkpoint does not
    record the rule, so this is not settled: `pixelvit.predict.detect_flip_rule` measures it.
    pixelvit offers three rules (see `flipped_layers`):
        "released"  (default)  n // 2 == 1          -> [2, 3]                    the released code
        "every_two"            (n // 2) % 2 == 1    -> [2, 3, 6, 7, 10, 11, ...] what the paper describes
        "alternate"            n % 2 == 1           -> [1, 3, 5, ...]
    Use "released" for the official weights unless detect_flip_rule says otherwise; any rule for
    training from scratch. The parameters are identical under all three rules: only the forward differs.

Parameter names and shapes match the official model exactly (tests/test_adventurer.py lists all 199
keys of adventurer_tiny_patch1), so its state_dict loads with strict=True.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from pixelvit.models.base import PatchTokenModel
from pixelvit.models.layers import DropPath, PatchEmbed, at_least_float32
from pixelvit.models.mamba2 import Mamba2Mixer
from pixelvit.ops import mixer as mixer_fast_paths
from pixelvit.ops.ssd import select_backend

torch.fx.wrap("at_least_float32")  # dtype logic: a call in a traced graph (see pixelvit.models.layers)

FLIP_RULES = ("released", "every_two", "alternate")


@dataclass
class AdventurerConfig:
    img_size: int | tuple[int, int] = 224  # an int means a square image
    patch_size: int = 16  # must divide img_size; 1 = every pixel is a token
    in_chans: int = 3
    num_classes: int = 1000  # 0 = no head, forward returns the class token's features
    embed_dim: int = 256  # Adventurer-Tiny; 512 / 768 / 1024 for Small / Base / Large
    depth: int = 12  # 24 for Large
    mlp_ratio: float = 2.5  # SwiGLU hidden width = int(mlp_ratio * embed_dim); official code hard-codes 2.5
    flip_rule: str = "released"  # which layers reverse the patch order: see the module docstring
    # Mamba-2 mixer (mamba-ssm defaults, as the official code uses them)
    d_state: int = 64
    expand: int = 2  # mixer width d_inner = expand * embed_dim
    headdim: int = 64  # nheads = d_inner / headdim (8 for Tiny)
    ngroups: int = 1
    d_conv: int = 4
    norm_eps: float = 1e-5  # all RMSNorms (official norm_epsilon)
    drop_path_rate: float = 0.0  # the official constructor defaults to 0.1; per-layer schedule: see Adventurer
    # How the scan runs (kernel, chunk length) and gradient checkpointing are run-time settings of the model
    # (Adventurer(..., scan_backend=, chunk_size=, grad_checkpointing=), set_scan, set_grad_checkpointing),
    # not architecture: they are never saved with the weights.


def flipped_layers(depth: int, flip_rule: str = "released") -> list[int]:
    """Indices (from 0) of the layers that reverse the patch-token order under `flip_rule`."""
    rules = {
        "released": lambda n: n // 2 == 1,  # the released code: layers 2 and 3 only
        "every_two": lambda n: (n // 2) % 2 == 1,  # the paper: flip every two layers
        "alternate": lambda n: n % 2 == 1,  # every other layer
    }
    if flip_rule not in rules:
        raise ValueError(f"unknown flip_rule {flip_rule!r}; choose one of {list(rules)}")
    return [n for n in range(depth) if rules[flip_rule](n)]


def reverse_patches(x: torch.Tensor) -> torch.Tensor:
    """Reverse the order of the patch tokens, keep the class token last: (B, N+1, D) -> (B, N+1, D)."""
    return torch.cat([x[:, :-1].flip(1), x[:, -1:]], dim=1)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: LayerNorm without centering and without bias.

    Computed in at least float32 and cast back, as mamba-ssm's fused RMSNorm does under bf16.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = at_least_float32(x)
        out = F.rms_norm(x32, self.weight.shape, self.weight.to(x32.dtype), self.eps)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class SwiGLU(nn.Module):
    """w3(SiLU(w1 x) * w2 x): a gated MLP; all three linears have biases, as in the official code."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim)
        self.w2 = nn.Linear(dim, hidden_dim)
        self.w3 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class Block(nn.Module):
    def __init__(self, config: AdventurerConfig, drop_path_rate: float, flip: bool):
        super().__init__()
        dim = config.embed_dim
        self.flip = flip
        self.mixer = Mamba2Mixer(
            dim,
            d_state=config.d_state,
            d_conv=config.d_conv,
            expand=config.expand,
            headdim=config.headdim,
            ngroups=config.ngroups,
        )
        self.norm = RMSNorm(dim, eps=config.norm_eps)
        self.drop_path = DropPath(drop_path_rate)  # one module for both branches, as the official Block
        self.mlp = SwiGLU(dim, int(config.mlp_ratio * dim))
        self.norm_mlp = RMSNorm(dim, eps=config.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if mixer_fast_paths.use_streaming_block(self, x):  # inference: the same block, token block by
            return mixer_fast_paths.streaming_block(self, x)  # token block, in little memory (ops/mixer.py)
        h = self.norm(x)  # (B, N+1, D), class token last
        if self.flip:
            h = reverse_patches(h)
        h = torch.cat([h.mean(dim=1, keepdim=True), h], dim=1)  # (B, N+2, D), average token first
        h = self.mixer(h)[:, 1:]  # drop the average token's output: (B, N+1, D)
        if self.flip:
            h = reverse_patches(h)  # back to raster order, so every block outputs the same token order
        x = x + self.drop_path(h)
        x = x + self.drop_path(self.mlp(self.norm_mlp(x)))
        return x

    def extra_repr(self) -> str:
        return f"flip={self.flip}"


class Adventurer(PatchTokenModel):
    """`config` is the architecture (saved with the weights); the keyword arguments are run-time choices.

    scan_backend / chunk_size: how the Mamba-2 scan runs (see `set_scan`); never saved.
    global_pool: "token" (the class token, last), "avg" (mean of the patch tokens) or "" (no pooling).
    drop_rate: dropout on the pooled features before the head (timm's `drop_rate`).
    grad_checkpointing: see `set_grad_checkpointing`. device / dtype: where the parameters are created.
    """

    arch = "adventurer"
    cls_index = -1  # the class token comes LAST
    blocks_attr, norm_attr = "layers", "norm_f"  # the official names, so official checkpoints load

    def __init__(self, config: AdventurerConfig, *, scan_backend: str = "auto", chunk_size: int | None = None,
                 global_pool: str = "token", drop_rate: float = 0.0, grad_checkpointing: bool = False,
                 device=None, dtype=None):
        super().__init__()
        self.config = config
        self.embed_dim = dim = config.embed_dim
        self.patch_embed = PatchEmbed(config.img_size, config.patch_size, config.in_chans, dim)
        self.num_patches = self.patch_embed.num_patches
        self.num_tokens = self.num_patches + 1  # + class token; the mixer sees one more (the average token)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, dim))

        # the official stochastic-depth schedule, kept exactly: [0] + linspace(0, rate, depth), indexed by
        # layer, so layer 0 and layer 1 get 0 and the last layer gets rate * (depth - 2) / (depth - 1)
        rates = [0.0] + torch.linspace(0, config.drop_path_rate, config.depth, device="cpu").tolist()
        flips = set(flipped_layers(config.depth, config.flip_rule))
        self.layers = nn.ModuleList(Block(config, rates[i], flip=i in flips) for i in range(config.depth))
        self.norm_f = RMSNorm(dim, eps=config.norm_eps)
        self._init_head(config.num_classes, global_pool, drop_rate)
        self._init_features()
        self.grad_checkpointing = grad_checkpointing
        self._init_weights()
        self.set_scan(backend=scan_backend, chunk_size=chunk_size)
        self._finish(device, dtype)

    @torch.no_grad()
    def _init_weights(self):
        """The official init: Mamba's for the blocks, DeiT's for the embeddings and the head."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        # patch projection: LeCun normal (truncated at 2 std, std corrected for the truncation)
        proj = self.patch_embed.proj
        std = math.sqrt(1.0 / (proj.in_channels * proj.kernel_size[0] * proj.kernel_size[1])) / 0.87962566103423978
        nn.init.trunc_normal_(proj.weight, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(proj.bias)
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
        # every linear bias starts at 0 (SwiGLU and head); other linear weights keep PyTorch's default
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        # GPT-2 style: the mixer's output projection (the residual branch) is scaled down by sqrt(depth)
        for layer in self.layers:
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            layer.mixer.out_proj.weight /= math.sqrt(self.config.depth)

    def set_scan(self, backend: str = "auto", chunk_size: int | None = None) -> None:
        """How every Mamba-2 mixer runs its scan, a run-time choice that is never saved with the weights.

        backend: "auto" (mamba-ssm / fla kernels on CUDA when installed, else the reference), "reference",
            "mamba_ssm" or "fla" (see pixelvit.ops.ssd). chunk_size: the chunked scan's chunk length; None
            lets `ssd_scan` choose for the device (64 on CPU). The outputs do not depend on either (up to
            rounding), only the speed and memory do.
        """
        self.scan_backend = backend
        for layer in self.layers:
            layer.mixer.scan_backend = backend
            layer.mixer.chunk_size = chunk_size

    @property
    def scan_backend_in_use(self) -> str:
        """The SSD implementation the mixers run with on the model's current device."""
        return select_backend(self.pos_embed.device, self.scan_backend)

    def no_weight_decay(self) -> set[str]:
        """pos_embed, cls_token, and the SSM parameters mamba-ssm exempts: A_log, D and dt_bias of every mixer."""
        ssm = {f"layers.{i}.mixer.{name}" for i in range(len(self.layers)) for name in ("A_log", "D", "dt_bias")}
        return super().no_weight_decay() | ssm

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"img_size={self.patch_embed.img_size}, patch_size={c.patch_size}, num_tokens={self.num_tokens}, "
            f"flip_rule={c.flip_rule!r} (layers {flipped_layers(c.depth, c.flip_rule)}), "
            f"scan_backend_in_use={self.scan_backend_in_use!r}"
        )
