"""The whole Mamba-2 mixer as one autograd Function with a hand-written backward: how Adventurer trains on a CPU.

`Mamba2Mixer.forward` (pixelvit/models/mamba2.py) is the spec. Trained through autograd it is slow on a CPU
for reasons that have nothing to do with its arithmetic: autograd keeps ~20 (B, L, channels) intermediates
per layer, the depthwise conv1d and its backward run in a (B, channels, L) layout that costs a transpose copy
each way, and every elementwise step of the SiLU / softplus / gated-norm chains is its own pass over memory
in both directions. Recomputing the forward in backward to save memory (what mamba-ssm's kernels and
gradient checkpointing do) then costs a second copy of all that. Here:

* forward: the mixer's steps without a graph; it keeps u (the mixer's input) and the SSM states entering
  each chunk (b, nheads, chunks, d_state, headdim), about half of u's size at nano widths;
* backward: the cheap front (in_proj, conv, SiLU, softplus) is recomputed, the scan's Q x Q matrices are
  built once (`ChunkedSSD`) and serve both the scan's output (which the norm's backward needs) and all its
  gradients, and every other derivative is written out:

    out = normed @ W_out^T,  normed = g * rstd * w,  g = y * silu(z),  rstd = 1 / sqrt(mean(g^2) + eps)
        dg = rstd * (dĝ - ĝ * mean(dĝ * ĝ))  with ĝ = g * rstd, dĝ = (dout @ W_out) * w   (per norm group)
        dy = dg * silu(z),  dz = dg * y * silu'(z),  silu'(v) = s (1 + v (1 - s)), s = sigmoid(v)
    dt = softplus(dt_raw + dt_bias):  d dt_raw = d dt * sigmoid(dt_raw + dt_bias);  A = -exp(A_log): dA_log = dA * A
    xc_t = bias + sum_k w_k * xBC_{t - (d_conv - 1) + k} (causal depthwise conv, token-major: a multiply-add per tap)
        d xBC_s = sum_k w_k * dxc_{s + (d_conv - 1) - k},  dw_k = sum_t dxc_t * xBC_{t - (d_conv - 1) + k}
    zxbcdt = u @ W_in^T:  dW_in = dzxbcdt^T @ u,  du = dzxbcdt @ W_in

Both run on pieces of the batch of ~4,096 rows (`batch_pieces`), whose tensors stay in the CPU's caches
between the ~300 elementwise passes, and with two or more threads on one thread per piece (`run_pieces`);
the weights' gradients are the pieces' sums, always in piece order.

tests/test_mixer_autograd.py checks output and every gradient against autograd through the readable forward
in float64 (odd lengths, groups, chunk padding; gradcheck) with a deliberately wrong variant as a negative
control. Mamba2Mixer.forward comes here when it trains on the reference scan backend (pixelvit.ops.mixer:
use_fast_path, fast_forward); inference streams instead, and autocast or a CUDA kernel take the readable forward.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from pixelvit.ops.ssd_autograd import ChunkedSSD, scan_forward


def tile_taps(weight: torch.Tensor, bias: torch.Tensor, length: int) -> SimpleNamespace:
    """The causal conv's taps and bias repeated for `length` tokens: taps (d_conv, L * C), bias (L * C,).

    Made once per mixer call and shared by its pieces (torch's `repeat` is slow: made per piece it cost 2.5 %).
    """
    return SimpleNamespace(taps=weight[:, 0].T.repeat(1, length), bias=bias.repeat(length),
                           d_conv=weight.shape[-1], channels=weight.shape[0])


def causal_conv(x: torch.Tensor, tiles: SimpleNamespace) -> torch.Tensor:
    """Depthwise causal conv, token-major: out_t = bias + sum_k w_k * x_{t - (d_conv - 1) + k}.

    x (B, L, C) contiguous, tiles from `tile_taps`. Each tap is one multiply-add over a whole image: in the
    (B, L * C) view, token t - j is the same row shifted by j * C elements, and a tap's C values repeat every
    C elements. Why not (B, L, C) with a (C,) tap broadcast over the tokens: torch's loops then run in
    160-element pieces, and the forward took 2.5x as long (1.5 vs 0.6 ms, 4 images at patch 1, one
    thread), the backward 1.8x.
    """
    b, length, channels = x.shape
    last = tiles.d_conv - 1                                                  # the current token's tap
    flat = x.view(b, length * channels)
    out = torch.addcmul(tiles.bias, flat, tiles.taps[last])
    for j in range(1, min(tiles.d_conv, length)):                            # token t - j: tap d_conv - 1 - j
        out[:, j * channels:].addcmul_(flat[:, :(length - j) * channels], tiles.taps[last - j, j * channels:])
    return out.view(b, length, channels)


def causal_conv_backward(dout: torch.Tensor, x: torch.Tensor, tiles: SimpleNamespace):
    """Gradients of `causal_conv` for dout (B, L, C): (d x (B, L, C), d weight (C, 1, d_conv), d bias (C,))."""
    b, length, channels = x.shape
    last = tiles.d_conv - 1
    d_flat, flat = dout.reshape(b, length * channels), x.view(b, length * channels)
    dx = d_flat * tiles.taps[last]
    d_taps = [dout.new_zeros(channels) for _ in range(tiles.d_conv)]
    d_taps[last] = (d_flat * flat).view(-1, channels).sum(0)
    for j in range(1, min(tiles.d_conv, length)):
        shifted = d_flat[:, j * channels:]                                   # dout_t for t >= j meets x_{t - j}
        dx[:, :(length - j) * channels].addcmul_(shifted, tiles.taps[last - j, j * channels:])
        d_taps[last - j] = (shifted * flat[:, :(length - j) * channels]).view(-1, channels).sum(0)
    return dx.view(b, length, channels), torch.stack(d_taps, dim=1)[:, None], dout.sum((0, 1))


def silu_backward(grad: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """grad * silu'(v), silu'(v) = s (1 + v (1 - s)), s = sigmoid(v): torch's own kernel, one pass instead of five."""
    return torch.ops.aten.silu_backward(grad, v)


def split_in_proj(m, in_w):
    """in_proj's weight as its three row blocks (views): z (d_inner rows), xBC (d_xBC), dt (nheads)."""
    return torch.split(in_w, [m.d_inner, m.d_inner + 2 * m.ngroups * m.d_state, m.nheads])


def front(m, u, in_w, tiles, dt_bias, A_log) -> SimpleNamespace:
    """The mixer up to the scan (in_proj, causal conv + SiLU, softplus), as Mamba2Mixer.forward computes it.

    in_proj as three products, one per row block of its weight (z | xBC | dt): the same numbers as one
    product and its split, at the same speed, but xBC comes out contiguous for the conv (no copy).
    """
    dtype = torch.promote_types(u.dtype, torch.float32)
    z, xBC_in, dt_raw = (F.linear(u, w) for w in split_in_proj(m, in_w))      # (B, L, d_inner | d_xBC | nheads)
    xc = causal_conv(xBC_in, tiles)                                          # (B, L, d_xBC), before SiLU
    x, B, C = torch.split(F.silu(xc).to(dtype), [m.d_inner, m.ngroups * m.d_state, m.ngroups * m.d_state], -1)
    dt_in = dt_raw.to(dtype) + dt_bias.to(dtype)                             # (B, L, nheads)
    return SimpleNamespace(
        z=z.to(dtype), xBC_in=xBC_in, xc=xc, dt_in=dt_in, dt=F.softplus(dt_in), A=-torch.exp(A_log.to(dtype)),
        x=x.unflatten(-1, (m.nheads, m.headdim)),                             # (B, L, nheads, headdim)
        B=B.unflatten(-1, (m.ngroups, m.d_state)), C=C.unflatten(-1, (m.ngroups, m.d_state)))  # (B, L, g, n)


def gated_norm(m, y, z, norm_w):
    """(ĝ, rstd): ĝ = g * rstd per norm group, g = y * silu(z); normed = ĝ * norm_w. y, z (B, L, d_inner)."""
    gated = (y * F.silu(z)).unflatten(-1, (-1, m.norm.group_size))         # (B, L, groups, group_size)
    rstd = torch.rsqrt(gated.square().mean(-1, keepdim=True) + m.norm.eps)  # (B, L, groups, 1)
    return (gated * rstd).flatten(-2), rstd


def forward_piece(m, u, weights, tiles, chunk):
    """The mixer's output for one piece of the batch, u (b, L, d_model), and the states entering each chunk."""
    in_w, _, _, dt_bias, A_log, D, norm_w, out_w = weights
    f = front(m, u, in_w, tiles, dt_bias, A_log)
    y, states_in = scan_forward(f.x, f.dt, f.A, f.B, f.C, D, None, chunk)      # (b, L, h, p), (b, h, c, n, p)
    g_hat, _ = gated_norm(m, y.flatten(-2), f.z, norm_w)
    return F.linear((g_hat * norm_w).to(u.dtype), out_w), states_in          # (b, L, d_model)


def backward_piece(m, dout, u, weights, tiles, states_in, chunk):
    """(du, gradients of the eight weights) for one piece of the batch: the derivatives of the module docstring."""
    in_w, _, _, dt_bias, A_log, D, norm_w, out_w = weights
    f = front(m, u, in_w, tiles, dt_bias, A_log)
    scan = ChunkedSSD(f.x, f.dt, f.A, f.B, f.C, chunk)
    y = scan.output(states_in, D).flatten(-2)                                # (b, L, d_inner)

    # out_proj and the gated RMSNorm
    g_hat, rstd = gated_norm(m, y, f.z, norm_w)                              # (b, L, d_inner), (b, L, groups, 1)
    d_out_w = dout.flatten(0, 1).T @ (g_hat * norm_w).to(u.dtype).flatten(0, 1)  # (d_model, d_inner)
    d_normed = (dout @ out_w).to(y.dtype)                                     # (b, L, d_inner)
    d_norm_w = (d_normed * g_hat).sum((0, 1))
    d_g_hat = (d_normed * norm_w).unflatten(-1, (-1, m.norm.group_size))
    g_hat = g_hat.unflatten(-1, (-1, m.norm.group_size))
    d_gated = (rstd * (d_g_hat - g_hat * (d_g_hat * g_hat).mean(-1, keepdim=True))).flatten(-2)
    dy = d_gated * F.silu(f.z)
    dz = silu_backward(d_gated * y, f.z)

    # the scan, softplus and A = -exp(A_log)
    dx, ddt, dA, dB, dC, dD, _ = scan.backward(dy.unflatten(-1, (m.nheads, m.headdim)), states_in, D, False)
    d_dt_in = ddt * torch.sigmoid(f.dt_in)                                   # (b, L, nheads)

    # SiLU, the causal conv and in_proj
    d_xc = silu_backward(torch.cat([dx.flatten(-2), dB.flatten(-2), dC.flatten(-2)], -1), f.xc)
    d_xBC, d_conv_w, d_conv_b = causal_conv_backward(d_xc.to(u.dtype), f.xBC_in, tiles)
    u_rows = u.flatten(0, 1)                                                 # (b L, d_model)
    du, d_in_w = None, []
    for d_part, w_part in zip((dz.to(u.dtype), d_xBC, d_dt_in.to(u.dtype)), split_in_proj(m, in_w)):
        d_rows = d_part.flatten(0, 1)                                        # (b L, rows of this block)
        du = d_rows @ w_part if du is None else du.addmm_(d_rows, w_part)    # (b L, d_model)
        d_in_w.append(d_rows.T @ u_rows)
    d_in_w = torch.cat(d_in_w)                                               # (in_proj outputs, d_model)
    du = du.view(u.shape)
    return du, (d_in_w, d_conv_w, d_conv_b, d_dt_in.sum((0, 1)).to(dt_bias.dtype), (dA * f.A).to(A_log.dtype),
                None if dD is None else dD.to(D.dtype), d_norm_w.to(norm_w.dtype), d_out_w)


# Rows (images x tokens) per piece of the batch. The mixer's elementwise passes are bound by memory bandwidth:
# on ~4,096 rows a piece's tensors (~2.6 MB for 160 channels) stay in the CPU's caches between passes instead of
# streaming 42 MB from RAM each time. adventurer_nano, patch 1, batch 64, one thread: one mixer's forward and
# backward 0.65 s whole, 0.57 s in pieces of 4 images (medians of alternated runs; 8 images: 0.58 s, 1: 0.68 s).
PIECE_ROWS = 4096


def batch_pieces(batch: int, length: int) -> list[slice]:
    """The batch in equal slices of at least PIECE_ROWS rows where it has them (one piece where it does not)."""
    count = max(1, min(batch, batch * length // PIECE_ROWS))                   # pieces
    per_piece = -(-batch // count)
    return [slice(start, min(start + per_piece, batch)) for start in range(0, batch, per_piece)]


# One pool per thread count, kept for the process: threads started afresh for every call got fresh malloc
# arenas whose memory the kernel faulted in again (~30,000 page faults and ~0.1 s of system time per step at
# 2 threads, 4 % of it); kept, their arenas stay warm. A forked child (a DataLoader worker) starts without it.
_pools: dict[int, ThreadPoolExecutor] = {}
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_pools.clear)


def _pool(threads: int) -> ThreadPoolExecutor:
    if threads not in _pools:
        _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="pixelvit-mixer-piece")
    return _pools[threads]


def run_pieces(fn, pieces: list[slice]) -> list:
    """[fn(piece) for piece in pieces], with all of torch's threads.

    With at least two pieces per thread, each thread takes whole pieces in turn. Why by hand: split inside
    each op (torch's intra-op threads), the ~300 small ops of a piece each pay to wake and join the other
    thread, and two threads ran the mixer only 1.5x faster than one; whole pieces on separate threads (the
    ops release the GIL) ran 1.7x faster (adventurer_nano, patch 1, batch 64, pieces of 4 images: 0.32 s vs
    0.55 s on one thread; 0.42 s split inside the ops). With fewer pieces (short sequences, small batches,
    one long image) the ops are split as usual: two pieces on two threads ran slower than one piece split
    inside the ops (patch 4, batch 64). On its own thread a piece computes the same bits whatever the thread
    count, and the results are used in piece order, not in the order the threads finish.
    """
    threads = torch.get_num_threads()
    if threads == 1 or len(pieces) < 2 * threads:
        return [fn(piece) for piece in pieces]
    grad_enabled = torch.is_grad_enabled()  # per thread: off inside autograd.Function, on in a new thread

    def in_worker(piece):
        with torch.set_grad_enabled(grad_enabled):
            return fn(piece)

    torch.set_num_threads(1)  # each piece's ops on its own thread (restored below)
    try:
        return list(_pool(threads).map(in_worker, pieces))
    finally:
        torch.set_num_threads(threads)


def sum_in_order(parts):
    """Element-wise sums of the pieces' gradient tuples, always in piece order (the same bits every run)."""
    total = list(parts[0])
    for part in parts[1:]:
        total = [None if t is None else t + g for t, g in zip(total, part)]
    return total


class MixerFunction(torch.autograd.Function):
    """mixer(u) with the backward written out (see the module), piece by piece of the batch (`batch_pieces`).
    apply(u, *weights, mixer): the weights are passed so autograd asks for their gradients; the mixer gives the
    sizes. Not twice differentiable."""

    @staticmethod
    def forward(ctx, u, in_w, conv_w, conv_b, dt_bias, A_log, D, norm_w, out_w, m):
        weights = (in_w, conv_w, conv_b, dt_bias, A_log, D, norm_w, out_w)
        chunk = m.chunk_size or 64
        pieces = batch_pieces(u.shape[0], u.shape[1])
        tiles = tile_taps(conv_w, conv_b, u.shape[1])
        results = run_pieces(lambda piece: forward_piece(m, u[piece], weights, tiles, chunk), pieces)
        states_in = torch.cat([states for _, states in results])               # (B, h, c, n, p)
        ctx.save_for_backward(u, *weights, states_in)
        ctx.mixer, ctx.chunk, ctx.pieces = m, chunk, pieces
        return torch.cat([out for out, _ in results])                           # (B, L, d_model)

    @staticmethod
    def backward(ctx, dout):
        u, *weights, states_in = ctx.saved_tensors
        m, chunk = ctx.mixer, ctx.chunk
        _, conv_w, conv_b, *_ = weights
        tiles = tile_taps(conv_w, conv_b, u.shape[1])

        def piece_backward(piece):
            return backward_piece(m, dout[piece], u[piece], weights, tiles, states_in[piece], chunk)

        results = run_pieces(piece_backward, ctx.pieces)
        du = torch.cat([du for du, _ in results])
        return (du, *sum_in_order([grads for _, grads in results]), None)


def mixer_trainable(m, u: torch.Tensor) -> torch.Tensor:
    """`m(u)` for training, through MixerFunction: the same output and gradients as Mamba2Mixer's forward."""
    return MixerFunction.apply(u, m.in_proj.weight, m.conv1d.weight, m.conv1d.bias, m.dt_bias, m.A_log, m.D,
                               m.norm.weight, m.out_proj.weight, m)
