"""Tests for pixelvit.ops.ssd: the chunked SSD scan against the step-by-step recurrence, and the dispatcher.

Everything runs on CPU in well under a minute. The tests marked `gpu` compare the CUDA kernels
(mamba-ssm, flash-linear-attention) with the reference and skip where there is no GPU or no kernel.
"""

import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pixelvit.ops import ssd
from pixelvit.ops.ssd import (
    available_backends,
    describe_backends,
    select_backend,
    ssd_chunked,
    ssd_scan,
    ssd_sequential,
)
from pixelvit.ops.ssd_autograd import ssd_trainable


def make_inputs(batch=2, seqlen=37, nheads=4, headdim=3, ngroups=2, dstate=5, dtype=torch.float64,
                seed=0, device="cpu", dt_shift=-1.0):
    """Random SSD inputs with the right signs: dt > 0 (softplus), A < 0. Also D and an initial state."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    x = randn(batch, seqlen, nheads, headdim)
    dt = F.softplus(randn(batch, seqlen, nheads) + dt_shift)
    A = -torch.exp(randn(nheads) * 0.5)
    B = randn(batch, seqlen, ngroups, dstate) / dstate**0.5
    C = randn(batch, seqlen, ngroups, dstate) / dstate**0.5
    D = randn(nheads)
    h0 = randn(batch, nheads, headdim, dstate)
    return tuple(t.to(device=device, dtype=dtype) for t in (x, dt, A, B, C, D, h0))


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


# ---------------------------------------------------------------------------------------------------
# chunked == sequential (float64)
# ---------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 2),
    ngroups=st.integers(1, 3),
    heads_per_group=st.integers(1, 2),
    headdim=st.integers(1, 4),
    dstate=st.integers(1, 5),
    seqlen=st.integers(1, 45),
    chunk_size=st.sampled_from([1, 2, 3, 4, 8, 16, 64]),
    use_D=st.booleans(),
    use_h0=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_chunked_matches_sequential(batch, ngroups, heads_per_group, headdim, dstate, seqlen, chunk_size,
                                    use_D, use_h0, seed):
    x, dt, A, B, C, D, h0 = make_inputs(batch, seqlen, ngroups * heads_per_group, headdim, ngroups, dstate,
                                        seed=seed)
    D = D if use_D else None
    h0 = h0 if use_h0 else None
    y_ref, s_ref = ssd_sequential(x, dt, A, B, C, D=D, initial_state=h0, return_final_state=True)
    y, s = ssd_chunked(x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=h0, return_final_state=True)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert s.shape == (batch, ngroups * heads_per_group, headdim, dstate)
    assert rel_err(y, y_ref) <= 1e-10
    assert rel_err(s, s_ref) <= 1e-10


@pytest.mark.parametrize(
    "seqlen, chunk_size",
    [(1, 1), (1, 64), (5, 64), (64, 64), (65, 64), (100, 16), (130, 32), (97, 256)],
)
def test_chunked_matches_sequential_lengths(seqlen, chunk_size):
    """Lengths shorter than, equal to and not a multiple of the chunk (padded internally, then trimmed)."""
    x, dt, A, B, C, D, h0 = make_inputs(batch=2, seqlen=seqlen, nheads=6, headdim=4, ngroups=3, dstate=8)
    y_ref, s_ref = ssd_sequential(x, dt, A, B, C, D=D, initial_state=h0, return_final_state=True)
    y, s = ssd_chunked(x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=h0, return_final_state=True)
    assert y.shape == x.shape
    assert rel_err(y, y_ref) <= 1e-10
    assert rel_err(s, s_ref) <= 1e-10


@pytest.mark.parametrize("scan", [ssd_sequential, ssd_chunked])
def test_final_state_continues_the_scan(scan):
    """Scanning [0, k) and then [k, L) from the first part's final state equals scanning [0, L)."""
    x, dt, A, B, C, D, h0 = make_inputs(seqlen=50)
    kwargs = {"chunk_size": 8} if scan is ssd_chunked else {}
    y_full, s_full = scan(x, dt, A, B, C, D=D, initial_state=h0, return_final_state=True, **kwargs)
    k = 21
    y1, s1 = scan(x[:, :k], dt[:, :k], A, B[:, :k], C[:, :k], D=D, initial_state=h0, return_final_state=True,
                  **kwargs)
    y2, s2 = scan(x[:, k:], dt[:, k:], A, B[:, k:], C[:, k:], D=D, initial_state=s1, return_final_state=True,
                  **kwargs)
    assert rel_err(torch.cat([y1, y2], dim=1), y_full) <= 1e-10
    assert rel_err(s2, s_full) <= 1e-10


