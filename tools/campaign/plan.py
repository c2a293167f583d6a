"""How long the rest takes: the pilot (images/s of each kind of run now), estimates, and `plan`'s listing."""

from __future__ import annotations

import json
import os
import time

from campaign import jobs
from campaign.folders import committed_rows, read_metrics, run_dir, state
from campaign.rows import finished_row
from campaign.workers import device_missing, log, one_thread, worker_of


def pilot(args) -> int:
    """How fast each kind of run is right now, on this machine, under its current load: a few steps of
    each into a temporary folder, images/s into results/.../pilot.json (plan's estimates start from it)."""
    import tempfile

    from pixelvit.train import train

    if device_missing():
        return 2
    one_thread()
    kinds = {}
    for job in jobs.queue():
        if job.method == "scale" or (job.method == "extend" and job.factor < 8):  # the rest cost what scale costs
            kinds.setdefault(jobs.kind(job), job)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pixelvit-pilot-") as tmp:
        for name, job in kinds.items():
            # fewer steps where a step is slow: the pilot measures a rate, not a result
            steps = args.steps if job.tokens <= 64 else max(10, args.steps // (2 if job.tokens <= 256 else 4))
            config = job.config(steps=steps, runs_dir=tmp, eval_every=0, checkpoint_every=0, eval_samples=256,
                                warmup_steps=None)  # a rate, not a result: a setting's long warmup would not fit
            started = time.perf_counter()
            result = train(config, progress=False)
            rows.append({"kind": name, "tokens": job.tokens, "steps": steps, "images_per_s": round(result.images_per_s, 2),
                         "wall_s": round(time.perf_counter() - started, 1), "load_1min": os.getloadavg()[0]})
            log(f"pilot {name}: {result.images_per_s:.1f} img/s (load {os.getloadavg()[0]:.1f})")
    for row in rows:
        row["hours_per_epoch"] = round(jobs.TRAIN_IMAGES / row["images_per_s"] / 3600, 2)
    import torch

    record = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "steps": args.steps, "batch_size": jobs.BUDGET.batch,
              "torch_threads": torch.get_num_threads(), "nice": os.nice(0), "cpu_count": os.cpu_count(),
              "note": "training images/s over the pilot's steps (no evaluation), 1 thread, under the "
                      "session's load (other helpers' tests on the same 2 cores)", "rows": rows}
    jobs.BUDGET.results.mkdir(parents=True, exist_ok=True)
    from pixelvit.io import atomic_write_json

    atomic_write_json(jobs.BUDGET.results / "pilot.json", record)
    print(json.dumps(record, indent=1))
    return 0


def pilot_speeds() -> dict[str, float]:
    """images/s by kind from the budget's pilot.json, else the speeds the budget assumes (jobs.BUDGETS)."""
    path = jobs.BUDGET.results / "pilot.json"
    if not path.exists():
        return dict(jobs.BUDGET.assumed_speeds)
    return {row["kind"]: row["images_per_s"] for row in json.loads(path.read_text())["rows"]}


def measured_speeds(committed: dict) -> dict[str, float]:
    """Training images/s of the finished runs, median by kind: they ran the whole budget on this machine,
    so they estimate the rest better than the pilot's 50 steps under whatever load the pilot met."""
    import statistics

    by_kind: dict[str, list[float]] = {}
    for job in jobs.queue():
        row = finished_row(job, committed)
        if row is not None and not row.get("source"):  # not a run reused from another campaign's code and load
            by_kind.setdefault(jobs.kind(job), []).append(float(row["images_per_s"]))
    return {name: statistics.median(values) for name, values in by_kind.items()}


def cost_ratio(job: jobs.Job) -> float:
    """How many times faster the job trains than the unchanged model at its patch size: the ratio of their
    forward FLOPs (pixelvit.costs), 1.0 for a job that changes no model field."""
    if not job.model_args:
        return 1.0
    from pixelvit.costs import estimate
    from pixelvit.models import get_config

    def flops(**fields) -> float:
        return estimate(get_config(job.model, img_size=jobs.IMG_SIZE, patch_size=job.patch, **fields))["flops"]

    return flops() / flops(**job.model_args)


