"""What the campaign runs: the budget every run gets, one Job per run, and the queue in the order it trains.

`BUDGET` is the campaign this process works on (`--budget cpu`, the default, `gpu`, or `patch1`: the
patch-1-vs-patch-2 pilot of campaign/patch1.py); every other module reads it as `jobs.BUDGET`, so main()
and the tests choose it in one place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # tools/campaign/jobs.py -> the repository
DATASET, IMG_SIZE = "cifar10_jpeg", 32
TRAIN_IMAGES = 50_000
MODELS = {"adventurer": "adventurer_nano", "vit": "vit_nano"}


@dataclass(frozen=True)
class Budget:
    """What every run of one campaign gets; the same for every model, patch size and seed."""

    name: str
    epochs: int
    batch: int
    lr: float  # AdamW peak; 10 % warmup, cosine to 1e-5, label smoothing 0.1, crop + flip (pixelvit.train)
    device: str
    vit_patch1: bool  # ViT at patch 1 (1,024 tokens of attention): only where a GPU makes it affordable
    workers: int = 0  # DataLoader workers (0: decode in the training process, best on 1-2 cores)
    folder: str = ""  # the runs dir's and the results folder's name; "": cifar10_nano[_NAME]
    # images/s by kind to plan with before results/<folder>/pilot.json exists (plan.pilot_speeds)
    assumed_speeds: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def steps(self) -> int:
        """Steps of a run that sets no steps of its own (every run but the pilot's budget settings)."""
        return self.epochs * (TRAIN_IMAGES // self.batch)

    @property
    def folder_name(self) -> str:
        return self.folder or f"cifar10_nano{'' if self.name == 'cpu' else '_' + self.name}"

    @property
    def runs_dir(self) -> Path:  # outside the work tree; kept on the machine between sessions when it is
        default = f"~/.cache/pixelvit/runs/{self.folder_name}"
        return Path(os.environ.get("PIXELVIT_CAMPAIGN_RUNS", default)).expanduser()

    @property
    def results(self) -> Path:
        return REPO / "results" / self.folder_name


STEP_OVERHEAD = 1.3  # a trainer's image costs ~1.3 training-step images: decoding, augmentation, batching


BUDGETS = {
    # 2 shared CPU cores, one thread: 3 epochs (2,343 steps of 64), 3x the committed one-epoch sweeps, with a
    # test pass after every epoch to show whether the ranking at epoch 1 holds. The pilot (results/cifar10_nano/
    # pilot.json: 2.2 img/s at patch 1 ... 161 img/s for ViT at patch 8, 1 thread under a load of ~7) puts the
    # queue up to the first patch-1 run at ~53 single-thread hours under that load: many sessions, so the
    # queue is ordered for what finishes first to be useful, and every run resumes where it stopped.
    "cpu": Budget("cpu", epochs=3, batch=64, lr=2e-3, device="cpu", vit_patch1=False),
    # a CUDA machine (bf16 autocast, pixelvit.train's default there): 30 epochs of 256, lr scaled by
    # sqrt(256 / 64), ViT at patch 1 too. Not yet run: no GPU numbers are committed.
    "gpu": Budget("gpu", epochs=30, batch=256, lr=4e-3, device="cuda", vit_patch1=True, workers=4),
    # the pilot of why patch 1 loses to patch 2 (campaign/patch1.py): the cpu recipe at 1 epoch (781 steps),
    # one factor changed per setting. Planned, until its own pilot.json exists, from the training step alone
    # (pixelvit's fast path, 1 thread, batch 64, adventurer_nano 167 / 45 / 12 img/s at patch 4 / 2 / 1: the
    # morning of 2026-12-07, a quick step timing at patch 4 and section 7 of that day's first benchmark run)
    # with the trainer's data loading on top (~30 % more time per image). The committed full benchmark of the
    # same afternoon gave 98 / 35 / 10 img/s: single-thread speed on this VM moves by up to a third, so the
    # hours are estimates until the pilot's own finished runs replace them.
    "patch1": Budget("patch1", epochs=1, batch=64, lr=2e-3, device="cpu", vit_patch1=False,
                     folder="cifar10_patch1_pilot",
                     assumed_speeds={f"adventurer_nano p{p}": round(rate / STEP_OVERHEAD, 1)
                                     for p, rate in ((4, 167.0), (2, 45.0), (1, 12.0))}),
}


BUDGET = BUDGETS["cpu"]  # main() selects with --budget


@dataclass(frozen=True)
class Job:
    """One run of the campaign. method: scale (an ordinary patch size), extend (patch 8, token grid
    interpolated `factor` times per side) or upsample (patch 8 on images upsampled `factor` times)."""

    model: str
    patch: int
    seed: int
    method: str = "scale"
    factor: int = 1  # extend: the token grid is interpolated this many times per side
    # a setting of the patch-1 pilot (campaign/patch1.py): its name and the TrainConfig fields it changes
    setting: str = ""
    overrides: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def tokens(self) -> int:
        """Patch tokens (the class token not counted, as in the paper's tables)."""
        return (IMG_SIZE // self.patch * self.factor) ** 2

    @property
    def name(self) -> str:
        kind = f"p{self.patch}" + (f"-{self.method}{self.factor}" if self.method != "scale" else "")
        return f"{self.model}-{kind}{'-' + self.setting if self.setting else ''}-seed{self.seed}"

    @property
    def steps(self) -> int:
        return self.overrides.get("steps", BUDGET.steps)

    @property
    def epochs(self) -> int:
        """Test passes the run makes (one per epoch of TRAIN_IMAGES)."""
        return max(1, self.steps // (TRAIN_IMAGES // BUDGET.batch))

    @property
    def model_args(self) -> dict:
        """The model config fields the job changes (depth, embed_dim, d_state ...): what its speed depends on."""
        return dict(self.overrides.get("model_args", {}))

    def config(self, steps: int | None = None, **overrides):
        """The run's TrainConfig: the budget's recipe, then the setting's overrides, then `steps` / `overrides`."""
        from pixelvit.config import TrainConfig

        b = BUDGET
        extra = {self.method: self.factor} if self.method != "scale" else {}  # extend=f or upsample=f
        values = dict(model=self.model, dataset=DATASET, img_size=IMG_SIZE, patch_size=self.patch,
                      steps=b.steps, batch_size=b.batch, lr=b.lr, seed=self.seed, device=b.device,
                      runs_dir=str(b.runs_dir), eval_every=TRAIN_IMAGES // b.batch, checkpoint_every=25,
                      num_workers=b.workers, **extra)
        values.update(self.overrides)
        if steps:
            values["steps"] = steps
        values.update(overrides)
        return TrainConfig(**values)


def queue() -> list[Job]:
    """Every run of the budget's campaign in training order (the patch1 budget: campaign.patch1.queue)."""
    if BUDGET.name == "patch1":
        from campaign import patch1

        return patch1.queue()
    return sweep_queue()


def sweep_queue() -> list[Job]:
    """Every run of the sweep campaign (cpu and gpu budgets), most useful first: complete cells cheaply (cheapest first within seed 0, then seeds 1
    and 2 of the cheap cells), the ablation's seed 0, patch 2's other seeds, patch 1 beside the ablation's
    1,024-token run, the ablation's other seeds, the rest."""
    adv, vit = MODELS["adventurer"], MODELS["vit"]
    jobs = [Job(vit, 8, 0), Job(vit, 4, 0), Job(adv, 8, 0), Job(adv, 4, 0), Job(vit, 2, 0), Job(adv, 2, 0)]
    jobs += [Job(model, p, s) for s in (1, 2) for model, p in ((vit, 8), (vit, 4), (adv, 8))]
    jobs += [Job(adv, 4, s) for s in (1, 2)] + [Job(vit, 2, s) for s in (1, 2)]
    jobs += [Job(adv, 8, 0, "extend", 2), Job(adv, 8, 0, "extend", 4)]
    jobs += [Job(adv, 2, s) for s in (1, 2)]
    # the two 1,024-token runs of the must-show (patch 1, and extending patch 8 eight times) side by side:
    # each is ~7 single-thread hours, so with two workers they finish sessions sooner than one after the other
    jobs += [Job(adv, 1, 0), Job(adv, 8, 0, "extend", 8)]
    jobs += [Job(adv, 8, s, "extend", f) for s in (1, 2) for f in (2, 4)]
    jobs += [Job(adv, 1, s) for s in (1, 2)]
    # upsampling the image and keeping the patch: scaling in disguise (pixelvit.extend's docstring), checked
    jobs += [Job(adv, 8, 0, "upsample", f) for f in (2, 4)]
    if BUDGET.vit_patch1:
        jobs += [Job(vit, 1, s) for s in (0, 1, 2)]
    return jobs


def kind(job: Job) -> str:
    """What a run's speed depends on: model, patch size, method and any model field it changes."""
    changed = "".join(f" {key}={value}" for key, value in sorted(job.model_args.items()))
    return f"{job.model} p{job.patch}" + (f" {job.method} x{job.factor}" if job.method != "scale" else "") + changed


def plain_kind(job: Job) -> str:
    """The unchanged model's scaled run with the job's token count (an extended run costs what that one costs)."""
    return f"{job.model} p{job.patch // job.factor}"
