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


def _decay_mask(a, g):
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


class ChunkedSSD:
    """The chunked scan of one set of inputs: its output given the states entering each chunk, and its backward.

    Both need the same chunked layout and the same Q x Q matrices (CB, the decay mask L and M = L * CB), so
    they are built once here and kept: SSDFunction uses it for a scan alone, pixelvit.ops.mixer_autograd for
    the whole mixer (whose backward needs the scan's output first, for the norm, and then its gradients).
    Inputs in the compute dtype (float32 or float64).
    """

    def __init__(self, x, dt, A, B, C, chunk_size):
        self.x, self.dt, self.A = x, dt, A
        self.seqlen, self.h, self.p = x.shape[1:]
        self.g, self.n = B.shape[2:]
        self.r = self.h // self.g
        self.X, self.a, self.Bg, self.Cg = _layout(x, dt, A, B, C, chunk_size)
        self.b, _, self.c, self.Q, _ = self.X.shape
        self._masks = None

    def masks(self):
        """CB (b, g, 1, c, Q, Q) lower triangle, L (b, g, r, c, Q, Q) and M = L * CB (b, h, c, Q, Q)."""
        if self._masks is None:
            b, h, c, Q = self.b, self.h, self.c, self.Q
            CB = torch.matmul(self.Cg, self.Bg.transpose(-1, -2)).tril_()      # (b, g, 1, c, Q, Q)
            L = _decay_mask(self.a, self.g)                                     # (b, g, r, c, Q, Q)
            self._masks = CB, L, (L * CB).view(b, h, c, Q, Q)
        return self._masks

    def chunk_states(self):
        """What each chunk adds to the state, (b, h, c, n, p), and each chunk's decay exp(a_Q), (b, h, c)."""
        b, g, r, c, Q, h, n = self.b, self.g, self.r, self.c, self.Q, self.h, self.n
        a = self.a
        B_to_end = (self.Bg * torch.exp(a[..., -1:] - a).view(b, g, r, c, Q, 1)).view(b, h, c, Q, n)
        return torch.matmul(B_to_end.transpose(-1, -2), self.X), torch.exp(a[..., -1])

    def output(self, states_in, D):
        """y (b, L, h, p) = intra-chunk M @ X + C_from_start @ S_in, + D * x."""
        b, g, r, c, Q, h, n, p = self.b, self.g, self.r, self.c, self.Q, self.h, self.n, self.p
        Y = torch.matmul(self.masks()[2], self.X)                              # (b, h, c, Q, p)
        C_from_start = (self.Cg * torch.exp(self.a).view(b, g, r, c, Q, 1)).view(b, h, c, Q, n)
        Y += torch.matmul(C_from_start, states_in)
        y = Y.view(b, h, c * Q, p)[:, :, :self.seqlen].transpose(1, 2)        # (b, L, h, p)
        return y.contiguous() if D is None else torch.addcmul(y, self.x, D.to(y.dtype)[:, None])

    def backward(self, dy, states_in, D, has_initial_state):
        """Gradients (dx, ddt, dA, dB, dC, dD, d_initial_state) for output gradient dy (b, L, h, p)."""
        b, g, r, c, Q, h, n, p = self.b, self.g, self.r, self.c, self.Q, self.h, self.n, self.p
        x, dt, A, X, a, Bg, Cg, seqlen = self.x, self.dt, self.A, self.X, self.a, self.Bg, self.Cg, self.seqlen
        dY = F.pad(dy, (0, 0, 0, 0, 0, c * Q - seqlen)).permute(0, 2, 1, 3).reshape(b, h, c, Q, p)

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
        d_initial_state = G.transpose(-1, -2) if has_initial_state else None      # (b, h, p, n)

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
        CB, L, M = self.masks()
        self._masks = None  # M's buffer is reused below
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
            dx = torch.addcmul(dx, dy, D.to(dy.dtype)[:, None])
            dD = (dy * x).sum((0, 1, 3)).to(D.dtype)
        dB = dB.permute(0, 2, 3, 1, 4).reshape(b, c * Q, g, n)[:, :seqlen]        # (b, L, g, n)
        dC = dC.permute(0, 2, 3, 1, 4).reshape(b, c * Q, g, n)[:, :seqlen]
        return dx, ddt, dA, dB, dC, dD, d_initial_state


def scan_forward(x, dt, A, B, C, D, initial_state, chunk_size):
    """y (b, L, h, p) and the states entering each chunk (b, h, c, n, p), inputs in the compute dtype."""
    scan = ChunkedSSD(x, dt, A, B, C, chunk_size)
    states, chunk_decay = scan.chunk_states()
    b, h, _, n, p = states.shape
    state0 = (states.new_zeros(b, h, n, p) if initial_state is None
              else initial_state.to(states.dtype).transpose(-1, -2))             # (b, h, n, p)
    states_in, _ = _pass_states(states, chunk_decay, state0)
    return scan.output(states_in, D), states_in


class SSDFunction(torch.autograd.Function):
    """y = ssd_chunked(x, dt, A, B, C, chunk_size, D, initial_state), differentiated by hand (see the module)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, initial_state, chunk_size):
        check_shapes(x, dt, A, B, C, D, initial_state)
        dtype = torch.promote_types(x.dtype, torch.float32)
        ctx.input_dtypes = tuple(t.dtype for t in (x, dt, A, B, C))
        ctx.out_dtype = x.dtype
        x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))
        y, states_in = scan_forward(x, dt, A, B, C, D, initial_state, chunk_size)
        ctx.save_for_backward(x, dt, A, B, C, D, states_in)
        ctx.chunk_size, ctx.has_initial_state = chunk_size, initial_state is not None
        return y.to(ctx.out_dtype)

    @staticmethod
    def backward(ctx, dy):
        x, dt, A, B, C, D, states_in = ctx.saved_tensors
        scan = ChunkedSSD(x, dt, A, B, C, ctx.chunk_size)
        dx, ddt, dA, dB, dC, dD, d_state0 = scan.backward(dy.to(x.dtype), states_in, D, ctx.has_initial_state)
        x_t, dt_t, A_t, B_t, C_t = ctx.input_dtypes
        return (dx.to(x_t), ddt.to(dt_t), dA.to(A_t), dB.to(B_t), dC.to(C_t), dD,
                None if d_state0 is None else d_state0.to(ctx.out_dtype), None)


def ssd_trainable(x, dt, A, B, C, chunk_size=64, D=None, initial_state=None):
    """`ssd_chunked(...)` (y only) with SSDFunction's backward: the training path of the reference backend."""
    return SSDFunction.apply(x, dt, A, B, C, D, initial_state, chunk_size)