def test_sequential_is_the_recurrence():
    """The ground truth itself, checked against the formula written out by hand for one head."""
    x, dt, A, B, C, D, _ = make_inputs(batch=1, seqlen=6, nheads=2, headdim=3, ngroups=1, dstate=4)
    y = ssd_sequential(x, dt, A, B, C, D=D)
    h = 1
    state = torch.zeros(3, 4, dtype=x.dtype)
    for t in range(6):
        state = torch.exp(dt[0, t, h] * A[h]) * state + dt[0, t, h] * torch.outer(x[0, t, h], B[0, t, 0])
        assert torch.allclose(y[0, t, h], state @ C[0, t, 0] + D[h] * x[0, t, h], rtol=1e-12, atol=1e-12)


def test_chunked_float32_and_strong_decay():
    """float32 stays close to the float64 truth, and a decay that underflows exp gives no inf or nan."""
    x, dt, A, B, C, D, h0 = make_inputs(batch=1, seqlen=300, nheads=4, headdim=8, ngroups=1, dstate=16)
    y_ref = ssd_sequential(x, dt, A, B, C, D=D, initial_state=h0)
    args32 = [t.float() for t in (x, dt, A, B, C)]
    y32 = ssd_chunked(*args32, chunk_size=64, D=D.float(), initial_state=h0.float())
    assert y32.dtype == torch.float32
    assert rel_err(y32.double(), y_ref) <= 1e-5

    # dt * A down to about -300 per step: exp(segsum) spans far below float32's range within a chunk
    args = [t.float().requires_grad_() for t in (x, dt * 30, A * 10, B, C)]
    y = ssd_chunked(*args, chunk_size=64)
    y.square().sum().backward()
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(t.grad).all() for t in args)
    y_ref = ssd_sequential(*(t.detach().double() for t in args))
    assert rel_err(y.double(), y_ref) <= 1e-5


def test_chunked_bfloat16_inputs():
    """Half-precision inputs are computed in float32 and come back in their own dtype."""
    x, dt, A, B, C, D, _ = make_inputs(seqlen=40, dtype=torch.bfloat16)
    y = ssd_chunked(x, dt, A, B, C, chunk_size=16, D=D)
    assert y.dtype == torch.bfloat16
    y_ref = ssd_chunked(*(t.float() for t in (x, dt, A, B, C)), chunk_size=16, D=D.float())
    assert torch.allclose(y.float(), y_ref, rtol=1e-2, atol=1e-2)


def test_chunked_memory_is_linear_in_length():
    """What autograd keeps for backward grows like L, not (L / Q)^2 (e.g. a c x c matrix in step 3)."""

    def saved_bytes(seqlen):
        inputs = [t.requires_grad_() for t in make_inputs(1, seqlen, 2, 2, 1, 2, dtype=torch.float32)[:5]]
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            ssd_chunked(*inputs, chunk_size=4)
        return sum(storages.values())

    assert saved_bytes(4096) / saved_bytes(1024) < 4.5


# ---------------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ngroups, chunk_size", [(1, 3), (2, 4)])
def test_chunked_gradcheck(ngroups, chunk_size):
    """Analytic gradients of every differentiable input match finite differences (float64)."""
    inputs = make_inputs(batch=1, seqlen=7, nheads=2, headdim=2, ngroups=ngroups, dstate=3, seed=1)
    inputs = tuple(t.requires_grad_() for t in inputs)

    def f(x, dt, A, B, C, D, h0):
        return ssd_chunked(x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=h0, return_final_state=True)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_chunked_gradients_match_sequential():
    x, dt, A, B, C, D, h0 = make_inputs(batch=2, seqlen=45, nheads=4, headdim=3, ngroups=2, dstate=5, seed=2)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)  # random cotangent
    grads = []
    for scan, kwargs in [(ssd_sequential, {}), (ssd_chunked, {"chunk_size": 16})]:
        inputs = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D, h0)]
        y, s = scan(*inputs[:5], D=inputs[5], initial_state=inputs[6], return_final_state=True, **kwargs)
        ((y * w).sum() + s.sum()).backward()
        grads.append([t.grad for t in inputs])
    for name, g_ref, g in zip(["x", "dt", "A", "B", "C", "D", "initial_state"], *grads, strict=True):
        assert rel_err(g, g_ref) <= 1e-10, name


# ---------------------------------------------------------------------------------------------------
# the fast paths: ssd_fast and ssd_streaming equal ssd_chunked (the specification)
# ---------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 2),
    ngroups=st.integers(1, 3),
    heads_per_group=st.integers(1, 3),
    headdim=st.integers(1, 4),
    dstate=st.integers(1, 5),
    seqlen=st.integers(1, 70),
    chunk_size=st.sampled_from([1, 2, 3, 4, 8, 16, 64]),
    block_chunks=st.integers(1, 4),
    use_D=st.booleans(),
    use_h0=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fast_and_streaming_match_chunked(batch, ngroups, heads_per_group, headdim, dstate, seqlen, chunk_size,
                                          block_chunks, use_D, use_h0, seed):
    """Any length (shorter than, a multiple of, or not a multiple of the chunk and of the block), float64."""
    x, dt, A, B, C, D, h0 = make_inputs(batch, seqlen, ngroups * heads_per_group, headdim, ngroups, dstate,
                                        seed=seed)
    D = D if use_D else None
    h0 = h0 if use_h0 else None
    y_ref, s_ref = ssd_chunked(x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=h0,
                               return_final_state=True)
    y, s = ssd.ssd_fast(x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=h0, return_final_state=True)
    assert y.shape == x.shape and y.dtype == x.dtype and s.shape == s_ref.shape
    assert rel_err(y, y_ref) <= 1e-12 and rel_err(s, s_ref) <= 1e-12
    with torch.inference_mode():
        y, s = ssd.ssd_streaming(x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=h0,
                                 return_final_state=True, block_chunks=block_chunks)
    assert rel_err(y, y_ref) <= 1e-12 and rel_err(s, s_ref) <= 1e-12


