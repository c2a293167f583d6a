"""The run folder: everything a training run writes, and how a stopped run finds its place again.

    run.json            config, its hash, library versions, device, git revision, command line
    metrics.jsonl       one JSON line per log / evaluation (MetricsLog)
    checkpoints/        step_NNNNNNN/ (model.safetensors + config.json + trainer_state.pt), latest.json
    model/              the final weights (the EMA weights when EMA is on), pixelvit.io.save_model
    result.json         written last: a run with result.json is finished (RunResult)

Every file is written atomically (pixelvit.io), and a checkpoint is switched to by replacing
latest.json in one rename, so whatever moment the process dies at, the folder names only complete
files. pixelvit.io.save_model refuses non-finite weights, so no checkpoint on disk holds NaN or inf.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import timm
import torch

from pixelvit._version import __version__
from pixelvit.cli import UserError
from pixelvit.distributed import Processes, describe_device
from pixelvit.io import atomic_write, atomic_write_json, read_model_files, save_model

TRAINER_STATE = "trainer_state.pt"
LATEST = "latest.json"


@dataclass
class RunResult:
    run_dir: str
    top1: float | None  # test top-1 (%) of the final weights (EMA weights when EMA is on); None: not a classifier
    eval_loss: float
    top1_raw: float | None  # without EMA, when EMA is on
    steps: int
    epochs: float
    wall_s: float  # training + evaluation time, summed over resumes
    images_per_s: float  # training throughput
    params: int
    tokens: int
    device: str
    world_size: int
    config: dict
    config_hash: str
    replicas_in_sync: bool | None = None  # DDP: all processes ended with identical weights
    cached: bool = False  # True: read from result.json, nothing was trained
    metrics: dict = field(default_factory=dict)  # every test metric of the task (pixelvit.tasks), final weights


class RunDirConflict(UserError, RuntimeError):
    """The run folder holds a run with a different config."""


def read_finished(run_dir: Path, digest: str) -> RunResult | None:
    """The stored result of a finished run with this config hash, else None (RunDirConflict if another)."""
    record = run_dir / "run.json"
    if record.exists():
        stored = json.loads(record.read_text())
        if stored["config_hash"] != digest:
            raise RunDirConflict(
                f"{run_dir} holds a run with another config (hash {stored['config_hash']}, this one {digest}); "
                "choose another --out or delete that folder"
            )
    result = run_dir / "result.json"
    if result.exists():
        return RunResult(**{**json.loads(result.read_text()), "cached": True})
    return None


# what a run writes into its folder; --restart deletes exactly these (anything else in the folder stays)
RUN_FILES = ("checkpoints", "result.json", "metrics.jsonl", "model", "run.json")


def clear_run(run_dir: Path) -> None:
    """Delete the run's checkpoints, weights and results (`pixelvit train --restart`): it trains from scratch."""
    for name in RUN_FILES:
        target = Path(run_dir) / name
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)


def write_run_record(run_dir: Path, record: dict, device: torch.device, processes: Processes):
    """run.json: what the run is (`record`) and where it ran (library versions, device, git revision)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir / "run.json", {**record, "environment": environment(device, processes)})


def finish_run(run_dir: Path, model, result: RunResult, extra: dict):
    """The final weights into model/, then result.json (the mark of a finished run), then no checkpoints."""
    save_model(model, run_dir / "model", extra=extra)
    atomic_write_json(run_dir / "result.json", dataclasses.asdict(result))
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # finished: model/ + result.json suffice


class MetricsLog:
    """metrics.jsonl: one JSON object per line; on resume, lines after the checkpoint are dropped.

    The final evaluation's line (`"final": true`) is dropped too: it shares the last checkpoint's step
    but is written after it, and a run killed before result.json evaluates again when resumed.
    """

    def __init__(self, path: Path, enabled: bool, resume_step: int):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            kept = [line for line in path.read_text().splitlines() if self._kept(line, resume_step)]
            with atomic_write(path, "w") as handle:
                handle.write("".join(line + "\n" for line in kept))

    @staticmethod
    def _kept(line: str, resume_step: int) -> bool:
        try:
            record = json.loads(line)
            return record["step"] <= resume_step and not record.get("final", False)
        except (json.JSONDecodeError, KeyError, TypeError):  # a line cut short when the process was killed
            return False

    def write(self, record: dict):
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------------
# Checkpoints: the model via pixelvit.io.save_model + the trainer state, switched to atomically
# ---------------------------------------------------------------------------------------------


def save_checkpoint(run_dir: Path, step: int, model, trainer_state: dict) -> Path:
    """checkpoints/step_NNNNNNN/ fully written, then latest.json switched to it, then older ones removed.

    latest.json is replaced in one rename, so it always names a complete checkpoint, whatever moment
    the process dies at. Non-finite weights raise pixelvit.io.NonFiniteWeights before anything is written.
    """
    folder = run_dir / "checkpoints" / f"step_{step:07d}"
    save_model(model, folder, extra={"step": step})
    with atomic_write(folder / TRAINER_STATE) as handle:
        torch.save(trainer_state, handle)
    atomic_write_json(run_dir / "checkpoints" / LATEST, {"step": step, "folder": folder.name})
    for old in (run_dir / "checkpoints").glob("step_*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return folder


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / LATEST
    if not pointer.exists():
        return None
    return run_dir / "checkpoints" / json.loads(pointer.read_text())["folder"]


def checkpoint_step(folder: Path) -> int:
    return int(folder.name.removeprefix("step_"))


def load_checkpoint(folder: Path, model) -> dict:
    """Load the weights into `model`; return the trainer state (optimizer, scheduler, EMA, RNG, step)."""
    _, state_dict = read_model_files(folder)
    model.load_state_dict(state_dict)
    return torch.load(folder / TRAINER_STATE, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------
# Random state: every global generator, seeded at the start of a run, saved in every checkpoint
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int):
    """Seed python's `random`, numpy's global generator (timm's Mixup/CutMix draw from it) and torch's
    (CPU and every CUDA device; drop path, dropout and initialisation draw from it)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def random_state() -> dict:
    """The global random generators as tensors and plain numbers (loadable with weights_only=True)."""
    _, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_random_state(state: dict):
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# The environment record
# ---------------------------------------------------------------------------------------------


def git_revision() -> str | None:
    root = Path(__file__).resolve().parents[1]
    try:
        revision = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return revision + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device, processes: Processes) -> dict:
    return {
        "pixelvit": __version__, "torch": torch.__version__, "timm": timm.__version__,
        "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": describe_device(device), "world_size": processes.world_size,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "git_revision": git_revision(), "command": sys.argv,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
