"""The SSD scan of Mamba-2, written twice in plain PyTorch, plus a dispatcher to the fast kernels.

Mamba-2's mixer ("Transformers are SSMs", Dao & Gu 2024) runs, for every head h, a linear recurrence
over time t whose state is a (headdim, d_state) matrix:

    state_t = exp(dt_t * A_h) * state_{t-1}  +  dt_t * outer(x_t, B_t)      # (P, N)
    y_t     = state_t @ C_t  (+ D_h * x_t)                                   # (P,)

`exp(dt_t * A_h)` is a scalar in (0, 1] (A_h < 0, dt_t > 0): SSD's one restriction compared with Mamba-1
is that the decay is one number per head and step. That restriction is what makes the chunked algorithm
below possible: inside a chunk the recurrence unrolls into a masked "attention" matrix
(C_l . B_s) * exp(dtA_{s+1} + ... + dtA_l), and across chunks only one state per chunk has to be passed on.

Several ways to compute the same y, all with mamba_chunk_scan_combined's argument conventions:

* `ssd_sequential` - the recurrence exactly as written above, one step at a time. Ground truth.
* `ssd_chunked`    - the chunked SSD algorithm (the four steps of the Mamba-2 paper), in plain PyTorch.
                     Runs anywhere, differentiable, linear memory in the length: the readable one, which
                     the fast paths below are tested equal to (no model runs it).
* `ssd_fast`       - the chunked algorithm again, rearranged for speed on a CPU (one head-major layout,
                     decays folded into the matmuls); `ssd_streaming` runs it block by block without
                     gradients, so a 50,000-token scan never holds more than one block's temporaries.
* `ssd_scan`       - dispatcher: mamba-ssm's Triton kernel or flash-linear-attention's kernel when the
                     tensors are on CUDA and the package imports (a kernel that raises at run time is
                     dropped, with one warning, and the reference takes over); otherwise `ssd_trainable`
                     when gradients are needed (pixelvit.ops.ssd_autograd: ssd_chunked with a
                     hand-derived backward) and `ssd_streaming` when not.

What a model runs on the reference backend (`describe_backends()` says it too): inference, `ssd_fast` on
the 1,024-token blocks pixelvit.ops.mixer streams; training, the mixer as one autograd Function
(pixelvit.ops.mixer_autograd) around `ssd_trainable`'s pieces (ChunkedSSD: forward, then backward). `ssd_chunked` and `ssd_sequential` are what those are tested against.

Shapes (letters as in the Mamba-2 paper and ssd_minimal.py):
    b batch, L length, h nheads, p headdim, g ngroups (h % g == 0), n d_state,
    c number of chunks, l and s positions inside a chunk (l: output, s: input), Q chunk size.

    x  (b, L, h, p)   inputs
    dt (b, L, h)      step sizes, ALREADY positive (the caller applied softplus(dt + dt_bias))
    A  (h,)           negative reals (the caller applied -exp(A_log))
    B  (b, L, g, n)   input projections, head i uses group i // (h // g)
    C  (b, L, g, n)   output projections
    D  (h,) or None   skip connection
    initial_state, final state: (b, h, p, n)
    y  (b, L, h, p)
"""

import contextlib
import importlib
import importlib.util
import inspect
import warnings
from functools import cache

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from pixelvit import runtime
from pixelvit.ops.ssd_autograd import ssd_trainable
from pixelvit.ops.ssd_shapes import check_shapes as _check_shapes

