"""What a run learns. `pixelvit.train.train` is one loop for every task; the task supplies the rest.

    TASKS["classification"]   one label per image: cross-entropy (+ Mixup/CutMix), top-1 accuracy

A task answers nine questions (`Task` below; ClassificationTask is the worked example):

    problems(config)                -> list[str]   what is wrong with the config, checked before any data work
    native_img_size(dataset)        -> int         the image size when --img-size is not given
    build_data(config, img_size, progress) -> TaskData
                                                   train_set[(index, epoch)] and test_set[index] give
                                                   (uint8 image (3, H, W), target); epoch seeds augmentation
    model_spec(config, img_size)    -> ModelSpec   the model's arch, config fields and run-time settings:
                                                   resolved once per run, it names and hashes the run
    build_model(config, data, spec) -> nn.Module   images (B, 3, H, W) -> outputs
    batch_mixer(config, data)       -> callable | None   (images, targets) -> (images, targets), training only
    criterion(config, mixing)       -> callable    (outputs as float32, targets) -> scalar loss
    eval_sums(outputs, targets)     -> list[float] sums over one test batch (added over batches and processes)
    summarize(sums)                 -> dict        the test metrics from those sums: "eval_loss" and `metric`

A new task is a subclass registered under its name in TASKS (`TrainConfig.task` selects it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torch.utils.data import Dataset

from pixelvit.config import TrainConfig
from pixelvit.data import (
    AUGMENTATIONS,
    ArrayImageDataset,
    Upsampled,
    default_augmentation,
    default_img_size,
    list_datasets,
    load_split,
    train_transform,
)
from pixelvit.extend import extended_model
from pixelvit.io import WEIGHTS_NAME, read_model_config, sha256_file
from pixelvit.models import ARCHS, MODELS, RUNTIME_ARGS, get_config, merge_overrides, model_from_config
from pixelvit.resample import resize_model


@dataclass
class TaskData:
    train_set: Dataset  # [(index, epoch)] -> (uint8 image (3, H, W), target); augmentation seeded by (seed, epoch, index)
    test_set: Dataset  # [index] -> (uint8 image (3, H, W), target)
    num_classes: int
    img_size: int
    record: dict  # what run.json should say about the data, e.g. {"augmentation": "light"}


class ModelSpec(NamedTuple):
    """The model a run trains, resolved once per run (pixelvit.train.train passes it down)."""

    arch: str
    fields: dict  # every config field, at the run's image size (before --upsample); num_classes a placeholder
    runtime: dict  # run-time settings (pixelvit.models.RUNTIME_ARGS): how the model runs, not what it is
    init_config: dict | None = None  # --init-from's saved config fields (read with the spec, not again)

    @property
    def patch_size(self) -> int:
        return self.fields["patch_size"]


class Task:
    """The interface train() relies on; see the module docstring. Its model_spec and build_model build
    pixelvit's registered models (pixelvit.models); a task with models of its own overrides both."""

    name = ""
    metric = ""  # the headline test metric summarize() returns ("top1" for classification)

    def problems(self, config: TrainConfig) -> list[str]:
        return []

    def native_img_size(self, dataset: str) -> int:
        raise NotImplementedError

    def build_data(self, config: TrainConfig, img_size: int, progress: bool) -> TaskData:
        raise NotImplementedError

    def model_spec(self, config: TrainConfig, img_size: int) -> ModelSpec:
        return model_spec(config, img_size)

    def build_model(self, config: TrainConfig, data: TaskData, spec: ModelSpec) -> nn.Module:
        return build_model(config, spec, data.num_classes, data.img_size)

    def batch_mixer(self, config: TrainConfig, data: TaskData):
        return None

    def criterion(self, config: TrainConfig, mixing: bool):
        raise NotImplementedError

    def eval_sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> list[float]:
        raise NotImplementedError

    def summarize(self, sums: list[float]) -> dict:
        raise NotImplementedError


class ClassificationTask(Task):
    """One label per image (pixelvit.data's datasets): label-smoothed cross-entropy, Mixup/CutMix, top-1."""

    name = "classification"
    metric = "top1"

    def problems(self, config):
        known = [name for name in list_datasets() if not name.startswith("folder:")]
        folder = config.dataset.removeprefix("folder:") if config.dataset.startswith("folder:") else None
        problems = []
        if folder is None and config.dataset not in known:
            problems.append(f"unknown dataset {config.dataset!r}: use one of {', '.join(known)} or folder:<path>")
        if folder is not None and not Path(folder).expanduser().is_dir():
            problems.append(f"dataset folder {folder!r} does not exist: give folder:<a folder of class folders>")
        if config.augmentation is not None and config.augmentation not in AUGMENTATIONS:
            problems.append(f"unknown augmentation {config.augmentation!r}: use one of {', '.join(AUGMENTATIONS)}")
        return problems

    def native_img_size(self, dataset):
        return default_img_size(dataset)

    def build_data(self, config, img_size, progress):
        train = load_split(config.dataset, "train", img_size, config.data_root, progress=progress)
        test = load_split(config.dataset, "test", img_size, config.data_root, progress=progress)
        train, test = train.subset(config.train_samples), test.subset(config.eval_samples)
        augmentation = config.augmentation or default_augmentation(config.dataset)
        train_set = ArrayImageDataset(train, train_transform(augmentation, img_size), seed=config.seed)
        test_set = ArrayImageDataset(test)
        if config.upsample > 1:  # augmented at the stored size, then upsampled: more pixels, no new information
            train_set, test_set = Upsampled(train_set, config.upsample), Upsampled(test_set, config.upsample)
        return TaskData(train_set=train_set, test_set=test_set, num_classes=train.num_classes,
                        img_size=img_size * config.upsample, record={"augmentation": augmentation})

    def batch_mixer(self, config, data):
        # timm's Mixup draws from numpy's global generator, which train() seeds and every checkpoint saves
        if not (config.mixup or config.cutmix):
            return None
        return Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.label_smoothing,
                     num_classes=data.num_classes)

    def criterion(self, config, mixing):
        if mixing:  # Mixup's targets are soft (and already smoothed)
            return SoftTargetCrossEntropy()
        return nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    def eval_sums(self, outputs, targets):
        # test loss without label smoothing; outputs (B, num_classes), targets (B,)
        loss = F.cross_entropy(outputs, targets, reduction="sum").item()
        correct = (outputs.argmax(dim=1) == targets).sum().item()
        return [loss, correct, targets.numel()]

    def summarize(self, sums):
        loss, correct, count = sums
        return {"eval_loss": loss / count, "top1": 100.0 * correct / count, "eval_images": int(count)}


