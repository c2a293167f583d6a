"""The patch-1 pilot: why does Adventurer nano at patch 1 lose to patch 2 on CIFAR-10?

results/cifar10_nano, same recipe at every patch size, 3 epochs: patch 8 / 4 / 2 / 1 = 54.94 +- 0.57 /
63.82 +- 1.08 / 64.27 +- 0.57 / 57.98 (n = 3 / 3 / 3 / 1). The pilot changes one factor at a time of that
recipe, trains each setting at patch 2 and at patch 1 (seed 0), and reports the gap (patch 1 top-1 minus
patch 2 top-1) per setting: a factor that closes the gap is a candidate cause.

    python tools/cifar_campaign.py --budget patch1 plan      # every run, its state and estimated hours
    python tools/cifar_campaign.py --budget patch1 start --parallel 2 --commit-rows   # each finished row committed
    python tools/cifar_campaign.py --budget patch1 collect   # results/cifar10_patch1_pilot/

The baseline is the campaign's recipe at 1 epoch (781 steps of 64), where the gap is already there (epoch 1
of the committed runs: patch 2 51.09-51.73, patch 1 45.73). Every setting below differs from the baseline in
the TrainConfig fields its `overrides` name and nothing else (tests/test_patch1_pilot.py checks it); the queue
trains them in this order, cheapest and most informative first, patch 2 beside patch 1.

The literature factor is the Mamba-2 state size d_state: the nano models use 16 where Adventurer (and
mamba-ssm) use 64 (`mamba_d_state=64`, a constructor argument of wangf3014/Patch_Scaling's models_mamba.py),
and the Mamba-2 paper (Dao & Gu 2024) ties a larger state to better recall over long sequences. At patch 1
the class token, last of 1,025 tokens, sees the image only through that state: if the state is what runs
short, d_state 64 narrows the gap. The flip rule is not a factor at depth 4: the released rule (n // 2 == 1)
and the paper's (every two layers) flip the same layers 2 and 3 (pixelvit.models.adventurer.flipped_layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from campaign import jobs

MODEL = "adventurer_nano"
PATCHES = (2, 1)  # both sides of the gap; patch 2 first (the cheaper run)
EPOCH = jobs.TRAIN_IMAGES // 64  # steps of 64 images in one epoch: the baseline's (the patch1 budget's) steps


@dataclass(frozen=True)
class Setting:
    """One row of the pilot: the TrainConfig fields it changes from the baseline (`overrides`)."""

    name: str  # in the job names: adventurer_nano-p1-<name>-seed0
    factor: str  # which factor it varies (the gap table's `varies` column)
    change: str  # what it sets, in words
    overrides: dict = field(default_factory=dict, hash=False)
    seeds: tuple = (0,)  # one seed each; add seeds where the gap comes out within noise (README's verdicts)
    reuses: str = ""  # a results folder whose committed rows are these very runs (same config hash)


SETTINGS = [
    Setting("base", "baseline", "the cpu campaign's recipe at 1 epoch: lr 2e-3, warmup 10 % (78 steps), "
            "4 blocks x 64, d_state 16"),
    Setting("epochs3", "budget", "3 epochs (2,343 steps): the committed seed-0 runs of results/cifar10_nano",
            {"steps": 3 * EPOCH}, reuses="cifar10_nano"),
    Setting("lr1e-3", "learning rate", "peak lr 1e-3 (half)", {"lr": 1e-3}),
    Setting("warmup30", "warmup length", "warmup 234 steps (30 %, 3x the baseline's 78)", {"warmup_steps": 234}),
    Setting("lr4e-3", "learning rate", "peak lr 4e-3 (double)", {"lr": 4e-3}),
    Setting("dstate64", "Mamba-2 state size (literature)", "d_state 64, Adventurer's and mamba-ssm's default "
            "(nano: 16)", {"model_args": {"d_state": 64}}),
    Setting("depth8-w48", "depth at equal parameters", "8 blocks x 48 wide (3 heads of 32): 1.12x / 1.06x the "
            "baseline's parameters at patch 2 / 1", {"model_args": {"depth": 8, "embed_dim": 48}}),
    Setting("depth8", "depth at equal width", "8 blocks x 64 wide (1.9x the parameters)", {"model_args": {"depth": 8}}),
    Setting("epochs10", "budget", "10 epochs (7,810 steps)", {"steps": 10 * EPOCH}),
]


def setting(name: str) -> Setting:
    return next(s for s in SETTINGS if s.name == name)


def queue() -> list[jobs.Job]:
    """The settings in order, each at patch 2 then patch 1, seed by seed."""
    return [jobs.Job(MODEL, patch, seed, setting=s.name, overrides=s.overrides)
            for s in SETTINGS for seed in s.seeds for patch in PATCHES]


def reused_rows() -> dict[str, dict]:
    """Rows of other campaigns' committed runs.csv that are runs of this queue (same config hash): {job name: row}.

    The epochs3 setting is the cpu campaign's seed-0 patch 2 and patch 1 runs: the same TrainConfig in every
    hashed field (only the runs dir differs, which is not hashed), so they are not trained twice.
    """
    import csv

    from pixelvit.run_id import config_hash

    found = {}
    for s in (s for s in SETTINGS if s.reuses):
        path = jobs.REPO / "results" / s.reuses / "runs.csv"
        if not path.exists():
            continue
        with open(path) as handle:
            by_hash = {row["config_hash"]: row for row in csv.DictReader(handle)}
        for job in (j for j in queue() if j.setting == s.name):
            row = by_hash.get(config_hash(job.config(), device_type=jobs.BUDGET.device, world_size=1))
            if row is not None:
                found[job.name] = {**row, "name": job.name, "setting": job.setting,
                                   "source": f"results/{s.reuses}/runs.csv ({row['name']})"}
    return found


# TrainConfig fields whose `pixelvit train` option is not --<field with dashes>
OPTION_NAMES = {"augmentation": "--aug", "num_workers": "--workers"}
ALWAYS_WRITTEN = {"model", "dataset", "img_size", "patch_size", "steps", "batch_size", "lr", "seed", "device"}


def command(job: jobs.Job) -> str:
    """The `pixelvit train` command line that trains exactly this run (the same config hash, the same folder)."""
    import dataclasses

    from pixelvit.config import TrainConfig

    config, default = job.config(), TrainConfig()
    parts = ["pixelvit train"]
    for item in dataclasses.fields(TrainConfig):
        value = getattr(config, item.name)
        if (value == getattr(default, item.name) and item.name not in ALWAYS_WRITTEN) or item.name == "out":
            continue
        if item.name == "model_args":
            parts += [f"--model-arg {key}={val}" for key, val in value.items()]
        elif item.name == "runs_dir":
            parts.append(f"--runs-dir {value.replace(str(Path.home()), '~')}")
        elif isinstance(value, bool) or value is None:
            raise ValueError(f"{job.name}: no option written for {item.name}={value!r}")
        else:
            option = OPTION_NAMES.get(item.name, "--" + item.name.replace("_", "-"))
            parts.append(f"{option} {value:g}" if isinstance(value, float) else f"{option} {value}")
    return " ".join(parts)


def seed_sd() -> float | None:
    """The spread over seeds of one run's top-1: the largest sample sd of an Adventurer cell of the cpu
    campaign (results/cifar10_nano/summary.csv, 3 seeds, 3 epochs), or None where that file is missing."""
    import csv

    path = jobs.REPO / "results" / "cifar10_nano" / "summary.csv"
    if not path.exists():
        return None
    with open(path) as handle:
        spreads = [float(r["sd"]) for r in csv.DictReader(handle) if r["model"] == MODEL and r["sd"] not in ("", None)]
    return max(spreads) if spreads else None