# The chunk length of the scans that run on CPU (ssd_fast for inference, ssd_trainable for training). Per token,
# step 1 of the chunked algorithm costs ~Q*(p + n) and steps 2-4 ~p*n whatever Q, so small chunks do fewer
# FLOPs; too small and the loop of step 3 (L/Q steps) and tiny matmuls take over. The evidence is section 2 of
# `python -m benchmarks` (benchmarks/results/results.md, "Chunk length sweep"): both scans at chunk 32, 64 and
# 128, at 65, 257 and 1,025 tokens (adventurer_nano on CIFAR-10) and 50,178 (224x224 at patch 1), and the best
# chunk overall. Run on one thread of a shared 2-core AMD EPYC (benchmarks.bench_ssd.chunk_sweep, 9 alternated
# repetitions, December 2026; the committed results.md is the reference once regenerated): 128 the slowest at
# every length (1.27x the fastest, geometric mean over the 8 cases); 32 and 64 within 3 % overall (1.03x,
# 1.06x): 32 ahead by under a millisecond at 65 and 257 tokens, 64 ahead by 14 % for inference at 50,178 and
# level for training there. So 64: a tie on CIFAR-sized sequences, and the faster where the time is long.
CPU_CHUNK_SIZE = 64
GPU_CHUNK_SIZE = 256  # mamba-ssm's kernel default


def default_chunk_size(device) -> int:
    """The chunk length `ssd_scan(chunk_size=None)` uses on `device`: 64 on CPU, 256 on GPUs."""
    return CPU_CHUNK_SIZE if torch.device(device).type == "cpu" else GPU_CHUNK_SIZE


# ---------------------------------------------------------------------------------------------------
# 1. the definition: one step at a time
# ---------------------------------------------------------------------------------------------------


