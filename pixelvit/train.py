"""Train one model on one dataset: `train(TrainConfig(...)) -> RunResult`, and `pixelvit train`.

    pixelvit train --model vit_micro --dataset specks --img-size 16 --patch-size 2 --steps 300
    torchrun --nproc_per_node=2 -m pixelvit.train --model vit_micro --dataset cifar10 --steps 2000

The recipe is DeiT's, shrunk: AdamW (timm's `create_optimizer_v2`, no weight decay on norms, biases
and embeddings), linear warmup then cosine decay (timm's `CosineLRScheduler`, stepped every step),
label smoothing, gradient clipping, optional EMA of the weights (timm's `ModelEmaV3`) and optional
Mixup/CutMix (timm's `Mixup`). On CUDA it runs in bf16 autocast, with gradient checkpointing and
torch.compile on request. Budgets are counted in optimizer steps, so a sweep can give every patch
size the same number of training images.

Where the pieces live:

    pixelvit.config       TrainConfig: every setting of a run, and which of them the run hash leaves out
    pixelvit.tasks        what is learned: data, model, loss, test metrics (classification; more can register)
    pixelvit.data         the datasets, the seeded order of every epoch's batches and the loaders
    pixelvit.runs         the run folder: run.json, metrics.jsonl, checkpoints, random state, result.json
    pixelvit.distributed  DDP processes and the device
    pixelvit.interrupt    Ctrl-C and SIGTERM: finish the step, save a checkpoint, stop

A run lives in one folder, `runs/<model>-<dataset>-<size>px-p<patch>-<steps>steps-<hash>` unless
--out names one. The hash stands for "these exact weights would come out": every field that changes
the weights, with the model's config filled in, the device type, the number of processes and the
content (not the path) of --init-from.

Properties the tests check:

* Load if present: the same config again returns the stored result at once.
* Same config, same weights: every random generator is seeded from the config at the start of every
  run (and every stage), so two fresh processes give bit-identical weights on the same CPU model.
* Exact resume: a run killed at any moment continues from its last checkpoint and, on CPU, ends with
  bit-identical weights. A checkpoint holds the optimizer, scheduler and EMA state, the step, and the
  random generators; the data order is a function of (seed, epoch) (pixelvit.data.loading), so the
  resumed run rebuilds the epoch and skips ahead.
* Nothing lost on Ctrl-C or SIGTERM: the step under way finishes, a checkpoint is saved, and the run
  stops with TrainingInterrupted (`pixelvit train`: one line, exit code 130 / 143) (pixelvit.interrupt).
* DDP: under torchrun each process takes 1/N of every global batch; the result matches one process
  with the same global batch, and the replicas are checked to hold identical weights at the end. The
  ranks start from the same weights but draw their own random numbers (augmentation, drop path).
* A loss or gradient norm that is NaN or infinite stops the run before the bad update, clipping on
  or off; no weight file with NaN or inf is ever written.
* Bad arguments stop the run before any data work, with one line naming the problem and the fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from pixelvit.cli import HelpFormatter, UserError, report_user_errors
from pixelvit.config import NOT_HASHED, TrainConfig
from pixelvit.data import AUGMENTATIONS, EpochBatchSampler, EvalBatchSampler, make_loader
from pixelvit.data.segmentation import SEGMENTATION_AUGMENTATIONS
from pixelvit.distributed import Processes, describe_device, replicas_in_sync, resolve_device
from pixelvit.interrupt import StopRequests
from pixelvit.io import NonFiniteWeights
from pixelvit.patching import check_divisible
from pixelvit.runs import (
    MetricsLog,
    RunDirConflict,
    RunResult,
    checkpoint_step,
    clear_run,
    finish_run,
    latest_checkpoint,
    load_checkpoint,
    random_state,
    read_finished,
    save_checkpoint,
    seed_everything,
    set_random_state,
    write_run_record,
)
from pixelvit.tasks import TASKS, ModelSpec, Task, TaskData, get_task, init_from_digest

__all__ = ["NOT_HASHED", "ConfigError", "RunDirConflict", "RunResult", "Stage", "TrainConfig", "TrainingDiverged",
           "check_config", "config_hash", "main", "model_spec_of", "run_dir_of", "train", "train_stages"]

# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


class ConfigError(UserError, ValueError):
    """An argument that cannot work; raised before any data work, the message names the fix."""


class TrainingDiverged(UserError, RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the run stopped before the bad update."""

    exit_code = 3


