"""pixelvit.sweep: the default grid, an end-to-end sweep at a tiny budget, reuse, the table and figure."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pixelvit import sweep


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def test_no_arguments_means_the_default_sweep_on_specks():
    configs, out = sweep.configs_from_args(sweep.build_parser().parse_args([]))
    d = sweep.DEFAULT_SWEEP
    assert out == Path(d["out"])
    assert [c.patch_size for c in configs] == d["patch_sizes"] == [8, 4, 2, 1]
    assert {c.dataset for c in configs} == {"specks"} and {c.img_size for c in configs} == {16}
    assert all(c.steps == d["steps"] and c.model_args == d["model_args"] for c in configs)


def test_other_models_do_not_get_the_default_slimming():
    configs, out = sweep.configs_from_args(sweep.build_parser().parse_args(
        ["--model", "vit_tiny", "--dataset", "cifar10", "--patch-sizes", "8", "4"]))
    assert all(c.model_args == {} and c.img_size is None for c in configs)
    assert out == Path("runs/sweeps/vit_tiny-cifar10-nativepx")
    # naming the default model explicitly asks for that model as registered, not the slimmed one
    configs, _ = sweep.configs_from_args(sweep.build_parser().parse_args(["--model", "vit_micro"]))
    assert all(c.model == "vit_micro" and c.model_args == {} for c in configs)


@pytest.mark.parametrize("args, expected", [
    (["--dataset", "nonexistent"], "unknown dataset 'nonexistent'"),
    (["--model", "vit_micro", "nonexistent"], "unknown model 'nonexistent'"),
    (["--img-size", "32", "--patch-sizes", "4", "5"], "not divisible by patch size 5"),
], ids=["dataset", "model", "patch-size"])
def test_bad_arguments_stop_the_sweep_in_one_line_before_any_run(tmp_path, capsys, args, expected):
    runs, data = tmp_path / "runs", tmp_path / "data"
    code = sweep.main([*args, "--runs-dir", str(runs), "--data-root", str(data), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("pixelvit sweep: error: ") and expected in err[0]
    assert not runs.exists() and not data.exists() and not (tmp_path / "s").exists()  # the valid runs did not start


def tiny_sweep_args(data_root, tmp_path) -> list[str]:
    return ["--model-arg", "embed_dim=32", "--model-arg", "depth=2", "--model-arg", "num_heads=2",
            "--img-size", "8", "--patch-sizes", "4", "2", "--steps", "4", "--batch-size", "16",
            "--train-samples", "128", "--eval-samples", "64", "--data-root", data_root,
            "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "sweep"), "--quiet"]


def test_sweep_end_to_end_on_specks_then_reused(data_root, tmp_path, capsys):
    args = tiny_sweep_args(data_root, tmp_path)
    assert sweep.main(args) == 0
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "results.csv")))
    assert [int(r["patch_size"]) for r in rows] == [4, 2]
    assert [int(r["tokens"]) for r in rows] == [5, 17]
    for row in rows:
        assert row["dataset"] == "specks" and row["img_size"] == "8" and row["steps"] == "4"
        assert int(row["params"]) > 0 and float(row["gflops"]) > 0 and 0 <= float(row["top1"]) <= 100
        assert row["device"].startswith("cpu") and row["cached"] == "False"
    assert float(rows[1]["gflops"]) > float(rows[0]["gflops"])  # 4x the tokens, more compute
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "patch_size" in out and "sweep: 2 runs in " in out and "loaded" not in out

    assert sweep.main(args) == 0  # finished runs are reused, not retrained
    rows = list(csv.DictReader(open(tmp_path / "sweep" / "results.csv")))
    assert all(r["cached"] == "True" for r in rows)
    # (issue 27) the old wall times beside "2 runs in 0.3 s" did not say the runs were loaded
    assert "(2 loaded from their run folders: their wall_s is from when they were trained)" in capsys.readouterr().out


def test_gflops_come_from_pixelvit_costs_with_no_fallback_that_misses_attention(data_root, tmp_path, monkeypatch):
    """The sweep once fell back to FlopCounterMode, which on CPU does not count attention (SDPA):
    0.40 instead of 1.48 GFLOPs for vit_nano at patch 1 on 32 px. Now it uses pixelvit.costs or fails."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import pixelvit.costs
    from pixelvit.models import create_model

    nano = create_model("vit_nano", img_size=32, patch_size=1)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        nano(torch.zeros(1, 3, 32, 32))
    assert counter.get_total_flops() / 1e9 < 0.5 * pixelvit.costs.estimate(nano)["gflops"]  # why no fallback

    sweep.main(tiny_sweep_args(data_root, tmp_path))
    row = next(csv.DictReader(open(tmp_path / "sweep" / "results.csv")))
    assert row["gflops_source"] == "pixelvit.costs"
    assert float(row["gflops"]) == pytest.approx(sweep.forward_gflops(Path(row["run_dir"])), abs=1e-6)

    def broken(*args, **kwargs):
        raise RuntimeError("costs unavailable")

    monkeypatch.setattr(pixelvit.costs, "estimate", broken)
    monkeypatch.setattr(sweep, "estimate", broken, raising=False)
    with pytest.raises(RuntimeError, match="costs unavailable"):
        sweep.forward_gflops(Path(row["run_dir"]))


def test_figure_with_paper_panel_and_seeds(tmp_path):
    rows = [dict(model="vit_micro", dataset="specks", img_size=16, patch_size=p, tokens=(16 // p) ** 2 + 1,
                 train_tflops=0.01 * 4 ** i, top1=20 + 20 * i + seed, steps=300)
            for i, p in enumerate([8, 4, 2, 1]) for seed in (0, 1)]
    path = sweep.plot(rows, tmp_path / "fig.png", paper=True)
    assert path.stat().st_size > 10_000
    reference = sweep.paper_reference()
    assert {r["patch_size"] for r in reference} >= {16, 1}
    assert all(r["source"] for r in reference)


@pytest.mark.parametrize("args", [["--lr", "0.01"], ["--batch-size", "64"], ["--img-size", "32"],
                                  ["--weight-decay", "0.1"], ["--aug", "light"]])
def test_a_sweep_that_trains_other_weights_is_not_written_into_the_default_folder(args):
    """--lr / --batch-size / --img-size used to land in runs/sweeps/specks_default beside the default's runs."""
    _, out = sweep.configs_from_args(sweep.build_parser().parse_args(args))
    assert out != Path(sweep.DEFAULT_SWEEP["out"])


def test_settings_that_do_not_change_the_weights_keep_the_default_folder():
    _, out = sweep.configs_from_args(sweep.build_parser().parse_args(
        ["--log-every", "7", "--eval-every", "50", "--quiet", "--model", "vit_nano"]))
    assert out == Path(sweep.DEFAULT_SWEEP["out"])