def ssd_sequential(x, dt, A, B, C, D=None, initial_state=None, return_final_state=False):
    """The SSD recurrence evaluated step by step: the ground truth the faster paths are tested against.

    A fair loop: everything that does not depend on the state is computed for all steps at once before
    the loop, and each step is two fused ops on the (b, h, p, n) state plus one batched mat-vec.
    Autograd keeps one state per step, so memory is L * b*h*p*n: fine for tests, not for training.
    Returns y (b, L, h, p), and the final state (b, h, p, n) if return_final_state.
    """
    batch, seqlen, nheads, headdim, ngroups, dstate = _check_shapes(x, dt, A, B, C, D, initial_state)
    # everything that does not depend on the state, for all steps at once
    decay = torch.exp(dt * A)                             # (b, L, h)       exp(dt_t A_h), in (0, 1]
    dtx = (x * dt[..., None]).unsqueeze(-1)               # (b, L, h, p, 1) dt_t x_t
    B = repeat(B, "b L g n -> b L (g r) 1 n", r=nheads // ngroups)   # (b, L, h, 1, n)
    C = repeat(C, "b L g n -> b L (g r) n 1", r=nheads // ngroups)   # (b, L, h, n, 1)
    decay = decay[..., None, None]                        # (b, L, h, 1, 1)

    if initial_state is None:
        state = x.new_zeros(batch, nheads, headdim, dstate)          # (b, h, p, n)
    else:
        state = initial_state.to(x.dtype)
    # unbind, not [:, t] in the loop: the backward of L separate slices would build L full-size
    # zero gradients (quadratic time); unbind's backward stacks the L slice gradients once.
    ys = []
    for decay_t, dtx_t, B_t, C_t in zip(*(t.unbind(dim=1) for t in (decay, dtx, B, C)), strict=True):
        # state_t = exp(dt_t A) * state_{t-1} + (dt_t x_t) outer B_t
        state = torch.addcmul(decay_t * state, dtx_t, B_t)            # (b, h, p, n)
        # y_t = state_t @ C_t
        ys.append(torch.matmul(state, C_t))                            # (b, h, p, 1)
    y = torch.stack(ys, dim=1).squeeze(-1)                # (b, L, h, p)
    if D is not None:
        y = y + x * D[:, None]
    return (y, state) if return_final_state else y


# ---------------------------------------------------------------------------------------------------
# 2. the chunked SSD algorithm
# ---------------------------------------------------------------------------------------------------


def segsum(a_cumsum):
    """Segment sums from a cumulative sum over the last axis (length Q):

        out[..., l, s] = a_cumsum[..., l] - a_cumsum[..., s] = a[s+1] + ... + a[l]   for l >= s,  -inf above.

    exp(segsum) is the decay from step s to step l: the lower-triangular 1-semiseparable mask of SSD.
    A difference of cumulative sums over at most one chunk, so cancellation stays small (ssd_minimal's
    `segsum` avoids even that by a masked cumsum over a Q x Q copy: two more passes over the largest
    tensor of the algorithm, which in float32 buys nothing measurable at chunk sizes <= 256). The entries above
    the diagonal are set to -inf BEFORE the exp: exp never sees a large positive number (there,
    the difference is positive and can overflow), so no inf reaches the backward pass, where
    inf * 0 would make nan gradients; they come out exactly 0.
    """
    Q = a_cumsum.shape[-1]
    diff = a_cumsum[..., :, None] - a_cumsum[..., None, :]           # (..., Q, Q)  [l, s]
    causal = torch.ones(Q, Q, dtype=torch.bool, device=a_cumsum.device).tril()
    return diff.masked_fill(~causal, float("-inf"))


def ssd_chunked(x, dt, A, B, C, chunk_size=256, D=None, initial_state=None, return_final_state=False):
    """The chunked SSD algorithm ("state space duality", Mamba-2 paper section 6) in plain PyTorch.

    The sequence is cut into c chunks of Q = chunk_size steps (padded at the end to a multiple of Q with
    dt = 0, which leaves the state untouched, and trimmed again). Then:
      1. intra-chunk outputs: inside each chunk, y is a masked attention-like product (quadratic in Q).
      2. chunk states: the state each chunk would produce starting from zero.
      3. inter-chunk recurrence: pass the states along the chunks (the recurrence again, c steps, not L).
      4. state-to-output: the contribution of the state entering each chunk to that chunk's outputs.
    y = (1) + (4). Memory and time are linear in L; only step 1 is quadratic, and only inside a chunk.
    Any length works; the result does not depend on chunk_size (up to rounding), the speed does: on CPU
    use CPU_CHUNK_SIZE (64), about 2x faster than the GPU kernels' 256. Half-precision inputs are
    computed in float32 and cast back.
    Returns y (b, L, h, p), and the final state (b, h, p, n) if return_final_state.
    """
    batch, seqlen, nheads, headdim, ngroups, dstate = _check_shapes(x, dt, A, B, C, D, initial_state)
    out_dtype = x.dtype
    dtype = torch.promote_types(x.dtype, torch.float32)   # fp16/bf16 -> fp32, fp64 stays fp64
    x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))

    # pad the length to a multiple of Q: dt = 0 means decay 1 and no input, so padding changes nothing
    Q = chunk_size
    pad = -seqlen % Q
    if pad:
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    r = nheads // ngroups                                 # heads per group

    # discretise: the input is scaled by the step, the log-decay is dt*A
    # Layout: time-major like x itself, (b, c, l, g, r, ...): chunks are a free view of the length, and
    # heads split into (g, r) so B and C are shared by the r heads of their group. In steps 2 and 4 the
    # (r, p) axes become the columns of one matmul per chunk (with one group, without any copy).
    X = rearrange(x * dt[..., None], "b (c l) (g r) p -> b c l g r p", l=Q, g=ngroups)  # (b, c, Q, g, r, p)
    dA = rearrange(dt * A, "b (c l) (g r) -> b c l g r", l=Q, g=ngroups)                 # (b, c, Q, g, r)
    B = rearrange(B, "b (c l) g n -> b c l g n", l=Q)                                   # (b, c, Q, g, n)
    C = rearrange(C, "b (c l) g n -> b c l g n", l=Q)                                   # (b, c, Q, g, n)
    dA_cumsum = torch.cumsum(dA, dim=2)                     # (b, c, Q, g, r)  dA_1 + ... + dA_l

    # 1. intra-chunk (diagonal blocks): y_l = sum_{s<=l} (C_l . B_s) exp(dA_{s+1} + ... + dA_l) X_s
    CB = torch.einsum("bclgn,bcsgn->bcgls", C, B)                                # (b, c, g, Q, Q)
    Lmask = torch.exp(segsum(rearrange(dA_cumsum, "b c l g r -> b c g r l")))    # (b, c, g, r, Q, Q)
    Y_diag = torch.einsum("bcgrls,bcsgrp->bclgrp", CB[:, :, :, None] * Lmask, X)  # (b, c, Q, g, r, p)

    # 2. chunk states: state at the end of each chunk, starting from zero at its start
    #    (stored transposed, (n, r, p), so that step 4 can use it without a copy)
    decay_states = torch.exp(dA_cumsum[:, :, -1:] - dA_cumsum)                    # (b, c, Q, g, r) s -> end
    states = torch.einsum("bcsgn,bcsgrp->bcgnrp", B, X * decay_states[..., None])  # (b, c, g, n, r, p)

    # 3. inter-chunk recurrence: the state entering chunk z is
    #    exp(sum of dA over chunk z-1) * (state entering z-1) + states[z-1].
    #    A python loop over c = L/Q chunks: linear in L (ssd_minimal's c x c segsum matrix is quadratic).
    chunk_decay = rearrange(torch.exp(dA_cumsum[:, :, -1]), "b c g r -> b c g 1 r 1")  # (b, c, g, 1, r, 1)
    if initial_state is None:
        state = X.new_zeros(batch, ngroups, dstate, r, headdim)                        # (b, g, n, r, p)
    else:
        state = rearrange(initial_state.to(dtype), "b (g r) p n -> b g n r p", g=ngroups)
    states_in = []
    for states_z, decay_z in zip(states.unbind(dim=1), chunk_decay.unbind(dim=1), strict=True):
        states_in.append(state)
        state = torch.addcmul(states_z, decay_z, state)                                # (b, g, n, r, p)
    states_in = torch.stack(states_in, dim=1)                                          # (b, c, g, n, r, p)

    # 4. state -> output (off-diagonal blocks): y_l += exp(dA_1 + ... + dA_l) * (C_l . state_in)
    Y_off = torch.einsum("bclgn,bcgnrp->bclgrp", C, states_in)                   # (b, c, Q, g, r, p)
    Y = torch.addcmul(Y_diag, Y_off, torch.exp(dA_cumsum)[..., None])

    y = rearrange(Y, "b c l g r p -> b (c l) (g r) p")[:, :seqlen]              # (b, L, h, p)
    if D is not None:
        y = y + x[:, :seqlen] * D.to(dtype)[:, None]
    y = y.to(out_dtype)
    if return_final_state:
        return y, rearrange(state, "b g n r p -> b (g r) p n").to(out_dtype)
    return y