def run_img_size(config: TrainConfig) -> int:
    """--img-size, or the dataset's native size: the image size a run is named, hashed and loaded at."""
    return config.img_size or get_task(config.task).native_img_size(config.dataset)


def model_spec_of(config: TrainConfig) -> ModelSpec:
    """The model `config` trains (its task's model_spec at the run's image size). It reads --init-from's
    config.json: train() calls it once, in check_config, and passes the spec on."""
    return get_task(config.task).model_spec(config, run_img_size(config))


def check_config(config: TrainConfig, world_size: int = 1) -> ModelSpec:
    """Raise ConfigError (one line: the problem and the fix) for any argument that cannot work; else
    return the model the run trains (`model_spec_of`), resolved on the way."""
    if config.task not in TASKS:
        raise ConfigError(f"unknown task {config.task!r}: use one of {', '.join(TASKS)}")
    rules = [
        (config.steps >= 1, f"--steps {config.steps}: train for at least 1 step"),
        (config.batch_size >= 1, f"--batch-size {config.batch_size}: use at least 1"),
        (config.batch_size % world_size == 0,
         f"--batch-size {config.batch_size} does not split over {world_size} processes: use a multiple of it"),
        (config.train_samples is None or config.train_samples >= config.batch_size,
         f"--train-samples {config.train_samples} is fewer than one batch of --batch-size {config.batch_size}: "
         "lower --batch-size or raise --train-samples"),
        (config.eval_samples is None or config.eval_samples >= 1, "--eval-samples: use at least 1"),
        (config.lr > 0 and config.min_lr >= 0, "--lr must be > 0 and --min-lr >= 0"),
        (config.warmup_steps is None or 0 <= config.warmup_steps <= config.steps,
         f"--warmup-steps {config.warmup_steps}: use 0 to --steps ({config.steps})"),
        (min(config.mixup, config.cutmix, config.clip_grad, config.weight_decay) >= 0,
         "--mixup, --cutmix, --clip-grad and --weight-decay must be >= 0"),
        (0 <= config.label_smoothing < 1 and 0 <= config.ema_decay < 1 and 0 <= config.drop_path < 1,
         "--label-smoothing, --ema-decay and --drop-path must be in [0, 1)"),
        (config.img_size is None or config.img_size >= 1, f"--img-size {config.img_size}: use at least 1"),
        (config.extend >= 1 and config.upsample >= 1, "--extend and --upsample: use 1 (off) or more"),
        (config.extend == 1 or config.init_from is None, "--extend starts a fresh model: drop --init-from"),
    ]
    problems = [message for ok, message in rules if not ok] + get_task(config.task).problems(config)
    spec = None
    if not problems:
        try:
            resolve_device(config.device)
            spec = model_spec_of(config)  # ValueError: an unknown model or field; FileNotFoundError: init_from
            check_divisible(run_img_size(config) * config.upsample, spec.patch_size)
            if spec.patch_size % config.extend:
                raise ValueError(f"--extend {config.extend} must divide the patch size {spec.patch_size}")
        except (ValueError, FileNotFoundError) as error:
            problems.append(str(error))
    if problems:
        raise ConfigError("; ".join(problems))
    return spec


