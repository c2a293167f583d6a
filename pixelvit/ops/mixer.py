"""The Mamba-2 mixer's two fast paths: the same function as `Mamba2Mixer.forward`, in far less memory.

`pixelvit.models.mamba2.Mamba2Mixer.forward` is the readable definition: every step runs on all L tokens
at once. At 50,178 tokens every intermediate is a tensor of up to (L, 1160) floats (233 MB for
Adventurer-Tiny), and autograd keeps about twenty of them per layer. Two situations do not need that:

* Inference (no gradients) - `MixerStream` / `streaming_forward`: the mixer runs on blocks of
  `BLOCK_TOKENS` tokens in turn. Only two things cross a block boundary, both small: the last d_conv - 1
  inputs of the causal convolution, and the SSM state (b, nheads, headdim, d_state) the scan ends the
  block with. Memory is the input, the output and one block's temporaries; the matmuls still see
  1024-row blocks, and no temporary is a fresh 233 MB allocation.
  `streaming_block` does the same for a whole Adventurer block (norms, mean token, flip, MLP).
* Training - `pixelvit.ops.mixer_autograd.MixerFunction`, the whole mixer as one torch.autograd.Function:
  it keeps only the mixer's input u and the scan's per-chunk states for backward, and its backward
  recomputes the cheap front (in_proj, conv, SiLU) and runs every derivative written out by hand. This is
  what mamba-ssm's fused kernels and gradient checkpointing do: a little recomputation for a fraction of
  the memory.

`Mamba2Mixer.forward` calls `fast_forward` when `use_fast_path` says so (the reference scan backend, not
while torch.fx traces, not under autocast, not inside `readable_mixer()`); `mixer.memory_lean =
False` turns the training path off. tests/test_ssd.py (streaming) and tests/test_mixer_autograd.py (training)
check both against the readable forward in float64 (outputs, gradients, gradcheck).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
import torch.fx
import torch.nn.functional as F

from pixelvit.ops.mixer_autograd import mixer_trainable
from pixelvit.ops.ssd import autocast_on, default_chunk_size, select_backend, ssd_fast

# Rows (batch x tokens) per streamed block; tokens rounded to a multiple of the chunk. One block's temporaries
# (in_proj's 3,152 channels, the chunked scan's chunk x chunk matrices per head, the MLP) are ~0.1 MB per row
# for Adventurer-Base. 1,024 rows instead of 2,048: ~120 MB less at the peak of a block at 224 px patch 1, at the
# same speed (medians of alternated runs: one Base block 0.88x the time, one thread; the whole Tiny forward
# 0.95x, two threads); 512 rows cost ~20 % more time.
BLOCK_TOKENS = 1024

_local = threading.local()  # per thread: inside `readable_mixer()`?


@contextmanager
def readable_mixer():
    """Inside this context every Mamba2Mixer runs its readable forward (tests and benchmarks compare with it)."""
    previous = getattr(_local, "readable", False)
    _local.readable = True
    try:
        yield
    finally:
        _local.readable = previous


def is_tracing() -> bool:
    """torch.fx, torch.export or torch.compile is tracing: they get the readable forward, one plain graph."""
    trace = torch.fx._symbolic_trace
    is_fx = getattr(trace, "is_fx_symbolic_tracing", None) or getattr(trace, "is_fx_tracing", lambda: False)
    return bool(is_fx() or torch.compiler.is_compiling())


def use_fast_path(mixer, u: torch.Tensor) -> bool:
    """Whether `Mamba2Mixer.forward` should hand over to `fast_forward` (same result, less memory)."""
    if getattr(_local, "readable", False) or is_tracing() or autocast_on(u.device.type):
        return False
    if select_backend(u.device, mixer.scan_backend) != "reference":
        return False  # a CUDA kernel runs the scan: the readable forward around it is the fast path there
    if torch.is_grad_enabled():
        return getattr(mixer, "memory_lean", True)
    return True


def fast_forward(mixer, u: torch.Tensor) -> torch.Tensor:
    """The mixer's output for u (B, L, d_model): streamed without gradients, MixerFunction with them."""
    if torch.is_grad_enabled():
        return mixer_trainable(mixer, u)
    return streaming_forward(mixer, u)