# ---------------------------------------------------------------------------------------------------
# 3. the same algorithm, fast on a CPU: head-major layout, scalings folded into the matmuls, streaming
# ---------------------------------------------------------------------------------------------------


def _needs_grad(*tensors):
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _pass_states_loop(states, chunk_dA, state):
    """Step 3 as a loop over the c chunks: state_in[z+1] = exp(chunk_dA[z]) * state_in[z] + states[z]."""
    chunk_decay = torch.exp(chunk_dA)[..., None, None]                       # (b, h, c, 1, 1)
    states_in = []
    for states_z, decay_z in zip(states.unbind(2), chunk_decay.unbind(2), strict=True):
        states_in.append(state)
        state = torch.addcmul(states_z, decay_z, state)                      # (b, h, n, p)
    return torch.stack(states_in, dim=2), state                             # (b, h, c, n, p), (b, h, n, p)


def ssd_fast(x, dt, A, B, C, chunk_size=CPU_CHUNK_SIZE, D=None, initial_state=None, return_final_state=False):
    """`ssd_chunked` rearranged for speed: same arguments, same result (tests/test_ssd.py checks it in float64).

    What changes, and why (profile of Adventurer-Tiny at 12,546 tokens, 2 threads):
      * one layout, head-major (b, h, c, Q, ...), made once: every product is then a plain batched matmul
        over (b, h, c) on contiguous blocks; ssd_chunked's time-major einsums made a copy per product;
      * the decays are folded into B and C (head-major copies of them: B * exp(to end of chunk) for step 2,
        C * exp(from start of chunk) for step 4) instead of scaling X and Y afterwards;
      * step 4 accumulates into step 1's output (baddbmm), and without gradients the Q x Q mask is built
        in place (subtract, mask, exp, multiply by C.B: one buffer instead of four).
    Still differentiable (training uses it); float64 stays float64. Memory is that of ssd_chunked: for long
    sequences without gradients use `ssd_streaming`, which runs this on blocks of chunks.
    Returns y (b, L, h, p), and the final state (b, h, p, n) if return_final_state.
    """
    batch, seqlen, nheads, headdim, ngroups, dstate = _check_shapes(x, dt, A, B, C, D, initial_state)
    grad = _needs_grad(x, dt, A, B, C, D, initial_state)
    out_dtype = x.dtype
    dtype = torch.promote_types(x.dtype, torch.float32)
    x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))
    Q = chunk_size
    pad = -seqlen % Q
    if pad:  # dt = 0 on the padding: decay 1, no input (as in ssd_chunked)
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    b, h, g, r, n, p = batch, nheads, ngroups, nheads // ngroups, dstate, headdim
    c = (seqlen + pad) // Q

    # head-major, chunked: (b, h, c, Q, p); group-major B and C: (b, g, 1, c, Q, n)
    dt_h = dt.permute(0, 2, 1)                                               # (b, h, L) view
    if grad:
        X = x.permute(0, 2, 1, 3).contiguous() * dt_h[..., None]             # (b, h, L, p) dt_t x_t
    else:  # the same, written head-major in one pass
        X = torch.mul(x.permute(0, 2, 1, 3), dt_h[..., None], out=x.new_empty(b, h, c * Q, p))
    X = X.view(b, h, c, Q, p)
    dA_cumsum = (dt_h * A[:, None]).reshape(b, h, c, Q).cumsum(-1)          # (b, h, c, Q)
    Bg = B.view(b, c, Q, g, n).permute(0, 3, 1, 2, 4)[:, :, None]           # (b, g, 1, c, Q, n) view
    Cg = C.view(b, c, Q, g, n).permute(0, 3, 1, 2, 4)[:, :, None]           # (b, g, 1, c, Q, n) view

    # 1. intra-chunk: Y = (exp(segsum) * C B^T) @ X, per head and chunk. The causal mask is applied to
    #    C B^T (g copies, not h) and the segment sums are clamped at 0 instead of set to -inf: below the
    #    diagonal they are <= 0 anyway (dA <= 0), above it exp(0) = 1 meets a 0 of the masked C B^T.
    #    exp(-inf) is ~30x slower than exp of a finite number on CPUs (a special case leaves the SIMD path).
    CB = torch.matmul(Cg, Bg.transpose(-1, -2)).tril_()                      # (b, g, 1, c, Q, Q)
    M = dA_cumsum[..., :, None] - dA_cumsum[..., None, :]                    # (b, h, c, Q, Q) [l, s]
    if grad:
        M = torch.exp(M.clamp(max=0)).view(b, g, r, c, Q, Q) * CB              # (b, g, r, c, Q, Q)
    else:  # the same, in one buffer
        M = M.clamp_(max=0).exp_().view(b, g, r, c, Q, Q).mul_(CB)
    Y = torch.matmul(M.view(b, h, c, Q, Q), X)                               # (b, h, c, Q, p)

    # 2. chunk states (stored (n, p) per head): (B * exp(dA_{s+1} + ... + dA_Q))^T @ X
    decay_to_end = torch.exp(dA_cumsum[..., -1:] - dA_cumsum).view(b, g, r, c, Q, 1)
    B_decayed = (Bg * decay_to_end).view(b, h, c, Q, n)
    states = torch.matmul(B_decayed.transpose(-1, -2), X)                    # (b, h, c, n, p)

    # 3. inter-chunk recurrence: the state entering each chunk, and the final state
    if initial_state is None:
        state = X.new_zeros(b, h, n, p)
    else:
        state = initial_state.to(dtype).transpose(-1, -2)                    # (b, h, n, p)
    # (A python loop of c tiny ops. ssd_minimal's (c+1) x (c+1) matmul form was measured ~2x slower here
    # even for the 32 chunks of one streamed block, so only the loop is kept.)
    states_in, state = _pass_states_loop(states, dA_cumsum[..., -1], state)

    # 4. state -> output: Y += (C * exp(dA_1 + ... + dA_l)) @ state_in
    C_decayed = (Cg * torch.exp(dA_cumsum).view(b, g, r, c, Q, 1)).view(b, h, c, Q, n)
    Y = torch.matmul(C_decayed, states_in).add_(Y) if not grad else Y + torch.matmul(C_decayed, states_in)

    y = Y.view(b, h, c * Q, p)[:, :, :seqlen].transpose(1, 2)                # (b, L, h, p) view
    if D is None:
        y = y.contiguous()
    elif grad:
        y = torch.addcmul(y, x[:, :seqlen], D.to(dtype)[:, None]).contiguous()
    else:  # the skip and the transpose back to (b, L, h, p) in one pass
        out = torch.empty(batch, seqlen, nheads, headdim, dtype=dtype, device=x.device)
        y = torch.addcmul(y, x[:, :seqlen], D.to(dtype)[:, None], out=out)
    y = y.to(out_dtype)
    if return_final_state:  # in the compute dtype (float32 for half inputs): a block boundary loses nothing
        return y, state.transpose(-1, -2)
    return y


