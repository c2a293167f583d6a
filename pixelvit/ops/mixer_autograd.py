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
    xc_t = bias + sum_k w_k * xBC_{t - (d_conv - 1) + k} (causal depthwise conv, token-major: four multiply-adds)
        d xBC_s = sum_k w_k * dxc_{s + (d_conv - 1) - k},  dw_k = sum_t dxc_t * xBC_{t - (d_conv - 1) + k}
    zxbcdt = u @ W_in^T:  dW_in = dzxbcdt^T @ u,  du = dzxbcdt @ W_in

tests/test_mixer_autograd.py checks output and every gradient against autograd through the readable forward
in float64 (odd lengths, groups, chunk padding; gradcheck) with a deliberately wrong variant as a negative
control. Mamba2Mixer.forward comes here when it trains on the reference scan backend (pixelvit.ops.mixer:
use_fast_path, fast_forward); inference streams instead, and autocast or a CUDA kernel take the readable forward.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from pixelvit.ops.ssd_autograd import ChunkedSSD, scan_forward


def causal_conv(padded: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Depthwise causal conv, token-major. padded (B, d_conv - 1 + L, C) (zeros first), weight (C, 1, d_conv)."""
    d_conv, length = weight.shape[-1], padded.shape[1] - weight.shape[-1] + 1
    taps = weight[:, 0].T                                                    # (d_conv, C): tap k of each channel
    out = torch.addcmul(bias, padded[:, :length], taps[0])                   # (B, L, C)
    for k in range(1, d_conv):
        out.addcmul_(padded[:, k:k + length], taps[k])
    return out


def causal_conv_backward(dout: torch.Tensor, padded: torch.Tensor, weight: torch.Tensor):
    """Gradients of `causal_conv` for dout (B, L, C): (d input (B, L, C), d weight (C, 1, d_conv), d bias (C,))."""
    d_conv, length = weight.shape[-1], dout.shape[1]
    taps = weight[:, 0].T                                                    # (d_conv, C)
    d_padded = padded.new_zeros(padded.shape)                                # (B, d_conv - 1 + L, C)
    d_taps = []
    for k in range(d_conv):
        d_padded[:, k:k + length].addcmul_(dout, taps[k])
        d_taps.append((dout * padded[:, k:k + length]).sum((0, 1)))
    return d_padded[:, d_conv - 1:], torch.stack(d_taps, dim=1)[:, None], dout.sum((0, 1))


def silu_backward(grad: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """grad * silu'(v), silu'(v) = s (1 + v (1 - s)), s = sigmoid(v): torch's own kernel, one pass instead of five."""
    return torch.ops.aten.silu_backward(grad, v)


def front(m, u, in_w, conv_w, conv_b, dt_bias, A_log) -> SimpleNamespace:
    """The mixer up to the scan (in_proj, causal conv + SiLU, softplus), as Mamba2Mixer.forward computes it."""
    dtype = torch.promote_types(u.dtype, torch.float32)
    d_xBC = m.d_inner + 2 * m.ngroups * m.d_state
    z, xBC_in, dt_raw = torch.split(F.linear(u, in_w), [m.d_inner, d_xBC, m.nheads], dim=-1)
    padded = F.pad(xBC_in, (0, 0, m.d_conv - 1, 0))                           # (B, d_conv - 1 + L, d_xBC)
    xc = causal_conv(padded, conv_w, conv_b)                                 # (B, L, d_xBC), before SiLU
    x, B, C = torch.split(F.silu(xc).to(dtype), [m.d_inner, m.ngroups * m.d_state, m.ngroups * m.d_state], -1)
    dt_in = dt_raw.to(dtype) + dt_bias.to(dtype)                             # (B, L, nheads)
    return SimpleNamespace(
        z=z.to(dtype), padded=padded, xc=xc, dt_in=dt_in, dt=F.softplus(dt_in), A=-torch.exp(A_log.to(dtype)),
        x=x.unflatten(-1, (m.nheads, m.headdim)),                             # (B, L, nheads, headdim)
        B=B.unflatten(-1, (m.ngroups, m.d_state)), C=C.unflatten(-1, (m.ngroups, m.d_state)))  # (B, L, g, n)


def gated_norm(m, y, z, norm_w):
    """(ĝ, rstd): ĝ = g * rstd per norm group, g = y * silu(z); normed = ĝ * norm_w. y, z (B, L, d_inner)."""
    gated = (y * F.silu(z)).unflatten(-1, (-1, m.norm.group_size))         # (B, L, groups, group_size)
    rstd = torch.rsqrt(gated.square().mean(-1, keepdim=True) + m.norm.eps)  # (B, L, groups, 1)
    return (gated * rstd).flatten(-2), rstd


class MixerFunction(torch.autograd.Function):
    """mixer(u) with the backward written out (see the module). apply(u, *weights, mixer): the weights are
    passed so autograd asks for their gradients; the mixer gives the sizes. Not twice differentiable."""

    @staticmethod
    def forward(ctx, u, in_w, conv_w, conv_b, dt_bias, A_log, D, norm_w, out_w, m):
        f = front(m, u, in_w, conv_w, conv_b, dt_bias, A_log)
        chunk = m.chunk_size or 64
        y, states_in = scan_forward(f.x, f.dt, f.A, f.B, f.C, D, None, chunk)  # (B, L, h, p), (b, h, c, n, p)
        g_hat, _ = gated_norm(m, y.flatten(-2), f.z, norm_w)
        ctx.save_for_backward(u, in_w, conv_w, conv_b, dt_bias, A_log, D, norm_w, out_w, states_in)
        ctx.mixer, ctx.chunk = m, chunk
        return F.linear((g_hat * norm_w).to(u.dtype), out_w)                # (B, L, d_model)

    @staticmethod
    def backward(ctx, dout):
        u, in_w, conv_w, conv_b, dt_bias, A_log, D, norm_w, out_w, states_in = ctx.saved_tensors
        m = ctx.mixer
        f = front(m, u, in_w, conv_w, conv_b, dt_bias, A_log)
        scan = ChunkedSSD(f.x, f.dt, f.A, f.B, f.C, ctx.chunk)
        y = scan.output(states_in, D).flatten(-2)                            # (B, L, d_inner)

        # out_proj and the gated RMSNorm
        g_hat, rstd = gated_norm(m, y, f.z, norm_w)                          # (B, L, d_inner), (B, L, groups, 1)
        d_out_w = dout.flatten(0, 1).T @ (g_hat * norm_w).to(u.dtype).flatten(0, 1)  # (d_model, d_inner)
        d_normed = (dout @ out_w).to(y.dtype)                                 # (B, L, d_inner)
        d_norm_w = (d_normed * g_hat).sum((0, 1))
        d_g_hat = (d_normed * norm_w).unflatten(-1, (-1, m.norm.group_size))
        g_hat = g_hat.unflatten(-1, (-1, m.norm.group_size))
        d_gated = (rstd * (d_g_hat - g_hat * (d_g_hat * g_hat).mean(-1, keepdim=True))).flatten(-2)
        dy = d_gated * F.silu(f.z)
        dz = silu_backward(d_gated * y, f.z)

        # the scan, softplus and A = -exp(A_log)
        dx, ddt, dA, dB, dC, dD, _ = scan.backward(dy.unflatten(-1, (m.nheads, m.headdim)), states_in, D, False)
        d_dt_in = ddt * torch.sigmoid(f.dt_in)                               # (B, L, nheads)

        # SiLU, the causal conv and in_proj
        d_xc = silu_backward(torch.cat([dx.flatten(-2), dB.flatten(-2), dC.flatten(-2)], -1), f.xc)
        d_xBC, d_conv_w, d_conv_b = causal_conv_backward(d_xc.to(u.dtype), f.padded, conv_w)
        d_zxbcdt = torch.cat([dz.to(u.dtype), d_xBC, d_dt_in.to(u.dtype)], -1)  # (B, L, in_proj outputs)
        d_in_w = d_zxbcdt.flatten(0, 1).T @ u.flatten(0, 1)
        du = d_zxbcdt @ in_w
        return (du, d_in_w, d_conv_w, d_conv_b, d_dt_in.sum((0, 1)).to(dt_bias.dtype), (dA * f.A).to(A_log.dtype),
                None if dD is None else dD.to(D.dtype), d_norm_w.to(norm_w.dtype), d_out_w, None)


def mixer_trainable(m, u: torch.Tensor) -> torch.Tensor:
    """`m(u)` for training, through MixerFunction: the same output and gradients as Mamba2Mixer's forward."""
    return MixerFunction.apply(u, m.in_proj.weight, m.conv1d.weight, m.conv1d.bias, m.dt_bias, m.A_log, m.D,
                               m.norm.weight, m.out_proj.weight, m)
