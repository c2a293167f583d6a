"""Train one model on one dataset: `train(TrainConfig(...)) -> RunResult`, and `pixelvit train`.

    pixelvit train --model vit_micro --dataset specks --img-size 16 --patch-size 2 --steps 300
    torchrun --nproc_per_node=2 -m pixelvit.train --model vit_micro --dataset cifar10 --steps 2000

The recipe is DeiT's, shrunk: AdamW (timm's `create_optimizer_v2`, no weight decay on norms, biases
and embeddings), linear warmup then cosine decay (timm's `CosineLRScheduler`, stepped every step),
label smoothing, gradient clipping, optional EMA of the weights (timm's `ModelEmaV3`) and optional
Mixup/CutMix (timm's `Mixup`). On CUDA it runs in bf16 autocast, with gradient checkpointing and
torch.compile on request. Budgets are counted in optimizer steps, so a sweep can give every patch
size the same number of training images.

A run lives in one folder (`runs/<model>-<dataset>-<size>px-p<patch>-<steps>steps-<hash>` unless
--out names one):

    run.json            config, its hash, library versions, device, git revision, command line
    metrics.jsonl       one JSON line per log / evaluation: loss, top-1, images/s, wall time
    checkpoints/        step_NNNNNNN/ (model.safetensors + config.json + trainer_state.pt), latest.json
    model/              the final weights (the EMA weights when EMA is on), pixelvit.io.save_model
    result.json         written last: a run with result.json is finished

Properties the tests check:

* Load if present: the same config again returns the stored result at once (same config -> same hash
  -> same folder).
* Exact resume: a run killed at any moment and started again continues from its last checkpoint and,
  on CPU, ends with bit-identical weights. A checkpoint holds the optimizer, scheduler and EMA state,
  the step, and the random generators of torch, numpy and python; the data order is a function of
  (seed, epoch) (pixelvit.data.loading), so the resumed run rebuilds the epoch and skips ahead.
* DDP: under torchrun each process takes 1/N of every global batch; the result matches one process
  with the same global batch, and the replicas are checked to hold identical weights at the end.
* A loss (or gradient norm) that is NaN or infinite stops the run before the bad update, naming the
  step and the last good checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
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
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from pixelvit.io import atomic_write, atomic_write_json, read_model_files, save_model

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    model: str = "vit_micro"
    dataset: str = "specks"
    img_size: int | None = None  # None: the dataset's native size (specks 16, CIFAR 32)
    patch_size: int | None = None  # None: the model's default
    model_args: dict = field(default_factory=dict)  # config overrides, e.g. {"embed_dim": 64, "depth": 4}
    steps: int = 300  # optimizer steps; the budget sweeps keep equal across patch sizes
    batch_size: int = 128  # global: split across DDP processes
    lr: float = 1e-3  # peak learning rate for this global batch
    min_lr: float = 1e-5  # where the cosine ends
    warmup_steps: int | None = None  # None: 10 % of the steps
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    mixup: float = 0.0  # Mixup alpha (0 = off)
    cutmix: float = 0.0  # CutMix alpha (0 = off)
    augmentation: str | None = None  # none | light | timm; None: the dataset's default
    ema_decay: float = 0.0  # EMA of the weights (0 = off); top-1 is then measured on the EMA weights
    clip_grad: float = 1.0  # max gradient norm (0 = no clipping)
    drop_path: float = 0.0  # stochastic depth rate of the last block
    seed: int = 0
    train_samples: int | None = None  # use only the first N training images (None: all)
    eval_samples: int | None = None  # evaluate on the first N test images (None: all)
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    grad_checkpointing: bool = False  # recompute activations in backward: less memory, ~30 % slower
    compile: bool = False  # torch.compile the model
    init_from: str | None = None  # a model folder to start from (multi-stage: the previous stage's model/)
    # ---- below: where and how often; they do not change the trained weights, so not in the hash ----
    out: str | None = None  # run folder; None: <runs_dir>/<name>-<hash>
    runs_dir: str = "runs"
    data_root: str | None = None  # dataset cache root (default $PIXELVIT_DATA or ~/.cache/pixelvit)
    eval_every: int = 0  # evaluate every N steps (0: only at the end)
    checkpoint_every: int = 100  # also at the end of every epoch
    log_every: int = 50
    num_workers: int = 0  # DataLoader workers; 0 is fastest for small in-memory images on 1-2 cores


NOT_HASHED = {"out", "runs_dir", "data_root", "eval_every", "checkpoint_every", "log_every", "num_workers"}


def config_hash(config: TrainConfig) -> str:
    """12 hex digits identifying everything that changes the trained weights."""
    fields = {k: v for k, v in dataclasses.asdict(config).items() if k not in NOT_HASHED}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_name(config: TrainConfig) -> str:
    size = f"{config.img_size}px" if config.img_size else "native"
    patch = f"p{config.patch_size}" if config.patch_size else "pdefault"
    return f"{config.model}-{config.dataset.replace(':', '_').replace('/', '_')}-{size}-{patch}-" \
           f"{config.steps}steps-{config_hash(config)}"


def run_dir_of(config: TrainConfig) -> Path:
    return Path(config.out) if config.out else Path(config.runs_dir) / run_name(config)


@dataclass
class RunResult:
    run_dir: str
    top1: float  # test top-1 (%) of the final weights (EMA weights when EMA is on)
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


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the run stopped before the bad update."""