@torch.no_grad()
def ssd_streaming(x, dt, A, B, C, chunk_size=CPU_CHUNK_SIZE, D=None, initial_state=None,
                  return_final_state=False, block_chunks=32):
    """`ssd_fast` over blocks of `block_chunks` chunks in turn, passing the state on: for inference.

    Without gradients nothing of a block is needed after it, so memory is the inputs, the output and one
    block's temporaries (its (block_chunks x Q x Q x heads) mask: 4 MB at Adventurer-Tiny shapes), never
    the whole sequence's. The block is a multiple of the chunk, so the chunks (and the result, to rounding)
    are those of one `ssd_fast` call. Runs under torch.no_grad: use `ssd_fast` to train.
    """
    batch, seqlen, nheads, headdim, ngroups, dstate = _check_shapes(x, dt, A, B, C, D, initial_state)
    block = block_chunks * chunk_size
    y = torch.empty_like(x)
    state = initial_state
    for start in range(0, seqlen, block):
        part = slice(start, start + block)
        y[:, part], state = ssd_fast(x[:, part], dt[:, part], A, B[:, part], C[:, part], chunk_size=chunk_size,
                                     D=D, initial_state=state, return_final_state=True)
    if return_final_state:
        if state is None:  # an empty sequence
            state = x.new_zeros(batch, nheads, headdim, dstate)
        return y, state
    return y


