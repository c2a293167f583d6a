"""The benchmark suite runs end to end and writes well-formed results. Nothing here is timed: no speed
assertions (the machine may be shared); only that every section ran and reported sane numbers."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.cost_growth import crossover

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ["vit_vs_timm", "scan", "cost_growth", "gpu", "full_scale", "training_memory", "training_speed"]


def run_suite(tmp_path, *args, timeout):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args, "--out", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def positive(x):
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def check_results(out: Path, flag: str):
    results = json.loads((out / "results.json").read_text())
    assert results["command"].startswith("python -m benchmarks") and flag in results["command"]
    machine = results["machine"]
    for key in (
        "cpu_model",
        "cpu_count",
        "torch",
        "timm",
        "torch_num_threads",
        "OMP_WAIT_POLICY",
        "gpu",
        "load_average_1_5_15",
    ):
        assert key in machine, key
    assert machine["OMP_WAIT_POLICY"] == "PASSIVE" and machine["torch_num_threads"] == 2
    assert positive(results["total_runtime_s"])
    sections = results["sections"]
    assert list(sections) == SECTIONS
    for name, section in sections.items():
        assert "error" not in section, (name, section.get("error"))

    vit = sections["vit_vs_timm"]
    assert vit["rows"]
    for row in vit["rows"]:
        assert positive(row["pixelvit_images_per_s"]) and positive(row["timm_images_per_s"])
        assert positive(row["speed_ratio_pixelvit_over_timm"])
        assert row["max_logit_diff_before_training"] < 1e-4  # same weights -> same model
        assert positive(row["cpu_time_ratio_pixelvit_over_timm"])
        # the two ViTs run the same aten ops, except that pixelvit normalizes only the class token
        pixelvit_extra, timm_extra = row["extra_input_elements_pixelvit_timm"]
        assert pixelvit_extra <= timm_extra, row["aten_op_differences"]
    assert isinstance(vit["target_met"], bool) and vit["verdict"]

    scan = sections["scan"]
    lengths = [r["length"] for r in scan["rows"]]
    assert lengths == sorted(lengths) and len(lengths) >= 2
    for row in scan["rows"]:
        for name in ("training", "sequential"):  # training: ssd_trainable, what ssd_scan runs with gradients
            assert positive(row[name]["fwd_bwd_ms"]) and positive(row[name]["saved_mb"])
            if sys.platform == "linux":
                assert positive(row[name]["peak_mb"])
        assert positive(row["speedup_fwd_bwd"]) and positive(row["inference"]["fwd_ms"])
    assert any(row["sequential"]["extrapolated"] for row in scan["rows"]) or flag == "--quick"
    # the training scan saves the same bytes per token at every length: linear memory (exact count)
    assert scan["training_saved_bytes_per_token_max_over_min"] < 1.2
    sweep = scan["chunk_sweep"]  # both scans that run, at every chunk length and length of the profile
    assert [row["length"] for row in sweep["rows"]] == sweep["lengths"] and len(sweep["chunk_sizes"]) >= 2
    for row in sweep["rows"]:
        for kind in ("inference_fwd_ms", "training_fwd_bwd_ms"):
            assert sorted(map(int, row[kind])) == sorted(sweep["chunk_sizes"]) and all(map(positive, row[kind].values()))
    assert sweep["best_chunk_size"] in sweep["chunk_sizes"] and min(sweep["time_over_fastest_geomean"].values()) >= 1

    growth = sections["cost_growth"]
    for point in growth["points"]:
        assert point["tokens"] > 1
        for arch in ("vit", "adventurer"):
            assert positive(point[arch]["fwd_bwd_ms_per_image"]) and positive(
                point[arch]["saved_mb_per_image"]
            )
    assert set(growth["crossover"]["all"]) == {"time", "peak_memory", "saved_memory"}
    small = json.loads((out / "cost_growth.json").read_text())
    assert len(small["points"]) == len(growth["points"]) and "crossover" in small

    if torch.cuda.is_available():
        assert positive(sections["gpu"]["matmul_peak"]["tflops"])
    else:
        skipped = sections["gpu"]["skipped"]
        assert "no GPU in this session" in skipped and "GPU part left for a GPU session" in skipped

    full = sections["full_scale"]
    assert full["rows"]
    for row in full["rows"]:
        for key in ("seconds", "achieved_gflops_per_s", "matmul_gflops_per_s_before", "ratio_to_matmul",
                    "ratio_to_matmul_cpu_time", "gflops"):
            assert positive(row[key]), key
        assert row["logits_finite"] and row["tokens"] > 1
        if sys.platform == "linux":  # the whole process: at least what the imports and the model took
            assert row["peak_rss_mb"] >= row["rss_after_model_mb"] >= row["rss_after_imports_mb"] > 100
    profiled = [row["profile_one_block"] for row in full["rows"] if "profile_one_block" in row]
    assert profiled and 0 < profiled[0]["matmul_share"] <= 1 and profiled[0]["top_ops_self_cpu_s"]

    memory = sections["training_memory"]
    for row in memory["rows"]:
        for key in ("vit_saved_mb_per_image", "adventurer_saved_mb_per_image", "adventurer_before_saved_mb_per_image",
                    "step_ms_now", "step_ms_before"):
            assert positive(row[key]), key
        # exact counts, not timings: the memory-lean mixer keeps a fraction of what the readable one keeps
        assert row["adventurer_saved_mb_per_image"] < 0.5 * row["adventurer_before_saved_mb_per_image"]
    assert isinstance(memory["memory_target_met"], bool) and isinstance(memory["speed_target_met"], bool)

    speed = sections["training_speed"]
    assert {(r["model"], r["variant"]) for r in speed["rows"]} >= {("adventurer_nano", "default"),
                                                                  ("adventurer_nano", "readable_mixer")}
    for row in speed["rows"]:
        for t in speed["threads"]:
            m = row[f"t{t}"]
            assert positive(m["img_per_s"]) and positive(m["matmul_gflops"]) and 0 < m["fraction_of_matmul"] < 1
            assert m["faults_per_step"] >= 0 and m["system_s_per_step"] >= 0
        assert positive(row["speedup"])
    assert speed["profile"]["ops"] and all(0 < op["share"] <= 1 for op in speed["profile"]["ops"])
    assert 0 < speed["profile"]["matmul_share"] < 1  # the matrix products' share of the profiled step

    markdown = (out / "results.md").read_text()
    assert results["command"] in markdown and machine["cpu_model"] in markdown
    for header in ("| model | patch | tokens |", "| length | training ms | inference ms |", "| image | patch | tokens |",
                   "| tokens | inference Q="):
        assert header in markdown
    assert "Best overall:" in markdown
    # user documents name no issue numbers (section 5 had "Targets (issue 13)")
    issue = re.search(r".{0,60}issue \d.{0,20}", markdown, re.IGNORECASE)
    assert issue is None, issue[0]
    assert "## 4. GPU" in markdown
    assert "## 5. Full scale on CPU" in markdown and "| model | image | patch | tokens | GFLOP |" in markdown
    assert "## 6. Training memory" in markdown and "Adv/ViT" in markdown
    assert "## 7. Training throughput" in markdown and "1 thr: of matmul" in markdown and "Where the time goes" in markdown
    assert "1 thr: system s/step" in markdown and "Matrix products (`aten::mm`" in markdown


def test_tiny_run_writes_every_section(tmp_path):
    run_suite(tmp_path, "--tiny", timeout=300)
    check_results(tmp_path, "--tiny")


def test_only_runs_the_named_sections(tmp_path):
    run_suite(tmp_path, "--tiny", "--only", "gpu", timeout=120)
    sections = json.loads((tmp_path / "results.json").read_text())["sections"]
    assert all("not_selected" in sections[name]
               for name in ("vit_vs_timm", "scan", "cost_growth", "full_scale", "training_memory", "training_speed"))
    assert not (tmp_path / "cost_growth.json").exists()


@pytest.mark.slow
def test_quick_run(tmp_path):
    """The real --quick profile (about 1.5 min on 2 CPU cores)."""
    run_suite(tmp_path, "--quick", timeout=600)
    check_results(tmp_path, "--quick")


def test_crossover_is_taken_after_the_last_point_where_vit_wins():
    # a noisy early point above 1 does not count; the crossover is interpolated in log-log
    result = crossover([16, 64, 256, 1024, 4096], [0.5, 1.2, 0.6, 0.8, 2.0])
    assert result["between"] == [1024, 4096] and result["earlier_points_above_1"] == [64]
    expected = math.exp(math.log(1024) + math.log(1 / 0.8) / math.log(2.0 / 0.8) * math.log(4))
    assert result["tokens"] == round(expected)
    assert crossover([16, 64], [0.5, 0.9])["tokens"] is None
    assert crossover([16, 64], [1.5, 2.0])["tokens"] is None


def test_gpu_correctness_check_has_a_threshold():
    """The GPU section's "correctness first" step refuses to time a variant whose numbers are off."""
    from benchmarks.gpu import MAX_REL_ERR, require_close

    assert require_close("ok", {"logits_rel_err": 0.01, "grad_rel_err": 0.02})
    for bad in ({"logits_rel_err": 2 * MAX_REL_ERR["logits"]}, {"grad_rel_err": float("nan")}):
        with pytest.raises(AssertionError, match="not timing a wrong computation"):
            require_close("variant", bad)


def test_the_commit_is_recorded_when_git_status_is_slow(monkeypatch):
    """A results file once recorded `git None`: a `git status` past its timeout threw the commit away."""
    from benchmarks import machine

    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    run = subprocess.run

    def status_times_out(args, **kwargs):
        if args[:2] == ["git", "status"]:
            raise subprocess.TimeoutExpired(args, kwargs.get("timeout"))
        return run(args, **kwargs)

    monkeypatch.setattr(machine.subprocess, "run", status_times_out)
    recorded = machine._git_commit()
    assert recorded == head.stdout.strip() + " (uncommitted changes unknown: TimeoutExpired)"