class RunDirConflict(RuntimeError):
    """The run folder holds a run with a different config."""


# ---------------------------------------------------------------------------------------------
# Where the run happens: processes, device, environment record
# ---------------------------------------------------------------------------------------------


@dataclass
class Processes:
    """This process's place among the DDP processes torchrun started (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Processes:
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def start(self, device: torch.device) -> bool:
        """Join the process group if needed; True when this call created it (and so must destroy it)."""
        if not self.distributed or dist.is_initialized():
            return False
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        return True

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def sum(self, values: list[float], device) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, obj) -> list:
        if not self.distributed:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered


def pick_device(name: str, processes: Processes) -> torch.device:
    if name == "auto":
        name = f"cuda:{processes.local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


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
    import timm

    import pixelvit

    return {
        "pixelvit": pixelvit.__version__, "torch": torch.__version__, "timm": timm.__version__,
        "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": describe_device(device), "world_size": processes.world_size,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "git_revision": git_revision(), "command": sys.argv,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def build_model(config: TrainConfig, num_classes: int, img_size: int):
    """A fresh model (seeded), or the model in `init_from` resized to this run's image/patch size."""
    from pixelvit.models import create_model, model_from_config

    if config.init_from is None:
        torch.manual_seed(config.seed)
        overrides = dict(config.model_args)
        if config.drop_path:
            overrides["drop_path_rate"] = config.drop_path
        return create_model(config.model, img_size=img_size, patch_size=config.patch_size,
                            num_classes=num_classes, **overrides)

    meta, state = read_model_files(config.init_from)
    model = model_from_config(meta["arch"], meta["config"])
    model.load_state_dict(state)
    if model.config.num_classes != num_classes:
        raise ValueError(f"{config.init_from} has {model.config.num_classes} classes, "
                         f"{config.dataset} has {num_classes}")
    patch_size = config.patch_size or model.config.patch_size
    if (model.config.img_size, model.config.patch_size) != (img_size, patch_size):
        from pixelvit.resample import resize_model  # position (and patch) embeddings resampled

        model = resize_model(model, img_size=img_size, patch_size=patch_size)
    return model


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# Checkpoints: model via pixelvit.io.save_model + trainer state, switched to atomically
# ---------------------------------------------------------------------------------------------
TRAINER_STATE = "trainer_state.pt"
LATEST = "latest.json"


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