# ---------------------------------------------------------------------------------------------------
# 4. dispatcher: the fast kernels when they can run, the reference otherwise
# ---------------------------------------------------------------------------------------------------

BACKENDS = ("reference", "mamba_ssm", "fla")

# backend -> (module to import, function in it, pip package, install hint)
_KERNELS = {
    "mamba_ssm": (
        "mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined", "mamba_ssm",
        "pip install mamba-ssm --no-build-isolation  (needs an NVIDIA GPU, a CUDA toolkit matching torch, "
        "and triton; or pip install 'pixelvit[cuda]')",
    ),
    "fla": (
        "fla.ops.simple_gla", "chunk_simple_gla", "fla",
        "pip install fla-core  (flash-linear-attention's kernels; needs a CUDA GPU and triton)",
    ),
}


@cache
def _load_kernel(name):
    """Import a kernel backend once. Returns (function, None) or (None, why it is unusable).

    Cached, so a failed import is tried once and its reason remembered. Imports nothing on a machine
    without CUDA: those packages need triton and a GPU, and importing them on CPU is slow or noisy.
    """
    module, attr, package, _ = _KERNELS[name]
    installed = importlib.util.find_spec(package) is not None
    if not torch.cuda.is_available():
        return None, f"no CUDA device (torch.cuda.is_available() is False); {package} is " + (
            "installed" if installed else "not installed")
    if not installed:
        return None, f"{package} is not installed"
    try:
        return getattr(importlib.import_module(module), attr), None
    except Exception as e:  # ImportError, but also triton/CUDA errors raised at import time
        return None, f"import {module} failed: {type(e).__name__}: {e}"