def test_streaming_works_block_by_block(monkeypatch):
    """ssd_streaming hands ssd_fast one block (block_chunks * Q tokens) at a time, never the whole sequence."""
    lengths = []
    real = ssd.ssd_fast
    monkeypatch.setattr(ssd, "ssd_fast", lambda x, *a, **k: lengths.append(x.shape[1]) or real(x, *a, **k))
    x, dt, A, B, C, D, _ = make_inputs(batch=1, seqlen=100, nheads=2, headdim=3, ngroups=1, dstate=4)
    with torch.no_grad():
        y = ssd.ssd_streaming(x, dt, A, B, C, chunk_size=8, D=D, block_chunks=3)
    assert lengths == [24, 24, 24, 24, 4]
    assert rel_err(y, ssd_sequential(x, dt, A, B, C, D=D)) <= 1e-12


def test_fast_float32_strong_decay_and_bfloat16():
    """float32 close to the float64 truth, no inf/nan with a decay that underflows (with and without grad),
    and half-precision inputs computed in float32 and returned in their own dtype."""
    x, dt, A, B, C, D, h0 = make_inputs(batch=1, seqlen=300, nheads=4, headdim=8, ngroups=1, dstate=16)
    args = [t.float().requires_grad_() for t in (x, dt * 30, A * 10, B, C)]
    y = ssd.ssd_fast(*args, chunk_size=64)
    y.square().sum().backward()
    assert torch.isfinite(y).all() and all(torch.isfinite(t.grad).all() for t in args)
    y_ref = ssd_sequential(*(t.detach().double() for t in args))
    assert rel_err(y.double(), y_ref) <= 1e-5
    with torch.no_grad():
        assert rel_err(ssd.ssd_streaming(*args, chunk_size=64, block_chunks=2).double(), y_ref) <= 1e-5
    half = [t.to(torch.bfloat16) for t in (x, dt, A, B, C)]
    y16 = ssd.ssd_fast(*half, chunk_size=16, D=D.bfloat16())
    assert y16.dtype == torch.bfloat16
    y32 = ssd_chunked(*(t.float() for t in half), chunk_size=16, D=D.bfloat16().float())
    assert torch.allclose(y16.float(), y32, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("ngroups, chunk_size", [(1, 3), (2, 4)])
def test_fast_gradcheck(ngroups, chunk_size):
    inputs = make_inputs(batch=1, seqlen=7, nheads=2, headdim=2, ngroups=ngroups, dstate=3, seed=1)
    inputs = tuple(t.requires_grad_() for t in inputs)

    def f(x, dt, A, B, C, D, h0):
        return ssd.ssd_fast(x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=h0, return_final_state=True)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_fast_gradients_match_chunked():
    x, dt, A, B, C, D, h0 = make_inputs(batch=2, seqlen=45, nheads=4, headdim=3, ngroups=2, dstate=5, seed=2)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    grads = []
    for scan in (ssd_chunked, ssd.ssd_fast):
        inputs = [t.clone().requires_grad_() for t in (x, dt, A, B, C, D, h0)]
        y, s = scan(*inputs[:5], chunk_size=16, D=inputs[5], initial_state=inputs[6], return_final_state=True)
        ((y * w).sum() + s.sum()).backward()
        grads.append([t.grad for t in inputs])
    for name, g_ref, g in zip(["x", "dt", "A", "B", "C", "D", "initial_state"], *grads, strict=True):
        assert rel_err(g, g_ref) <= 1e-12, name


# ---------------------------------------------------------------------------------------------------
# the training path: SSDFunction's hand-derived backward equals autograd through ssd_chunked
# ---------------------------------------------------------------------------------------------------


def _grads(scan, inputs, w, chunk_size):
    leaves = [None if t is None else t.clone().requires_grad_() for t in inputs]
    x, dt, A, B, C, D, h0 = leaves
    y = scan(x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=h0)
    (y * w).sum().backward()
    return y, [None if t is None else t.grad for t in leaves]


@settings(max_examples=30, deadline=None)
@given(
    ngroups=st.integers(1, 2),
    heads_per_group=st.integers(1, 3),
    seqlen=st.integers(1, 70),
    chunk_size=st.sampled_from([1, 3, 8, 16, 64]),
    use_D=st.booleans(),
    use_h0=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_trainable_scan_output_and_every_gradient_match_chunked(ngroups, heads_per_group, seqlen, chunk_size,
                                                                use_D, use_h0, seed):
    """float64, any length (padding inside the last chunk or none), groups, with and without D and h0."""
    x, dt, A, B, C, D, h0 = make_inputs(batch=2, seqlen=seqlen, nheads=ngroups * heads_per_group, headdim=3,
                                        ngroups=ngroups, dstate=4, seed=seed)
    inputs = (x, dt, A, B, C, D if use_D else None, h0 if use_h0 else None)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=x.dtype)
    y_ref, g_ref = _grads(ssd_chunked, inputs, w, chunk_size)
    y, g = _grads(ssd_trainable, inputs, w, chunk_size)
    assert rel_err(y, y_ref) <= 1e-12
    for name, a, b in zip(["x", "dt", "A", "B", "C", "D", "initial_state"], g, g_ref, strict=True):
        assert (a is None) == (b is None), name
        assert a is None or rel_err(a, b) <= 1e-11, name


@pytest.mark.parametrize("ngroups, chunk_size, seqlen", [(1, 4, 11), (2, 3, 7)])
def test_trainable_scan_gradcheck(ngroups, chunk_size, seqlen):
    inputs = make_inputs(batch=1, seqlen=seqlen, nheads=2, headdim=2, ngroups=ngroups, dstate=3, seed=4)
    inputs = tuple(t.requires_grad_() for t in inputs)

    def f(x, dt, A, B, C, D, h0):
        return ssd_trainable(x, dt, A, B, C, chunk_size=chunk_size, D=D, initial_state=h0)

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_a_wrong_backward_fails_the_equivalence_check(monkeypatch):
    """Negative control: the same comparison catches a backward that drops one term (the chunk decay's)."""
    from pixelvit.ops import ssd_autograd

    real_exp = torch.exp
    calls = []

    def exp_off_by_a_little(t):  # the backward's second torch.exp is the chunk decay of the recurrence
        calls.append(1)
        return real_exp(t) * (1.001 if len(calls) == 2 else 1.0)

    x, dt, A, B, C, D, h0 = make_inputs(batch=1, seqlen=40, nheads=2, headdim=3, ngroups=1, dstate=4, seed=5)
    inputs = (x, dt, A, B, C, D, h0)
    w = torch.randn(x.shape, dtype=x.dtype)
    _, g_ref = _grads(ssd_chunked, inputs, w, 8)
    y, good = _grads(ssd_trainable, inputs, w, 8)
    assert all(rel_err(a, b) <= 1e-11 for a, b in zip(good, g_ref, strict=True))
    monkeypatch.setattr(ssd_autograd.torch, "exp", exp_off_by_a_little)
    leaves = [t.clone().requires_grad_() for t in inputs]
    y = ssd_trainable(*leaves[:5], chunk_size=8, D=leaves[5], initial_state=leaves[6])
    calls.clear()
    (y * w).sum().backward()
    bad = [t.grad for t in leaves]
    assert max(rel_err(a, b) for a, b in zip(bad, g_ref, strict=True)) > 1e-6


def test_trainable_scan_float32_strong_decay_and_bfloat16():
    """No inf/nan when the decay underflows; half-precision inputs give gradients in their own dtype."""
    x, dt, A, B, C, D, _ = make_inputs(batch=1, seqlen=300, nheads=4, headdim=8, ngroups=1, dstate=16)
    args = [t.float().requires_grad_() for t in (x, dt * 30, A * 10, B, C)]
    y = ssd_trainable(*args, chunk_size=64)
    y.square().sum().backward()
    assert torch.isfinite(y).all() and all(torch.isfinite(t.grad).all() for t in args)
    half = [t.to(torch.bfloat16).requires_grad_() for t in (x, dt, A, B, C)]
    ssd_trainable(*half, chunk_size=16).float().sum().backward()
    assert all(t.grad.dtype == torch.bfloat16 for t in half)


# ---------------------------------------------------------------------------------------------------
# the mixer's fast paths (pixelvit.ops.mixer) equal Mamba2Mixer's readable forward
# ---------------------------------------------------------------------------------------------------


def _small_mixer(ngroups=2, chunk_size=16, seed=0):
    from pixelvit.models.mamba2 import Mamba2Mixer

    torch.manual_seed(seed)
    mixer = Mamba2Mixer(16, d_state=8, headdim=8, ngroups=ngroups).double()
    mixer.chunk_size = chunk_size
    with torch.no_grad():  # a random-looking mixer, not the init (D = 1, norm weight 1, ...)
        for p in mixer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return mixer


@pytest.mark.parametrize("seqlen, block_tokens", [(1, 2048), (3, 16), (95, 16), (96, 32), (301, 48), (301, 4096)])
def test_streaming_mixer_matches_readable(seqlen, block_tokens):
    """streaming_forward = Mamba2Mixer's readable forward, whatever the block (conv inputs and state carried)."""
    from pixelvit.ops import mixer as fast

    mixer = _small_mixer()
    u = torch.randn(2, seqlen, 16, dtype=torch.float64)
    with torch.no_grad(), fast.readable_mixer():
        ref = mixer(u)
    with torch.inference_mode():
        assert rel_err(fast.streaming_forward(mixer, u, block_tokens=block_tokens), ref) <= 1e-12
        assert rel_err(mixer(u), ref) <= 1e-12  # forward() takes the streaming path by itself


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("tokens, block_tokens", [(2, 16), (17, 16), (95, 32), (200, 48), (200, 4096)])
def test_streaming_block_matches_readable(flip, tokens, block_tokens):
    """streaming_block = Adventurer's Block.forward (mean token, flip, mixer, MLP), any block length."""
    from pixelvit.models.adventurer import AdventurerConfig, Block
    from pixelvit.ops import mixer as fast

    torch.manual_seed(1)
    config = AdventurerConfig(embed_dim=16, depth=2, d_state=8, headdim=8, ngroups=2)
    block = Block(config, drop_path_rate=0.1, flip=flip).double().eval()
    block.mixer.chunk_size = 16
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, tokens, 16, dtype=torch.float64)
    with torch.no_grad(), fast.readable_mixer():
        ref = block(x)
    with torch.inference_mode():
        assert rel_err(fast.streaming_block(block, x, block_tokens=block_tokens), ref) <= 1e-12
        assert fast.use_streaming_block(block, x)
        assert rel_err(block(x), ref) <= 1e-12  # Block.forward streams by itself in inference
    assert not fast.use_streaming_block(block.train(), x)  # drop path is random in training mode


