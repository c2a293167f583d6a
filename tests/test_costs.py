"""pixelvit.costs against hand-computed values, the paper's Table 6, real parameter counts and
torch's own FLOP counter on real forward passes."""

import dataclasses
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from pixelvit import costs
from pixelvit.models import create_model, get_config


def test_vit_tiny_hand_computed():
    # DeiT-Tiny: D=192, 12 blocks, MLP 768, 196 patches + 1 class token = 197 tokens
    result = costs.estimate("vit_tiny", img_size=224, patch_size=16)
    assert result["tokens"] == 197
    assert result["params"] == 5_717_416  # timm's deit_tiny_patch16_224 has exactly this many
    assert result["flops_breakdown"]["patch_embed"] == 2 * 196 * (3 * 16 * 16) * 192
    assert result["flops_breakdown"]["linear layers"] == 12 * 2 * 197 * (4 * 192**2 + 2 * 192 * 768)
    assert result["flops_breakdown"]["attention"] == 12 * 4 * 197**2 * 192
    assert result["flops"] == 2_507_366_400


def test_adventurer_tiny_hand_computed():
    # D=256, inner 512, 8 heads of 64, d_state 64: in_proj 256 -> 2*512 + 2*64 + 8 = 1160
    result = costs.estimate("adventurer_tiny", img_size=224, patch_size=16)
    assert result["tokens"] == 196 + 1 == create_model("adventurer_tiny").num_tokens  # + class token
    assert result["mixer_tokens"] == 196 + 2  # + the mean token every block prepends
    per_layer = 512 + 256 * 1160 + (640 * 4 + 640) + 3 * 8 + 512 + 512 * 256 + 3 * 256 * 640 + 2 * 640 + 256
    assert result["params_breakdown"]["layers"] == 12 * per_layer
    assert result["params"] == (3 * 256 * 256 + 256) + (256 + 197 * 256) + 12 * per_layer + (256 + 256 * 1000 + 1000)
    assert result["params"] == 11_608_840


def test_patch_embedding_flops_do_not_depend_on_patch_size():
    rows = costs.cost_table("vit_small", 224, [16, 8, 4, 2, 1])
    assert len({row["flops_breakdown"]["patch_embed"] for row in rows}) == 1
    assert [row["tokens"] for row in rows] == [197, 785, 3137, 12545, 50177]


@pytest.mark.parametrize("patch_size, paper_mb", sorted(costs.PAPER_TABLE6_VIT_MEMORY_MB.items()))
def test_vit_activation_memory_reproduces_paper_table6(patch_size, paper_mb):
    estimate = costs.estimate("vit_base", img_size=224, patch_size=patch_size)["activation_mb"]
    assert abs(estimate - paper_mb) / paper_mb < 0.05


@pytest.mark.parametrize("name", ["vit_micro", "vit_tiny", "adventurer_micro", "adventurer_tiny"])
@pytest.mark.parametrize("patch_size", [16, 4])
def test_parameter_count_equals_the_real_model(name, patch_size):
    with torch.device("meta"):
        model = create_model(name, img_size=64, patch_size=patch_size, num_classes=10)
    real = sum(p.numel() for p in model.parameters())
    assert costs.estimate(model)["params"] == real