# backend -> why its kernel raised when it ran (ssd_scan's fallback): from then on it is not used
_FAILED_AT_RUN_TIME: dict[str, str] = {}


def _usable_kernel(name):
    """(function, None), or (None, why not): a failed import, or a kernel that raised when it ran."""
    if name in _FAILED_AT_RUN_TIME:
        return None, f"raised at run time: {_FAILED_AT_RUN_TIME[name]}"
    return _load_kernel(name)


def available_backends():
    """The backends usable on this machine, reference first: e.g. ["reference"] or ["reference", "mamba_ssm", "fla"]."""
    return ["reference"] + [name for name in _KERNELS if _usable_kernel(name)[0] is not None]


def describe_backends():
    """A human-readable report: which backend `ssd_scan(backend="auto")` uses, why not the others, and which
    functions of this module run in a model on the reference backend, at which chunk length."""
    lines = ["SSD scan backends (auto: mamba_ssm, then fla, for CUDA tensors; reference otherwise):",
             "  reference  available: plain PyTorch, any device. Runs in a model: training: scan_forward, then"
             " ChunkedSSD.backward (ssd_trainable's pieces, pixelvit.ops.ssd_autograd: the backward written by"
             " hand) inside the mixer's own autograd Function (pixelvit.ops.mixer_autograd); inference: ssd_fast, on 1,024-token blocks (pixelvit.ops.mixer); chunk"
             f" {CPU_CHUNK_SIZE} on CPU (the sweep in benchmarks/results/results.md, section 2), {GPU_CHUNK_SIZE}"
             " on CUDA. Tested against ssd_chunked (readable) and ssd_sequential (the definition)."]
    for name, (module, attr, _, hint) in _KERNELS.items():
        fn, why = _usable_kernel(name)
        if fn is not None:
            lines.append(f"  {name:<10} available: {module}.{attr}")
        else:
            lines.append(f"  {name:<10} unavailable: {why}. Install: {hint}")
    return "\n".join(lines) + "\n" + runtime.describe()


def select_backend(device, requested="auto"):
    """The backend `ssd_scan` uses for tensors on `device`: "reference", "mamba_ssm" or "fla".

    "auto" prefers mamba-ssm's kernel, then fla's, for CUDA tensors, and is always "reference" on other
    devices (without probing CUDA). Forcing a backend that cannot run raises ValueError saying why and
    how to install it.
    """
    if requested not in ("auto", *BACKENDS):
        raise ValueError(f"unknown SSD backend {requested!r}; choose one of {('auto', *BACKENDS)}")
    device = torch.device(device)
    if requested == "reference":
        return "reference"
    if requested == "auto":
        if device.type == "cuda":
            for name in _KERNELS:
                if _usable_kernel(name)[0] is not None:
                    return name
        return "reference"
    # a kernel was forced
    hint = _KERNELS[requested][3]
    if device.type != "cuda":
        raise ValueError(f"SSD backend {requested!r} needs CUDA tensors, got device {device}. "
                         f"On this device use 'reference' (or 'auto'). Install for GPUs: {hint}")
    fn, why = _usable_kernel(requested)
    if fn is None:
        raise ValueError(f"SSD backend {requested!r} is unavailable: {why}. Install: {hint}. "
                         f"Available here: {available_backends()}")
    return requested


def _ssd_mamba_ssm(x, dt, A, B, C, chunk_size, D):
    # mamba-ssm's fused Triton kernel has exactly our conventions; dt is already positive,
    # so no dt_bias and no softplus inside the kernel.
    kernel = _load_kernel("mamba_ssm")[0]
    return kernel(x, dt, A, B, C, chunk_size, D=D, dt_softplus=False)


