"""Section 2 of the benchmarks times the scans the models run (benchmarks/bench_ssd.py), not another one.

Checked by recording the calls: the benchmark's inference scan makes the very ssd_fast calls (lengths, chunk,
state passed on) that an Adventurer's inference forward makes, and its training scan (ssd_trainable) builds
the same chunked scans (ssd_autograd.ChunkedSSD) as the mixer's training Function. (Before: section 2 timed
ssd_chunked, which no model runs.)
"""

import pytest
import torch

from benchmarks import bench_ssd
from pixelvit.models import create_model
from pixelvit.ops import mixer, ssd, ssd_autograd


@pytest.fixture
def recorded(monkeypatch):
    """Every ssd_fast call (length, chunk, with a state?) and every chunked training scan (ChunkedSSD: length, chunk)."""
    calls = []
    real_fast = ssd.ssd_fast

    def fast(x, *args, chunk_size, initial_state=None, **kwargs):
        calls.append(("ssd_fast", x.shape[1], chunk_size, initial_state is not None))
        return real_fast(x, *args, chunk_size=chunk_size, initial_state=initial_state, **kwargs)

    monkeypatch.setattr(ssd, "ssd_fast", fast)
    monkeypatch.setattr(mixer, "ssd_fast", fast)
    real_init = ssd_autograd.ChunkedSSD.__init__  # built once in a training scan's forward, once in its backward

    def init(self, x, dt, A, B, C, chunk_size):
        calls.append(("ChunkedSSD", x.shape[1], chunk_size))
        real_init(self, x, dt, A, B, C, chunk_size)

    monkeypatch.setattr(ssd_autograd.ChunkedSSD, "__init__", init)
    return calls


def test_the_inference_scan_is_the_models(recorded):
    """32x32 at patch 1: 1,024 + 2 tokens through the mixer, so one block of BLOCK_TOKENS (1,024) and one of 2."""
    model = create_model("adventurer_nano", img_size=32, patch_size=1, chunk_size=16).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    per_block = recorded[: len(recorded) // len(model.layers)]
    assert mixer.BLOCK_TOKENS == 1024
    assert per_block == [("ssd_fast", 1024, 16, False), ("ssd_fast", 2, 16, True)]

    recorded.clear()
    leaves, _ = bench_ssd.make_inputs(1026, batch=1, nheads=4, headdim=32, dstate=16, ngroups=1)
    bench_ssd.inference_scan(*leaves, chunk_size=16)
    assert recorded == per_block


def test_the_training_scan_is_the_models(recorded):
    model = create_model("adventurer_nano", img_size=8, patch_size=2, chunk_size=16).train()  # 16 + 2 = 18 tokens
    model(torch.randn(1, 3, 8, 8)).sum().backward()
    per_layer = recorded[: len(recorded) // len(model.layers)]
    assert per_layer == [("ChunkedSSD", 18, 16)] * 2  # MixerFunction: the scan's forward, then its backward

    recorded.clear()
    leaves, w = bench_ssd.make_inputs(18, batch=1, nheads=4, headdim=32, dstate=16, ngroups=1)
    bench_ssd.forward_backward(bench_ssd.implementations(16)["training"], leaves, w)
    assert recorded == per_layer  # ssd_trainable: the same two, at the same length and chunk
