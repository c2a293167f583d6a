"""The patch-1 pilot (tools/campaign/patch1.py, `cifar_campaign.py --budget patch1`): each setting changes
exactly the factor it names, hashes stay put, the commands reproduce the runs, plan prices every run, collect
writes the gap table and figure from whatever has finished, and a tiny pilot stopped mid-run resumes exactly."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"

# the model config fields each factor may change, and the TrainConfig fields (model_args resolved into them)
FACTOR_FIELDS = {
    "baseline": set(),
    "learning rate": {"lr"},
    "warmup length": {"warmup_steps"},
    "budget": {"steps"},
    "depth at equal width": {"model.depth"},
    "depth at equal parameters": {"model.depth", "model.embed_dim"},
    "Mamba-2 state size (literature)": {"model.d_state"},
}


@pytest.fixture
def pilot(monkeypatch):
    """The campaign's modules with the patch1 budget selected (undone after each test)."""
    monkeypatch.syspath_prepend(str(TOOLS))
    import campaign.folders
    import campaign.jobs
    import campaign.patch1
    import campaign.plan
    import campaign.report
    import campaign.rows
    import campaign.workers

    monkeypatch.setattr(campaign.jobs, "BUDGET", campaign.jobs.BUDGETS["patch1"])
    return campaign


def resolved(config) -> dict:
    """Every field that decides the run: the TrainConfig's hashed fields and the model's config fields."""
    from pixelvit.config import NOT_HASHED
    from pixelvit.run_id import model_spec_of

    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_HASHED | {"model_args"}}
    fields.update({f"model.{k}": v for k, v in model_spec_of(config).fields.items()})
    return fields


def test_the_queue_is_every_setting_at_patch_2_then_1_cheapest_first(pilot):
    jobs, settings = pilot.jobs.queue(), pilot.patch1.SETTINGS
    assert len({j.name for j in jobs}) == len(jobs) == 2 * len(settings)
    assert [(j.setting, j.patch, j.seed) for j in jobs] == [(s.name, p, 0) for s in settings for p in (2, 1)]
    assert {s.factor for s in settings} == set(FACTOR_FIELDS)
    lrs = {j.config().lr for j in jobs if j.setting in ("base", "lr1e-3", "lr4e-3")}
    assert lrs == {1e-3, 2e-3, 4e-3}  # three learning rates
    steps = {j.setting: j.steps for j in jobs}
    assert (steps["base"], steps["epochs3"], steps["epochs10"]) == (781, 3 * 781, 10 * 781)  # 1 / 3 / 10 epochs
    assert jobs[0].setting == "base" and jobs[-1].setting == "epochs10"  # the baseline first, the 10 epochs last
    assert all(j.config().runs_dir.endswith("cifar10_patch1_pilot") for j in jobs)
    assert pilot.jobs.BUDGET.results.name == "cifar10_patch1_pilot"


def test_every_setting_differs_from_the_baseline_in_exactly_its_factor(pilot):
    from pixelvit.costs import estimate
    from pixelvit.models import get_config

    base = {j.patch: j for j in pilot.jobs.queue() if j.setting == "base"}
    for job in pilot.jobs.queue():
        ours, theirs = resolved(job.config()), resolved(base[job.patch].config())
        changed = {k for k in ours if ours[k] != theirs[k]}
        assert changed == FACTOR_FIELDS[pilot.patch1.setting(job.setting).factor], job.name
    params = {j.setting: estimate(get_config("adventurer_nano", patch_size=j.patch, **j.model_args))["params"]
              for j in pilot.jobs.queue() if j.patch == 1}
    assert 0.85 < params["depth8-w48"] / params["base"] < 1.15  # equal parameters (within what width steps allow)
    assert params["depth8"] / params["base"] > 1.7  # equal width: about twice the blocks' parameters


