"""Real data: a short CamVid run writes a complete run directory and `mscl eval` reproduces its mIoU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mscl.cli import main as cli_main

CAMVID = Path(__file__).resolve().parents[1].parent / "shared/datasets/camvid"

pytestmark = [
    pytest.mark.camvid,
    pytest.mark.skipif(not (CAMVID / "train.txt").is_file(), reason=f"CamVid not found at {CAMVID}"),
]


@pytest.fixture(scope="module")
def camvid_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("camvid-runs")
    args = [
        "train", "--config", "camvid-tiny", "--root", str(CAMVID), "--out", str(out), "--name", "tiny-mscs",
        "--loss", "ms+cs", "--steps", "8", "--device", "cpu",
        "--set", "train.log_every=4", "--set", "train.val_every=8", "--set", "train.progress=false",
        "--set", "data.max_val_images=12", "--set", "export.project=false", "--set", "export.num_pixels=500",
    ]
    assert cli_main(args) == 0
    return out / "tiny-mscs"


def test_camvid_run_is_complete(camvid_run: Path) -> None:
    meta = json.loads((camvid_run / "run.json").read_text())
    assert meta["status"] == "finished"
    assert meta["dataset"]["name"] == "camvid" and meta["dataset"]["ignore_index"] == 11
    assert len(meta["dataset"]["class_names"]) == 11 and meta["dataset"]["num_train"] == 367
    for relative in ["config.yaml", "metrics/train.csv", "metrics/val.csv", "checkpoints/last.safetensors", "checkpoints/best.safetensors",
                     "eval/per_class.csv", "eval/confusion.npy", "sampler/steps.parquet", "embeddings/pixels.parquet",
                     "embeddings/stage3_projected.npy", "predictions/index.csv"]:
        assert (camvid_run / relative).is_file(), relative
    confusion = np.load(camvid_run / "eval/confusion.npy")
    assert confusion.shape == (11, 11)
    assert 0.9 * 12 * 90 * 120 < confusion.sum() < 12 * 90 * 120, "void pixels are excluded, the rest counted once"
    pixels = pd.read_parquet(camvid_run / "embeddings/pixels.parquet")
    assert pixels["label"].between(0, 10).all(), "void pixels must never be sampled"


def test_mscl_eval_reproduces_stored_miou(camvid_run: Path, capsys) -> None:
    stored = json.loads((camvid_run / "eval/summary.json").read_text())
    capsys.readouterr()
    assert cli_main(["eval", str(camvid_run), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{"):])
    assert summary["miou"] == pytest.approx(stored["miou"], abs=1e-12)
    assert summary["num_images"] == stored["num_images"] == 12
