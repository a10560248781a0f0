"""Predictions of every evaluated image are kept by default (``export.num_prediction_images: null``), in small
archives (labels uint8 where the classes fit, the image as JPEG) that the workbench reads next to the archives
written before (raw image, int16 labels); the IoU page offers the ranked images both runs saved and says how many."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from fake_run import NUM_PREDICTION_IMAGES, NUM_VAL_IMAGES, write_fake_run  # noqa: E402

from app_pages import common  # noqa: E402
from mscl.cli import resolve_config_path  # noqa: E402
from mscl.config import load_config  # noqa: E402
from mscl.data import generate_synthetic_dataset  # noqa: E402
from mscl.export import ExportSettings, display_image, encode_image, label_dtype  # noqa: E402
from mscl.trainer import Trainer  # noqa: E402
from runformat import layout  # noqa: E402
from workbench import iou  # noqa: E402
from workbench.runs import RunFormatError, load_run  # noqa: E402

APP = str(REPO_ROOT / "app.py")
IOU_PAGE = "app_pages/iou.py"
NUM_VAL = 5
CAMVID = Path("/work/shared/datasets/camvid")


# ------------------------------------------------------------------------------------------ the setting


def test_every_prediction_is_kept_unless_the_config_limits_it() -> None:
    config = load_config()
    assert config.export.num_prediction_images is None
    assert ExportSettings.from_config(config).num_prediction_images is None
    assert ExportSettings("val").num_prediction_images is None
    for path in sorted((REPO_ROOT / "mscl" / "configs").glob("*.yaml")):
        assert load_config(path).export.num_prediction_images is None, path.name
    assert load_config(overrides=["export.num_prediction_images=4"]).export.num_prediction_images == 4


def test_labels_are_stored_in_the_smallest_dtype_that_holds_them() -> None:
    assert label_dtype(11, 255) == np.uint8  # CamVid: 11 classes, ignore 255
    assert label_dtype(256, 0) == np.uint8
    assert label_dtype(300, 255) == np.uint16
    assert label_dtype(19, -1) == np.int16  # a negative ignore index needs a signed type


# ------------------------------------------------------------------------------------------ the export


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step cross-entropy run on 5 synthetic val images, exported with the default ``export`` settings."""
    root = generate_synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic", n_train=4, n_val=NUM_VAL,
                                      size=(32, 48), seed=0)
    out = tmp_path_factory.mktemp("runs")
    overrides = [f"output_dir={out}", f"data.root={root}", "name=kept", "loss.preset=ce", "train.steps=2",
                 "data.batch_size=2", "data.val_batch_size=2", "train.val_every=2", "train.log_every=1",
                 "train.checkpoint_every=2", "train.progress=false", "train.device=cpu", "export.num_pixels=60",
                 "export.project=false", "export.snapshots=false"]
    config = load_config(resolve_config_path("synthetic-tiny"), overrides)
    assert config.export.num_prediction_images is None and config.export.num_dense_images == 3
    Trainer(config).fit()
    return out / "kept"


def test_an_export_keeps_every_evaluated_image_by_default(trained: Path) -> None:
    run = load_run(trained)
    evaluated = run.per_image()["image_id"].tolist()
    assert len(evaluated) == NUM_VAL
    assert run.prediction_ids() == evaluated
    assert sorted(path.name for path in (trained / "predictions").glob("*.npz")) == [f"{i}.npz" for i in evaluated]
    assert run.dense_ids() == [evaluated[0], evaluated[2], evaluated[4]]  # evenly spaced over the kept images


def test_prediction_archives_hold_uint8_labels_and_a_jpeg_image(trained: Path) -> None:
    from mscl.data.loading import evaluation_split

    run = load_run(trained)
    dataset = evaluation_split("synthetic", run.config["data"]["root"], "val", resize=None, mean=(0, 0, 0), std=(1, 1, 1))
    pixels = run.pixels()
    for index, image_id in enumerate(run.prediction_ids()):
        with np.load(trained / layout.prediction_file(f"{image_id}.npz"), allow_pickle=False) as data:
            assert sorted(data.files) == ["image_jpeg", "label", "prediction"]
            assert data["label"].dtype == data["prediction"].dtype == np.uint8
            encoded = data["image_jpeg"]
        assert Image.open(io.BytesIO(encoded.tobytes())).format == "JPEG"
        sample = run.prediction(image_id)
        _, raw_label = dataset.load_raw(index)
        np.testing.assert_array_equal(sample["label"], raw_label)
        assert sample["label"].dtype == sample["prediction"].dtype == np.int64
        original = display_image(dataset, index, raw_label.shape)
        assert sample["image"].dtype == np.uint8 and sample["image"].shape == original.shape
        np.testing.assert_array_equal(sample["image"], np.asarray(Image.open(io.BytesIO(encode_image(original).tobytes()))))
        assert np.abs(sample["image"].astype(float) - original).mean() < 12.0  # noise textures: JPEG's worst case
        here = pixels[pixels["image_id"] == image_id]
        np.testing.assert_array_equal(sample["prediction"][here["y"], here["x"]], here["prediction"])


