"""workbench.iou against hand-computed values, and the two-run differences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fake_run import write_fake_run

from workbench.iou import (
    confusion_difference,
    iou_from_confusion,
    mean_iou,
    per_class_iou_diff,
    per_image_diff,
    row_normalize,
)
from workbench.runs import load_run

CONF = np.array([[5, 1, 0, 0],
                 [2, 3, 0, 1],
                 [0, 0, 0, 0],   # class 2: absent from gt and prediction
                 [0, 0, 0, 0]])  # class 3: predicted once, never in gt


def test_iou_hand_computed() -> None:
    ious = iou_from_confusion(CONF)
    # class 0: TP 5, FP 2, FN 1; class 1: TP 3, FP 1, FN 3; class 3: TP 0, FP 1, FN 0
    np.testing.assert_allclose(ious[[0, 1, 3]], [5 / 8, 3 / 7, 0.0])
    assert np.isnan(ious[2])
    assert mean_iou(ious) == pytest.approx((5 / 8 + 3 / 7 + 0.0) / 3)


def test_mean_iou_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="undefined"):
        mean_iou(np.array([np.nan, np.nan]))


def test_row_normalize_zero_rows_are_zero() -> None:
    normalised = row_normalize(CONF)
    np.testing.assert_allclose(normalised[0], [5 / 6, 1 / 6, 0, 0])
    np.testing.assert_allclose(normalised[2], 0.0)
    assert np.isfinite(normalised).all()


@pytest.fixture()
def two_runs(tmp_path):
    path_a = write_fake_run(tmp_path / "a", seed=0)
    path_b = write_fake_run(tmp_path / "b", seed=1)
    conf_a = np.array([[6, 4, 0, 0], [0, 10, 0, 0], [0, 0, 5, 5], [0, 0, 0, 10]])
    conf_b = np.array([[9, 1, 0, 0], [0, 10, 0, 0], [0, 0, 5, 5], [0, 0, 4, 6]])
    np.save(path_a / "eval" / "confusion.npy", conf_a)
    np.save(path_b / "eval" / "confusion.npy", conf_b)
    pd.DataFrame({"image_index": [0, 1, 2], "image_id": ["p", "q", "r"], "miou": [0.5, 0.6, 0.7],
                  "pixel_acc": 0.9}).to_csv(path_a / "eval" / "per_image.csv", index=False)
    pd.DataFrame({"image_index": [0, 1, 3], "image_id": ["p", "q", "s"], "miou": [0.4, 0.9, 0.1],
                  "pixel_acc": 0.9}).to_csv(path_b / "eval" / "per_image.csv", index=False)
    return load_run(path_a), load_run(path_b), conf_a, conf_b


def test_per_class_iou_diff_sign_and_order(two_runs) -> None:
    run_a, run_b, conf_a, conf_b = two_runs
    df = per_class_iou_diff(run_a, run_b)
    # IoU a -> b: class 0 6/10 -> 9/10, class 1 10/14 -> 10/11, class 2 5/10 -> 5/14, class 3 10/15 -> 6/15
    expected = {0: 9 / 10 - 6 / 10, 1: 10 / 11 - 10 / 14, 2: 5 / 14 - 5 / 10, 3: 6 / 15 - 10 / 15}
    assert list(df["class_id"]) == [0, 1, 2, 3]
    assert list(df["class_name"]) == ["class0", "class1", "class2", "class3"]
    np.testing.assert_allclose(df["diff"], [expected[c] for c in range(4)])
    assert (df["diff"].iloc[:2] > 0).all() and (df["diff"].iloc[2:] < 0).all()
    np.testing.assert_allclose(df["diff"], df["iou_b"] - df["iou_a"])
    np.testing.assert_allclose(df["iou_a"], [0.6, 10 / 14, 0.5, 10 / 15])
    assert df["gt_frequency"].sum() == pytest.approx(1.0)
    assert df.set_index("class_id").loc[2, "gt_frequency"] == pytest.approx(10 / 40)
    assert df.attrs == {"run_a": run_a.name, "run_b": run_b.name}


def test_confusion_difference(two_runs) -> None:
    run_a, run_b, conf_a, conf_b = two_runs
    norm_a, norm_b, diff = confusion_difference(run_a, run_b)
    np.testing.assert_allclose(norm_a.sum(1), 1.0)
    np.testing.assert_allclose(diff[0], [0.3, -0.3, 0, 0])
    np.testing.assert_allclose(diff[3], [0, 0, 0.4, -0.4])
    np.testing.assert_allclose(diff, norm_b - norm_a)


def test_per_image_diff_joins_common_images_sorted(two_runs) -> None:
    run_a, run_b, _, _ = two_runs
    df = per_image_diff(run_a, run_b)
    assert list(df["image_id"]) == ["q", "p"]
    np.testing.assert_allclose(df["diff"], [0.3, -0.1])
    assert list(df.columns) == ["image_index", "image_id", "miou_a", "miou_b", "diff"]


def test_runs_of_different_datasets_are_rejected(tmp_path) -> None:
    run_a = load_run(write_fake_run(tmp_path / "a", num_classes=4))
    run_b = load_run(write_fake_run(tmp_path / "b", num_classes=5))
    with pytest.raises(ValueError, match="different classes"):
        per_class_iou_diff(run_a, run_b)


def test_writer_and_reader_share_one_iou_definition() -> None:
    import mscl.metrics
    import runformat.metrics

    conf = np.array([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    assert mscl.metrics.iou_per_class is runformat.metrics.iou_per_class
    np.testing.assert_array_equal(iou_from_confusion(conf), runformat.metrics.iou_per_class(conf))
    np.testing.assert_allclose(iou_from_confusion(conf)[:2], [5 / 8, 3 / 6])
    assert np.isnan(iou_from_confusion(conf)[2])
