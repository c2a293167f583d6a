"""pixelvit.ops.mixer_autograd.MixerFunction (the mixer's training path) against the readable Mamba2Mixer.forward.

Float64 throughout: outputs and the gradients of the input and of every parameter must agree to ~1e-12 with
autograd through the readable forward (odd lengths, lengths that pad the last chunk, groups), gradcheck
on a small case, negative controls (a slightly wrong SiLU derivative, a conv tap off by one), and what is
kept for backward.
"""

import pytest
import torch

from pixelvit.models.mamba2 import Mamba2Mixer
from pixelvit.ops import mixer as fast
from pixelvit.ops import mixer_autograd
from pixelvit.ops.mixer_autograd import mixer_trainable


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def small_mixer(ngroups=2, chunk_size=16, d_conv=4, seed=0):
    torch.manual_seed(seed)
    mixer = Mamba2Mixer(16, d_state=8, headdim=8, ngroups=ngroups, d_conv=d_conv).double()
    mixer.chunk_size = chunk_size
    with torch.no_grad():  # a random-looking mixer, not the init (D = 1, norm weight 1, ...)
        for p in mixer.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return mixer


def grads(mixer, u0, w, readable):
    """Output and gradients (u, then every parameter) of sum(mixer(u) * w), readable or MixerFunction."""
    u = u0.clone().requires_grad_()
    if readable:
        with fast.readable_mixer():
            out = mixer(u)
    else:
        out = mixer_trainable(mixer, u)
    return out.detach(), torch.autograd.grad((out * w).sum(), [u, *mixer.parameters()])


@pytest.mark.parametrize("ngroups, chunk_size, seqlen, d_conv", [
    (1, 4, 1, 4), (2, 16, 77, 4), (1, 64, 130, 4), (2, 8, 64, 3), (1, 16, 15, 2)])
def test_matches_the_readable_mixer_in_float64(ngroups, chunk_size, seqlen, d_conv):
    mixer = small_mixer(ngroups, chunk_size, d_conv)
    u = torch.randn(2, seqlen, 16, dtype=torch.float64)
    w = torch.randn(2, seqlen, 16, dtype=torch.float64)
    ref, g_ref = grads(mixer, u, w, readable=True)
    out, g = grads(mixer, u, w, readable=False)
    assert rel_err(out, ref) <= 1e-12
    names = ["u"] + [n for n, _ in mixer.named_parameters()]
    for name, a, b in zip(names, g, g_ref, strict=True):
        assert rel_err(a, b) <= 1e-11, name