def test_fast_path_is_off_where_it_must_be(monkeypatch):
    from pixelvit.ops import mixer as fast

    mixer = _small_mixer()
    u = torch.randn(1, 5, 16, dtype=torch.float64)
    assert fast.use_fast_path(mixer, u)
    with fast.readable_mixer():
        assert not fast.use_fast_path(mixer, u)
    mixer.memory_lean = False
    assert not fast.use_fast_path(mixer, u)  # training, lean path switched off
    with torch.no_grad():
        assert fast.use_fast_path(mixer, u)  # inference still streams
    monkeypatch.setattr(fast, "is_tracing", lambda: True)
    with torch.no_grad():
        assert not fast.use_fast_path(mixer, u)


# ---------------------------------------------------------------------------------------------------
# dispatcher
# ---------------------------------------------------------------------------------------------------


def test_auto_on_cpu_is_reference():
    assert select_backend("cpu") == "reference"
    assert select_backend(torch.device("cpu"), "auto") == "reference"
    assert select_backend("cpu", "reference") == "reference"
    assert available_backends()[0] == "reference"
    x, dt, A, B, C, D, _ = make_inputs(seqlen=20)
    y_ref = ssd_chunked(x, dt, A, B, C, chunk_size=8, D=D)
    assert rel_err(ssd_scan(x, dt, A, B, C, chunk_size=8, D=D), y_ref) <= 1e-12