def _counted_flops(model, img_size) -> int:
    images = torch.randn(1, model.config.in_chans, img_size, img_size)
    # the math backend runs attention as matrix products, which FlopCounterMode counts
    # (it does not count the fused CPU kernel)
    # readable_mixer: Adventurer's plain forward (the streamed one does its causal conv as four multiply-adds,
    # which FlopCounterMode does not count as a convolution)
    from pixelvit.ops.mixer import readable_mixer

    with torch.no_grad(), readable_mixer(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(images)
    return counter.get_total_flops()


@pytest.mark.parametrize("patch_size", [16, 8, 4, 2, 1])
def test_vit_flops_match_flop_counter(patch_size):
    config = dataclasses.replace(get_config("vit_tiny"), img_size=32, patch_size=patch_size, depth=2,
                                 embed_dim=64, num_heads=2, num_classes=10)
    model = create_model("vit_tiny", **dataclasses.asdict(config))
    counted = _counted_flops(model, 32)
    assert costs.estimate(config)["flops"] == pytest.approx(counted, rel=0.05)


@pytest.mark.parametrize("patch_size", [16, 8, 4, 2, 1])
def test_adventurer_flops_match_flop_counter(patch_size):
    """At a chunk as long as the sequence (no padding), the analytic count is FlopCounterMode's."""
    config = dataclasses.replace(get_config("adventurer_tiny"), img_size=32, patch_size=patch_size, depth=2,
                                 embed_dim=64, headdim=32, d_state=16, num_classes=10)
    length = (32 // patch_size) ** 2 + 2  # what the mixer sees
    model = create_model("adventurer_tiny", **dataclasses.asdict(config), chunk_size=length)
    counted = _counted_flops(model, 32)
    assert costs.estimate(config, chunk_size=length)["flops"] == pytest.approx(counted, rel=0.01)


def test_scan_flops_count_the_real_length_not_the_padding():
    """FlopCounterMode on the scan itself: at a multiple of the chunk the counts agree exactly; at any
    other length the analytic count is that of the real tokens, below what the padded chunks cost."""
    from pixelvit.ops.ssd import ssd_chunked

    def counted(length, chunk):
        x, dt = torch.randn(1, length, 4, 8), torch.rand(1, length, 4)
        B = C = torch.randn(1, length, 1, 16)
        with FlopCounterMode(display=False) as counter:
            ssd_chunked(x, dt, -torch.rand(4), B, C, chunk_size=chunk)
        return counter.get_total_flops()

    shape = dict(nheads=4, headdim=8, d_state=16, ngroups=1)
    assert costs.ssd_flops(128, **shape, chunk_size=64) == counted(128, 64)
    assert costs.ssd_flops(129, **shape, chunk_size=64) == pytest.approx(counted(129, 64) * 129 / 192, rel=0.02)
    assert costs.ssd_flops(18, **shape, chunk_size=64) == counted(18, 18)  # a sequence shorter than a chunk
    # the nano Adventurer at patch 8 (18 tokens): the scan is counted for 18 tokens, not a padded 64
    config = get_config("adventurer_nano")
    nano = costs.estimate(config, img_size=32, patch_size=8)
    assert nano["mixer_tokens"] == 18
    nano_shape = dict(nheads=config.expand * config.embed_dim // config.headdim, headdim=config.headdim,
                      d_state=config.d_state, ngroups=config.ngroups)
    assert nano["flops_breakdown"]["ssd scan"] == config.depth * costs.ssd_flops(18, **nano_shape, chunk_size=64)


def test_plot_costs_draws_the_notebook_figure(tmp_path, monkeypatch):
    """One three-panel cost figure: `pixelvit costs` saves viz.cost_figure, it does not draw its own."""
    import pixelvit.viz

    drawn = []
    real = pixelvit.viz.cost_figure
    monkeypatch.setattr(pixelvit.viz, "cost_figure", lambda tables, **k: drawn.append(list(tables)) or real(tables, **k))
    path = costs.plot_costs(costs.cost_table("vit_nano", 32, [8, 4]), tmp_path / "c.png", title="nano")
    assert drawn == [["nano"]] and path.read_bytes()[:4] == b"\x89PNG"


def test_cli_prints_table_and_writes_plot(tmp_path, capsys):
    assert costs.main(["--model", "vit_tiny", "--img-size", "224", "--patch-sizes", "16", "8", "4", "2", "1",
                       "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "50,177" in printed and "GFLOPs" in printed
    png = tmp_path / "costs_vit_tiny_224.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    csv_lines = (tmp_path / "costs_vit_tiny_224.csv").read_text().splitlines()
    assert len(csv_lines) == 6 and csv_lines[0].startswith("model,img_size,patch_size,tokens")


@pytest.mark.parametrize("args, expected", [
    (["--img-size", "224", "--patch-sizes", "16", "5"], "--patch-sizes 5: image size 224x224 is not divisible by patch size 5"),
    (["--img-size", "0"], "--img-size 0: use at least 1"),
    (["--img-size", "-32", "--patch-sizes", "4"], "--img-size -32: use at least 1"),
    (["--img-size", "32", "--patch-sizes", "4", "0"], "--patch-sizes 0: patch size must be a positive integer"),
], ids=["does-not-divide", "zero", "negative", "zero-patch"])
def test_cli_rejects_bad_sizes_in_one_line_before_any_work(tmp_path, args, expected):
    """(issue 27) `pixelvit costs --img-size 0` printed "0x0", 1 token, and wrote a CSV and a plot."""
    result = subprocess.run([sys.executable, "-m", "pixelvit.cli", "costs", *args, "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    err = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(err) == 1, result.stderr
    assert err[0].startswith("pixelvit costs: error: ") and expected in err[0], err[0]
    assert result.stdout == "" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["vit_nano", "adventurer_nano"])
def test_activation_memory_matches_what_autograd_saves(name):
    """The per-image activation count (values, dtype aside) is within 10% of what autograd keeps in fp32."""
    from benchmarks.machine import SavedTensorCounter

    model = create_model(name, img_size=32, patch_size=2, num_classes=10).train()
    images = torch.randn(2, 3, 32, 32)
    with SavedTensorCounter(exclude=[*model.parameters(), images]) as saved:
        loss = model(images).sum()
    loss.backward()  # outside the counter: the mixer's recompute in backward is transient, not kept
    values_saved = saved.bytes / 4 / 2  # fp32, per image
    values_estimated = costs.estimate(model)["activation_mb"] * 1e6 / costs.BYTES_PER_VALUE
    assert values_estimated == pytest.approx(values_saved, rel=0.10)