def estimated_speed(job: jobs.Job, pilot: dict, measured: dict) -> float | None:
    """Training images/s to expect: finished runs of the same kind, or of the scaled kind with the same token
    count (an extended run costs what that one costs; a job that changes the model, its speed times
    cost_ratio); else the pilot's, times the median of how much faster the finished runs went than the
    pilot measured them (the load the pilot met is not the load now)."""
    own, same_tokens = jobs.kind(job), jobs.plain_kind(job)
    if own in measured:
        return measured[own]
    if same_tokens in measured:
        return measured[same_tokens] * cost_ratio(job)
    import statistics

    base = pilot.get(own) or (pilot[same_tokens] * cost_ratio(job) if pilot.get(same_tokens) else None)
    ratios = [measured[name] / pilot[name] for name in measured if pilot.get(name)]
    return base * statistics.median(ratios) if base and ratios else base


def hours_left(job: jobs.Job, steps_done: int, speed: float | None) -> float | None:
    if not speed:
        return None
    evals = job.epochs * 10_000 / (3 * speed)  # a test pass per epoch, forward only (~1/3 of a training step)
    return ((job.steps - steps_done) * jobs.BUDGET.batch / speed + evals * (1 - steps_done / job.steps)) / 3600


def current_speed(job: jobs.Job) -> float | None:
    """images/s of the job's latest logged training steps, None before the first line."""
    for record in reversed(read_metrics(run_dir(job))):
        if record.get("kind") == "train" and record.get("images_per_s"):
            return float(record["images_per_s"])
    return None


def finish_estimate(job: jobs.Job, steps_done: int) -> str:
    """', 22.0 img/s now, ends ~22:18 UTC' for a running job: at the speed it trains at now, on this machine
    under its present load, which is what decides whether it finishes within this session."""
    speed = current_speed(job)
    if not speed:
        return ""
    ends = time.gmtime(time.time() + hours_left(job, steps_done, speed) * 3600)
    return f", {speed:.1f} img/s now, ends ~{time.strftime('%H:%M', ends)} UTC"


def latest_evaluation(job: jobs.Job) -> str:
    """'epoch 1: 45.73 top-1' for an unfinished run that has evaluated: interim, never a result."""
    for record in reversed(read_metrics(run_dir(job))):
        if record.get("kind") == "eval" and record.get("top1") is not None:
            return f"epoch {record['epoch']:g}: {record['top1']:.2f} top-1"
    return ""


def plan(_args=None) -> int:
    committed = committed_rows()
    pilot, measured = pilot_speeds(), measured_speeds(committed)
    total = 0.0
    print(f"runs dir: {jobs.BUDGET.runs_dir}   budget {jobs.BUDGET.name}: {jobs.BUDGET.steps} steps x {jobs.BUDGET.batch} images "
          f"({jobs.BUDGET.epochs} epoch{'s' if jobs.BUDGET.epochs > 1 else ''}) per run"
          + (" unless its setting says otherwise" if any(j.setting for j in jobs.queue()) else ""))
    print("images/s: " + ("finished runs', else " if measured else "") + (
        f"{jobs.BUDGET.results / 'pilot.json'}" if (jobs.BUDGET.results / "pilot.json").exists()
        else "the budget's assumed speeds (jobs.BUDGETS: training step alone x 1/1.3)"
        if jobs.BUDGET.assumed_speeds else "no pilot.json yet: run `pilot`"))
    for index, job in enumerate(jobs.queue(), 1):
        status, steps = state(job, committed)
        left = hours_left(job, steps, estimated_speed(job, pilot, measured)) if status in ("partial", "pending") else 0.0
        total += left or 0.0
        hours = "?" if left is None else f"{left:5.1f} h"
        pid = worker_of(job) if status in ("partial", "pending") else None
        status = "running" if pid else status
        interim = latest_evaluation(job) if status in ("running", "partial") else ""
        notes = ([f"pid {pid}{finish_estimate(job, steps)}"] if pid else []) + ([interim] if interim else [])
        print(f"{index:2d}. {job.name:42s} {job.tokens:5d} tokens  {status:9s} {steps:5d}/{job.steps}  {hours}"
              + (f"  ({'; '.join(notes)})" if notes else ""))
    print(f"estimated single-thread hours left: {total:.1f} (at the images/s of finished runs; see estimated_speed); "
          "with `start --parallel 2` on an idle 2-core machine about half")
    return 0
