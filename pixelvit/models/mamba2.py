"""The Mamba-2 token mixer ("Transformers are SSMs", Dao & Gu 2024), as Adventurer uses it.

Where a transformer block mixes tokens with attention (cost ~ N^2), Mamba-2 mixes them with a linear
recurrence run left to right over the sequence (cost ~ N), so the mixer scales to 50,176 pixel tokens:

    u (B, L, d_model)
      -> in_proj                          one matmul, split into  z | xBC | dt
      -> causal depthwise conv1d + SiLU   on xBC only (each channel sees itself and 3 earlier tokens)
      -> split xBC into x | B | C
      -> SSD scan                         state_t = exp(dt_t A) state_{t-1} + dt_t x_t B_t^T,
                                          y_t = state_t C_t + D x_t             (pixelvit.ops.ssd)
      -> gated RMSNorm                    RMSNorm(y * SiLU(z))  (the gate is applied BEFORE the norm)
      -> out_proj                         (B, L, d_model)

Sizes: d_inner = expand * d_model channels are split into nheads = d_inner / headdim heads; each head
has its own scalar decay A_h and step dt_t,h, and all heads of a group share B_t and C_t (d_state each).

This is the forward of mamba-ssm's `Mamba2` (`mamba_ssm/modules/mamba2.py`) with its defaults as used
by the official Adventurer code (`mamba_custom.py`: rmsnorm=True, norm_before_gate=False, no in/out
projection bias, conv bias, D per head, no dt limit). Parameter names and shapes are the same
(in_proj, conv1d, dt_bias, A_log, D, norm, out_proj). What is verified, and how:
tests/test_official_checkpoint_format.py re-creates the official module tree (models_mamba.py,
mamba_custom.py, mamba-ssm's RMSNorms: names, nesting and shapes, no forward); the state dict nn.Module
generates from it loads into pixelvit's model with strict=True for every official model name, and through
pixelvit.load_pretrained as an official-format training checkpoint. No released file is loaded by the
tests (notebook 06 loads one where there is network).
The fused CUDA path of mamba-ssm computes the same thing in one kernel; here every step is visible.
"""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from pixelvit.models.layers import at_least_float32
from pixelvit.ops import mixer as mixer_fast_paths
from pixelvit.ops.ssd import ssd_scan  # chunk_size=None: the scan picks the device's best (64 on CPU)

# Calls kept as calls when torch.fx traces the model (they branch on dtypes and devices); see models.layers.
torch.fx.wrap("ssd_scan")
torch.fx.wrap("at_least_float32")