def test_gradcheck():
    mixer = small_mixer(chunk_size=4)
    u = torch.randn(1, 11, 16, dtype=torch.float64, requires_grad=True)
    params = tuple(mixer.parameters())

    def f(u, *weights):  # the same weights the mixer holds, passed so gradcheck perturbs them
        in_w, conv_w, conv_b = weights[3], weights[4], weights[5]
        return mixer_autograd.MixerFunction.apply(u, in_w, conv_w, conv_b, weights[0], weights[1], weights[2],
                                                  weights[6], weights[7], mixer)

    assert [n for n, _ in mixer.named_parameters()] == [
        "dt_bias", "A_log", "D", "in_proj.weight", "conv1d.weight", "conv1d.bias", "norm.weight", "out_proj.weight"]
    assert torch.autograd.gradcheck(f, (u, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("fault", ["silu_derivative", "conv_tap"])
def test_a_wrong_backward_fails_the_comparison(monkeypatch, fault):
    """Negative controls: the comparison above catches a SiLU derivative 0.1 % off, or a conv tap shifted."""
    mixer = small_mixer()
    u = torch.randn(2, 40, 16, dtype=torch.float64)
    w = torch.randn(2, 40, 16, dtype=torch.float64)
    _, g_ref = grads(mixer, u, w, readable=True)
    if fault == "silu_derivative":
        real = mixer_autograd.silu_backward
        monkeypatch.setattr(mixer_autograd, "silu_backward", lambda g, v: real(g, v) * 1.001)
    else:
        real = mixer_autograd.causal_conv_backward

        def shifted(dout, padded, weight):
            d_in, d_w, d_b = real(dout, padded, weight)
            return d_in, d_w.roll(1, dims=-1), d_b

        monkeypatch.setattr(mixer_autograd, "causal_conv_backward", shifted)
    _, bad = grads(mixer, u, w, readable=False)
    assert max(rel_err(a, b) for a, b in zip(bad, g_ref, strict=True)) > 1e-6


def test_training_goes_through_it_and_keeps_little():
    """Mamba2Mixer.forward with gradients takes MixerFunction: the readable gradients, and autograd keeps only
    u and the per-chunk states (plus the parameters) instead of every intermediate."""
    mixer = small_mixer()  # 2 groups, 4 heads of 8, d_state 8, chunk 16
    u0 = torch.randn(2, 77, 16, dtype=torch.float64)
    w = torch.randn(2, 77, 16, dtype=torch.float64)
    results = []
    for readable in (True, False):
        mixer.zero_grad()
        u = u0.clone().requires_grad_()
        storages = {}

        def pack(t, storages=storages):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if readable:
                with fast.readable_mixer():
                    out = mixer(u)
            else:
                out = mixer(u)
                assert out.grad_fn.name() == "MixerFunctionBackward"
        (out * w).sum().backward()
        param_ptrs = {p.untyped_storage().data_ptr() for p in mixer.parameters()}
        saved = sum(n for ptr, n in storages.items() if ptr not in param_ptrs)
        results.append(([u.grad] + [p.grad.clone() for p in mixer.parameters()], saved))
    (g_ref, saved_readable), (g, saved_fast) = results
    for a, b in zip(g, g_ref, strict=True):
        assert rel_err(a, b) <= 1e-11
    chunks = -(-77 // 16)
    assert saved_fast == (u0.numel() + 2 * mixer.nheads * chunks * mixer.d_state * mixer.headdim) * 8
    assert saved_readable > 5 * saved_fast


def test_float32_training_step_lowers_the_loss():
    """A real float32 training loop through MixerFunction: the loss falls, everything stays finite."""
    torch.manual_seed(0)
    mixer = Mamba2Mixer(16, d_state=8, headdim=8)
    mixer.chunk_size = 16
    u = torch.randn(4, 50, 16)
    target = torch.roll(u, 1, dims=1)  # something a causal mixer can learn: the previous token
    optimizer = torch.optim.AdamW(mixer.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = (mixer(u) - target).square().mean()
        assert loss.grad_fn.next_functions[0][0].next_functions  # a graph (the mixer trained, not streamed)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(p).all() for p in mixer.parameters())
    assert losses[-1] < 0.7 * losses[0]


def test_batch_pieces_cover_the_batch_in_order():
    assert mixer_autograd.batch_pieces(64, 1026) == [slice(i, i + 4) for i in range(0, 64, 4)]  # 16 x 4,104 rows
    assert mixer_autograd.batch_pieces(64, 66) == [slice(0, 64)]  # 4,224 rows: one piece
    assert mixer_autograd.batch_pieces(1, 50178) == [slice(0, 1)]  # one long image: never split
    pieces = mixer_autograd.batch_pieces(10, 1000)  # 2 pieces of 5
    assert [(p.start, p.stop) for p in pieces] == [(0, 5), (5, 10)]


@pytest.fixture
def threads():
    """Sets torch's thread count for one test and puts the old one back."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_pieces_match_the_readable_mixer(monkeypatch, threads, n_threads):
    """A batch split into pieces (in turn on one thread, or one thread per piece on two) gives the readable
    output and gradients, and on two threads the pieces really do run on a pool."""
    monkeypatch.setattr(mixer_autograd, "PIECE_ROWS", 40)  # batch 8 x 21 tokens: 4 pieces of 2 images
    pools = []
    real_pool = mixer_autograd._pool
    monkeypatch.setattr(mixer_autograd, "_pool", lambda n: pools.append(n) or real_pool(n))
    threads(n_threads)
    mixer = small_mixer(chunk_size=8)
    u = torch.randn(8, 21, 16, dtype=torch.float64)
    w = torch.randn(8, 21, 16, dtype=torch.float64)
    assert len(mixer_autograd.batch_pieces(8, 21)) == 4
    ref, g_ref = grads(mixer, u, w, readable=True)
    out, g = grads(mixer, u, w, readable=False)
    assert rel_err(out, ref) <= 1e-12
    for a, b in zip(g, g_ref, strict=True):
        assert rel_err(a, b) <= 1e-11
    assert pools == ([2, 2] if n_threads == 2 else [])  # forward and backward on the pool of 2 threads
    assert torch.get_num_threads() == n_threads  # put back after the pool


def test_a_piece_left_out_fails_the_comparison(monkeypatch):
    """Negative control for the piece-wise gradients: keeping only the first piece's weight gradients."""
    monkeypatch.setattr(mixer_autograd, "PIECE_ROWS", 40)
    monkeypatch.setattr(mixer_autograd, "sum_in_order", lambda parts: list(parts[0]))
    mixer = small_mixer(chunk_size=8)
    u = torch.randn(8, 21, 16, dtype=torch.float64)
    w = torch.randn(8, 21, 16, dtype=torch.float64)
    _, g_ref = grads(mixer, u, w, readable=True)
    _, bad = grads(mixer, u, w, readable=False)
    assert rel_err(bad[0], g_ref[0]) <= 1e-11  # the input's gradient is per piece and still right
    assert max(rel_err(a, b) for a, b in zip(bad[1:], g_ref[1:], strict=True)) > 0.1


def test_the_bits_do_not_depend_on_the_thread_count(monkeypatch, threads):
    """float32: one thread (pieces in turn) and two (a piece per thread) give bit-identical outputs and gradients."""
    monkeypatch.setattr(mixer_autograd, "PIECE_ROWS", 256)  # batch 8 x 130 tokens: 4 pieces
    torch.manual_seed(0)
    mixer = Mamba2Mixer(32, d_state=16, headdim=16)
    u = torch.randn(8, 130, 32)
    w = torch.randn(8, 130, 32)
    results = []
    for n_threads in (1, 2):
        threads(n_threads)
        results.append(grads(mixer, u, w, readable=False))
    (out1, g1), (out2, g2) = results
    assert torch.equal(out1, out2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


def _train_a_mixer_in_pieces(queue):
    torch.set_num_threads(2)
    mixer = small_mixer(chunk_size=8)
    u = torch.randn(8, 21, 16, dtype=torch.float64, requires_grad=True)
    mixer_trainable(mixer, u).sum().backward()
    queue.put(bool(torch.isfinite(u.grad).all()))


def test_a_forked_child_trains_on_its_own_pool(monkeypatch, threads):
    """The pool of piece threads is kept for the process; a fork (a DataLoader worker) must not inherit a
    pool whose threads it does not have (it would wait forever)."""
    import multiprocessing

    monkeypatch.setattr(mixer_autograd, "PIECE_ROWS", 40)  # 4 pieces, here and in the forked child
    threads(2)
    mixer = small_mixer(chunk_size=8)
    u = torch.randn(8, 21, 16, dtype=torch.float64, requires_grad=True)
    mixer_trainable(mixer, u).sum().backward()  # the parent's pool exists now
    assert 2 in mixer_autograd._pools
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_train_a_mixer_in_pieces, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("the forked child hung on the parent's pool")
    assert child.exitcode == 0 and queue.get(timeout=5)
