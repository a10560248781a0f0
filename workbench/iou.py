"""Per-class IoU, confusion matrices and their differences between two runs (`docs/workbench.md`, view 5).

IoU_c = TP / (TP + FP + FN) over the whole split, from the confusion matrix (rows = ground truth,
columns = prediction), as ``runformat.metrics`` defines it for the writer too. Classes absent from both ground
truth and prediction get NaN and are left out of the mean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from runformat.metrics import iou_per_class

if TYPE_CHECKING:
    from workbench.runs import Run

__all__ = [
    "iou_from_confusion",
    "mean_iou",
    "row_normalize",
    "per_class_iou_diff",
    "confusion_difference",
    "per_image_diff",
]


def _check_confusion(conf: np.ndarray) -> np.ndarray:
    conf = np.asarray(conf)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1] or conf.shape[0] == 0:
        raise ValueError(f"confusion matrix must be square [C, C], got shape {conf.shape}")
    if (conf < 0).any():
        raise ValueError("confusion matrix has negative counts")
    return conf.astype(np.float64)


def iou_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU [C]; NaN where the class is absent from both ground truth and prediction."""
    return iou_per_class(_check_confusion(conf))


def mean_iou(ious: np.ndarray) -> float:
    """Mean over classes, ignoring NaN (absent classes); ValueError when every class is NaN."""
    ious = np.asarray(ious, dtype=np.float64)
    if ious.size == 0 or np.isnan(ious).all():
        raise ValueError("mean IoU is undefined: no class appears in ground truth or prediction")
    return float(np.nanmean(ious))


def row_normalize(conf: np.ndarray) -> np.ndarray:
    """Rows divided by their sums (fraction of each ground-truth class); rows without ground truth are zeros."""
    conf = _check_confusion(conf)
    totals = conf.sum(axis=1, keepdims=True)
    return np.divide(conf, totals, out=np.zeros_like(conf), where=totals > 0)


def _check_same_classes(run_a: Run, run_b: Run) -> None:
    if run_a.class_names != run_b.class_names:
        raise ValueError(
            f"runs {run_a.name!r} and {run_b.name!r} have different classes "
            f"({run_a.num_classes} vs {run_b.num_classes} names); compare runs of the same dataset"
        )


def per_class_iou_diff(run_a: Run, run_b: Run) -> pd.DataFrame:
    """class_id, class_name, iou_a, iou_b, diff = iou_b - iou_a, gt_frequency (share of labelled
    pixels, from run_a's confusion), sorted by diff descending (largest gain of B first; NaN last)."""
    _check_same_classes(run_a, run_b)
    conf_a, conf_b = run_a.confusion(), run_b.confusion()
    iou_a, iou_b = iou_from_confusion(conf_a), iou_from_confusion(conf_b)
    gt = conf_a.sum(axis=1).astype(np.float64)
    df = pd.DataFrame({
        "class_id": np.arange(run_a.num_classes), "class_name": run_a.class_names,
        "iou_a": iou_a, "iou_b": iou_b, "diff": iou_b - iou_a,
        "gt_frequency": gt / gt.sum() if gt.sum() > 0 else np.zeros_like(gt),
    })
    df = df.sort_values("diff", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    df.attrs.update(run_a=run_a.name, run_b=run_b.name)
    return df


def confusion_difference(run_a: Run, run_b: Run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-normalised confusion matrices of A and B, and B - A."""
    _check_same_classes(run_a, run_b)
    norm_a, norm_b = row_normalize(run_a.confusion()), row_normalize(run_b.confusion())
    return norm_a, norm_b, norm_b - norm_a


def per_image_diff(run_a: Run, run_b: Run) -> pd.DataFrame:
    """image_index, image_id, miou_a, miou_b, diff = miou_b - miou_a over images evaluated in both runs,
    sorted by diff descending (images where B helps most first)."""
    _check_same_classes(run_a, run_b)
    a = run_a.per_image()[["image_index", "image_id", "miou"]].rename(columns={"miou": "miou_a"})
    b = run_b.per_image()[["image_id", "miou"]].rename(columns={"miou": "miou_b"})
    df = a.merge(b, on="image_id", how="inner")
    if df.empty:
        raise ValueError(f"runs {run_a.name!r} and {run_b.name!r} have no evaluated image in common")
    df["diff"] = df["miou_b"] - df["miou_a"]
    df = df.sort_values("diff", ascending=False, na_position="last", kind="stable").reset_index(drop=True)
    df.attrs.update(run_a=run_a.name, run_b=run_b.name)
    return df
