"""The `segmentation` task of pixelvit.train: one class per pixel, pixel-wise cross-entropy, mIoU.

    pixelvit train --task segmentation --model vit_nano_seg_linear --dataset scribbles --patch-size 2
    pixelvit sweep --task segmentation --model vit_nano_seg_linear vit_nano_seg_decoder \\
                   --dataset scribbles --patch-sizes 8 4 2 1

It plugs into the one training loop (pixelvit.tasks.Task): same run folders, checkpoints, exact resume and
CLI as classification. What differs:

    data       pixelvit.data.segmentation (scribbles | cifar10_mosaic); targets are int64 (H, W) class maps
    model      `<backbone>_seg_<head>` (pixelvit.dense.model); its own model_spec, so run names and hashes
               come from the segmentation config
    loss       cross-entropy over every pixel (with --label-smoothing, default 0.1 as for classification)
    metrics    the test set's confusion matrix, summed over batches and processes -> miou (headline),
               pixel_accuracy, iou_<class> for each class
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from pixelvit.data.segmentation import (
    NATIVE_SIZES,
    SEGMENTATION_AUGMENTATIONS,
    SEGMENTATION_DATASETS,
    SegmentationDataset,
    load_segmentation,
)
from pixelvit.dense.metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from pixelvit.dense.model import (
    SegmentationModel,
    backbone_names,
    is_segmentation_name,
    segmentation_config,
)
from pixelvit.tasks import ModelSpec, Task, TaskData


class SegmentationTask(Task):
    name = "segmentation"
    metric = "miou"

    def problems(self, config) -> list[str]:
        problems = []
        if config.dataset not in SEGMENTATION_DATASETS:
            problems.append(f"unknown segmentation dataset {config.dataset!r}: use one of {', '.join(SEGMENTATION_DATASETS)}")
        if not is_segmentation_name(config.model):
            hint = f"e.g. {config.model}_seg_linear or {config.model}_seg_decoder" if config.model in backbone_names() \
                else "e.g. vit_nano_seg_linear, adventurer_nano_seg_decoder"
            problems.append(f"--model {config.model!r} is not a segmentation model: use <backbone>_seg_<linear|pixelshuffle|decoder>, {hint}")
        if config.augmentation is not None and config.augmentation not in SEGMENTATION_AUGMENTATIONS:
            problems.append(f"unknown segmentation augmentation {config.augmentation!r}: use one of "
                            f"{', '.join(SEGMENTATION_AUGMENTATIONS)}")
        if config.mixup or config.cutmix:
            problems.append("--mixup / --cutmix mix labels of whole images: not for segmentation, leave them at 0")
        if config.init_from:
            problems.append("--init-from is not supported for segmentation yet: train from scratch")
        if getattr(config, "extend", 1) != 1 or getattr(config, "upsample", 1) != 1:
            problems.append("--extend / --upsample are classification experiments: leave them at 1 for segmentation")
        return problems

    def native_img_size(self, dataset: str) -> int:
        return NATIVE_SIZES.get(dataset, 32)

    def model_spec(self, config, img_size: int) -> ModelSpec:
        """(arch, config fields, run-time settings) of the segmentation model `config` trains.

        `num_classes` is a placeholder here (the dataset decides it, and the dataset is hashed)."""
        args = dict(config.model_args)
        if config.drop_path:
            args["drop_path_rate"] = config.drop_path
        model_config, runtime = segmentation_config(config.model, img_size, config.patch_size, **args)
        return ModelSpec(SegmentationModel.arch, dataclasses.asdict(model_config), runtime)

    def build_data(self, config, img_size: int, progress: bool) -> TaskData:
        train = load_segmentation(config.dataset, "train", img_size, config.data_root, progress=progress)
        test = load_segmentation(config.dataset, "test", img_size, config.data_root, progress=progress)
        train, test = train.subset(config.train_samples), test.subset(config.eval_samples)
        augmentation = config.augmentation or "none"
        return TaskData(train_set=SegmentationDataset(train, augmentation, seed=config.seed),
                        test_set=SegmentationDataset(test), num_classes=train.num_classes, img_size=img_size,
                        record={"augmentation": augmentation, "classes": train.classes})

    def build_model(self, config, data: TaskData, spec: ModelSpec) -> nn.Module:
        args = dict(config.model_args)
        if config.drop_path:
            args["drop_path_rate"] = config.drop_path
        model_config, runtime = segmentation_config(config.model, data.img_size, config.patch_size,
                                                    num_classes=data.num_classes, **args)
        return SegmentationModel(model_config, **runtime)

    def criterion(self, config, mixing: bool):
        # (B, classes, H, W) logits against (B, H, W) labels: the mean over every pixel of the batch
        return nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    def eval_sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> list[float]:
        """[loss summed over pixels, pixels, *confusion matrix (classes x classes, row = true class)]."""
        loss = F.cross_entropy(outputs, targets, reduction="sum").item()
        confusion = confusion_matrix(outputs.argmax(dim=1), targets, outputs.shape[1])
        return [loss, targets.numel(), *confusion.flatten().tolist()]

    def summarize(self, sums: list[float]) -> dict:
        loss, pixels, *cells = sums
        classes = math.isqrt(len(cells))
        confusion = torch.tensor(cells, dtype=torch.float64).reshape(classes, classes)
        summary = {"eval_loss": loss / pixels, "miou": mean_iou(confusion), "pixel_accuracy": pixel_accuracy(confusion),
                   "eval_pixels": int(pixels)}
        summary.update({f"iou_{c}": round(100 * v, 3) for c, v in enumerate(iou_per_class(confusion).tolist())
                        if not math.isnan(v)})
        return summary
