"""Segmentation metrics from a confusion matrix: mean IoU and pixel accuracy.

    confusion[t, p] = number of pixels of true class t predicted as class p      (classes x classes)
    IoU(c)          = confusion[c, c] / (row c + column c - confusion[c, c])      = TP / (TP + FP + FN)
    mIoU            = mean of IoU(c) over the classes that occur (in the labels or the predictions)
    pixel accuracy  = trace / total

The matrix is summed over the whole test set before dividing (as ADE20k's mIoU is), not averaged per image.
"""

from __future__ import annotations

import torch


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 (classes, classes) counts for integer maps of any equal shape, e.g. (B, H, W)."""
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ in shape")
    index = targets.reshape(-1).long() * num_classes + predictions.reshape(-1).long()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(confusion: torch.Tensor) -> torch.Tensor:
    """float64 (classes,): IoU of each class, NaN for a class absent from both labels and predictions."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    return torch.where(union > 0, true_positive / union.clamp(min=1), torch.full_like(union, float("nan")))


def mean_iou(confusion: torch.Tensor) -> float:
    """mIoU in % over the classes that occur."""
    return 100.0 * torch.nanmean(iou_per_class(confusion)).item()


def pixel_accuracy(confusion: torch.Tensor) -> float:
    """Share of pixels labelled correctly, in %."""
    return 100.0 * (confusion.diag().sum() / confusion.sum().clamp(min=1)).item()
