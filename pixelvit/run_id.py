"""Which run a TrainConfig names: the model it trains, whether it can work, its hash and its folder.

    spec = check_config(config)            # ConfigError (one line: the problem and the fix), else the model
    digest = config_hash(config)           # 12 hex digits: "these exact weights would come out"
    folder = run_dir_of(config, digest)    # runs/<model>-<dataset>-<size>px-p<patch>-<steps>steps-<hash>

pixelvit.train.train calls all three before any data work; pixelvit.sweep checks every config of a sweep
before the first trains, and tools/cifar_campaign.py hashes its jobs to find their folders. The hash covers every field that changes the weights
(pixelvit.config.NOT_HASHED lists the others), with the model's config filled in, the device type, the
number of processes and the content (not the path) of --init-from. A run's folder name is its identity:
change what goes into the hash and every finished run is trained again (tests/test_train.py pins some).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from pixelvit.cli import UserError
from pixelvit.config import NOT_HASHED, TrainConfig
from pixelvit.distributed import Processes, resolve_device
from pixelvit.patching import check_divisible
from pixelvit.tasks import TASKS, ModelSpec, get_task, init_from_digest

__all__ = ["ConfigError", "check_config", "config_hash", "model_spec_of", "run_dir_of", "run_img_size"]


class ConfigError(UserError, ValueError):
    """An argument that cannot work; raised before any data work, the message names the fix."""


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
