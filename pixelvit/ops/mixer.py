"""The Mamba-2 mixer's two fast paths: the same function as `Mamba2Mixer.forward`, in far less memory.

`pixelvit.models.mamba2.Mamba2Mixer.forward` is the readable definition: every step runs on all L tokens
at once. At 50,178 tokens every intermediate is a tensor of up to (L, 1160) floats (233 MB for
Adventurer-Tiny), and autograd keeps about twenty of them per layer. Two situations do not need that:

* Inference (no gradients) - `streaming_forward`: the mixer runs on blocks of `BLOCK_TOKENS` tokens in
  turn. Only two things cross a block boundary, both small: the last d_conv - 1 inputs of the causal
  convolution, and the SSM state (b, nheads, headdim, d_state) the scan ends the block with. Memory is
  the input, the output and one block's temporaries; the big matmuls still see 2048-row blocks.
* Training - `MemoryLeanMixer`, a torch.autograd.Function: its forward is `streaming_forward` (no graph),
  it keeps only the mixer's input u for backward, and its backward recomputes the readable forward with
  autograd on and backpropagates through it. This is what mamba-ssm's fused kernels and gradient
  checkpointing do: one extra forward of the mixer for a fraction of the memory.

`Mamba2Mixer.forward` calls `fast_forward` when `use_fast_path` says so (the reference scan backend, not
while torch.fx traces, not under autocast, not inside the backward's recompute); `mixer.memory_lean =
False` turns the training path off. tests/test_ssd.py checks both against the readable forward in float64
(outputs, gradients, gradcheck).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from pixelvit.ops.ssd import default_chunk_size, select_backend, ssd_fast

BLOCK_TOKENS = 2048  # tokens per block of streaming_forward: rounded to a multiple of the chunk size

_local = threading.local()  # per thread: inside `readable_mixer()`?


@contextmanager
def readable_mixer():
    """Inside this context every Mamba2Mixer runs its readable forward (MemoryLeanMixer's backward uses it)."""
    previous = getattr(_local, "readable", False)
    _local.readable = True
    try:
        yield
    finally:
        _local.readable = previous


def _fx_tracing() -> bool:
    is_tracing = getattr(torch.fx._symbolic_trace, "is_fx_tracing", None)
    return bool(is_tracing and is_tracing())


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # older torch: no device argument
        return torch.is_autocast_enabled()


def use_fast_path(mixer, u: torch.Tensor) -> bool:
    """Whether `Mamba2Mixer.forward` should hand over to `fast_forward` (same result, less memory)."""
    if getattr(_local, "readable", False) or _fx_tracing() or _autocast_on(u.device.type):
        return False
    if select_backend(u.device, mixer.scan_backend) != "reference":
        return False  # a CUDA kernel runs the scan: the readable forward around it is the fast path there
    if torch.is_grad_enabled():
        return getattr(mixer, "memory_lean", True)
    return True


def fast_forward(mixer, u: torch.Tensor) -> torch.Tensor:
    """The mixer's output for u (B, L, d_model): streamed without gradients, memory-lean with them."""
    if torch.is_grad_enabled():
        return MemoryLeanMixer.apply(u, mixer, *mixer.parameters())
    return streaming_forward(mixer, u)


@torch.no_grad()
def streaming_forward(mixer, u: torch.Tensor, block_tokens: int = BLOCK_TOKENS) -> torch.Tensor:
    """`mixer(u)` computed on blocks of tokens, left to right, carrying the conv inputs and the SSM state.

    The same steps as Mamba2Mixer.forward (in_proj, causal conv + SiLU, softplus, SSD scan, gated RMSNorm,
    out_proj); only the convolution and the scan need the block before, and they get it as `conv_tail`
    and `state`. The block length is a multiple of the chunk, so the scan sees the chunks of one long call.
    """
    m = mixer
    batch, seqlen, _ = u.shape
    chunk = m.chunk_size or default_chunk_size(u.device)
    block = max(chunk, block_tokens // chunk * chunk)
    d_xBC = m.d_inner + 2 * m.ngroups * m.d_state
    compute_dtype = torch.promote_types(u.dtype, torch.float32)
    A = -torch.exp(m.A_log.to(compute_dtype))  # (nheads,)
    dt_bias = m.dt_bias.to(compute_dtype)
    conv_tail = u.new_zeros(batch, d_xBC, m.d_conv - 1)  # conv inputs just before the block: zeros at the start
    state = None  # SSM state (B, nheads, headdim, d_state) at the end of the previous block
    out = None
    for start in range(0, seqlen, block):
        zxbcdt = m.in_proj(u[:, start:start + block])  # (B, T, d_inner + d_xBC + nheads)
        z, xBC, dt = torch.split(zxbcdt, [m.d_inner, d_xBC, m.nheads], dim=-1)
        xBC = torch.cat([conv_tail, xBC.transpose(1, 2)], dim=-1)  # (B, d_xBC, d_conv - 1 + T)
        conv_tail = xBC[..., xBC.shape[-1] - (m.d_conv - 1):]
        xBC = F.conv1d(xBC, m.conv1d.weight, m.conv1d.bias, groups=d_xBC)  # (B, d_xBC, T): no padding needed
        xBC = F.silu(xBC.transpose(1, 2))  # (B, T, d_xBC)
        x, B, C = torch.split(xBC, [m.d_inner, m.ngroups * m.d_state, m.ngroups * m.d_state], dim=-1)
        x = x.unflatten(-1, (m.nheads, m.headdim))  # (B, T, nheads, headdim)
        B = B.unflatten(-1, (m.ngroups, m.d_state))  # (B, T, ngroups, d_state)
        C = C.unflatten(-1, (m.ngroups, m.d_state))
        dt = F.softplus(dt.to(compute_dtype) + dt_bias)  # (B, T, nheads)
        y, state = ssd_fast(x, dt, A, B, C, chunk_size=chunk, D=m.D, initial_state=state, return_final_state=True)
        y = m.out_proj(m.norm(y.flatten(-2), z))  # (B, T, d_model)
        if out is None:
            out = y.new_empty(batch, seqlen, y.shape[-1])
        out[:, start:start + block] = y
    return out


class MemoryLeanMixer(torch.autograd.Function):
    """mixer(u) that keeps only u for backward and recomputes the rest there.

    apply(u, mixer, *mixer.parameters()): the parameters are passed so that autograd knows the output
    depends on them and asks for their gradients. Forward: `streaming_forward`, no graph. Backward: the
    readable forward again with autograd on (inside `readable_mixer()`), then torch.autograd.grad through
    it. Gradients equal the readable forward's (float64 gradcheck in tests/test_ssd.py). Not twice
    differentiable.
    """

    @staticmethod
    def forward(ctx, u, mixer, *params):
        ctx.mixer = mixer
        ctx.save_for_backward(u)
        return streaming_forward(mixer, u)

    @staticmethod
    def backward(ctx, grad_out):
        (u,) = ctx.saved_tensors
        params = list(ctx.mixer.parameters())
        needs = [ctx.needs_input_grad[0], *ctx.needs_input_grad[2:]]
        u = u.detach().requires_grad_(needs[0])
        wanted = [t for t, need in zip([u, *params], needs, strict=True) if need]
        with torch.enable_grad(), readable_mixer():
            out = ctx.mixer(u)
        grads = iter(torch.autograd.grad(out, wanted, grad_out, allow_unused=True))
        grad_u, *grad_params = [next(grads) if need else None for need in needs]
        return (grad_u, None, *grad_params)