def config_hash(config: TrainConfig, device_type: str | None = None, world_size: int | None = None,
                spec: ModelSpec | None = None) -> str:
    """12 hex digits that stand for "these exact weights would come out" (see the module docstring).

    `device_type` ("cpu" or "cuda") and `world_size` default to where this process would train; `spec`
    (the run's model, from check_config) to `model_spec_of(config)`.
    """
    processes = Processes.from_env()
    device_type = device_type or resolve_device(config.device, processes).type
    arch, model, runtime, _ = spec or model_spec_of(config)
    model = {k: v for k, v in model.items() if k != "num_classes"}  # the dataset decides it, and the dataset is hashed
    fields = {k: v for k, v in dataclasses.asdict(config).items()
              if k not in NOT_HASHED | {"model", "model_args", "img_size", "patch_size", "drop_path", "device"}}
    for added_later in ("extend", "upsample"):  # hashed only when on, so runs made before they existed keep their hash
        if fields[added_later] == 1:
            del fields[added_later]
    fields.update(
        arch=arch, model_config=model, model_runtime=runtime, device_type=device_type, world_size=world_size or processes.world_size,
        amp=config.amp and device_type == "cuda",  # autocast only runs on CUDA
        init_from=init_from_digest(config.init_from) if config.init_from else None,
    )
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_dir_of(config: TrainConfig, digest: str | None = None, spec: ModelSpec | None = None) -> Path:
    """--out, or <runs_dir>/<model>-<dataset>-<size>px-p<patch>-<steps>steps-<hash>."""
    if config.out:
        return Path(config.out)
    spec = spec or model_spec_of(config)
    img_size, patch_size = run_img_size(config), spec.patch_size
    # folder:<path> -> folder-<last folder name>: short enough for a progress bar (the hash tells runs apart)
    kind, _, where = config.dataset.partition(":")
    dataset = f"{kind}-{Path(where).name}" if where else kind
    name = f"{config.model}-{dataset}-{img_size}px-p{patch_size}-{config.steps}steps-{digest or config_hash(config, spec=spec)}"
    return Path(config.runs_dir) / name


# ---------------------------------------------------------------------------------------------
# The pieces of the training loop
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    """What the loop's helpers need to know about this run (fixed once the data is loaded)."""

    config: TrainConfig
    digest: str
    run_dir: Path
    processes: Processes
    device: torch.device
    task: Task
    steps_per_epoch: int = 0

    def autocast(self):
        """bf16 autocast on CUDA when amp is on; a no-op context on CPU."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.config.amp and self.device.type == "cuda")


@dataclass
class Recipe:
    """The optimizer and its schedule, the EMA of the weights, batch mixing and the loss."""

    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    ema: ModelEmaV3 | None
    mixer: object | None  # (images, targets) -> (images, soft targets), e.g. timm's Mixup
    criterion: object

    @classmethod
    def create(cls, config: TrainConfig, model, task: Task, data: TaskData) -> Recipe:
        optimizer = create_optimizer_v2(model, opt="adamw", lr=config.lr, weight_decay=config.weight_decay)
        warmup = config.warmup_steps if config.warmup_steps is not None else config.steps // 10
        scheduler = CosineLRScheduler(optimizer, t_initial=max(1, config.steps - warmup), lr_min=config.min_lr,
                                      warmup_t=warmup, warmup_lr_init=config.lr * 0.01, warmup_prefix=True,
                                      t_in_epochs=False)
        ema = ModelEmaV3(model, decay=config.ema_decay, use_warmup=True) if config.ema_decay else None
        mixer = task.batch_mixer(config, data)
        return cls(optimizer, scheduler, ema, mixer, task.criterion(config, mixing=mixer is not None))

    def after_step(self, model, step: int):
        """The learning rate for the next step, and the EMA of the weights just updated."""
        self.scheduler.step_update(step)
        if self.ema is not None:
            self.ema.update(model, step=step)

    def eval_model(self, model):
        """The weights a run is judged by: the EMA's when EMA is on."""
        return self.ema.module if self.ema is not None else model

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "ema": self.ema.module.state_dict() if self.ema is not None else None}

    def load_state_dict(self, state: dict):
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.module.load_state_dict(state["ema"])


