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
    pixelvit.run_id       check_config, config_hash, run_dir_of: whether a config can work, its hash, its folder
    pixelvit.train_args   the options of `pixelvit train` (argparse) and the TrainConfig they give
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

import dataclasses
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

from pixelvit.cli import UserError, report_user_errors
from pixelvit.config import NOT_HASHED, TrainConfig
from pixelvit.data import EpochBatchSampler, EvalBatchSampler, make_loader
from pixelvit.distributed import Processes, describe_device, replicas_in_sync, resolve_device
from pixelvit.interrupt import StopRequests
from pixelvit.io import NonFiniteWeights
from pixelvit.run_id import ConfigError, check_config, config_hash, model_spec_of, run_dir_of, run_img_size
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
from pixelvit.tasks import Task, TaskData, get_task
from pixelvit.train_args import build_parser, config_from_args, parse_model_args, recipe_arguments

# Re-exported from where they live (pixelvit.config, .run_id, .runs, .train_args), so `from pixelvit.train import
# TrainConfig, config_hash, ...` keeps working in notebooks and scripts.
__all__ = ["NOT_HASHED", "ConfigError", "RunDirConflict", "RunResult", "Stage", "TrainConfig", "TrainingDiverged",
           "build_parser", "check_config", "config_from_args", "config_hash", "main", "model_spec_of",
           "parse_model_args", "recipe_arguments", "run_dir_of", "run_img_size", "train", "train_stages"]


class TrainingDiverged(UserError, RuntimeError):
    """The loss or the gradient norm became NaN or infinite; the run stopped before the bad update."""

    exit_code = 3


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
# Command line: `pixelvit train` and `torchrun -m pixelvit.train` (the options: pixelvit.train_args)
# ---------------------------------------------------------------------------------------------


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
