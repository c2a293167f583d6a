"""Dense prediction (semantic segmentation) with pixelvit backbones at any patch size.

    pixelvit.dense.heads     LinearHead (the paper's decoder-free head), DecoderHead, dense_features
    pixelvit.dense.model     SegmentationModel, create_segmentation_model("vit_nano_seg_linear", ...)
    pixelvit.dense.metrics   confusion_matrix, mean_iou, pixel_accuracy
    pixelvit.data.segmentation   the datasets: scribbles (generated) and cifar10_mosaic (photos)

Training goes through pixelvit.train with the segmentation task:
    pixelvit train --task segmentation --model vit_nano_seg_linear --dataset scribbles --patch-size 2
"""

from pixelvit.dense.heads import HEADS, DecoderHead, LinearHead, dense_features, feature_indices
from pixelvit.dense.metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from pixelvit.dense.model import (
    SegmentationConfig,
    SegmentationModel,
    create_segmentation_model,
    is_segmentation_name,
    list_segmentation_models,
    load_segmentation_model,
    segmentation_model_from_config,
)

__all__ = [
    "HEADS", "DecoderHead", "LinearHead", "SegmentationConfig", "SegmentationModel", "confusion_matrix",
    "create_segmentation_model", "dense_features", "feature_indices", "iou_per_class", "is_segmentation_name",
    "list_segmentation_models", "load_segmentation_model", "mean_iou", "pixel_accuracy",
    "segmentation_model_from_config",
]