@dataclass
class Progress:
    """How far the run is (saved in every checkpoint; times summed over resumes), and the log window."""

    step: int = 0
    trained_images: int = 0
    trained_s: float = 0.0  # loading + training, for throughput; not evaluation or checkpoint time
    elapsed_before: float = 0.0  # wall time of earlier attempts
    started: float = field(default_factory=time.perf_counter)
    clock: float = field(default_factory=time.perf_counter)  # when the current step began
    window: list = field(default_factory=list)  # (loss, seconds) of the steps since the last log line

    def count(self, loss: float, images: int):
        seconds, self.clock = time.perf_counter() - self.clock, time.perf_counter()
        self.trained_s, self.trained_images = self.trained_s + seconds, self.trained_images + images
        self.window.append((loss, seconds))

    def log_line(self, run: Run, lr: float) -> dict:
        """metrics.jsonl's train line for the steps since the last one (and a new window)."""
        losses, seconds = zip(*self.window, strict=True)
        self.window = []
        return {"kind": "train", "step": self.step, "epoch": self.step / run.steps_per_epoch,
                "loss": sum(losses) / len(losses), "lr": lr,
                "images_per_s": len(losses) * run.config.batch_size / sum(seconds), "wall_s": self.wall_s()}

    def wall_s(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started


def training_step(train_model, images, targets, recipe: Recipe, run: Run, step: int) -> float:
    """Forward, backward, gradient clipping, update: the mean loss of the global batch.

    Stops the run (TrainingDiverged) before the update when any process's loss, or the gradient norm,
    is NaN or infinite. The norm is measured and checked with clipping off too; it clips only when
    clip_grad > 0 (max_norm inf scales by exactly 1).
    """
    if recipe.mixer is not None:
        images, targets = recipe.mixer(images, targets)
    with run.autocast():
        outputs = train_model(images)
    loss = recipe.criterion(outputs.float(), targets)
    local = loss.item()
    loss_sum, bad = run.processes.sum([local, 0.0 if math.isfinite(local) else 1.0], run.device)
    if bad:
        raise diverged(f"the training loss is {local if not math.isfinite(local) else loss_sum}", step, run)
    recipe.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(train_model.parameters(), run.config.clip_grad or math.inf).item()
    if not math.isfinite(grad_norm):
        raise diverged(f"the gradient norm is {grad_norm}", step, run)
    recipe.optimizer.step()
    return loss_sum / run.processes.world_size


def diverged(problem: str, step: int, run: Run) -> TrainingDiverged:
    """The message for a stopped run: what went wrong, and what works (lr is in the run hash)."""
    last = latest_checkpoint(run.run_dir)
    advice = ("start a new run with a lower --lr, more --warmup-steps or --clip-grad 1 (each a new run "
              "folder, since they change the run hash)")
    if last is not None:
        advice += f", or continue from the last good weights (step {checkpoint_step(last)}) with --init-from {last}"
    return TrainingDiverged(f"{problem} at step {step + 1} of {run.run_dir}; stopped before applying that "
                            f"update. To go on, {advice}.")


@torch.no_grad()
def evaluate(model, loader, run: Run) -> dict:
    """The task's test metrics over every test image, summed over processes."""
    was_training = model.training
    model.eval()
    sums = None
    for images, targets in loader:
        with run.autocast():
            outputs = model(images)
        batch = run.task.eval_sums(outputs.float(), targets)
        sums = batch if sums is None else [a + b for a, b in zip(sums, batch, strict=True)]
    model.train(was_training)
    return run.task.summarize(run.processes.sum(sums, run.device))


def seed_rank(seed: int, rank: int):
    """From here on each DDP rank draws its own random numbers (crops, flips, drop-path masks); with one seed
    rank 1 repeated rank 0's draws on its half of the batch. Rank 0, and a single process, keep the seed's."""
    if rank:
        seed_everything(seed + 1_000_003 * rank)


def build_data_in_turn(task: Task, config: TrainConfig, processes: Processes, progress: bool) -> TaskData:
    """Rank 0 builds the dataset cache first; the other processes then read it."""
    img_size = run_img_size(config)
    if not processes.main:
        processes.barrier()
    data = task.build_data(config, img_size, progress=progress and processes.main)
    if processes.main:
        processes.barrier()
    if len(data.train_set) < config.batch_size:
        raise ConfigError(f"{config.dataset} has {len(data.train_set)} training images, fewer than one batch of "
                          f"--batch-size {config.batch_size}: lower --batch-size")
    return data


def wrap_for_training(model, run: Run):
    """The module the training step calls: DDP (gradients averaged over processes) and/or compiled."""
    if run.config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if run.processes.distributed:
        model = DistributedDataParallel(model, device_ids=[run.device.index] if run.device.type == "cuda" else None)
    return torch.compile(model) if run.config.compile else model


def loaders(data: TaskData, run: Run) -> tuple:
    """(batches of one epoch from a given step on, the test batches), each process its share."""
    config, processes = run.config, run.processes

    def epoch_batches(step: int):
        epoch, first_batch = divmod(step, run.steps_per_epoch)  # resume mid-epoch: skip the done batches
        sampler = EpochBatchSampler(len(data.train_set), config.batch_size, config.seed, epoch, first_batch,
                                    processes.rank, processes.world_size)
        return make_loader(data.train_set, sampler, run.device, config.num_workers)

    test_sampler = EvalBatchSampler(len(data.test_set), 256, processes.rank, processes.world_size)
    return epoch_batches, make_loader(data.test_set, test_sampler, run.device, config.num_workers)


def resume(checkpoint: Path, model, recipe: Recipe, run: Run) -> Progress:
    """Weights, optimizer, schedule and EMA from `checkpoint`, then (last) this process's generators."""
    state = load_checkpoint(checkpoint, model)
    if state["config_hash"] != run.digest or state["steps_per_epoch"] != run.steps_per_epoch:
        raise RunDirConflict(f"{checkpoint} belongs to a run with another config; delete it or use --restart")
    recipe.load_state_dict(state)
    generators = state["rng_by_rank"]
    set_random_state(generators[min(run.processes.rank, len(generators) - 1)])
    return Progress(step=state["step"], trained_images=state["trained_images"], trained_s=state["trained_s"],
                    elapsed_before=state["elapsed_s"])


def save_training_checkpoint(model, recipe: Recipe, progress: Progress, run: Run):
    """Every process takes part (it gathers every process's generators); rank 0 writes."""
    state = {
        "step": progress.step, "epoch": progress.step // run.steps_per_epoch, "steps_per_epoch": run.steps_per_epoch,
        "batch_in_epoch": progress.step % run.steps_per_epoch, "seed": run.config.seed, "config_hash": run.digest,
        "elapsed_s": progress.wall_s(), "trained_images": progress.trained_images, "trained_s": progress.trained_s,
        **recipe.state_dict(), "rng_by_rank": run.processes.gather(random_state()),
    }
    save_on_main_process(lambda: save_checkpoint(run.run_dir, progress.step, model, state), progress.step, run)


def save_on_main_process(save, step: int, run: Run):
    """Rank 0 calls save(); if the weights were NaN or inf (then nothing was written, see
    pixelvit.io.save_model), every process stops together: the update of `step` made them."""
    problem = None
    if run.processes.main:
        try:
            save()
        except NonFiniteWeights as error:
            problem = str(error)
    if run.processes.sum([problem is not None], run.device)[0]:  # also the barrier after the save
        raise diverged(problem or "rank 0's weights are NaN or inf", step - 1, run)


def finish(model, recipe: Recipe, test_loader, progress: Progress, run: Run, metrics: MetricsLog) -> RunResult:
    """Evaluate the final weights (and the raw ones under EMA), save them, write result.json."""
    final = evaluate(recipe.eval_model(model), test_loader, run)
    raw = evaluate(model, test_loader, run) if recipe.ema is not None else {}
    result = RunResult(
        run_dir=str(run.run_dir), top1=final.get("top1"), eval_loss=final["eval_loss"], top1_raw=raw.get("top1"),
        steps=progress.step, epochs=progress.step / run.steps_per_epoch, wall_s=progress.wall_s(),
        images_per_s=progress.trained_images / max(progress.trained_s, 1e-9),
        params=sum(p.numel() for p in model.parameters()), tokens=int(model.num_tokens),
        device=describe_device(run.device), world_size=run.processes.world_size,
        config=dataclasses.asdict(run.config), config_hash=run.digest, metrics=final,
        replicas_in_sync=replicas_in_sync(model, run.processes) if run.processes.distributed else None,
    )
    metrics.write({"kind": "eval", "step": progress.step, "epoch": result.epochs, **final,
                   "top1_raw": result.top1_raw, "wall_s": result.wall_s, "final": True})
    extra = {"top1": result.top1, "dataset": run.config.dataset, "steps": progress.step, "ema": bool(recipe.ema)}
    save_on_main_process(lambda: finish_run(run.run_dir, recipe.eval_model(model), result, extra=extra),
                         progress.step, run)
    return result


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------


def train(config: TrainConfig, progress: bool = True, restart: bool = False) -> RunResult:
    """Train (or resume, or just load) the run `config` describes; see the module docstring.

    restart: first delete the run folder's checkpoints and results (pixelvit.runs.clear_run), so the run
    trains from scratch. Under torchrun rank 0 deletes and every rank waits for it before reading the folder.
    """
    # ---- set up: check every argument, resolve the model once, find the run folder ----
    processes = Processes.from_env()
    spec = check_config(config, processes.world_size)
    device = resolve_device(config.device, processes)
    digest = config_hash(config, device.type, processes.world_size, spec)
    run_dir = run_dir_of(config, digest, spec)
    owns_group = processes.start(device) if restart else False  # the barrier below needs the process group
    stop = StopRequests()
    try:
        if restart:
            processes.main_first(lambda: clear_run(run_dir))  # no rank reads the old result while it goes
        if (finished := read_finished(run_dir, digest)) is not None:
            return finished
        owns_group = processes.start(device) or owns_group
        task = get_task(config.task)
        data = build_data_in_turn(task, config, processes, progress)
        run = Run(config, digest, run_dir, processes, device, task, len(data.train_set) // config.batch_size)
        seed_everything(config.seed)  # every generator, every run and stage: same config, same weights
        model = task.build_model(config, data, spec).to(device)
        recipe = Recipe.create(config, model, task, data)
        seed_rank(config.seed, processes.rank)  # after the initialisation every rank shares
        train_model = wrap_for_training(model, run)
        epoch_batches, test_loader = loaders(data, run)

        # ---- resume from the last checkpoint, if there is one (its generators are restored last) ----
        checkpoint = latest_checkpoint(run_dir)
        state = resume(checkpoint, model, recipe, run) if checkpoint is not None else Progress()
        recipe.scheduler.step_update(state.step)
        if processes.main:
            write_run_record(run_dir, {"config": dataclasses.asdict(config), "config_hash": digest,
                                       "img_size": data.img_size, **data.record, "resumed_from_step": state.step,
                                       "params": sum(p.numel() for p in model.parameters()),
                                       "tokens": int(model.num_tokens)}, device, processes)
        metrics = MetricsLog(run_dir / "metrics.jsonl", processes.main, state.step)

        # ---- the loop: one optimizer step per global batch; log, evaluate and checkpoint now and then ----
        bar = tqdm(total=config.steps, initial=state.step, desc=run_dir.name[:40], unit="step",
                   disable=not (progress and processes.main), dynamic_ncols=True)
        train_model.train()
        stop.listen()  # from here on a signal means: finish the step, save a checkpoint, stop
        state.clock = time.perf_counter()
        while state.step < config.steps:
            for images, targets in epoch_batches(state.step):
                loss = training_step(train_model, images, targets, recipe, run, state.step)
                state.step += 1
                recipe.after_step(model, state.step)
                state.count(loss, config.batch_size)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
                end_of_epoch, last = state.step % run.steps_per_epoch == 0, state.step == config.steps
                if state.step % config.log_every == 0 or end_of_epoch or last:
                    metrics.write(state.log_line(run, lr=recipe.optimizer.param_groups[0]["lr"]))
                if config.eval_every and state.step % config.eval_every == 0 and not last:
                    metrics.write({"kind": "eval", "step": state.step, "epoch": state.step / run.steps_per_epoch,
                                   **evaluate(recipe.eval_model(model), test_loader, run), "wall_s": state.wall_s()})
                checkpoint_due = end_of_epoch or (config.checkpoint_every and state.step % config.checkpoint_every == 0)
                stopping = stop.requested(processes, device)  # Ctrl-C or SIGTERM came
                if checkpoint_due or stopping or last:  # the last too: a stop in the final evaluation costs no steps
                    save_training_checkpoint(model, recipe, state, run)
                if stopping:
                    bar.close()
                    raise stop.interrupted(state.step, config.steps, run_dir)
                state.clock = time.perf_counter()  # evaluation and saving do not count as training time
                if last:
                    break
        bar.close()
        stop.close()  # in the final evaluation Ctrl-C stops at once: the last step is already checkpointed
        return finish(model, recipe, test_loader, state, run, metrics)
    finally:
        stop.close()
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
        try:
            parts = [int(p) for p in text.split(":")]
        except ValueError:
            parts = []
        if len(parts) not in (2, 3):
            raise ConfigError(f"a stage is IMG_SIZE:STEPS or IMG_SIZE:STEPS:PATCH_SIZE, not {text!r}")
        return cls(*parts)


def train_stages(config: TrainConfig, stages: list[Stage], progress: bool = True,
                 restart: bool = False) -> list[RunResult]:
    """Train stage 1 from scratch, then each later stage from the previous stage's final weights.

    The paper pre-trains at a low resolution and fine-tunes at the target one; between stages the
    position embedding is resampled to the new token grid (pixelvit.resample.resize_model). Each stage
    is an ordinary run with its own folder, so finished stages are reused and a stopped stage resumes.
    Every stage seeds its generators afresh, so a stage's weights do not depend on whether the stage
    before it was just trained or read from its folder. restart: every stage trains from scratch (train()).
    """
    stage_configs = [dataclasses.replace(config, img_size=stage.img_size, steps=stage.steps, out=None,
                                         patch_size=stage.patch_size or config.patch_size) for stage in stages]
    for stage_config in stage_configs:
        check_config(stage_config)  # every stage before the first trains (later ones as if from scratch)
    results, init_from = [], config.init_from
    for stage_config in stage_configs:
        result = train(dataclasses.replace(stage_config, init_from=init_from), progress=progress, restart=restart)
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


def parse_model_args(items: list[str] | None) -> dict:
    """["embed_dim=64", "depth=3"] -> {"embed_dim": 64, "depth": 3}."""
    model_args = {}
    for item in items or []:
        key, equals, value = item.partition("=")
        if not equals:
            raise ConfigError(f"--model-arg {item!r}: write KEY=VALUE, e.g. --model-arg embed_dim=64")
        model_args[key.replace("-", "_")] = parse_value(value)
    return model_args


def recipe_arguments() -> argparse.ArgumentParser:
    """The options `pixelvit train` and `pixelvit sweep` share (an argparse parent parser)."""
    d = TrainConfig()
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field, e.g. --model-arg embed_dim=64 (repeatable)")
    p.add_argument("--dataset", default=d.dataset, help="specks | cifar10 | cifar100 | cifar10_jpeg | folder:<path>")
    p.add_argument("--task", default=d.task, help="what to learn: " + " | ".join(TASKS))
    p.add_argument("--img-size", type=int, default=None, help="default: the dataset's native size")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (after warmup, then cosine)")
    p.add_argument("--min-lr", type=float, default=d.min_lr, help="learning rate at the end of the cosine")
    p.add_argument("--warmup-steps", type=int, default=None, help="default: 10%% of the steps")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="0 = hard labels")
    p.add_argument("--mixup", type=float, default=d.mixup, help="Mixup alpha (0 = off)")
    p.add_argument("--cutmix", type=float, default=d.cutmix, help="CutMix alpha (0 = off)")
    # No argparse `choices`: which names are valid depends on --task, and the task's check says so in one line
    p.add_argument("--aug", dest="augmentation", default=None,
                   help=f"classification: {' | '.join(AUGMENTATIONS)} (default: the dataset's; specks: none, others: "
                        f"light); segmentation: {' | '.join(SEGMENTATION_AUGMENTATIONS)} (default: none)")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay, help="0 = no EMA")
    p.add_argument("--clip-grad", type=float, default=d.clip_grad, help="0 = no clipping")
    p.add_argument("--drop-path", type=float, default=d.drop_path, help="stochastic depth rate of the last block")
    p.add_argument("--extend", type=int, default=d.extend,
                   help="interpolate the patch tokens this many times per side: the paper's 'extending' (1 = off)")
    p.add_argument("--upsample", type=int, default=d.upsample,
                   help="upsample the images this many times per side before the model (1 = off)")
    p.add_argument("--train-samples", type=int, default=None, help="use only the first N training images")
    p.add_argument("--eval-samples", type=int, default=None, help="evaluate on the first N test images")
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda | cuda:1 ...")
    p.add_argument("--no-amp", dest="amp", action="store_false",
                   help="turn off bf16 autocast on CUDA (on by default; the CPU runs float32 either way)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute activations in backward: less memory, ~30%% slower")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--runs-dir", default=d.runs_dir, help="where run folders go")
    p.add_argument("--data-root", default=None, help="dataset cache (default: $PIXELVIT_DATA or ~/.cache/pixelvit)")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="0 = only at the end")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                   help="save a checkpoint every N steps (also after each epoch, the last step and Ctrl-C)")
    p.add_argument("--log-every", type=int, default=d.log_every, help="log the training loss every N steps")
    p.add_argument("--workers", dest="num_workers", type=int, default=d.num_workers,
                   help="DataLoader worker processes (0 is fastest for small images on 1-2 cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show the traceback of a user error")
    return p


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="pixelvit train", description=__doc__.split("\n\n")[0],
                                parents=[recipe_arguments()], formatter_class=HelpFormatter)
    p.add_argument("--model", default=d.model, help="a name from pixelvit.models.list_models()")
    p.add_argument("--patch-size", type=int, default=None, help="default: the model's")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds the weights, the data order and augmentation")
    p.add_argument("--stages", nargs="+", default=None, metavar="IMG:STEPS[:PATCH]",
                   help="multi-stage training, e.g. --stages 16:200 32:100 (overrides --img-size/--steps)")
    p.add_argument("--init-from", default=None, help="start from this model folder (resized if needed)")
    p.add_argument("--out", default=None, help="run folder (default: <runs-dir>/<name>-<hash>)")
    p.add_argument("--resume", action="store_true",
                   help="resume from the run folder's last checkpoint (what happens anyway; see --restart)")
    p.add_argument("--restart", action="store_true",
                   help="delete the run folder's checkpoints and results and train from scratch "
                        "(default: resume from the last checkpoint, or return the stored result)")
    return p


