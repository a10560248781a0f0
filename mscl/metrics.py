"""Segmentation metrics from a confusion matrix (IoU_c = TP / (TP + FP + FN) over a whole split)."""

from __future__ import annotations

import numpy as np
import torch


def confusion_matrix(prediction: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """[C, C] int64 counts, rows = ground truth, columns = prediction; ignore pixels are excluded."""
    valid = (label != ignore_index) & (label >= 0) & (label < num_classes)
    index = label[valid].long() * num_classes + prediction[valid].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """Per-class IoU; NaN where a class is absent from both ground truth and prediction."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def accuracy_per_class(confusion: np.ndarray) -> np.ndarray:
    """Per-class recall (pixel accuracy of each ground-truth class); NaN where the class is absent."""
    confusion = np.asarray(confusion, dtype=np.float64)
    gt = confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(gt > 0, np.diag(confusion) / gt, np.nan)


def summarize(confusion: np.ndarray) -> dict[str, float]:
    """mIoU (NaN classes left out), overall pixel accuracy and mean class accuracy."""
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    ious = iou_per_class(confusion)
    accs = accuracy_per_class(confusion)
    return {
        "miou": float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan"),
        "pixel_acc": float(np.trace(confusion) / total) if total > 0 else float("nan"),
        "mean_acc": float(np.nanmean(accs)) if np.isfinite(accs).any() else float("nan"),
    }