def save_checkpoint(run_dir: Path, step: int, model, trainer_state: dict) -> Path:
    """checkpoints/step_NNNNNNN/ fully written, then latest.json switched to it, then older ones removed.

    latest.json is replaced in one rename, so it always names a complete checkpoint, whatever moment
    the process dies at.
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


def load_checkpoint(folder: Path, model) -> dict:
    """Load the weights into `model`; return the trainer state (optimizer, scheduler, EMA, RNG, step)."""
    _, state_dict = read_model_files(folder)
    model.load_state_dict(state_dict)
    return torch.load(folder / TRAINER_STATE, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model, loader, autocast, processes: Processes, device) -> dict:
    """Test loss (no label smoothing) and top-1 (%) over every test image, summed over processes."""
    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for images, labels in loader:
        with autocast():
            logits = model(images)
        loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
        correct += (logits.argmax(dim=1) == labels).sum().item()
        count += labels.numel()
    model.train(was_training)
    loss_sum, correct, count = processes.sum([loss_sum, correct, count], device)
    return {"eval_loss": loss_sum / count, "top1": 100.0 * correct / count, "eval_images": int(count)}


def replicas_in_sync(model, processes: Processes) -> bool:
    """Do all DDP processes hold exactly the same weights? (Broadcast rank 0's and compare.)"""
    if not processes.distributed:
        return True
    largest = torch.zeros((), dtype=torch.float64, device=next(model.parameters()).device)
    for tensor in model.state_dict().values():
        reference = tensor.detach().clone()
        dist.broadcast(reference, src=0)
        largest = torch.maximum(largest, (reference.double() - tensor.double()).abs().max())
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    return largest.item() == 0.0


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


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


class MetricsLog:
    """metrics.jsonl: one JSON object per line; on resume, lines after the checkpoint are dropped."""

    def __init__(self, path: Path, enabled: bool, resume_step: int):
        self.path, self.enabled = path, enabled
        if enabled and path.exists():
            kept = [line for line in path.read_text().splitlines() if self._step(line) <= resume_step]
            with atomic_write(path, "w") as handle:
                handle.write("".join(line + "\n" for line in kept))

    @staticmethod
    def _step(line: str) -> float:
        try:
            return json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):  # a line cut short when the process was killed
            return math.inf

    def write(self, record: dict):
        if self.enabled:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")


