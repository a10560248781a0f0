"""The one definition of the numbers a run stores in ``eval/`` (``docs/workbench.md``, "Numbers, defined once"),
shared by the ``mscl`` writer and the ``workbench`` reader: IoU_c = TP / (TP + FP + FN) from the summed confusion
matrix (rows: ground truth, columns: prediction, ignore pixels left out); a class absent from both ground truth and
prediction has no IoU (NaN) and is left out of the mean."""

from __future__ import annotations

import numpy as np


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """Per-class IoU [C] of a [C, C] confusion matrix; NaN where a class is absent from both ground truth and prediction."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    return np.divide(tp, union, out=np.full_like(tp, np.nan), where=union > 0)


def accuracy_per_class(confusion: np.ndarray) -> np.ndarray:
    """Per-class recall (pixel accuracy of each ground-truth class); NaN where the class is absent from ground truth."""
    confusion = np.asarray(confusion, dtype=np.float64)
    gt = confusion.sum(1)
    return np.divide(np.diag(confusion), gt, out=np.full_like(gt, np.nan), where=gt > 0)


def summarize(confusion: np.ndarray) -> dict[str, float]:
    """mIoU (NaN classes left out), overall pixel accuracy and mean class accuracy of a confusion matrix."""
    confusion = np.asarray(confusion, dtype=np.float64)
    total = confusion.sum()
    ious = iou_per_class(confusion)
    accs = accuracy_per_class(confusion)
    return {
        "miou": float(np.nanmean(ious)) if np.isfinite(ious).any() else float("nan"),
        "pixel_acc": float(np.trace(confusion) / total) if total > 0 else float("nan"),
        "mean_acc": float(np.nanmean(accs)) if np.isfinite(accs).any() else float("nan"),
    }
