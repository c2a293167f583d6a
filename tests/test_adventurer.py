"""Adventurer and its Mamba-2 mixer, checked against the official code and against the SSD definition.

The official model is wangf3014/Patch_Scaling `models_mamba.py` (the same file as wangf3014/Adventurer)
with the mixer `mamba_custom.py` (mamba-ssm's Mamba2 with rmsnorm=True, norm_before_gate=False). Neither
runs without mamba-ssm's CUDA kernels, so the tests below restate the official forward independently in
plain tensor ops and compare.
"""

import dataclasses
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelvit.models import create_model
from pixelvit.models.adventurer import (
    Adventurer,
    AdventurerConfig,
    Block,
    RMSNorm,
    flipped_layers,
    reverse_patches,
)
from pixelvit.models.mamba2 import Mamba2Mixer
from pixelvit.ops.ssd import ssd_sequential

# a tiny Adventurer: 4 blocks, so that layers 2 and 3 flip under the released rule
TINY = dict(img_size=8, patch_size=2, num_classes=5, embed_dim=16, depth=4, d_state=4, headdim=8)


def tiny_adventurer(chunk_size=8, **overrides) -> Adventurer:
    return Adventurer(AdventurerConfig(**{**TINY, **overrides}), chunk_size=chunk_size)


# ---------------------------------------------------------------------------------------------------
# the state dict is the official one
# ---------------------------------------------------------------------------------------------------

# adventurer_tiny_patch1 at 224x224, read off models_mamba.py + mamba_custom.py:
#   d_model 256, d_inner = expand*d_model = 512, nheads = d_inner/headdim = 8, d_state 64, ngroups 1,
#   in_proj: d_model -> 2*d_inner + 2*ngroups*d_state + nheads = 1160 (z, xBC, dt), no bias
#   conv1d: depthwise over d_inner + 2*ngroups*d_state = 640 channels, kernel 4, bias
#   SwiGLU hidden int(256 * 2.5) = 640; RMSNorms are weight-only; pos_embed over 224*224 + 1 tokens
OFFICIAL_TOP_KEYS = {
    "cls_token": (1, 1, 256),
    "pos_embed": (1, 50177, 256),  # depends on img/patch: (img/patch)^2 + 1 positions
    "patch_embed.proj.weight": (256, 3, 1, 1),
    "patch_embed.proj.bias": (256,),
    "head.weight": (1000, 256),
    "head.bias": (1000,),
    "norm_f.weight": (256,),
}
OFFICIAL_LAYER_KEYS = {
    "mixer.dt_bias": (8,),
    "mixer.A_log": (8,),
    "mixer.D": (8,),
    "mixer.in_proj.weight": (1160, 256),
    "mixer.conv1d.weight": (640, 1, 4),
    "mixer.conv1d.bias": (640,),
    "mixer.norm.weight": (512,),
    "mixer.out_proj.weight": (256, 512),
    "norm.weight": (256,),
    "mlp.w1.weight": (640, 256),
    "mlp.w1.bias": (640,),
    "mlp.w2.weight": (640, 256),
    "mlp.w2.bias": (640,),
    "mlp.w3.weight": (256, 640),
    "mlp.w3.bias": (256,),
    "norm_mlp.weight": (256,),
}


def shapes_on_meta(name, **overrides):
    with torch.device("meta"):  # no memory, no init cost: only names and shapes
        model = create_model(name, **overrides)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def test_state_dict_of_adventurer_tiny_patch1_is_the_official_one():
    expected = dict(OFFICIAL_TOP_KEYS)
    for layer in range(12):
        expected.update({f"layers.{layer}.{key}": shape for key, shape in OFFICIAL_LAYER_KEYS.items()})
    assert len(expected) == 199
    assert shapes_on_meta("adventurer_tiny_patch1") == expected


@pytest.mark.parametrize("size,dim,depth", [("tiny", 256, 12), ("small", 512, 12), ("base", 768, 12), ("large", 1024, 24)])
def test_official_sizes_have_official_key_counts_and_widths(size, dim, depth):
    shapes = shapes_on_meta(f"adventurer_{size}_patch16")
    assert len(shapes) == 7 + 16 * depth
    assert shapes["pos_embed"] == (1, 14 * 14 + 1, dim)
    nheads = 2 * dim // 64
    assert shapes["layers.0.mixer.in_proj.weight"] == (2 * 2 * dim + 2 * 64 + nheads, dim)
    assert shapes[f"layers.{depth - 1}.mlp.w1.weight"] == (int(2.5 * dim), dim)


def test_no_buffers_and_no_extra_parameters():
    model = tiny_adventurer()
    assert list(model.buffers()) == []
    assert len(model.state_dict()) == 7 + 16 * TINY["depth"]


