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