def test_pilot_hashes_are_pinned_and_epochs3_is_the_committed_campaign_runs(pilot):
    """A run's folder is named by its config hash: a change to these hashes would retrain the pilot's runs."""
    from pixelvit.run_id import config_hash

    digests = {j.name: config_hash(j.config(), device_type="cpu", world_size=1) for j in pilot.jobs.queue()}
    assert digests["adventurer_nano-p2-base-seed0"] == "1a2474240b7e"
    assert digests["adventurer_nano-p1-base-seed0"] == "bc863f1a10dc"
    assert digests["adventurer_nano-p1-dstate64-seed0"] == "fc1c41430b7f"
    assert digests["adventurer_nano-p1-depth8-w48-seed0"] == "b14ea7830473"
    assert digests["adventurer_nano-p1-epochs10-seed0"] == "76cea1c64b78"
    with open(pilot.jobs.REPO / "results" / "cifar10_nano" / "runs.csv") as handle:
        campaign = {row["name"]: row["config_hash"] for row in csv.DictReader(handle)}
    assert digests["adventurer_nano-p2-epochs3-seed0"] == campaign["adventurer_nano-p2-seed0"]
    assert digests["adventurer_nano-p1-epochs3-seed0"] == campaign["adventurer_nano-p1-seed0"]
    reused = pilot.patch1.reused_rows()
    assert set(reused) == {"adventurer_nano-p2-epochs3-seed0", "adventurer_nano-p1-epochs3-seed0"}
    assert all(r["source"].startswith("results/cifar10_nano/runs.csv") for r in reused.values())


def test_each_command_line_trains_exactly_its_run(pilot):
    from pixelvit.run_id import config_hash
    from pixelvit.train_args import build_parser, config_from_args

    for job in pilot.jobs.queue():
        line = pilot.patch1.command(job)
        assert line.startswith("pixelvit train ")
        words = [os.path.expanduser(w) for w in line.split()[2:]]
        config = config_from_args(build_parser().parse_args(words))
        assert config_hash(config, device_type="cpu", world_size=1) == config_hash(job.config(), device_type="cpu",
                                                                                   world_size=1), job.name
        assert config.runs_dir == job.config().runs_dir and config.eval_every == 781


def plan_lines(out: str) -> dict[str, str]:
    """`plan`'s numbered queue lines by job name."""
    return {line.split()[1]: line for line in out.splitlines() if line[:3].strip().rstrip(".").isdigit()}