def test_default_chunk_size_is_chosen_per_device(monkeypatch):
    """ssd_scan(chunk_size=None) uses 64 on CPU (256 on GPUs), and the reference path streams without grad."""
    assert ssd.default_chunk_size("cpu") == ssd.CPU_CHUNK_SIZE == 64
    assert ssd.default_chunk_size("cuda") == ssd.default_chunk_size(torch.device("cuda", 1)) == 256
    calls = []
    for name in ("ssd_fast", "ssd_streaming", "ssd_trainable"):
        real = getattr(ssd, name)
        monkeypatch.setattr(ssd, name, lambda *a, real=real, name=name, **k: calls.append((name, k["chunk_size"]))
                            or real(*a, **k))
    x, dt, A, B, C, D, _ = make_inputs(seqlen=20)
    y = ssd_scan(x, dt, A, B, C, D=D)
    assert rel_err(y, ssd_sequential(x, dt, A, B, C, D=D)) <= 1e-12
    assert calls[0] == ("ssd_streaming", 64)
    calls.clear()
    ssd_scan(x.requires_grad_(), dt, A, B, C, D=D).sum().backward()
    assert calls == [("ssd_trainable", 64)] and x.grad is not None  # with gradients: the hand-differentiated scan


@pytest.mark.parametrize("backend, package", [("mamba_ssm", "mamba-ssm"), ("fla", "fla-core")])
def test_forcing_a_kernel_on_cpu_raises_helpfully(backend, package):
    x, dt, A, B, C, D, _ = make_inputs(seqlen=5)
    with pytest.raises(ValueError, match="needs CUDA") as info:
        ssd_scan(x, dt, A, B, C, D=D, backend=backend)
    assert package in str(info.value) and "pip install" in str(info.value)


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="unknown SSD backend 'triton'.*reference"):
        select_backend("cpu", "triton")