class GatedRMSNorm(nn.Module):
    """y -> RMSNorm(y * SiLU(z)) * weight, normalized separately over each group of channels.

    Mamba-2's output norm with norm_before_gate=False: the gate multiplies first, then the product is
    normalized. With ngroups=1 there is one group of all d_inner channels. Computed in at least float32
    (as mamba-ssm's kernel) and cast back to the input dtype.
    """

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size = group_size
        self.eps = eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gated = at_least_float32(y) * F.silu(at_least_float32(z))  # (..., dim)
        groups = gated.unflatten(-1, (-1, self.group_size))  # (..., ngroups, group_size)
        groups = groups * torch.rsqrt(groups.square().mean(dim=-1, keepdim=True) + self.eps)
        normed = groups.flatten(-2)  # (..., dim)
        return (normed * self.weight.to(normed.dtype)).to(y.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, group_size={self.group_size}, eps={self.eps}"


class Mamba2Mixer(nn.Module):
    def __init__(
        self,
        d_model: int,
        d_state: int = 64,  # size of B_t and C_t: the state of each head is (headdim, d_state)
        d_conv: int = 4,  # causal conv kernel: each channel mixes the current and 3 previous tokens
        expand: int = 2,  # d_inner = expand * d_model
        headdim: int = 64,  # channels per head; nheads = d_inner / headdim
        ngroups: int = 1,  # heads share B and C within a group (like grouped-query attention)
        chunk_size: int | None = None,  # chunk length of the chunked scan; None: ssd_scan picks per device
        scan_backend: str = "auto",  # "auto" | "reference" | "mamba_ssm" | "fla", see pixelvit.ops.ssd
        A_init_range: tuple[float, float] = (1.0, 16.0),  # A_h = -U(1, 16) at init
        dt_min: float = 1e-3,  # initial step sizes are log-uniform in [dt_min, dt_max]
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
    ):
        super().__init__()
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * d_model
        if self.d_inner % headdim != 0:
            raise ValueError(f"expand * d_model = {self.d_inner} is not divisible by headdim {headdim}")
        self.headdim = headdim
        self.nheads = self.d_inner // headdim
        if self.nheads % ngroups != 0:
            raise ValueError(f"nheads {self.nheads} is not divisible by ngroups {ngroups}")
        self.ngroups = ngroups
        self.chunk_size = chunk_size  # run-time settings (Adventurer.set_scan), not architecture
        self.scan_backend = scan_backend

        # one projection for everything, in the order z | x B C | dt
        d_xBC = self.d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, self.d_inner + d_xBC + self.nheads, bias=False)
        # depthwise (groups = channels) causal convolution over x, B and C; padding d_conv-1 on both
        # sides, and forward keeps the first L outputs, so output t sees only inputs t-3 .. t
        self.conv1d = nn.Conv1d(d_xBC, d_xBC, kernel_size=d_conv, groups=d_xBC, padding=d_conv - 1, bias=True)

        # dt_bias: softplus(dt_bias) is log-uniform in [dt_min, dt_max]; store its inverse softplus
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt) = dt + log(1 - e^-dt)
        # A_h = -exp(A_log_h) < 0 always, whatever the optimizer does to A_log
        A = torch.empty(self.nheads).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.nheads))  # skip connection y += D_h x, per head
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True  # mamba-ssm's convention; optimizers may read it

        self.norm = GatedRMSNorm(self.d_inner, group_size=self.d_inner // ngroups, eps=1e-5)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if mixer_fast_paths.use_fast_path(self, u):  # the same function, streamed (inference) or one
            return mixer_fast_paths.fast_forward(self, u)  # autograd Function (training): pixelvit/ops/mixer.py
        seqlen = u.shape[1]
        zxbcdt = self.in_proj(u)  # (B, L, d_inner + d_xBC + nheads)
        d_xBC = self.d_inner + 2 * self.ngroups * self.d_state
        z, xBC, dt = torch.split(zxbcdt, [self.d_inner, d_xBC, self.nheads], dim=-1)

        # causal depthwise conv over the sequence, then SiLU
        xBC = self.conv1d(xBC.transpose(1, 2))[..., :seqlen]  # (B, d_xBC, L)
        xBC = F.silu(xBC.transpose(1, 2))  # (B, L, d_xBC)
        x, B, C = torch.split(xBC, [self.d_inner, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        x = x.unflatten(-1, (self.nheads, self.headdim))  # (B, L, nheads, headdim)
        B = B.unflatten(-1, (self.ngroups, self.d_state))  # (B, L, ngroups, d_state)
        C = C.unflatten(-1, (self.ngroups, self.d_state))  # (B, L, ngroups, d_state)

        # discretization parameters, in float32 (or float64) as mamba-ssm's kernels compute them
        dt = at_least_float32(dt)
        dt = F.softplus(dt + self.dt_bias.to(dt.dtype))  # (B, L, nheads), > 0
        A = -torch.exp(self.A_log.to(dt.dtype))  # (nheads,), < 0

        y = ssd_scan(x, dt, A, B, C, chunk_size=self.chunk_size, D=self.D, backend=self.scan_backend)
        y = y.flatten(-2)  # (B, L, nheads, headdim) -> (B, L, d_inner)
        y = self.norm(y, z)  # RMSNorm(y * SiLU(z))
        return self.out_proj(y)  # (B, L, d_model)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, d_inner={self.d_inner}, nheads={self.nheads}, headdim={self.headdim}, "
            f"d_state={self.d_state}, ngroups={self.ngroups}, chunk_size={self.chunk_size}, "
            f"scan_backend={self.scan_backend!r}"
        )
