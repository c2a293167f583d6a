"""tools/cifar_campaign.py: the queue is the issue's design, statistics and verdicts are right, and a tiny
campaign (specks instead of CIFAR) trains, skips what finished, and reports only finished runs."""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TOOLS = Path(__file__).resolve().parents[1] / "tools"
SCRIPT = TOOLS / "cifar_campaign.py"


@pytest.fixture
def campaign(monkeypatch):
    """The campaign's modules (tools/campaign/), as campaign.jobs, campaign.workers, ...; the cpu budget."""
    monkeypatch.syspath_prepend(str(TOOLS))
    import campaign.figures
    import campaign.folders
    import campaign.jobs
    import campaign.plan
    import campaign.report
    import campaign.rows
    import campaign.workers

    monkeypatch.setattr(campaign.jobs, "BUDGET", campaign.jobs.BUDGETS["cpu"])  # undone after each test
    return campaign


def test_queue_covers_the_issue(campaign, monkeypatch):
    jobs = campaign.jobs.queue()
    assert len({job.name for job in jobs}) == len(jobs)
    for model in ("adventurer_nano", "vit_nano"):
        for patch in (8, 4, 2):
            assert {j.seed for j in jobs if j.model == model and j.patch == patch and j.method == "scale"} == {0, 1, 2}
    assert any(j.model == "adventurer_nano" and j.patch == 1 and j.seed == 0 for j in jobs)
    assert not any(j.model == "vit_nano" and j.patch == 1 for j in jobs)  # the CPU budget leaves it to a GPU
    # every extended run has a scaled run with the same token count (the ablation's pairs)
    scaled = {j.tokens for j in jobs if j.model == "adventurer_nano" and j.method == "scale"}
    extended = [j for j in jobs if j.method == "extend"]
    assert {j.tokens for j in extended} == {64, 256, 1024} <= scaled
    assert {j.tokens for j in jobs if j.method == "upsample"} == {64, 256}
    # cheap before expensive: every seed-0 patch-8/4/2 run comes before the first patch-1 run
    first_p1 = next(i for i, j in enumerate(jobs) if j.patch == 1)
    assert all(i < first_p1 for i, j in enumerate(jobs) if j.seed == 0 and j.method == "scale" and j.patch > 1)
    # the must-show's two 1,024-token runs next to each other (two workers train them side by side), ahead of
    # the ablation's other seeds
    names = [j.name for j in jobs]
    assert names.index("adventurer_nano-p8-extend8-seed0") == names.index("adventurer_nano-p1-seed0") + 1
    assert first_p1 < min(i for i, j in enumerate(jobs) if j.method == "extend" and j.seed > 0)
    monkeypatch.setattr(campaign.jobs, "BUDGET", campaign.jobs.BUDGETS["gpu"])
    assert any(j.model == "vit_nano" and j.patch == 1 for j in campaign.jobs.queue())


def test_every_run_gets_the_same_budget_and_its_own_folder(campaign):
    configs = [job.config() for job in campaign.jobs.queue()]
    assert {(c.steps, c.batch_size, c.lr, c.dataset, c.img_size) for c in configs} == {
        (campaign.jobs.BUDGET.steps, 64, 2e-3, "cifar10_jpeg", 32)}
    assert all(c.runs_dir.endswith("cifar10_nano") and ".cache" in c.runs_dir for c in configs)
    assert campaign.jobs.BUDGETS["gpu"].device == "cuda" and campaign.jobs.BUDGETS["gpu"].runs_dir.name == "cifar10_nano_gpu"