def test_describe_backends_mentions_each():
    text = describe_backends()
    for name in ("reference", "mamba_ssm", "fla"):
        assert name in text
    if not torch.cuda.is_available():
        assert "no CUDA device" in text


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend a CUDA device exists (only for the backend bookkeeping; no tensor goes to CUDA)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ssd._load_kernel.cache_clear()
    yield
    ssd._load_kernel.cache_clear()


def _install_fake_package(tmp_path, monkeypatch, backend, source):
    """Point `backend` at a throwaway package whose __init__.py is `source`."""
    (tmp_path / f"fake_{backend}").mkdir()
    (tmp_path / f"fake_{backend}" / "__init__.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, f"fake_{backend}", raising=False)   # an earlier test's fake
    _, attr, _, hint = ssd._KERNELS[backend]
    monkeypatch.setitem(ssd._KERNELS, backend, (f"fake_{backend}", attr, f"fake_{backend}", hint))


def test_failed_import_is_remembered_with_its_reason(fake_cuda, tmp_path, monkeypatch):
    _install_fake_package(tmp_path, monkeypatch, "fla", "COUNT = []\nraise ImportError('needs triton 9')\n")
    fn, why = ssd._load_kernel("fla")
    assert fn is None and "needs triton 9" in why
    assert ssd._load_kernel("fla") == (None, why)            # answered from the cache, not imported again
    assert ssd._load_kernel.cache_info().hits >= 1
    with pytest.raises(ValueError, match="needs triton 9.*pip install fla-core"):
        select_backend("cuda", "fla")
    assert "needs triton 9" in describe_backends()


def test_auto_prefers_mamba_then_fla_then_reference(fake_cuda, tmp_path, monkeypatch):
    """With (fake) kernels for both on a (pretended) CUDA machine, auto takes mamba_ssm; once mamba_ssm
    fails to import, fla; once both do, the reference. CPU tensors always get the reference."""
    _install_fake_package(tmp_path, monkeypatch, "mamba_ssm", "def mamba_chunk_scan_combined(**kw):\n    pass\n")
    _install_fake_package(tmp_path, monkeypatch, "fla", "def chunk_simple_gla(**kw):\n    pass\n")
    ssd._load_kernel.cache_clear()
    assert available_backends() == ["reference", "mamba_ssm", "fla"]
    assert select_backend("cuda", "auto") == "mamba_ssm"
    assert select_backend("cpu", "auto") == "reference"      # CPU tensors never go to a kernel
    for broken, expected in (("mamba_ssm", "fla"), ("fla", "reference")):
        (tmp_path / f"fake_{broken}" / "__init__.py").write_text("raise ImportError('broken install')\n")
        monkeypatch.delitem(sys.modules, f"fake_{broken}", raising=False)
        ssd._load_kernel.cache_clear()
        assert select_backend("cuda", "auto") == expected


# A CPU stand-in for fla's chunk_simple_gla with its documented semantics (fla/ops/simple_gla/naive.py):
#   S_t = exp(g_t) * S_{t-1} + k_t^T v_t   (state (K, V)),   o_t = scale * q_t S_t,   layout (B, T, H, K).
FAKE_FLA = """
import torch

def chunk_simple_gla(q, k, v, g=None, scale=None, initial_state=None, output_final_state=False, **kwargs):
    b, T, h, K = q.shape
    S = q.new_zeros(b, h, K, v.shape[-1])
    out = []
    for t in range(T):
        S = torch.exp(g[:, t])[..., None, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(scale * torch.einsum('bhk,bhkv->bhv', q[:, t], S))
    return torch.stack(out, dim=1), None
"""


def test_fla_mapping_matches_reference_with_a_stand_in_for_fla(fake_cuda, tmp_path, monkeypatch):
    """The SSD -> simple-GLA mapping (q=C, k=dt*B, v=x, g=dt*A, scale 1, groups repeated) is exact.

    Against FAKE_FLA, a hand-written stand-in for fla's kernel, NOT fla itself: this checks our mapping,
    and the stand-in's reading of fla's semantics. fla's real kernel is compared on a GPU in
    test_kernel_matches_reference."""
    _install_fake_package(tmp_path, monkeypatch, "fla", FAKE_FLA)
    x, dt, A, B, C, D, _ = make_inputs(batch=2, seqlen=19, nheads=6, headdim=3, ngroups=2, dstate=4)
    y = ssd._ssd_fla(x, dt, A, B, C, D)
    assert rel_err(y, ssd_sequential(x, dt, A, B, C, D=D)) <= 1e-6     # g is handed to fla in float32


def test_module_imports_without_kernels():
    """Importing the reference path must not import triton, mamba_ssm or fla (a CPU-only install).

    torch and timm are imported first: with a CUDA build of torch, `import timm` imports torch._dynamo,
    which imports triton itself; what is checked is that pixelvit adds none of them."""
    code = ("import sys, torch, timm; before = set(sys.modules); import pixelvit.ops.ssd as s; "
            "s.describe_backends(); s.select_backend('cpu'); new = set(sys.modules) - before; "
            "bad = [m for m in ('triton', 'mamba_ssm', 'fla') if m in new]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------------------------------------------
# GPU: kernels against the reference (skipped without CUDA and the kernel)
# ---------------------------------------------------------------------------------------------------


def _kernel_or_skip(backend):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if backend not in available_backends():
        pytest.skip(describe_backends())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", ["mamba_ssm", "fla"])
def test_kernel_matches_reference(backend, dtype):
    _kernel_or_skip(backend)
    x, dt, A, B, C, D, _ = make_inputs(batch=2, seqlen=300, nheads=8, headdim=64, ngroups=2, dstate=64,
                                       dtype=torch.float32, device="cuda", dt_shift=-3.0)
    x, B, C = (t.to(dtype) for t in (x, B, C))                 # A, D, dt stay float32, as in Mamba-2
    y = ssd_scan(x, dt, A, B, C, chunk_size=64, D=D, backend=backend)
    y_ref = ssd_chunked(*(t.float() for t in (x, dt, A, B, C)), chunk_size=64, D=D)
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y.float(), y_ref, rtol=1e-2, atol=3e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["mamba_ssm", "fla"])
def test_kernel_gradients_match_reference(backend):
    _kernel_or_skip(backend)
    inputs = make_inputs(batch=1, seqlen=200, nheads=4, headdim=32, ngroups=1, dstate=32, dtype=torch.float32,
                         device="cuda", dt_shift=-3.0)[:6]
    w = torch.randn(1, 200, 4, 32, device="cuda")
    grads = []
    for name in (backend, "reference"):
        leaves = [t.clone().requires_grad_() for t in inputs]
        (ssd_scan(*leaves[:5], chunk_size=64, D=leaves[5], backend=name) * w).sum().backward()
        grads.append([t.grad for t in leaves])
    for name, g, g_ref in zip(["x", "dt", "A", "B", "C", "D"], *grads, strict=True):
        assert rel_err(g, g_ref) <= 1e-2, name


def test_layer_progress_counts_every_block_and_cleans_up():
    from pixelvit.models import create_model
    from pixelvit.ops.progress import layer_progress

    model = create_model("adventurer_nano", img_size=16, patch_size=4).eval()
    images = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = model(images)
        with layer_progress(model, calls=2) as bar:
            model(images)
            assert torch.equal(model(images), expected)  # the hooks do not touch the outputs
    assert bar.n == bar.total == 2 * len(model.layers)
    assert all(not block._forward_hooks for block in model.layers)


def test_streamed_blocks_share_their_rows_with_the_batch():
    """A block holds about BLOCK_TOKENS rows whatever the batch: a big evaluation batch streams in short
    blocks (never below one chunk) instead of holding batch x 2048 tokens of every temporary."""
    from pixelvit.ops.mixer import MixerStream

    mixer = _small_mixer(chunk_size=16)
    assert MixerStream(mixer, torch.zeros(1, 5, 16)).block_length(2048) == 2048
    assert MixerStream(mixer, torch.zeros(4, 5, 16)).block_length(2048) == 512
    assert MixerStream(mixer, torch.zeros(256, 5, 16)).block_length(2048) == 16


# ---------------------------------------------------------------------------------------------------
# a kernel that imports but raises when it runs; what describe_backends says runs
# ---------------------------------------------------------------------------------------------------

RAISING_KERNEL = """
CALLS = []

def mamba_chunk_scan_combined(*args, **kwargs):
    CALLS.append(1)
    raise RuntimeError("triton: no kernel image is available for execution on the device\\nsecond line")
"""


def test_a_kernel_that_raises_at_run_time_falls_back_once_with_one_warning(fake_cuda, tmp_path, monkeypatch):
    """mamba-ssm imports (a fake one here) but its kernel raises: ssd_scan(backend="auto") warns once, in one
    line, computes the reference's answer, and later calls never try the kernel again; a forced backend
    raises and names the way out. (Before: the kernel's error reached the caller, with no fallback.)"""
    _install_fake_package(tmp_path, monkeypatch, "mamba_ssm", RAISING_KERNEL)
    monkeypatch.setattr(ssd, "_FAILED_AT_RUN_TIME", {}, raising=False)
    real_select = ssd.select_backend  # CPU tensors stand in for CUDA ones: dispatch as if they were on CUDA
    monkeypatch.setattr(ssd, "select_backend", lambda device, requested="auto": real_select("cuda", requested))
    assert real_select("cuda", "auto") == "mamba_ssm"
    x, dt, A, B, C, D, _ = make_inputs()
    with pytest.raises(RuntimeError, match="raised at run time.*backend='reference'"):
        ssd_scan(x, dt, A, B, C, chunk_size=8, D=D, backend="mamba_ssm")
    with pytest.warns(RuntimeWarning) as caught:
        y = ssd_scan(x, dt, A, B, C, chunk_size=8, D=D)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "\n" not in message and "mamba_ssm SSD kernel raised at run time" in message
    assert "no kernel image" in message and "second line" not in message and "reference scan" in message
    assert rel_err(y, ssd_sequential(x, dt, A, B, C, D=D)) < 1e-12
    calls = sys.modules["fake_mamba_ssm"].CALLS
    tried = len(calls)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would fail here
        ssd_scan(x, dt, A, B, C, chunk_size=8, D=D)
    assert len(calls) == tried  # not tried again
    assert real_select("cuda", "auto") != "mamba_ssm" and "mamba_ssm" not in available_backends()
    assert "raised at run time: RuntimeError: triton: no kernel image" in describe_backends()


def test_out_of_memory_in_a_kernel_is_not_a_fallback(fake_cuda, tmp_path, monkeypatch):
    """The reference would need more memory than the kernel: an OOM is the caller's (a batch-size search)."""
    _install_fake_package(tmp_path, monkeypatch, "mamba_ssm", "import torch\n"
                          "def mamba_chunk_scan_combined(*a, **k):\n    raise torch.cuda.OutOfMemoryError('out of memory')\n")
    monkeypatch.setattr(ssd, "_FAILED_AT_RUN_TIME", {}, raising=False)
    real_select = ssd.select_backend
    monkeypatch.setattr(ssd, "select_backend", lambda device, requested="auto": real_select("cuda", requested))
    x, dt, A, B, C, D, _ = make_inputs()
    with pytest.raises(torch.cuda.OutOfMemoryError):
        ssd_scan(x, dt, A, B, C, chunk_size=8, D=D)
    assert not ssd._FAILED_AT_RUN_TIME


def test_describe_backends_names_the_scans_a_model_runs(monkeypatch):
    """describe_backends() says which functions run in a model on CPU, for training and for inference, and
    the chunk length: recorded here by wrapping every scan of pixelvit.ops.ssd (where the mixer looks them
    up too) while a small Adventurer predicts and takes a training step. (Before: it said ssd_streaming runs
    at inference, which no model calls, and gave no chunk length.)"""
    import re

    from pixelvit.models import create_model
    from pixelvit.ops import mixer as mixer_module

    calls = []
    names = ("ssd_chunked", "ssd_fast", "ssd_streaming", "ssd_trainable", "ssd_sequential")
    for module in (ssd, mixer_module):
        for name in names:
            if hasattr(module, name):
                real = getattr(module, name)
                monkeypatch.setattr(module, name, lambda *a, real=real, name=name, **k: calls.append(name) or real(*a, **k))
    from pixelvit.ops import mixer_autograd, ssd_autograd

    real_forward, real_backward = mixer_autograd.scan_forward, ssd_autograd.ChunkedSSD.backward
    monkeypatch.setattr(mixer_autograd, "scan_forward",
                        lambda *a, **k: calls.append("scan_forward") or real_forward(*a, **k))
    monkeypatch.setattr(ssd_autograd.ChunkedSSD, "backward",
                        lambda *a, **k: calls.append("ChunkedSSD.backward") or real_backward(*a, **k))
    model = create_model("adventurer_nano", img_size=8, patch_size=2)
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model.eval()(images)
    inference, calls[:] = set(calls), []
    model.train()(images).square().mean().backward()
    training = set(calls)

    text = describe_backends()
    runs = re.search(r"Runs in a model: training: (.+?); inference: (.+?); chunk (\d+) on CPU", text)
    assert runs, text
    assert training == {"scan_forward", "ChunkedSSD.backward"}
    assert all(name in runs[1] for name in training) and "mixer_autograd" in runs[1]
    assert set(re.findall(r"ssd_\w+", runs[2])) == inference == {"ssd_fast"}
    assert int(runs[3]) == ssd.CPU_CHUNK_SIZE == ssd.default_chunk_size("cpu")


def test_a_bf16_autocast_training_step_runs_on_the_reference_scan():
    """Under autocast the reference scan computes in float32. (Before: autocast ran the training scan's forward
    matmuls in bf16, and its backward, which runs outside autocast, failed with "expected m1 and m2 to have the
    same dtype": any bf16-autocast training step of Adventurer on the reference backend.)"""
    from pixelvit.models import create_model

    torch.manual_seed(0)
    model = create_model("adventurer_nano", img_size=8, patch_size=2).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(torch.randn(2, 3, 8, 8)).float().square().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

    x, dt, A, B, C, D, _ = (t.float() for t in make_inputs())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ssd_scan(x, dt, A, B, C, chunk_size=8, D=D)
    assert y.dtype == torch.float32 and rel_err(y, ssd_sequential(x, dt, A, B, C, D=D)) < 1e-5