def test_plan_prices_every_run_from_the_measured_step_speeds(pilot, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIXELVIT_CAMPAIGN_RUNS", str(tmp_path / "runs"))
    assert not (pilot.jobs.BUDGET.results / "pilot.json").exists()  # until a quiet-machine `pilot` writes it
    # as before the pilot's own first run finished: only the rows reused from the cpu campaign are committed
    # (the background worker commits rows to results/cifar10_patch1_pilot/runs.csv as its runs finish)
    monkeypatch.setattr(pilot.plan, "committed_rows", pilot.patch1.reused_rows)
    assert pilot.plan.plan() == 0
    out = capsys.readouterr().out
    lines = plan_lines(out)
    assert len(lines) == len(pilot.jobs.queue())
    trainer = 12.0 / 1.3  # patch 1: the training step's 12 img/s, 30 % more time for the trainer's data loading
    expected = (781 * 64 / trainer + 10_000 / (3 * trainer)) / 3600
    assert f"{expected:5.1f} h" in lines["adventurer_nano-p1-base-seed0"]
    assert "committed" in lines["adventurer_nano-p1-epochs3-seed0"]  # reused, nothing to train
    hours = {name: float(line.split()[-2]) for name, line in lines.items()}
    assert hours["adventurer_nano-p1-depth8-seed0"] == pytest.approx(2 * hours["adventurer_nano-p1-base-seed0"], rel=0.1)
    assert hours["adventurer_nano-p1-epochs10-seed0"] == pytest.approx(10 * hours["adventurer_nano-p1-base-seed0"], rel=0.05)
    total = float(out.split("estimated single-thread hours left: ")[1].split()[0])
    assert total == pytest.approx(sum(hours.values()), abs=0.1)


def test_plan_prices_the_rest_from_the_runs_that_finished(pilot, tmp_path, monkeypatch, capsys):
    """A finished run's own training speed (its row's images_per_s) prices the runs of its kind still to train."""
    monkeypatch.setenv("PIXELVIT_CAMPAIGN_RUNS", str(tmp_path / "runs"))
    finished = fabricated("adventurer_nano-p1-base-seed0", "base", 1, 48.0)
    finished["images_per_s"] = 20.0
    monkeypatch.setattr(pilot.plan, "committed_rows",
                        lambda: {**pilot.patch1.reused_rows(), finished["name"]: finished})
    assert pilot.plan.plan() == 0
    out = capsys.readouterr().out
    lines = plan_lines(out)
    assert "committed" in lines["adventurer_nano-p1-base-seed0"]
    expected = (781 * 64 / 20.0 + 10_000 / (3 * 20.0)) / 3600
    assert f"{expected:5.1f} h" in lines["adventurer_nano-p1-lr1e-3-seed0"]


def fabricated(name: str, setting: str, patch: int, top1: float) -> dict:
    return {"name": name, "setting": setting, "model": "adventurer_nano", "method": "scale", "patch_size": patch,
            "factor": 1, "tokens": (32 // patch) ** 2, "seed": 0, "steps": 781, "epochs": 1.0, "top1": top1,
            "eval_loss": 1.5, "top1_by_epoch": f"1:{top1:.2f}", "wall_s": 100.0, "images_per_s": 30.0,
            "device": "cpu (2 cores, 1 threads)", "config_hash": "0" * 12, "source": ""}


def test_collect_writes_the_gap_table_and_figure_from_what_has_finished(pilot, tmp_path, monkeypatch):
    """None finished, then three fabricated finished rows (committed, no run folders): only they enter."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    from test_figures import figure_problems

    monkeypatch.setattr(pilot.jobs, "REPO", tmp_path)
    monkeypatch.setenv("PIXELVIT_CAMPAIGN_RUNS", str(tmp_path / "runs"))
    out = tmp_path / "results" / "cifar10_patch1_pilot"
    assert pilot.report.collect() == 0  # zero runs finished
    with open(out / "gap.csv") as handle:
        assert [r["verdict"] for r in csv.DictReader(handle)] == ["pending: patch 2 and patch 1 not finished"] * 9
    assert "0 of 18 runs finished" in (out / "README.md").read_text() and (out / "gap.png").stat().st_size > 10_000

    rows = [fabricated("adventurer_nano-p2-base-seed0", "base", 2, 52.0),
            fabricated("adventurer_nano-p1-base-seed0", "base", 1, 46.0),
            fabricated("adventurer_nano-p2-lr1e-3-seed0", "lr1e-3", 2, 50.0)]
    pilot.rows.write_csv(rows, pilot.rows.PILOT_RUN_COLUMNS, out / "runs.csv")
    (tmp_path / "results" / "cifar10_nano").mkdir(parents=True)
    (tmp_path / "results" / "cifar10_nano" / "summary.csv").write_text(
        "model,method,patch_size,factor,tokens,n,mean,sd,min,max,seeds\n"
        "adventurer_nano,scale,2,1,256,3,64.27,0.5,63.88,64.92,0 1 2\n"
        "adventurer_nano,scale,4,1,64,3,63.82,1.0,62.58,64.52,0 1 2\n")
    assert pilot.report.collect() == 0
    with open(out / "gap.csv") as handle:
        gaps = {r["setting"]: r for r in csv.DictReader(handle)}
    assert float(gaps["base"]["gap"]) == -6.0 and (gaps["base"]["top1_p2"], gaps["base"]["top1_p1"]) == ("52.0", "46.0")
    assert "patch 1 loses by 6.00 (2 sd = 2.83)" in gaps["base"]["verdict"]  # sd 1.0 (the largest) x sqrt(2) x 2
    assert gaps["lr1e-3"]["gap"] == "" and gaps["lr1e-3"]["verdict"] == "pending: patch 1 not finished"
    with open(out / "runs.csv") as handle:
        assert [r["name"] for r in csv.DictReader(handle)] == [r["name"] for r in rows]
    readme = (out / "README.md").read_text()
    assert "3 of 18 runs finished" in readme and "![gap](gap.png)" in readme
    assert "| 1 | base | baseline |" in readme and "| finished (committed) | finished (committed) |" in readme
    assert "OMP_NUM_THREADS=1 pixelvit train --model adventurer_nano" in readme and "--lr 0.004" in readme
    assert "issue" not in readme.lower()
    gaps = pilot.rows.gap_rows(rows, 1.0)
    assert figure_problems(pilot.figures.gap_figure(gaps, 1.0)) == []


def test_gap_verdicts_say_when_a_setting_is_within_noise(pilot):
    rows = [fabricated("a", "base", 2, 52.0), fabricated("b", "base", 1, 46.0),
            fabricated("c", "lr1e-3", 2, 51.0), fabricated("d", "lr1e-3", 1, 50.0)]
    gaps = {g["setting"]: g for g in pilot.rows.gap_rows(rows, 1.0)}
    assert gaps["lr1e-3"]["gap"] == -1.0
    assert gaps["lr1e-3"]["verdict"].startswith("within noise of 0 (2 sd = 2.83): train more seeds")
    assert "narrows the baseline's gap by 5.00 (beyond 2 sd = 4.00)" in gaps["lr1e-3"]["verdict"]
    assert "no seed spread" in pilot.rows.gap_rows(rows, None)[0]["verdict"]


@pytest.mark.slow
def test_a_tiny_pilot_stops_resumes_exactly_and_collects(pilot, tmp_path, monkeypatch):
    """specks at 16 px, 8 steps per run, a tiny model: the worker is stopped (SIGTERM, as when a session ends)
    after its first checkpoint, a second `run` resumes that run and ends with the weights of a run never
    stopped, trains the rest, and collect reports the gap of the finished setting."""
    import pixelvit.train

    jobs = pilot.jobs
    monkeypatch.setattr(jobs, "DATASET", "specks")
    monkeypatch.setattr(jobs, "IMG_SIZE", 16)
    monkeypatch.setattr(jobs, "TRAIN_IMAGES", 256)
    monkeypatch.setattr(jobs, "REPO", tmp_path)
    monkeypatch.setenv("PIXELVIT_CAMPAIGN_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(jobs, "BUDGET", dataclasses.replace(jobs.BUDGETS["patch1"], batch=32))
    queue = [j for j in pilot.patch1.queue() if j.setting in ("base", "lr1e-3")]
    monkeypatch.setattr(jobs, "queue", lambda: queue)
    small = {"eval_samples": 32, "train_samples": 256, "checkpoint_every": 2, "model_args": {"embed_dim": 16, "depth": 1}}
    original = jobs.Job.config
    monkeypatch.setattr(jobs.Job, "config", lambda self, steps=None, **kw: original(self, steps, **{**small, **kw}))
    assert queue[0].steps == 8 and queue[0].config().lr == 2e-3 and queue[2].config().lr == 1e-3

    save = pixelvit.train.save_training_checkpoint
    sent = []

    def save_then_stop(*args, **kwargs):
        save(*args, **kwargs)
        if not sent:  # once: the session ends while the first run trains
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(pixelvit.train, "save_training_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):  # TrainingInterrupted, after the step it was in and a checkpoint
        pilot.workers.run(None)
    monkeypatch.setattr(pixelvit.train, "save_training_checkpoint", save)
    status, steps = pilot.folders.state(queue[0], {})
    assert status == "partial" and 0 < steps < 8
    assert pilot.folders.state(queue[1], {}) == ("pending", 0)
    assert pilot.workers.worker_of(queue[0]) is None  # the stopped worker let go of the job

    # the work tree a `start --commit-rows` worker commits each finished run's rows into; someone else's staged file
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "notes.txt").write_text("someone else's work\n")
    subprocess.run(["git", "add", "notes.txt"], cwd=tmp_path, check=True)
    monkeypatch.setenv("GIT_AUTHOR_NAME", "test")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "test@example.org")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "test")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "test@example.org")
    monkeypatch.setenv(pilot.workers.COMMIT_ENV, str(tmp_path))
    assert pilot.workers.run(None) == 0
    log = subprocess.run(git + ["log", "--format=%s", "--name-only"], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout
    subjects = [line for line in log.splitlines() if "finished (top-1" in line]
    assert len(subjects) == 4 and subjects[-1].startswith(f"results/cifar10_patch1_pilot: {queue[0].name} finished")
    assert "notes.txt" not in log  # committed: the results folder alone; the other file is still only staged
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=tmp_path, capture_output=True, text=True)
    assert staged.stdout.split() == ["notes.txt"]
    committed = subprocess.run(["git", "show", "HEAD:results/cifar10_patch1_pilot/runs.csv"], cwd=tmp_path,
                               capture_output=True, text=True, check=True).stdout
    assert len(committed.splitlines()) == 1 + 4  # every finished run's row, in git as the last one finished
    folder = pilot.folders.run_dir(queue[0])
    assert all((pilot.folders.run_dir(j) / "result.json").exists() for j in queue)
    never_stopped = pixelvit.train.train(dataclasses.replace(queue[0].config(), out=str(tmp_path / "reference")),
                                         progress=False)
    resumed = json.loads((folder / "result.json").read_text())
    assert (resumed["top1"], resumed["eval_loss"]) == (never_stopped.top1, never_stopped.eval_loss)

    def digest(path: Path) -> str:
        return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()

    assert digest(folder / "model") == digest(tmp_path / "reference" / "model")

    assert pilot.report.collect() == 0
    out = tmp_path / "results" / "cifar10_patch1_pilot"
    with open(out / "gap.csv") as handle:
        gaps = {r["setting"]: r for r in csv.DictReader(handle)}
    results = {j.patch: json.loads((pilot.folders.run_dir(j) / "result.json").read_text()) for j in queue[:2]}
    assert float(gaps["base"]["gap"]) == pytest.approx(round(results[1]["top1"] - results[2]["top1"], 2), abs=0.011)
    assert gaps["epochs10"]["verdict"].startswith("pending")
    with open(out / "runs.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 4
    assert "4 of 4 runs finished" in (out / "README.md").read_text()


def test_start_commit_rows_tells_each_worker_the_work_tree_to_commit_into(pilot, tmp_path, monkeypatch, capsys):
    import argparse

    monkeypatch.setenv("PIXELVIT_CAMPAIGN_RUNS", str(tmp_path))
    revision = "0123456789ab" + "0" * 28
    (tmp_path / "code" / revision[:12]).mkdir(parents=True)  # the pinned copy exists: nothing is archived
    (tmp_path / "code" / "PINNED").write_text(revision + "\n")
    started = []

    class Started:
        pid = 4242

    def detach(command, cwd, env, log, nice=15):
        started.append((command, env))
        return Started()

    monkeypatch.setattr(pilot.workers, "detach", detach)
    monkeypatch.setattr(pilot.workers.time, "sleep", lambda s: None)
    monkeypatch.delenv(pilot.workers.COMMIT_ENV, raising=False)
    for commit_rows in (True, False):
        args = argparse.Namespace(new_code=False, parallel=2, commit_rows=commit_rows)
        assert pilot.workers.start(args) == 0
    assert [c[-3:] for c, _ in started] == [["--budget", "patch1", "run"]] * 4
    assert [env.get(pilot.workers.COMMIT_ENV) for _, env in started] == [str(pilot.jobs.REPO)] * 2 + [None] * 2
    assert "commit 0123456789ab" in capsys.readouterr().out
