"""The argument conventions every SSD implementation shares (pixelvit.ops.ssd's docstring has the letters),
checked in one place so that the readable scans and the hand-differentiated one fail the same way."""


def check_shapes(x, dt, A, B, C, D=None, initial_state=None):
    assert x.dim() == 4, f"x must be (batch, length, nheads, headdim), got {tuple(x.shape)}"
    batch, seqlen, nheads, headdim = x.shape
    assert dt.shape == (batch, seqlen, nheads), f"dt must be {(batch, seqlen, nheads)}, got {tuple(dt.shape)}"
    assert A.shape == (nheads,), f"A must be ({nheads},), got {tuple(A.shape)}"
    assert B.dim() == 4 and B.shape[:2] == (batch, seqlen), f"B must be (batch, length, ngroups, d_state), got {tuple(B.shape)}"
    assert C.shape == B.shape, f"C must have B's shape {tuple(B.shape)}, got {tuple(C.shape)}"
    ngroups, dstate = B.shape[2:]
    assert nheads % ngroups == 0, f"nheads={nheads} must be divisible by ngroups={ngroups}"
    assert D is None or D.shape == (nheads,), f"D must be ({nheads},), got {tuple(D.shape)}"
    if initial_state is not None:
        want = (batch, nheads, headdim, dstate)
        assert initial_state.shape == want, f"initial_state must be {want}, got {tuple(initial_state.shape)}"
    return batch, seqlen, nheads, headdim, ngroups, dstate