class MixerStream:
    """One Mamba2Mixer run over a sequence that arrives in blocks, left to right: `stream(u_block)`.

    The same steps as Mamba2Mixer.forward (in_proj, causal depthwise conv + SiLU, softplus, SSD scan,
    gated RMSNorm, out_proj), written for blocks of (B, T, d_model) rows: only the convolution and the
    scan need earlier tokens, and they get them from `conv_tail` (the last d_conv - 1 conv inputs) and
    `state` (the SSM state the scan ended the previous block with). Blocks must be multiples of the
    chunk (except the last), so the scan sees the chunks of one long call. Inference only (no_grad).
    """

    def __init__(self, mixer, u: torch.Tensor):
        self.m = m = mixer
        self.batch = u.shape[0]
        self.chunk = m.chunk_size or default_chunk_size(u.device)
        self.compute_dtype = torch.promote_types(u.dtype, torch.float32)
        self.A = -torch.exp(m.A_log.to(self.compute_dtype))  # (nheads,)
        self.d_xBC = m.d_inner + 2 * m.ngroups * m.d_state
        self.conv_weight = m.conv1d.weight[:, 0].T.contiguous()  # (d_conv, d_xBC): tap k for every channel
        self.conv_tail = u.new_zeros(u.shape[0], m.d_conv - 1, self.d_xBC)  # zeros before the sequence
        self.state = None  # (B, nheads, headdim, d_state)

    def block_length(self, block_tokens: int = BLOCK_TOKENS) -> int:
        """Tokens per block: `block_tokens` rows in all (shared by the batch), a multiple of the chunk."""
        per_sequence = block_tokens // max(self.batch, 1)
        return max(self.chunk, per_sequence // self.chunk * self.chunk)

    @torch.no_grad()
    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        m, T = self.m, u.shape[1]
        zxbcdt = m.in_proj(u)  # (B, T, d_inner + d_xBC + nheads)
        z, xBC, dt = torch.split(zxbcdt, [m.d_inner, self.d_xBC, m.nheads], dim=-1)
        # causal depthwise conv, token-major: out_t = bias + sum_k w_k * in_{t - (d_conv-1) + k}
        padded = torch.cat([self.conv_tail, xBC], dim=1)  # (B, d_conv - 1 + T, d_xBC)
        self.conv_tail = padded[:, T:]
        xBC = torch.addcmul(m.conv1d.bias, padded[:, :T], self.conv_weight[0])  # (B, T, d_xBC)
        for k in range(1, m.d_conv):
            xBC.addcmul_(padded[:, k:k + T], self.conv_weight[k])
        xBC = F.silu(xBC, inplace=True)
        x, B, C = torch.split(xBC, [m.d_inner, m.ngroups * m.d_state, m.ngroups * m.d_state], dim=-1)
        dt = F.softplus(dt.to(self.compute_dtype) + m.dt_bias.to(self.compute_dtype))  # (B, T, nheads)
        y, self.state = ssd_fast(x.unflatten(-1, (m.nheads, m.headdim)), dt, self.A,
                                 B.unflatten(-1, (m.ngroups, m.d_state)), C.unflatten(-1, (m.ngroups, m.d_state)),
                                 chunk_size=self.chunk, D=m.D, initial_state=self.state, return_final_state=True)
        # gated RMSNorm (as GatedRMSNorm, with torch's fused rms_norm per group), then out_proj
        gated = y.flatten(-2).to(self.compute_dtype).mul_(F.silu(z.to(self.compute_dtype)))  # (B, T, d_inner)
        group_size = m.norm.group_size
        normed = F.rms_norm(gated.unflatten(-1, (-1, group_size)), (group_size,), eps=m.norm.eps).flatten(-2)
        normed = normed.mul_(m.norm.weight.to(normed.dtype)).to(y.dtype)
        return m.out_proj(normed)  # (B, T, d_model)


@torch.no_grad()
def streaming_forward(mixer, u: torch.Tensor, block_tokens: int = BLOCK_TOKENS) -> torch.Tensor:
    """`mixer(u)` computed on blocks of tokens, left to right (see MixerStream); inference only."""
    stream = MixerStream(mixer, u)
    block = stream.block_length(block_tokens)
    out = None
    for start in range(0, u.shape[1], block):
        y = stream(u[:, start:start + block])  # (B, T, d_model)
        if out is None:
            out = y.new_empty(*u.shape[:2], y.shape[-1])
        out[:, start:start + block] = y
    return out


def use_streaming_block(block, x: torch.Tensor) -> bool:
    """Whether Adventurer's Block.forward should hand over to `streaming_block` (inference only)."""
    if torch.is_grad_enabled() or (block.training and getattr(block.drop_path, "drop_prob", 0) > 0):
        return False
    return use_fast_path(block.mixer, x)


@torch.no_grad()
def streaming_block(block, x: torch.Tensor, block_tokens: int = BLOCK_TOKENS) -> torch.Tensor:
    """Adventurer's Block (pixelvit.models.adventurer.Block.forward) computed token block by token block.

    x: (B, N+1, D), class token last. The mixer reads [mean token, h_1 ... h_N (reversed if the block
    flips), h_cls] with h = norm(x); everything else in the block acts on each token alone. So: one pass
    for the mean of h, then blocks of mixer positions through MixerStream, and for the same rows at once
    the residual, the MLP and its residual, written into the output. Memory: x, the output and one
    block's temporaries, instead of ~a dozen (N+1)-row tensors. Inference only; tests check it equals
    Block.forward.
    """
    batch, tokens, _ = x.shape
    num_patches = tokens - 1
    stream = MixerStream(block.mixer, x)
    step = stream.block_length(block_tokens)  # tokens per block (rows per block / batch)
    total = None
    for start in range(0, tokens, step):  # the heading average: mean over all N+1 of norm(x)
        part = block.norm(x[:, start:start + step]).sum(dim=1, keepdim=True, dtype=torch.float64)
        total = part if total is None else total + part
    mean = (total / tokens).to(x.dtype)  # (B, 1, D)

    out = torch.empty_like(x)
    for start in range(0, tokens + 1, step):  # positions in the mixer's sequence (0 = the mean token)
        first, end = max(start, 1), min(start + step, tokens + 1)
        if block.flip:  # position i <= N reads patch N - i; position N + 1 is the class token
            position = torch.arange(first, end, device=x.device)
            rows = torch.where(position <= num_patches, num_patches - position, position - 1)
            x_rows = x.index_select(1, rows)  # (B, T, D)
        else:  # position i reads token i - 1: a slice, no copy
            x_rows = x[:, first - 1:end - 1]
        h = block.norm(x_rows)
        mixed = stream(torch.cat([mean, h], dim=1) if start == 0 else h)
        x_rows = x_rows + block.drop_path(mixed[:, 1:] if start == 0 else mixed)
        x_rows = x_rows + block.drop_path(block.mlp(block.norm_mlp(x_rows)))
        if block.flip:
            out.index_copy_(1, rows, x_rows)
        else:
            out[:, first - 1:end - 1] = x_rows
    return out