def train(config: TrainConfig, progress: bool = True) -> RunResult:
    """Train (or resume, or just load) the run `config` describes; see the module docstring."""
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    from timm.utils import ModelEmaV3

    from pixelvit.data import (
        ArrayImageDataset,
        EpochBatchSampler,
        EvalBatchSampler,
        default_augmentation,
        default_img_size,
        load_split,
        make_loader,
        train_transform,
    )

    processes = Processes.from_env()
    digest = config_hash(config)
    run_dir = run_dir_of(config)
    finished = read_finished(run_dir, digest)
    if finished is not None:
        return finished

    device = pick_device(config.device, processes)
    owns_group = processes.start(device)
    try:
        # ---- data: rank 0 builds the array cache first, the others then read it ----
        img_size = config.img_size or default_img_size(config.dataset)
        if not processes.main:
            processes.barrier()  # wait until rank 0 has built the array cache, then read it
        arrays = {split: load_split(config.dataset, split, img_size, config.data_root,
                                    progress=progress and processes.main) for split in ("train", "test")}
        if processes.main:
            processes.barrier()
        train_arrays = arrays["train"].subset(config.train_samples)
        test_arrays = arrays["test"].subset(config.eval_samples)
        augmentation = config.augmentation or default_augmentation(config.dataset)
        train_set = ArrayImageDataset(train_arrays, train_transform(augmentation, img_size), seed=config.seed)
        test_set = ArrayImageDataset(test_arrays)
        steps_per_epoch = len(train_arrays) // config.batch_size

        # ---- model, optimizer, schedule, EMA ----
        model = build_model(config, train_arrays.num_classes, img_size).to(device)
        if config.grad_checkpointing:
            model.set_grad_checkpointing(True)
        optimizer = create_optimizer_v2(model, opt="adamw", lr=config.lr, weight_decay=config.weight_decay)
        warmup = config.warmup_steps if config.warmup_steps is not None else config.steps // 10
        scheduler = CosineLRScheduler(optimizer, t_initial=max(1, config.steps - warmup), lr_min=config.min_lr,
                                      warmup_t=warmup, warmup_lr_init=config.lr * 0.01, warmup_prefix=True,
                                      t_in_epochs=False)
        ema = ModelEmaV3(model, decay=config.ema_decay, use_warmup=True) if config.ema_decay else None
        mixup = (Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.label_smoothing,
                       num_classes=train_arrays.num_classes) if config.mixup or config.cutmix else None)
        criterion = SoftTargetCrossEntropy() if mixup else torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        params, tokens = count_params(model), int(model.num_tokens)

        # ---- resume from the last checkpoint, if this run has one ----
        step, elapsed, trained_images, trained_s = 0, 0.0, 0, 0.0
        checkpoint = latest_checkpoint(run_dir)
        resumed_state = None
        if checkpoint is not None:
            resumed_state = load_checkpoint(checkpoint, model)
            if resumed_state["config_hash"] != digest:
                raise RunDirConflict(f"{checkpoint} belongs to a run with another config")
            optimizer.load_state_dict(resumed_state["optimizer"])
            scheduler.load_state_dict(resumed_state["scheduler"])
            if ema is not None:
                ema.module.load_state_dict(resumed_state["ema"])
            step, elapsed = resumed_state["step"], resumed_state["elapsed_s"]
            trained_images, trained_s = resumed_state["trained_images"], resumed_state["trained_s"]
            if resumed_state["steps_per_epoch"] != steps_per_epoch:
                raise RunDirConflict(f"{checkpoint} was made with {resumed_state['steps_per_epoch']} steps per epoch")
        scheduler.step_update(step)

        if processes.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / "run.json", {
                "config": dataclasses.asdict(config), "config_hash": digest, "img_size": img_size,
                "augmentation": augmentation, "params": params, "tokens": tokens,
                "environment": environment(device, processes), "resumed_from_step": step,
            })
        metrics = MetricsLog(run_dir / "metrics.jsonl", processes.main, step)

        train_model = model
        if processes.distributed:
            from torch.nn.parallel import DistributedDataParallel

            train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if config.compile:
            train_model = torch.compile(train_model)
        use_amp = config.amp and device.type == "cuda"

        def autocast():
            return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp)

        test_loader = make_loader(test_set, EvalBatchSampler(len(test_set), 256, processes.rank, processes.world_size),
                                  device, config.num_workers)

        def trainer_state() -> dict:
            return {
                "step": step, "epoch": step // steps_per_epoch, "batch_in_epoch": step % steps_per_epoch,
                "steps_per_epoch": steps_per_epoch, "seed": config.seed, "config_hash": digest,
                "elapsed_s": elapsed + (time.perf_counter() - started), "trained_images": trained_images,
                "trained_s": trained_s, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "ema": ema.module.state_dict() if ema is not None else None,
                "rng_by_rank": processes.gather(random_state()),  # every process's generators
            }

        def checkpoint_now() -> Path | None:
            state = trainer_state()  # every process takes part (gathers the generators)
            folder = save_checkpoint(run_dir, step, model, state) if processes.main else None
            processes.barrier()
            return folder

        def diverged(what: str, value: float) -> TrainingDiverged:
            last = latest_checkpoint(run_dir)
            where = (f"the last good checkpoint is {last} (step {json.loads((last.parent / LATEST).read_text())['step']}); "
                     "run again with a lower --lr (or more warmup) to resume from it"
                     if last else "no checkpoint was written yet")
            return TrainingDiverged(f"{what} is {value} at step {step + 1} (epoch {step // steps_per_epoch}) of "
                                    f"{run_dir}; stopped before applying that update, {where}.")

        # the generators last: everything above may draw from them, the resumed run must not notice
        if resumed_state is not None:
            set_random_state(resumed_state["rng_by_rank"][min(processes.rank, len(resumed_state["rng_by_rank"]) - 1)])

        started = time.perf_counter()
        bar = tqdm(total=config.steps, initial=step, desc=run_dir.name[:40], unit="step",
                   disable=not (progress and processes.main), dynamic_ncols=True)
        window_loss, window_steps, window_images, window_s = 0.0, 0, 0, 0.0
        step_clock = time.perf_counter()
        train_model.train()
        while step < config.steps:
            epoch, first_batch = divmod(step, steps_per_epoch)
            sampler = EpochBatchSampler(len(train_set), config.batch_size, config.seed, epoch, first_batch,
                                        processes.rank, processes.world_size)
            for images, labels in make_loader(train_set, sampler, device, config.num_workers):
                targets = labels
                if mixup is not None:
                    images, targets = mixup(images, labels)
                with autocast():
                    logits = train_model(images)
                loss = criterion(logits.float(), targets)
                local_loss = loss.item()
                # the loss of the whole global batch (the mean over processes), and whether any was bad
                loss_sum, bad = processes.sum([local_loss, 0.0 if math.isfinite(local_loss) else 1.0], device)
                loss_value = loss_sum / processes.world_size
                if bad:
                    raise diverged("the training loss", local_loss if not math.isfinite(local_loss) else loss_value)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.clip_grad:
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad).item()
                    if not math.isfinite(grad_norm):
                        raise diverged("the gradient norm", grad_norm)
                optimizer.step()
                step += 1
                scheduler.step_update(step)
                if ema is not None:
                    ema.update(model, step=step)

                # throughput counts loading + training time, not evaluation or checkpoint time
                seconds = time.perf_counter() - step_clock
                trained_s += seconds
                trained_images += config.batch_size
                window_loss, window_steps, window_images = window_loss + loss_value, window_steps + 1, window_images + config.batch_size
                window_s += seconds
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", refresh=False)
                end_of_epoch = step % steps_per_epoch == 0
                if step % config.log_every == 0 or end_of_epoch or step == config.steps:
                    metrics.write({"kind": "train", "step": step, "epoch": step / steps_per_epoch,
                                   "loss": window_loss / window_steps, "lr": optimizer.param_groups[0]["lr"],
                                   "images_per_s": window_images / window_s,
                                   "wall_s": elapsed + time.perf_counter() - started})
                    window_loss, window_steps, window_images, window_s = 0.0, 0, 0, 0.0
                if config.eval_every and step % config.eval_every == 0 and step < config.steps:
                    record = evaluate(ema.module if ema else model, test_loader, autocast, processes, device)
                    metrics.write({"kind": "eval", "step": step, "epoch": step / steps_per_epoch, **record,
                                   "wall_s": elapsed + time.perf_counter() - started})
                if step < config.steps and (end_of_epoch or (config.checkpoint_every and step % config.checkpoint_every == 0)):
                    checkpoint_now()
                step_clock = time.perf_counter()
                if step >= config.steps:
                    break
        bar.close()

        # ---- final evaluation, weights and result ----
        final = evaluate(ema.module if ema else model, test_loader, autocast, processes, device)
        raw = evaluate(model, test_loader, autocast, processes, device)["top1"] if ema else None
        in_sync = replicas_in_sync(model, processes) if processes.distributed else None
        wall_s = elapsed + time.perf_counter() - started
        metrics.write({"kind": "eval", "step": step, "epoch": step / steps_per_epoch, **final,
                       "top1_raw": raw, "wall_s": wall_s})
        result = RunResult(
            run_dir=str(run_dir), top1=final["top1"], eval_loss=final["eval_loss"], top1_raw=raw, steps=step,
            epochs=step / steps_per_epoch, wall_s=wall_s, images_per_s=trained_images / max(trained_s, 1e-9),
            params=params, tokens=tokens, device=describe_device(device), world_size=processes.world_size,
            config=dataclasses.asdict(config), config_hash=digest, replicas_in_sync=in_sync,
        )
        if processes.main:
            save_model(ema.module if ema else model, run_dir / "model",
                       extra={"top1": result.top1, "dataset": config.dataset, "steps": step, "ema": bool(ema)})
            atomic_write_json(run_dir / "result.json", dataclasses.asdict(result))
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # finished: model/ + result.json suffice
        processes.barrier()
        return result
    finally:
        if owns_group:
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# Multi-stage training: low resolution first, then fine-tune at a higher one
# ---------------------------------------------------------------------------------------------