def config_from_args(args, **changes) -> TrainConfig:
    """The TrainConfig fields among the parsed arguments, with --model-arg parsed, then `changes`."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields}
    return TrainConfig(**{**values, "model_args": parse_model_args(args.model_arg), **changes})


def print_result(result: RunResult):
    source = "stored result" if result.cached else "trained"
    raw = f" (raw weights {result.top1_raw:.2f} %)" if result.top1_raw is not None else ""
    score = f"top-1 {result.top1:.2f} %{raw}" if result.top1 is not None else \
        ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items() if k != "eval_loss")
    print(f"{source}: {score}, test loss {result.eval_loss:.4f}, {result.steps} steps, "
          f"{result.params:,} params, {result.tokens} tokens, {result.wall_s:.1f} s, "
          f"{result.images_per_s:.0f} img/s on {result.device} -> {result.run_dir}")


def run_command(args) -> int:
    config = config_from_args(args)
    if args.stages:
        if config.out:  # with stages, --out is where the stage runs go
            config = dataclasses.replace(config, runs_dir=config.out, out=None)
        results = train_stages(config, [Stage.parse(s) for s in args.stages], progress=not args.quiet,
                               restart=args.restart)
    else:
        results = [train(config, progress=not args.quiet, restart=args.restart)]
    if Processes.from_env().main:
        for result in results:
            print_result(result)
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return report_user_errors("pixelvit train", lambda: run_command(args), debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
