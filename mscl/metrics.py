"""Segmentation metrics: the confusion matrix of a batch (torch), and the split-level numbers computed from it by
``runformat.metrics`` (IoU_c = TP / (TP + FP + FN) over a whole split), the definition the workbench reads too."""

from __future__ import annotations

import torch

from runformat.metrics import accuracy_per_class, iou_per_class, summarize

__all__ = ["accuracy_per_class", "confusion_matrix", "iou_per_class", "summarize"]


def confusion_matrix(prediction: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """[C, C] int64 counts, rows = ground truth, columns = prediction; ignore pixels are excluded."""
    valid = (label != ignore_index) & (label >= 0) & (label < num_classes)
    index = label[valid].long() * num_classes + prediction[valid].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