@dataclass
class Stage:
    img_size: int
    steps: int
    patch_size: int | None = None  # None: keep the run's patch size

    @classmethod
    def parse(cls, text: str) -> Stage:
        """"16:200" (16 px for 200 steps) or "32:100:2" (32 px, 100 steps, patch size 2)."""
        parts = [int(p) for p in text.split(":")]
        if len(parts) not in (2, 3):
            raise ValueError(f"a stage is IMG_SIZE:STEPS or IMG_SIZE:STEPS:PATCH_SIZE, not {text!r}")
        return cls(*parts)


def train_stages(config: TrainConfig, stages: list[Stage], progress: bool = True) -> list[RunResult]:
    """Train stage 1 from scratch, then each later stage from the previous stage's final weights.

    The paper pre-trains at a low resolution and fine-tunes at the target one; between stages the
    position embedding is resampled to the new token grid (pixelvit.resample.resize_model). Each stage
    is an ordinary run with its own folder, so finished stages are reused and a stopped stage resumes.
    """
    results, init_from = [], config.init_from
    for stage in stages:
        stage_config = dataclasses.replace(
            config, img_size=stage.img_size, steps=stage.steps, patch_size=stage.patch_size or config.patch_size,
            init_from=init_from, out=None,
        )
        result = train(stage_config, progress=progress)
        results.append(result)
        init_from = str(Path(result.run_dir) / "model")
    return results


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def parse_value(text: str):
    """'64' -> 64, '0.1' -> 0.1, 'true' -> True, anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog="pixelvit train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=defaults.model, help="a name from pixelvit.models.list_models()")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field, e.g. --model-arg embed_dim=64 (repeatable)")
    p.add_argument("--dataset", default=defaults.dataset,
                   help="specks | cifar10 | cifar100 | cifar10_jpeg | folder:<path>")
    p.add_argument("--img-size", type=int, default=None, help="default: the dataset's native size")
    p.add_argument("--patch-size", type=int, default=None, help="default: the model's")
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument("--stages", nargs="+", default=None, metavar="IMG:STEPS[:PATCH]",
                   help="multi-stage training, e.g. --stages 16:200 32:100 (overrides --img-size/--steps)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="global batch size")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--min-lr", type=float, default=defaults.min_lr)
    p.add_argument("--warmup-steps", type=int, default=None, help="default: 10%% of the steps")
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    p.add_argument("--label-smoothing", type=float, default=defaults.label_smoothing)
    p.add_argument("--mixup", type=float, default=defaults.mixup, help="Mixup alpha (0 = off)")
    p.add_argument("--cutmix", type=float, default=defaults.cutmix, help="CutMix alpha (0 = off)")
    p.add_argument("--aug", dest="augmentation", default=None, choices=["none", "light", "timm"],
                   help="default: the dataset's (specks: none, others: light)")
    p.add_argument("--ema-decay", type=float, default=defaults.ema_decay, help="0 = no EMA")
    p.add_argument("--clip-grad", type=float, default=defaults.clip_grad)
    p.add_argument("--drop-path", type=float, default=defaults.drop_path)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--train-samples", type=int, default=None, help="use only the first N training images")
    p.add_argument("--eval-samples", type=int, default=None, help="evaluate on the first N test images")
    p.add_argument("--device", default=defaults.device)
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no bf16 autocast on CUDA")
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--init-from", default=None, help="start from this model folder (resized if needed)")
    p.add_argument("--out", default=None, help="run folder (default: <runs-dir>/<name>-<hash>)")
    p.add_argument("--runs-dir", default=defaults.runs_dir)
    p.add_argument("--data-root", default=None, help="dataset cache (default $PIXELVIT_DATA or ~/.cache/pixelvit)")
    p.add_argument("--eval-every", type=int, default=defaults.eval_every, help="0 = only at the end")
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every)
    p.add_argument("--log-every", type=int, default=defaults.log_every)
    p.add_argument("--workers", dest="num_workers", type=int, default=defaults.num_workers)
    p.add_argument("--resume", action="store_true",
                   help="resume from the run folder's last checkpoint (what happens anyway; see --restart)")
    p.add_argument("--restart", action="store_true",
                   help="delete the run folder's checkpoints and results and train from scratch "
                        "(default: resume from the last checkpoint, or return the stored result)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def config_from_args(args) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    model_args = {}
    for item in args.model_arg:
        key, _, value = item.partition("=")
        model_args[key.replace("-", "_")] = parse_value(value)
    return TrainConfig(**values, model_args=model_args)


def print_result(result: RunResult):
    source = "stored result" if result.cached else "trained"
    raw = f" (raw weights {result.top1_raw:.2f} %)" if result.top1_raw is not None else ""
    print(f"{source}: top-1 {result.top1:.2f} %{raw}, test loss {result.eval_loss:.4f}, {result.steps} steps, "
          f"{result.params:,} params, {result.tokens} tokens, {result.wall_s:.1f} s, "
          f"{result.images_per_s:.0f} img/s on {result.device} -> {result.run_dir}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    processes = Processes.from_env()
    try:
        if args.stages:
            if config.out:  # with stages, --out is where the stage runs go
                config = dataclasses.replace(config, runs_dir=config.out, out=None)
            results = train_stages(config, [Stage.parse(s) for s in args.stages], progress=not args.quiet)
        else:
            if args.restart and processes.main:
                for name in ("checkpoints", "result.json", "metrics.jsonl", "model", "run.json"):
                    target = run_dir_of(config) / name
                    shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
            results = [train(config, progress=not args.quiet)]
    except TrainingDiverged as error:
        print(f"pixelvit train: {error}", file=sys.stderr)
        return 3
    if processes.main:
        for result in results:
            print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