@pytest.mark.skipif(not CAMVID.is_dir(), reason="the CamVid dataset is not on this machine")
def test_the_new_archive_is_a_fraction_of_the_old_one_on_a_camvid_image() -> None:
    image_id = (CAMVID / "val.txt").read_text().split()[0]
    image = np.asarray(Image.open(CAMVID / "val" / f"{Path(image_id).stem}.png").convert("RGB"))
    label = np.asarray(Image.open(CAMVID / "valannot" / f"{Path(image_id).stem}.png")).astype(np.int64)
    assert label.shape == image.shape[:2] and label.max() <= 255

    def size(**arrays: np.ndarray) -> int:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return len(buffer.getvalue())

    old = size(image=image, label=label.astype(np.int16), prediction=label.astype(np.int16))
    new = size(image_jpeg=encode_image(image), label=label.astype(label_dtype(11, 255)),
               prediction=label.astype(label_dtype(11, 255)))
    assert new < old / 3
    decoded = np.asarray(Image.open(io.BytesIO(encode_image(image).tobytes())))
    assert np.abs(decoded.astype(float) - image).mean() < 3.0  # about 2 of 255 on CamVid


# ------------------------------------------------------------------------------------------ old archives


def test_archives_written_before_still_read(tmp_path: Path) -> None:
    run_dir = write_fake_run(tmp_path / "old", seed=0)  # raw image, int16 labels: the archives of earlier runs
    with np.load(run_dir / layout.prediction_file("val_000.npz")) as data:
        assert data["label"].dtype == np.int16 and "image" in data.files
        expected = {key: data[key] for key in data.files}
    sample = load_run(run_dir).prediction("val_000")
    np.testing.assert_array_equal(sample["image"], expected["image"])
    np.testing.assert_array_equal(sample["label"], expected["label"])
    assert sample["label"].dtype == np.int64


def test_an_archive_without_a_readable_image_names_the_file(tmp_path: Path) -> None:
    run_dir = write_fake_run(tmp_path / "bad", seed=0)
    label = np.zeros((4, 4), dtype=np.uint8)
    np.savez(run_dir / layout.prediction_file("val_000.npz"), image_jpeg=np.arange(20, dtype=np.uint8), label=label,
             prediction=label)
    np.savez(run_dir / layout.prediction_file("val_001.npz"), label=label, prediction=label)
    run = load_run(run_dir)
    with pytest.raises(RunFormatError) as error:
        run.prediction("val_000")
    message = str(error.value)
    assert message.startswith("predictions/val_000.npz: 'image_jpeg' cannot be decoded as an image (")
    assert message.endswith(f"rewrite the predictions with `mscl export {run.path}`")
    with pytest.raises(RunFormatError, match=r"^predictions/val_001\.npz: missing array\(s\) \['image or image_jpeg'\]$"):
        run.prediction("val_001")


# ------------------------------------------------------------------------------------------ the IoU page


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two fake runs that saved the predictions of 3 of their 6 val images; B lost the last one of them."""
    root = tmp_path_factory.mktemp("iou-runs")
    write_fake_run(root / "baseline", seed=0, with_projector=False)
    contrastive = write_fake_run(root / "contrastive", seed=1)
    index = pd.read_csv(contrastive / layout.PREDICTION_INDEX)
    index.iloc[:-1].to_csv(contrastive / layout.PREDICTION_INDEX, index=False)
    return root


def open_iou_page(root: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv(common.RUNS_ENV_VAR, str(root))
    app = AppTest.from_file(APP, default_timeout=60)
    app.run()
    app.selectbox(key="run_a").set_value(str((root / "baseline").resolve()))
    app.selectbox(key="run_b").set_value(str((root / "contrastive").resolve()))
    app.run()
    app.switch_page(IOU_PAGE).run()
    assert not app.exception, [item.value for item in app.exception]
    assert not app.error, [item.value for item in app.error]
    return app


def test_iou_page_offers_only_images_both_runs_saved_and_says_how_many(two_runs: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    app = open_iou_page(two_runs, monkeypatch)
    ranked = iou.per_image_diff(load_run(two_runs / "baseline"), load_run(two_runs / "contrastive"))
    both = {f"val_{i:03d}" for i in range(NUM_PREDICTION_IMAGES - 1)}
    offered = [option.split()[0] for option in app.selectbox(key="iou_image").options]
    assert offered == [image_id for image_id in ranked["image_id"] if image_id in both]
    note = f"{len(both)} of the {NUM_VAL_IMAGES} ranked images can be opened: only those have predictions saved by both runs"
    assert any(item.value.startswith(note) for item in app.caption)
    assert any("`export.num_prediction_images: null`" in item.value for item in app.caption)
    per_image = app.dataframe[-1].value
    assert per_image["saved"].tolist() == [image_id in both for image_id in per_image["image_id"]]


def test_iou_page_says_when_every_ranked_image_can_be_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, seed, projector in (("baseline", 0, False), ("contrastive", 1, True)):
        run_dir = write_fake_run(tmp_path / name, seed=seed, with_projector=projector)
        keep = pd.read_csv(run_dir / layout.PREDICTION_INDEX)
        image_ids = load_run(run_dir).per_image()["image_id"]  # save the predictions of every image
        rows = []
        for number, image_id in enumerate(image_ids):
            source = keep["file"].iloc[number % len(keep)]
            (run_dir / layout.prediction_file(f"{image_id}.npz")).write_bytes((run_dir / "predictions" / source).read_bytes())
            rows.append({"image_index": number, "image_id": image_id, "file": f"{image_id}.npz"})
        pd.DataFrame(rows).to_csv(run_dir / layout.PREDICTION_INDEX, index=False)
    app = open_iou_page(tmp_path, monkeypatch)
    assert len(app.selectbox(key="iou_image").options) == NUM_VAL_IMAGES
    assert any(item.value == f"All {NUM_VAL_IMAGES} ranked images have predictions saved by both runs: pick one to see them."
               for item in app.caption)