# ---------------------------------------------------------------------------------------------------
# the mixer equals Mamba-2 written from its definition
# ---------------------------------------------------------------------------------------------------


def mixer_by_definition(mixer: Mamba2Mixer, u: torch.Tensor) -> torch.Tensor:
    """Mamba-2 (mamba-ssm Mamba2, rmsnorm=True, norm_before_gate=False) written out step by step."""
    batch, length, _ = u.shape
    d_inner, n, g, h, p = mixer.d_inner, mixer.d_state, mixer.ngroups, mixer.nheads, mixer.headdim
    zxbcdt = u @ mixer.in_proj.weight.T
    z = zxbcdt[..., :d_inner]
    xBC = zxbcdt[..., d_inner : 2 * d_inner + 2 * g * n]
    dt = zxbcdt[..., 2 * d_inner + 2 * g * n :]
    assert dt.shape[-1] == h
    # causal depthwise conv: out_t = bias + sum_k w[k] * in_{t - (K-1) + k}, zero before the start
    weight, K = mixer.conv1d.weight[:, 0, :], mixer.conv1d.weight.shape[-1]  # (channels, K)
    conv = mixer.conv1d.bias.expand(batch, length, -1).clone()
    for t in range(length):
        for k in range(K):
            source = t - (K - 1) + k
            if source >= 0:
                conv[:, t] += weight[:, k] * xBC[:, source]
    xBC = conv * torch.sigmoid(conv)  # SiLU
    x = xBC[..., :d_inner].reshape(batch, length, h, p)
    B = xBC[..., d_inner : d_inner + g * n].reshape(batch, length, g, n)
    C = xBC[..., d_inner + g * n :].reshape(batch, length, g, n)
    y = ssd_sequential(
        x, F.softplus(dt + mixer.dt_bias), -torch.exp(mixer.A_log), B, C, D=mixer.D
    ).reshape(batch, length, d_inner)
    gated = (y * F.silu(z)).reshape(batch, length, g, d_inner // g)  # gate BEFORE the norm
    normed = gated / torch.sqrt(gated.pow(2).mean(-1, keepdim=True) + 1e-5)
    return (normed.reshape(batch, length, d_inner) * mixer.norm.weight) @ mixer.out_proj.weight.T


def randomize_(module: nn.Module):
    """Move every parameter away from its special init value (D = 1, norm weight = 1, zero biases)."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))


@pytest.mark.parametrize("ngroups", [1, 2])
def test_mixer_with_chunked_scan_equals_sequential_definition(ngroups):
    torch.manual_seed(0)
    mixer = Mamba2Mixer(d_model=16, d_state=6, headdim=8, ngroups=ngroups, chunk_size=8).double()
    randomize_(mixer)
    u = torch.randn(2, 21, 16, dtype=torch.float64)  # 21 = not a multiple of the chunk size
    assert mixer.nheads == 4
    assert torch.allclose(mixer(u), mixer_by_definition(mixer, u), atol=1e-10, rtol=1e-8)


def test_mixer_is_causal():
    torch.manual_seed(0)
    mixer = Mamba2Mixer(d_model=16, d_state=4, headdim=8, chunk_size=4).double()
    u = torch.randn(1, 12, 16, dtype=torch.float64)
    changed = u.clone()
    changed[:, 7:] += 1.0
    assert torch.allclose(mixer(u)[:, :7], mixer(changed)[:, :7])
    assert not torch.allclose(mixer(u)[:, 7:], mixer(changed)[:, 7:])


def test_mixer_init_is_mamba2s():
    torch.manual_seed(0)
    mixer = Mamba2Mixer(d_model=512, headdim=16)  # 64 heads: enough samples to see the ranges
    A = torch.exp(mixer.A_log)
    assert ((A >= 1) & (A <= 16)).all()
    dt = F.softplus(mixer.dt_bias)
    assert ((dt >= 1e-3 - 1e-7) & (dt <= 1e-1 + 1e-7)).all()
    assert torch.equal(mixer.D, torch.ones(64))
    assert mixer.in_proj.bias is None and mixer.out_proj.bias is None and mixer.conv1d.bias is not None


# ---------------------------------------------------------------------------------------------------
# the block: token layout (average first, class last, flip / unflip), residuals, SwiGLU
# ---------------------------------------------------------------------------------------------------


class RecordingCausalMixer(nn.Module):
    """Stands in for the mixer: remembers its input and returns a causal function of it (running sum)."""

    def forward(self, u):
        self.seen = u.detach().clone()
        return torch.cumsum(u, dim=1)


def rms(x, weight, eps=1e-5):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


@pytest.mark.parametrize("flip", [False, True])
def test_block_token_layout_against_independent_recomputation(flip):
    torch.manual_seed(0)
    config = AdventurerConfig(**TINY)
    block = Block(config, drop_path_rate=0.0, flip=flip).double()
    randomize_(block)
    block.mixer = RecordingCausalMixer()
    x = torch.randn(2, 5, 16, dtype=torch.float64)  # 4 patch tokens (p0 p1 p2 p3) then the class token

    out = block(x)

    normed = rms(x, block.norm.weight)
    order = [3, 2, 1, 0, 4] if flip else [0, 1, 2, 3, 4]  # the class token (index 4) never moves
    expected_input = torch.cat([normed.mean(1, keepdim=True), normed[:, order]], dim=1)
    assert torch.allclose(block.mixer.seen, expected_input)  # average token first, class token last
    mixed = torch.cumsum(expected_input, dim=1)[:, 1:]  # drop the average token's output
    unflipped = torch.empty_like(mixed)
    unflipped[:, order] = mixed  # put each output back at its token's original position
    x = x + unflipped
    h = rms(x, block.norm_mlp.weight)
    mlp = block.mlp
    swiglu = F.silu(h @ mlp.w1.weight.T + mlp.w1.bias) * (h @ mlp.w2.weight.T + mlp.w2.bias)
    expected = x + swiglu @ mlp.w3.weight.T + mlp.w3.bias
    assert torch.allclose(out, expected)


def test_reverse_patches_keeps_class_token_last_and_is_its_own_inverse():
    x = torch.arange(5.0).view(1, 5, 1)
    assert reverse_patches(x).flatten().tolist() == [3, 2, 1, 0, 4]
    assert torch.equal(reverse_patches(reverse_patches(x)), x)


def test_rmsnorm_matches_formula_and_keeps_dtype():
    norm = RMSNorm(8)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(3, 8)
    assert torch.allclose(norm(x), rms(x, norm.weight), atol=1e-6)
    assert norm(x.bfloat16()).dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------------
# the whole model: the official forward_features, restated
# ---------------------------------------------------------------------------------------------------


def official_forward(model: Adventurer, images: torch.Tensor, flip_rule) -> torch.Tensor:
    """models_mamba.py's Adventurer.forward, with each Block written out (mixers are the real ones)."""
    x = F.conv2d(images, model.patch_embed.proj.weight, model.patch_embed.proj.bias, stride=model.config.patch_size)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([x, model.cls_token.expand(x.shape[0], -1, -1)], dim=1) + model.pos_embed
    for n, layer in enumerate(model.layers):
        flip = flip_rule(n)
        h = rms(x, layer.norm.weight)
        h = torch.cat([h[:, :-1].flip(1), h[:, -1:]], dim=1) if flip else h
        h = torch.cat([h.mean(dim=1, keepdim=True), h], dim=1)
        h = layer.mixer(h)[:, 1:]
        h = torch.cat([h[:, :-1].flip(1), h[:, -1:]], dim=1) if flip else h
        x = x + h
        x = x + layer.mlp(rms(x, layer.norm_mlp.weight))
    x = rms(x, model.norm_f.weight)
    return model.head(x[:, -1])


@pytest.mark.parametrize(
    "flip_rule,rule",
    [("released", lambda n: n // 2 == 1), ("every_two", lambda n: (n // 2) % 2 == 1), ("alternate", lambda n: n % 2 == 1)],
)
def test_model_forward_matches_official_forward(flip_rule, rule):
    torch.manual_seed(0)
    model = tiny_adventurer(flip_rule=flip_rule, depth=8).double().eval()
    randomize_(model)
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        logits = model(images)
        assert torch.allclose(logits, official_forward(model, images, rule), atol=1e-10)
        tokens = model.forward_features(images)
    assert tokens.shape == (2, model.num_tokens, 16) and model.num_tokens == 17
    assert torch.allclose(logits, model.head(tokens[:, -1]))  # the head reads the LAST token


def test_flip_rules_give_the_documented_layers():
    assert flipped_layers(12, "released") == [2, 3]
    assert flipped_layers(24, "released") == [2, 3]
    assert flipped_layers(12, "every_two") == [2, 3, 6, 7, 10, 11]
    assert flipped_layers(12, "alternate") == [1, 3, 5, 7, 9, 11]
    assert AdventurerConfig().flip_rule == "released"
    model = tiny_adventurer(depth=8, flip_rule="every_two")
    assert [n for n, layer in enumerate(model.layers) if layer.flip] == [2, 3, 6, 7]
    with pytest.raises(ValueError, match="unknown flip_rule 'sometimes'.*released"):
        flipped_layers(12, "sometimes")
    with pytest.raises(ValueError, match="unknown flip_rule"):
        tiny_adventurer(flip_rule="sometimes")


def test_drop_path_schedule_is_the_official_one():
    model = tiny_adventurer(depth=5, drop_path_rate=0.4)
    official = [0.0] + torch.linspace(0, 0.4, 5).tolist()  # models_mamba.py: dpr[i] for layer i
    assert [layer.drop_path.drop_prob for layer in model.layers] == official[:5]


def test_official_init():
    torch.manual_seed(0)
    model = tiny_adventurer(depth=4)
    for layer in model.layers:
        for linear in (layer.mlp.w1, layer.mlp.w2, layer.mlp.w3):
            assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
        bound = 1 / math.sqrt(layer.mixer.d_inner) / math.sqrt(4)  # kaiming-uniform(a=sqrt 5) / sqrt(depth)
        assert layer.mixer.out_proj.weight.abs().max() <= bound
        assert torch.equal(layer.norm.weight, torch.ones(16))
    assert torch.equal(model.head.bias, torch.zeros(5))
    assert 0.01 < model.pos_embed.std() < 0.03 and 0.01 < model.cls_token.std() < 0.03  # normal(0.02)


def test_config_defaults_match_the_contract():
    assert dataclasses.asdict(AdventurerConfig()) == dict(
        img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=256, depth=12, mlp_ratio=2.5,
        flip_rule="released", d_state=64, expand=2, headdim=64, ngroups=1, d_conv=4,
        norm_eps=1e-5, drop_path_rate=0.0,
    )  # architecture only: scan backend, chunk length and grad checkpointing are run-time settings


def test_wrong_inputs_raise_value_errors():
    model = tiny_adventurer()
    with pytest.raises(ValueError, match=r"\(batch, 3, 8, 8\).*\(1, 3, 16, 16\)"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(batch, 3, 8, 8\).*\(1, 4, 8, 8\)"):
        model(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match=r"patch size 3"):
        tiny_adventurer(patch_size=3)
    with pytest.raises(ValueError, match="not divisible by headdim"):
        tiny_adventurer(headdim=12)


def test_extra_repr_reports_the_scan_backend():
    model = tiny_adventurer()
    assert model.scan_backend_in_use == "reference"  # CPU
    assert "scan_backend_in_use='reference'" in repr(model)


# ---------------------------------------------------------------------------------------------------
# training: gradient checkpointing, a few real steps at patch 1, torch.compile
# ---------------------------------------------------------------------------------------------------


def test_adventurer_tiny_at_patch_1_trains_on_cpu():
    """Adventurer-Tiny (256 wide, 12 layers) on 32x32 images at patch 1: 1,026 tokens through the mixer."""
    torch.manual_seed(0)
    model = create_model("adventurer_tiny", img_size=32, patch_size=1, num_classes=10, chunk_size=64)
    assert model.num_tokens + 1 == 1026
    images, labels = torch.randn(1, 3, 32, 32), torch.tensor([3])  # batch 1, 3 steps: seconds on 2 cores
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[-1] < losses[0], losses


def test_torch_compile_traces_the_whole_model_without_graph_breaks():
    """fullgraph=True fails on any graph break; aot_eager traces forward and backward without the slow
    C++ code generation of the default backend (that one is the slow test below)."""
    torch.manual_seed(0)
    model = tiny_adventurer(depth=2)
    images = torch.randn(2, 3, 8, 8)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(images)
    assert torch.allclose(out, model(images), atol=1e-6)
    out.square().sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
def test_torch_compile_inductor_gives_the_same_logits():
    torch.manual_seed(0)
    model = tiny_adventurer(depth=2).eval()
    images = torch.randn(2, 3, 8, 8)
    compiled = torch.compile(model)
    with torch.no_grad():
        assert torch.allclose(compiled(images), model(images), atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_on_cuda():
    torch.manual_seed(0)
    model = create_model("adventurer_micro", patch_size=1).cuda()
    images = torch.randn(2, 3, 32, 32, device="cuda")
    with torch.no_grad():
        reference = model(images)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(images)
    assert torch.allclose(low.float(), reference, atol=0.1, rtol=0.1)
    model.set_grad_checkpointing(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(images).float(), torch.tensor([1, 2], device="cuda"))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_backend_matches_reference_backend():
    torch.manual_seed(0)
    model = create_model("adventurer_micro", patch_size=2).cuda().eval()
    images = torch.randn(2, 3, 32, 32, device="cuda")
    with torch.no_grad():
        fast = model(images)
        model.set_scan(backend="reference")
        reference = model(images)
    assert torch.allclose(fast, reference, atol=1e-3, rtol=1e-3)