def row(model, patch, seed, top1, method="scale", factor=1):
    return {"name": f"{model}-{patch}-{method}{factor}-{seed}", "model": model, "method": method,
            "patch_size": patch, "factor": factor, "tokens": (32 // patch * factor) ** 2, "seed": seed,
            "top1": top1}


def test_summary_mean_sd_and_n(campaign):
    rows = [row("adventurer_nano", 8, s, v) for s, v in enumerate((40.0, 42.0, 44.0))]
    rows += [row("adventurer_nano", 4, 0, 50.0)]
    summary = {r["patch_size"]: r for r in campaign.rows.summarise(rows)}
    assert (summary[8]["n"], summary[8]["mean"], summary[8]["sd"]) == (3, 42.0, 2.0)  # sample sd (n - 1)
    assert (summary[4]["n"], summary[4]["mean"], summary[4]["sd"]) == (1, 50.0, "")  # no spread from one seed
    assert summary[8]["seeds"] == "0 1 2"


def test_verdicts_say_plainly_where_the_mean_does_not_rise(campaign):
    adv = "adventurer_nano"
    rows = [row(adv, 8, s, 40.0 + s) for s in range(3)] + [row(adv, 4, s, 39.0 + s) for s in range(3)]
    rows += [row(adv, 2, s, 45.0 + s) for s in range(3)]
    lines = campaign.report.rise_verdicts(campaign.rows.summarise(rows))
    assert "patch 8 -> 4" in lines[0] and "does NOT rise: falls by 1.00 points" in lines[0] and "within the spread" in lines[0]
    assert "rises by +6.00 points" in lines[1] and "larger than the spread" in lines[1]
    assert "pending" in lines[2]  # no patch-1 run yet: nothing is claimed

    rows += [row(adv, 8, 0, 41.0, "extend", 2), row(adv, 8, 0, 40.5, "extend", 4)]
    ablation = campaign.rows.extend_vs_scale_rows(campaign.rows.summarise(rows))
    assert {(r["method"], r["tokens"]) for r in ablation} == {
        ("scale", 16), ("extend", 16), ("scale", 64), ("extend", 64), ("scale", 256), ("extend", 256)}
    verdict = campaign.report.ablation_verdict(ablation)
    assert verdict.startswith("At 256 tokens") and "scaling beats extending by +5.50" in verdict


@pytest.mark.slow
def test_a_tiny_campaign_trains_skips_and_collects(campaign, tmp_path, monkeypatch, capsys):
    """specks at 16 px, 3 steps per run: every run trains once, a job another worker holds is passed by and
    shown as running, a second `run` trains only that one, and collect writes the CSVs, figures and a README that lists the run it was not given as pending."""
    monkeypatch.setattr(campaign.jobs, "DATASET", "specks")
    monkeypatch.setattr(campaign.jobs, "IMG_SIZE", 16)
    monkeypatch.setattr(campaign.jobs, "TRAIN_IMAGES", 64)
    monkeypatch.setenv("PIXELVIT_CAMPAIGN_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(campaign.jobs, "REPO", tmp_path)
    monkeypatch.setattr(campaign.jobs, "BUDGET", dataclasses.replace(campaign.jobs.BUDGETS["cpu"], epochs=1, batch=32))
    adv = "adventurer_nano"
    jobs = [campaign.jobs.Job(adv, 8, 0), campaign.jobs.Job(adv, 4, 0), campaign.jobs.Job(adv, 8, 0, "extend", 2),
            campaign.jobs.Job(adv, 8, 0, "upsample", 2)]
    pending = campaign.jobs.Job(adv, 2, 0)
    monkeypatch.setattr(campaign.jobs, "queue", lambda: jobs)
    small = {"eval_samples": 32, "model_args": {"embed_dim": 16, "depth": 1}}
    original = campaign.jobs.Job.config
    monkeypatch.setattr(campaign.jobs.Job, "config", lambda self, steps=None, **kw: original(self, steps, **{**small, **kw}))

    held = campaign.workers.claim(jobs[1])  # as if another worker were training patch 4
    assert campaign.workers.run(None) == 0
    assert not (campaign.folders.run_dir(jobs[1]) / "result.json").exists()  # passed by, not trained twice
    campaign.plan.plan()
    assert f"{jobs[1].name:42s}    16 tokens  running" in capsys.readouterr().out
    others = [job for job in jobs if job is not jobs[1]]
    stamps = [(campaign.folders.run_dir(job) / "result.json").stat().st_mtime_ns for job in others]
    campaign.workers.release(held)
    assert campaign.workers.run(None) == 0  # trains patch 4 only: the others finished
    assert stamps == [(campaign.folders.run_dir(job) / "result.json").stat().st_mtime_ns for job in others]
    results = [json.loads((campaign.folders.run_dir(job) / "result.json").read_text()) for job in jobs]
    # patch 8, patch 4, patch 8 extended 2x, patch 8 on 2x upsampled images (+ the class token)
    assert [r["tokens"] for r in results] == [5, 17, 17, 17]
    assert set(json.loads((tmp_path / "runs" / "manifest.json").read_text())) == {job.name for job in jobs}

    monkeypatch.setattr(campaign.jobs, "queue", lambda: jobs + [pending])
    assert campaign.report.collect() == 0
    out = tmp_path / "results" / "cifar10_nano"
    with open(out / "extend_vs_scale.csv") as handle:
        ablation = list(csv.DictReader(handle))
    assert {(r["method"], r["tokens"]) for r in ablation} == {("scale", "4"), ("extend", "4"), ("scale", "16"),
                                                            ("extend", "16"), ("upsample", "16")}
    with open(out / "runs.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 4  # the pending run has no row
    readme = (out / "README.md").read_text()
    assert "4 of 5 runs finished" in readme and f"| {pending.name} | 64 | pending |" in readme
    assert (out / "sweep.png").stat().st_size > 10_000 and (out / "extend_vs_scale.png").stat().st_size > 10_000


def test_a_job_lock_is_held_by_one_worker_and_freed_when_that_worker_is_killed(campaign, tmp_path, monkeypatch):
    monkeypatch.setenv("PIXELVIT_CAMPAIGN_RUNS", str(tmp_path))
    job = campaign.jobs.queue()[0]
    held = campaign.workers.claim(job)
    assert held is not None and campaign.workers.claim(job) is None  # a second worker (another open file) is refused
    assert campaign.workers.worker_of(job) == os.getpid()
    campaign.workers.release(held)
    assert campaign.workers.worker_of(job) is None
    campaign.workers.release(campaign.workers.claim(job))

    # another process claims the job and is killed mid-run: the lock goes with it
    code = (f"import sys, time; sys.path.insert(0, {str(TOOLS)!r}); from campaign import jobs, workers; "
            "h = workers.claim(jobs.queue()[0]); print('held' if h else 'refused', flush=True); time.sleep(60)")
    worker = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PIXELVIT_CAMPAIGN_RUNS": str(tmp_path)})
    try:
        assert worker.stdout.readline().strip() == "held"
        assert campaign.workers.claim(job) is None and campaign.workers.worker_of(job) == worker.pid
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    assert campaign.workers.worker_of(job) is None  # its pid is still in the file, but no such process
    again = campaign.workers.claim(job)
    assert again is not None
    campaign.workers.release(again)


def test_run_refuses_to_train_beside_an_older_exclusive_run(campaign, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIXELVIT_CAMPAIGN_RUNS", str(tmp_path))
    monkeypatch.setattr(campaign.jobs, "queue", lambda: pytest.fail("must stop before looking at the queue"))
    with open(tmp_path / "campaign.lock", "w") as older:  # what the campaign's first version's `run` held
        fcntl.flock(older, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert campaign.workers.run(None) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "older `run` holds" in error and "start again" in error


def test_plan_estimates_from_finished_runs_before_the_pilot(campaign, monkeypatch):
    adv = "adventurer_nano"
    done, same_kind, extended = campaign.jobs.Job(adv, 8, 0), campaign.jobs.Job(adv, 8, 1), campaign.jobs.Job(adv, 4, 0, "extend", 2)
    patch2, patch1 = campaign.jobs.Job(adv, 2, 0), campaign.jobs.Job(adv, 1, 0)
    monkeypatch.setattr(campaign.jobs, "queue", lambda: [done, same_kind, extended, patch2, patch1])
    rows = {done.name: {"images_per_s": "200.0"}, extended.name: {"images_per_s": "100.0"}}
    monkeypatch.setattr(campaign.plan, "finished_row", lambda job, committed: rows.get(job.name))
    measured = campaign.plan.measured_speeds({})
    assert measured == {"adventurer_nano p8": 200.0, "adventurer_nano p4 extend x2": 100.0}
    pilot = {"adventurer_nano p8": 50.0, "adventurer_nano p4 extend x2": 40.0, "adventurer_nano p2": 10.0,
             "adventurer_nano p1": 2.0}
    assert campaign.plan.estimated_speed(same_kind, pilot, measured) == 200.0  # the finished run's, not the pilot's
    assert campaign.plan.estimated_speed(campaign.jobs.Job(adv, 8, 0, "extend", 4), pilot, measured) == 10.0 * 3.25  # as patch 2
    # nothing finished at patch 1: the pilot's speed times the median of measured / pilot (4.0 and 2.5)
    assert campaign.plan.estimated_speed(patch1, pilot, measured) == 2.0 * 3.25
    assert campaign.plan.estimated_speed(patch1, {}, measured) is None and campaign.plan.hours_left(patch1, 0, None) is None
    steps, batch = campaign.jobs.BUDGET.steps, campaign.jobs.BUDGET.batch
    train_hours = steps * batch / 200.0 / 3600
    assert train_hours < campaign.plan.hours_left(same_kind, 0, 200.0) < 1.1 * train_hours  # + a test pass per epoch
    assert campaign.plan.hours_left(same_kind, steps // 2, 200.0) == pytest.approx(campaign.plan.hours_left(same_kind, 0, 200.0) / 2, rel=1e-3)


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="the kernel has no autogroups")
def test_a_detached_worker_is_low_priority_in_its_own_autogroup_too(campaign, tmp_path):
    """A new session gets its own autogroup, which the kernel weighs like any other: the worker's nice 15
    alone did not keep it from taking a full share of the CPU from the tests beside it."""
    with open(tmp_path / "log", "w") as log:
        worker = campaign.workers.detach([sys.executable, "-c", "import time; time.sleep(60)"], cwd=tmp_path,
                                 env=dict(os.environ), log=log)
    try:
        assert os.getsid(worker.pid) == worker.pid != os.getsid(0)  # its own session: outlives this shell
        assert Path(f"/proc/{worker.pid}/autogroup").read_text().split()[-1] == "15"
        expected = min(os.getpriority(os.PRIO_PROCESS, 0) + 15, 19)  # `nice -n 15` adds to this shell's nice
        for _ in range(100):  # `nice -n 15` sets it, then execs python: give it a moment
            if os.getpriority(os.PRIO_PROCESS, worker.pid) == expected:
                break
            time.sleep(0.05)
        assert os.getpriority(os.PRIO_PROCESS, worker.pid) == expected
    finally:
        worker.kill()
        worker.wait()


def test_the_gpu_budget_on_a_machine_without_one(campaign, tmp_path, monkeypatch, capsys):
    """plan works (folders are hashed for the budget's device, not this machine's); run, pilot and start stop
    in one line before any work (run and pilot raised a traceback from deep in the hash)."""
    monkeypatch.setenv("PIXELVIT_CAMPAIGN_RUNS", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    job = campaign.jobs.queue()[0]
    cpu_folder = campaign.folders.run_dir(job)
    from pixelvit.train import run_dir_of

    assert cpu_folder == Path(run_dir_of(job.config()))  # the CPU campaign's folders are unchanged

    monkeypatch.setattr(campaign.jobs, "BUDGET", campaign.jobs.BUDGETS["gpu"])
    assert campaign.plan.plan() == 0
    out = capsys.readouterr().out
    assert "vit_nano-p1-seed0" in out and "pending" in out
    gpu_folder = campaign.folders.run_dir(job)
    assert gpu_folder.name != cpu_folder.name  # another device and budget: another hash
    monkeypatch.setattr(campaign.jobs, "queue", lambda: pytest.fail("must stop before looking at the queue"))
    for command in (campaign.workers.run, campaign.plan.pilot, campaign.workers.start):
        assert command(None) == 2
        error = capsys.readouterr().err.strip()
        assert "\n" not in error and "no CUDA GPU" in error
    assert not (tmp_path / "campaign.lock").exists()


def test_plan_says_when_a_running_job_ends_at_its_current_speed(campaign, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PIXELVIT_CAMPAIGN_RUNS", str(tmp_path))
    job, other = campaign.jobs.Job("adventurer_nano", 1, 1), campaign.jobs.Job("adventurer_nano", 1, 2)  # not committed
    monkeypatch.setattr(campaign.jobs, "queue", lambda: [job, other])
    folder = campaign.folders.run_dir(job)
    folder.mkdir(parents=True)
    lines = [{"kind": "train", "step": 50, "images_per_s": 10.0}, {"kind": "train", "step": 100, "images_per_s": 64.0},
             {"kind": "eval", "step": 100, "epoch": 1.0, "top1": 20.0}]  # the latest train line counts, not the eval
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert campaign.plan.current_speed(job) == 64.0 and campaign.plan.current_speed(other) is None
    held = campaign.workers.claim(job)
    try:
        before = time.time()
        campaign.plan.plan()
        after = time.time()
    finally:
        campaign.workers.release(held)
    out = capsys.readouterr().out
    left = campaign.plan.hours_left(job, 0, 64.0) * 3600
    ends = {time.strftime("%H:%M", time.gmtime(t + left)) for t in (before, after)}
    assert any(f"(pid {os.getpid()}, 64.0 img/s now, ends ~{hhmm} UTC; epoch 1: 20.00 top-1)" in out for hhmm in ends)
    assert f"{other.name:42s}  1024 tokens  pending" in out and out.count("img/s now") == 1


def test_the_command_line_is_the_same_script_and_speaks_of_no_issue_numbers(campaign):
    """`python tools/cifar_campaign.py ...` (tools/README.md) still runs, now over the package beside it."""
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "{plan,run,start,pilot,collect}" in result.stdout
    assert "issue" not in result.stdout
    text = campaign.report.report([], [], [], [], {})
    assert text.startswith("# CIFAR-10 scaling campaign\n") and "issue" not in text


def test_every_committed_run_hashes_to_the_folder_it_was_trained_in(campaign):
    """runs.csv records each run's config hash, which names its folder: the code that resumes and collects
    the campaign must hash every job as the code that trained it did, or it would train them all again."""
    from pixelvit.run_id import config_hash

    committed = campaign.folders.committed_rows()
    assert len(committed) >= 20
    for job in campaign.jobs.queue():
        if job.name in committed:
            assert config_hash(job.config(), device_type="cpu", world_size=1) == committed[job.name]["config_hash"], job.name
