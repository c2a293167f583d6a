"""Where each run is on disk: its folder (kept in manifest.json), its state, its metrics, the committed rows.

Nothing here trains: these read the runs dir (and write manifest.json), for every command.
"""

from __future__ import annotations

import json
from pathlib import Path

from campaign import jobs


def manifest() -> dict[str, str]:
    """{job name: its run folder}, written by `run` as each job starts (runs dir / manifest.json).

    The folder name holds a hash of the whole config, model config included, so a later change to the
    code (a new config field, say) would give the same job another folder. The manifest keeps every job
    in the folder it started in, and `start` keeps running the code it started with (workers.start).
    """
    path = jobs.BUDGET.runs_dir / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def remember(job: jobs.Job, folder: Path):
    """Add the job's folder to manifest.json (read, change, write under a lock: workers share the file)."""
    import fcntl

    from pixelvit.io import atomic_write_json

    with open(jobs.BUDGET.runs_dir / "manifest.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        known = manifest()
        if job.name not in known:
            atomic_write_json(jobs.BUDGET.runs_dir / "manifest.json", {**known, job.name: str(folder)})


def run_dir(job: jobs.Job) -> Path:
    """The job's run folder. Hashed for the budget's device and one process, not this machine's, so `plan`
    and `collect` of the GPU campaign work on a machine without a GPU too."""
    from pixelvit.run_id import config_hash, run_dir_of

    known = manifest().get(job.name)
    if known:
        return Path(known)
    config = job.config()
    return Path(run_dir_of(config, config_hash(config, device_type=jobs.BUDGET.device, world_size=1)))


def committed_rows() -> dict[str, dict]:
    """Rows of the budget's results/.../runs.csv by job name: runs finished in an earlier session, perhaps on
    another machine (committed_row keeps those with the job's steps). The patch1 budget adds the runs it
    shares with the cpu campaign (campaign.patch1.reused_rows), its own rows first."""
    import csv

    rows = {}
    if jobs.BUDGET.name == "patch1":
        from campaign.patch1 import reused_rows

        rows.update(reused_rows())
    path = jobs.BUDGET.results / "runs.csv"
    if path.exists():
        with open(path) as handle:
            rows.update({row["name"]: row for row in csv.DictReader(handle)})
    return rows


def committed_row(job: jobs.Job, committed: dict) -> dict | None:
    """The job's committed row, if it is a run of the job's budget (as many steps)."""
    row = committed.get(job.name)
    return row if row is not None and int(row["steps"]) == job.steps else None


def state(job: jobs.Job, committed: dict) -> tuple[str, int]:
    """("done" | "committed" | "partial" | "pending", steps done)."""
    folder = run_dir(job)
    if (folder / "result.json").exists():
        return "done", job.steps
    if committed_row(job, committed) is not None:
        return "committed", job.steps
    pointer = folder / "checkpoints" / "latest.json"
    if pointer.exists():
        return "partial", int(json.loads(pointer.read_text())["step"])
    return "pending", 0


def read_metrics(folder: Path) -> list[dict]:
    """The run's metrics.jsonl (pixelvit.runs.MetricsLog): one record per training log line or evaluation."""
    path = folder / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def pinned_commit() -> str:
    path = jobs.BUDGET.runs_dir / "code" / "PINNED"
    return path.read_text().strip() if path.exists() else ""
