"""``train.tensorboard: true``: the scalars ``mscl train`` logs, read back from the event files under RUN/tensorboard/."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mscl.cli import resolve_config_path
from mscl.config import ConfigError, load_config
from mscl.data import generate_synthetic_dataset
from mscl.tensorboard_logger import TENSORBOARD_DIR, TensorBoardLogger
from mscl.trainer import Trainer


def read_scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of every scalar in the event files of ``log_dir``."""
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {event.step: event.value for event in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step ms+cs run of the tiny model on synthetic scenes, logging every 2 steps, validating at 2 and 4."""
    root = generate_synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic", n_train=8, n_val=3, size=(48, 64), seed=0)
    overrides = [
        "name=tb", f"output_dir={tmp_path_factory.mktemp('runs')}", f"data.root={root}", "loss.preset=ms+cs",
        "train.steps=4", "data.batch_size=4", "data.val_batch_size=3", "train.log_every=2", "train.val_every=2",
        "train.checkpoint_every=2", "train.progress=false", "train.device=cpu", "export.num_pixels=100",
        "export.num_prediction_images=1", "export.num_dense_images=1", "export.project=false", "loss.projector_dim=16",
        "train.tensorboard=true",
    ]
    return Trainer(load_config(resolve_config_path("synthetic-tiny"), overrides)).fit()


def test_training_scalars_match_metrics_train_csv(tensorboard_run: Path) -> None:
    scalars = read_scalars(tensorboard_run / TENSORBOARD_DIR)
    train = pd.read_csv(tensorboard_run / "metrics" / "train.csv")
    assert train["step"].tolist() == [2, 4]
    columns = [column for column in train.columns if column not in ("step", "epoch")]
    assert {"lr", "loss/total", "loss/ce", "loss/contrastive", "loss/ms/0", "loss/cs/0-3", "sec_per_step"} <= set(columns)
    for column in columns:
        assert sorted(scalars[column]) == [2, 4], column
        np.testing.assert_allclose([scalars[column][step] for step in (2, 4)], train[column].to_numpy(), rtol=1e-6)


def test_validation_scalars_match_metrics_val_csv_and_per_class_iou(tensorboard_run: Path) -> None:
    scalars = read_scalars(tensorboard_run / TENSORBOARD_DIR)
    val = pd.read_csv(tensorboard_run / "metrics" / "val.csv")
    assert val["step"].tolist() == [2, 4]
    for metric in ("miou", "pixel_acc", "mean_acc"):
        np.testing.assert_allclose([scalars[f"val/{metric}"][step] for step in (2, 4)], val[metric].to_numpy(), rtol=1e-6)
    # the final export evaluates the same weights on the same images as the validation at the last step
    per_class = pd.read_csv(tensorboard_run / "eval" / "per_class.csv")
    for name, iou in zip(per_class["class_name"], per_class["iou"]):
        tag = f"val/iou/{name}"
        if math.isnan(iou):
            assert 4 not in scalars.get(tag, {}), f"{tag}: a class without IoU got a point"
        else:
            assert scalars[tag][4] == pytest.approx(iou, rel=1e-6)
    # mIoU is the mean of the per-class IoUs that exist
    finite = per_class["iou"].dropna()
    assert scalars["val/miou"][4] == pytest.approx(finite.mean(), rel=1e-6)


def test_logger_skips_nan_and_a_resumed_logger_replaces_later_points(tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, ["road", "car"])
    for step in (1, 2, 3):
        logger.log_train(step, {"step": step, "epoch": 0, "loss/total": float(step), "lr": 0.1})
    logger.log_val(3, {"miou": 0.5, "pixel_acc": 0.75, "mean_acc": float("nan")}, [0.5, float("nan")])
    logger.close()
    resumed = TensorBoardLogger(tmp_path, ["road", "car"], purge_step=3)
    resumed.log_train(3, {"step": 3, "epoch": 0, "loss/total": 30.0, "lr": 0.1})
    resumed.close()
    scalars = read_scalars(tmp_path)
    assert scalars["loss/total"] == {1: 1.0, 2: 2.0, 3: 30.0}
    assert "step" not in scalars and "epoch" not in scalars
    assert "val/mean_acc" not in scalars and "val/iou/car" not in scalars
    with pytest.raises(ValueError, match="class_iou has 1 values for 2 classes"):
        TensorBoardLogger(tmp_path / "other", ["road", "car"]).log_val(1, {"miou": 0.5}, [0.5])


def test_tensorboard_is_off_by_default_and_takes_only_booleans() -> None:
    assert load_config(None).train.tensorboard is False
    with pytest.raises(ConfigError, match="train.tensorboard: expects true or false, got 'yes'"):
        load_config(None, ["train.tensorboard='yes'"])
