"""The chunked SSD scan as one autograd Function with a hand-derived backward: how Adventurer trains fast on a CPU.

`ssd_chunked` (pixelvit/ops/ssd.py) is the spec and autograd can differentiate it, but autograd keeps every
intermediate of the chunked algorithm and walks back through each small op: a training step spent more time
in the scan's backward than in all the model's matmuls (a profile of adventurer_nano at patch 1: `mul` 21%
of the step, `where` 4%, `copy_` 7%, against `mm` 23%). Here the forward keeps only its inputs and the small
per-chunk states, and the backward is written out once: each chunk's Q x Q decay mask is built once,
reused for all three products it enters, and its gradient is formed in place.

The algorithm, per batch b, head h and chunk (Q steps, a = cumsum(dt * A) inside the chunk, X = dt * x):

    M      = exp(a_l - a_s) [l >= s] * (C_l . B_s)              (Q, Q)   the intra-chunk "attention"
    Y      = M @ X  +  (C * exp(a)) @ S_in                      (Q, p)   intra-chunk + state entering the chunk
    states = (B * exp(a_Q - a))^T @ X                           (n, p)   what the chunk adds to the state
    S_in[z+1] = exp(a_Q[z]) * S_in[z] + states[z]                        the recurrence across chunks
    y      = Y + D * x

and its backward, with dY the output gradient (G_z: the gradient reaching S_in[z]):

    dX  = M^T @ dY  +  (B * exp(a_Q - a)) @ dstates
    dM  = dY @ X^T  (lower triangle)   ->  dCB = dM * exp(a_l - a_s),   da_l += sum_s dM*M,  da_s -= sum_l dM*M
    dC  = dCB @ B  +  (dY @ S_in^T) * exp(a);     dB = dCB^T @ C  +  (X @ dstates^T) * exp(a_Q - a)
    G_z = (C * exp(a))^T @ dY  +  exp(a_Q[z]) * G_{z+1};   dstates[z] = G_{z+1}
    then a = cumsum(dt * A) and X = dt * x by the chain rule.

tests/test_ssd.py checks outputs and every gradient against autograd through `ssd_chunked` in float64
(odd lengths, padding, groups, initial states; gradcheck), with a deliberately wrong variant as a negative
control. Arguments and shapes: as `ssd_chunked`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pixelvit.ops.ssd_shapes import check_shapes


def _layout(x, dt, A, B, C, Q):
    """Head-major, chunked views of the inputs (padded to a multiple of Q with dt = 0, which changes nothing).

    Returns X (b, h, c, Q, p) = dt * x, a (b, h, c, Q) = cumsum of dt * A within each chunk,
    Bh and Ch (b, g, 1, c, Q, n): group-major, broadcast over the r heads of each group.
    """
    batch, seqlen, h, p = x.shape
    g, n = B.shape[2:]
    pad = -seqlen % Q
    if pad:
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    c = (seqlen + pad) // Q
    # made contiguous here, once: batched matmuls copy a permuted operand on every call
    dt_h = dt.permute(0, 2, 1)                                                  # (b, h, L) view
    X = torch.mul(x.permute(0, 2, 1, 3), dt_h[..., None], out=x.new_empty(batch, h, c * Q, p))
    X = X.view(batch, h, c, Q, p)                                               # (b, h, c, Q, p)
    a = (dt_h * A[:, None]).reshape(batch, h, c, Q).cumsum(-1)                 # (b, h, c, Q)
    Bg = B.reshape(batch, c, Q, g, n).permute(0, 3, 1, 2, 4).contiguous()[:, :, None]  # (b, g, 1, c, Q, n)
    Cg = C.reshape(batch, c, Q, g, n).permute(0, 3, 1, 2, 4).contiguous()[:, :, None]  # (b, g, 1, c, Q, n)
    return X, a, Bg, Cg


def _decay_mask(a, CB, g):
    """exp(a_l - a_s) for l >= s (1 above the diagonal, where CB is 0): (b, g, r, c, Q, Q), one buffer."""
    b, h, c, Q = a.shape
    # clamp at 0 instead of -inf above the diagonal: exp(-inf) leaves the CPU's SIMD path (~30x slower)
    L = (a[..., :, None] - a[..., None, :]).clamp_(max=0).exp_()                # (b, h, c, Q, Q) [l, s]
    return L.view(b, g, h // g, c, Q, Q)


def _pass_states(states, chunk_decay, state):
    """S_in[z+1] = chunk_decay[z] * S_in[z] + states[z]: the states entering each chunk, and the final one."""
    states_in = torch.empty_like(states)                                        # (b, h, c, n, p)
    for z in range(states.shape[2]):
        states_in[:, :, z] = state
        state = torch.addcmul(states[:, :, z], chunk_decay[:, :, z, None, None], state)
    return states_in, state


class SSDFunction(torch.autograd.Function):
    """y = ssd_chunked(x, dt, A, B, C, chunk_size, D, initial_state), differentiated by hand (see the module)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, initial_state, chunk_size):
        batch, seqlen, h, p, g, n = check_shapes(x, dt, A, B, C, D, initial_state)
        dtype = torch.promote_types(x.dtype, torch.float32)
        out_dtype = x.dtype
        ctx.input_dtypes = tuple(t.dtype for t in (x, dt, A, B, C))
        x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))
        X, a, Bg, Cg = _layout(x, dt, A, B, C, chunk_size)
        b, _, c, Q, _ = X.shape
        r = h // g

        CB = torch.matmul(Cg, Bg.transpose(-1, -2)).tril_()                    # (b, g, 1, c, Q, Q)
        M = _decay_mask(a, CB, g).mul_(CB).view(b, h, c, Q, Q)                  # (b, h, c, Q, Q)
        Y = torch.matmul(M, X)                                                   # (b, h, c, Q, p)
        del M, CB

        B_to_end = (Bg * torch.exp(a[..., -1:] - a).view(b, g, r, c, Q, 1)).view(b, h, c, Q, n)
        states = torch.matmul(B_to_end.transpose(-1, -2), X)                     # (b, h, c, n, p)
        state0 = (X.new_zeros(b, h, n, p) if initial_state is None
                  else initial_state.to(dtype).transpose(-1, -2))                # (b, h, n, p)
        states_in, _ = _pass_states(states, torch.exp(a[..., -1]), state0)
        C_from_start = (Cg * torch.exp(a).view(b, g, r, c, Q, 1)).view(b, h, c, Q, n)
        Y += torch.matmul(C_from_start, states_in)

        y = Y.view(b, h, c * Q, p)[:, :, :seqlen].transpose(1, 2)              # (b, L, h, p)
        y = y.contiguous() if D is None else torch.addcmul(y, x, D.to(dtype)[:, None])
        ctx.save_for_backward(x, dt, A, B, C, D, states_in)
        ctx.chunk_size, ctx.has_initial_state, ctx.out_dtype = chunk_size, initial_state is not None, out_dtype
        return y.to(out_dtype)

    @staticmethod
    def backward(ctx, dy):
        x, dt, A, B, C, D, states_in = ctx.saved_tensors
        batch, seqlen, h, p = x.shape
        g, n = B.shape[2:]
        r = h // g
        dtype = x.dtype
        dy = dy.to(dtype)
        X, a, Bg, Cg = _layout(x, dt, A, B, C, ctx.chunk_size)
        b, _, c, Q, _ = X.shape
        pad = c * Q - seqlen
        dY = F.pad(dy, (0, 0, 0, 0, 0, pad)).permute(0, 2, 1, 3).reshape(b, h, c, Q, p)  # (b, h, c, Q, p)

        # state -> output: Y += C_from_start @ S_in
        from_start = torch.exp(a)                                                  # (b, h, c, Q)
        C_from_start = (Cg * from_start.view(b, g, r, c, Q, 1)).view(b, h, c, Q, n)
        dC_from_start = torch.matmul(dY, states_in.transpose(-1, -2))              # (b, h, c, Q, n)
        da = (dC_from_start * C_from_start).sum(-1)                                # (b, h, c, Q)
        dC = (dC_from_start * from_start[..., None]).view(b, g, r, c, Q, n).sum(2)  # (b, g, c, Q, n)
        dS_local = torch.matmul(C_from_start.transpose(-1, -2), dY)                # (b, h, c, n, p)

        # the recurrence, backwards: G_z = dS_local[z] + exp(a_Q[z]) * G_{z+1}; dstates[z] = G_{z+1}
        chunk_decay = torch.exp(a[..., -1])                                        # (b, h, c)
        dstates = torch.empty_like(dS_local)
        d_chunk_decay = torch.empty_like(chunk_decay)
        G = dS_local.new_zeros(b, h, n, p)
        for z in range(c - 1, -1, -1):
            dstates[:, :, z] = G
            d_chunk_decay[:, :, z] = (G * states_in[:, :, z]).sum((-1, -2))
            G = torch.addcmul(dS_local[:, :, z], chunk_decay[:, :, z, None, None], G)
        da[..., -1] += d_chunk_decay * chunk_decay
        d_initial_state = G.transpose(-1, -2) if ctx.has_initial_state else None  # (b, h, p, n)

        # chunk states: states = B_to_end^T @ X
        to_end = torch.exp(a[..., -1:] - a)                                         # (b, h, c, Q)
        B_to_end = (Bg * to_end.view(b, g, r, c, Q, 1)).view(b, h, c, Q, n)
        dB_to_end = torch.matmul(X, dstates.transpose(-1, -2))                     # (b, h, c, Q, n)
        dX = torch.matmul(B_to_end, dstates)                                       # (b, h, c, Q, p)
        d_to_end = (dB_to_end * B_to_end).sum(-1)                                  # d(a_Q - a_s)
        da -= d_to_end
        da[..., -1] += d_to_end.sum(-1)
        dB = (dB_to_end * to_end[..., None]).view(b, g, r, c, Q, n).sum(2)         # (b, g, c, Q, n)

        # intra-chunk: Y = M @ X with M = L * CB, L = exp(a_l - a_s)
        CB = torch.matmul(Cg, Bg.transpose(-1, -2)).tril_()                       # (b, g, 1, c, Q, Q)
        L = _decay_mask(a, CB, g)                                                  # (b, g, r, c, Q, Q)
        M = (L * CB).view(b, h, c, Q, Q)
        dX += torch.matmul(M.transpose(-1, -2), dY)
        dM = torch.matmul(dY, X.transpose(-1, -2))                                 # (b, h, c, Q, Q)
        dlogL = M.mul_(dM)                                                         # dM * M, in M's buffer
        da += dlogL.sum(-1) - dlogL.sum(-2)
        dCB = dM.view(b, g, r, c, Q, Q).mul_(L).sum(2).tril_()                     # (b, g, c, Q, Q)
        Bc, Cc = Bg[:, :, 0], Cg[:, :, 0]                                          # (b, g, c, Q, n)
        dC += torch.matmul(dCB, Bc)
        dB += torch.matmul(dCB.transpose(-1, -2), Cc)

        # a = cumsum(dt * A) within the chunk; X = dt * x
        d_dtA = da.flip(-1).cumsum(-1).flip(-1).reshape(b, h, c * Q)[..., :seqlen]  # (b, h, L)
        dX = dX.reshape(b, h, c * Q, p)[:, :, :seqlen]                             # (b, h, L, p)
        dt_h = dt.permute(0, 2, 1)                                                 # (b, h, L)
        dx = (dX * dt_h[..., None]).transpose(1, 2)                                # (b, L, h, p)
        ddt = ((dX * x.transpose(1, 2)).sum(-1) + d_dtA * A[:, None]).transpose(1, 2)  # (b, L, h)
        dA = (d_dtA * dt_h).sum((0, 2))                                            # (h,)
        dD = None
        if D is not None:
            dx = torch.addcmul(dx, dy, D.to(dtype)[:, None])
            dD = (dy * x).sum((0, 1, 3)).to(D.dtype)
        dB = dB.permute(0, 2, 3, 1, 4).reshape(b, c * Q, g, n)[:, :seqlen]        # (b, L, g, n)
        dC = dC.permute(0, 2, 3, 1, 4).reshape(b, c * Q, g, n)[:, :seqlen]
        x_t, dt_t, A_t, B_t, C_t = ctx.input_dtypes
        return (dx.to(x_t), ddt.to(dt_t), dA.to(A_t), dB.to(B_t), dC.to(C_t), dD,
                None if d_initial_state is None else d_initial_state.to(ctx.out_dtype), None)


def ssd_trainable(x, dt, A, B, C, chunk_size=64, D=None, initial_state=None):
    """`ssd_chunked(...)` (y only) with SSDFunction's backward: the training path of the reference backend."""
    return SSDFunction.apply(x, dt, A, B, C, D, initial_state, chunk_size)