def _ssd_fla(x, dt, A, B, C, D):
    # SSD is simple gated linear attention (one scalar decay per head and step) with
    #   q = C,  k = dt * B,  v = x,  log-decay g = dt * A,  no 1/sqrt(d) scale;
    # fla keeps the state as (d_state, headdim) = k^T v, our (headdim, d_state) transposed, which does
    # not change y. fla wants one q/k per head, so the groups are repeated to heads.
    # fla picks its own chunk size (64).
    kernel = _load_kernel("fla")[0]
    r = x.shape[2] // B.shape[2]
    q = repeat(C, "b L g n -> b L (g r) n", r=r).to(x.dtype)
    k = (repeat(B, "b L g n -> b L (g r) n", r=r) * dt[..., None]).to(x.dtype)
    g = (dt * A).float()
    extra = {}
    if "head_first" in inspect.signature(kernel).parameters:   # older fla releases defaulted to (b, h, L, d)
        extra["head_first"] = False
    y, _ = kernel(q=q, k=k, v=x, g=g, scale=1.0, **extra)
    if D is not None:
        y = y + x * D.to(y.dtype)[:, None]
    return y


def ssd_scan(x, dt, A, B, C, chunk_size=None, D=None, backend="auto"):
    """y = SSD(x, dt, A, B, C) (+ D * x) with the fastest backend that can run here; see `select_backend`.

    Arguments as `ssd_chunked` (dt already positive). Which backend runs is `select_backend(x.device,
    backend)`; `describe_backends()` says what is available and why not the others. chunk_size=None takes
    `default_chunk_size(x.device)`: 64 on CPU, 256 (the kernels' choice, several times slower on CPU) on
    GPUs. The "reference" backend is plain PyTorch: `ssd_trainable` when gradients are needed (its backward
    written by hand), `ssd_streaming` (`ssd_fast` in blocks, little memory) when not; all are tested equal to
    `ssd_chunked`, the readable one.

    A kernel that imports but raises when it runs (a triton or CUDA mismatch, an unsupported shape) is not
    an answer: under backend="auto" the reference computes this call and every later one, after one
    warning line; a forced backend raises, naming backend="reference". Running out of GPU memory is
    raised as it is (the reference would need more).
    """
    chunk_size = chunk_size or default_chunk_size(x.device)
    name = select_backend(x.device, backend)
    if name != "reference":
        try:
            if name == "mamba_ssm":
                return _ssd_mamba_ssm(x, dt, A, B, C, chunk_size, D)
            return _ssd_fla(x, dt, A, B, C, D)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as error:  # noqa: BLE001 - any failure of a third-party kernel: fall back or say so
            why = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"[:300]
            if backend != "auto":
                raise RuntimeError(f"the {name} SSD kernel raised at run time ({why}); pass backend='reference' "
                                   "(or 'auto', which falls back) to use pixelvit's scan") from error
            _FAILED_AT_RUN_TIME[name] = why
            warnings.warn(f"pixelvit: the {name} SSD kernel raised at run time ({why}); using the reference scan "
                          "from now on (pixelvit.ops.ssd.describe_backends())", RuntimeWarning, stacklevel=2)
    # Under autocast the reference computes in float32 (half inputs are cast up inside, as the kernels do): an
    # autocast matmul would round the scan to bf16, and the training scan's backward, which runs outside
    # autocast, would meet its bf16 saved states with float32 gradients ("expected m1 and m2 to have the
    # same dtype"; tests/test_gpu_benchmark.py found it: a bf16 training step).
    with _autocast_off(x.device.type):
        if _needs_grad(x, dt, A, B, C, D):  # training: the hand-differentiated scan (pixelvit.ops.ssd_autograd)
            return ssd_trainable(x, dt, A, B, C, chunk_size=chunk_size, D=D)
        return ssd_streaming(x, dt, A, B, C, chunk_size=chunk_size, D=D)


def autocast_on(device_type: str) -> bool:
    """Whether autocast is on for `device_type` (also used by pixelvit.ops.mixer)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except (TypeError, RuntimeError):  # an older torch (no device argument) or a device type without autocast
        return torch.is_autocast_enabled()


def _autocast_off(device_type: str):
    """A context without autocast on `device_type` (a no-op where autocast is off)."""
    return torch.autocast(device_type, enabled=False) if autocast_on(device_type) else contextlib.nullcontext()