# name -> a Task, or "module:attribute" of one (imported on first use, so optional tasks cost nothing)
TASKS: dict[str, Task | str] = {"classification": ClassificationTask(),
                                "segmentation": "pixelvit.dense.task:SegmentationTask"}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: use one of {', '.join(TASKS)}")
    task = TASKS[name]
    if isinstance(task, str):
        module, _, attribute = task.partition(":")
        task = TASKS[name] = getattr(import_module(module), attribute)()
    return task


# ---------------------------------------------------------------------------------------------
# The model a run trains: a named model with overrides, or the weights of an earlier run
# ---------------------------------------------------------------------------------------------


def model_spec(config: TrainConfig, img_size: int) -> ModelSpec:
    """The registered model (or --init-from's) that `config` trains at `img_size`: `Task.model_spec`.

    ValueError if that model cannot exist. A named model's defaults are filled in, so patch_size=None
    and the model's own patch size give the same fields (and the same run hash). With init_from, the
    fields are that model's, with this run's overrides. Run-time settings (pixelvit.models.RUNTIME_ARGS,
    e.g. chunk_size) may come in --model-arg too; they are not architecture.
    """
    if config.init_from is None:
        arch, saved = MODELS[config.model][0] if config.model in MODELS else None, None
    else:
        meta = read_model_config(config.init_from)  # the one read of its config.json in a run
        arch, saved = meta["arch"], meta["config"]
    runtime = {k: v for k, v in config.model_args.items() if arch and k in RUNTIME_ARGS[arch]}
    overrides = merge_overrides({"img_size": img_size, "patch_size": config.patch_size,
                                 "drop_path_rate": config.drop_path or None},
                                {k: v for k, v in config.model_args.items() if k not in runtime})
    if config.init_from is None:
        return ModelSpec(arch, dataclasses.asdict(get_config(config.model, **overrides)), runtime)  # ValueError: unknown
    config_class = ARCHS[arch][0]
    known = {f.name for f in dataclasses.fields(config_class)}
    try:
        fields = config_class(**{k: v for k, v in saved.items() if k in known})
        fields = dataclasses.replace(fields, **overrides)
    except TypeError as error:  # a field the architecture does not have
        raise ValueError(f"{config_class.__name__}: {error}") from None
    return ModelSpec(arch, dataclasses.asdict(fields), runtime, init_config=saved)


def init_from_digest(path) -> str:
    """sha256 of the weights in a model folder: what init_from contributes to the run hash."""
    return sha256_file(Path(path) / "model.safetensors")


def build_model(config: TrainConfig, spec: ModelSpec, num_classes: int, img_size: int) -> nn.Module:
    """A fresh model, or init_from's weights resized to this run's image/patch size (multi-stage training).

    `img_size` is the size the model sees (the run's, times --upsample). A fresh model draws its initial
    weights from torch's global generator: train() seeds it first.
    """
    arch, runtime = spec.arch, spec.runtime
    fields = {**spec.fields, "img_size": img_size, "num_classes": num_classes}
    if config.init_from is None:
        def fresh(patch_size: int) -> nn.Module:
            return model_from_config(arch, {**fields, "patch_size": patch_size}, **runtime)

        if config.extend > 1:  # the paper's "extending": coarse patch tokens interpolated to a longer grid
            return extended_model(fresh, spec.patch_size, config.extend)
        return fresh(spec.patch_size)
    saved = spec.init_config
    model = model_from_config(arch, {**fields, "img_size": saved["img_size"], "patch_size": saved["patch_size"],
                                     "num_classes": saved["num_classes"]}, **runtime)
    model.load_state_dict(load_file(str(Path(config.init_from) / WEIGHTS_NAME)))
    if model.config.num_classes != num_classes:
        raise ValueError(f"{config.init_from} has {model.config.num_classes} classes, "
                         f"{config.dataset} has {num_classes}")
    if (model.config.img_size, model.config.patch_size) != (img_size, spec.patch_size):
        model = resize_model(model, img_size=img_size, patch_size=spec.patch_size)  # embeddings resampled
    return model
