"""workbench.runs: loading, validation and error messages on fake run directories."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fake_run import NUM_PREDICTION_IMAGES, NUM_VAL_IMAGES, PIXELS_PER_IMAGE, fake_backbone_dims, write_fake_run

from workbench.runs import MissingArtifactError, Run, RunFormatError, list_runs, load_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return load_run(write_fake_run(tmp_path_factory.mktemp("runs") / "run", num_classes=4, stages=4))


def test_metadata(run: Run) -> None:
    assert run.name == "fake-ms+cs-0"
    assert run.class_names == ["class0", "class1", "class2", "class3"]
    assert run.num_classes == 4 and run.ignore_index == 4
    assert run.palette.dtype == np.uint8 and run.palette.shape == (4, 3)
    assert run.stages == [0, 1, 2, 3]
    assert run.has_projector
    assert run.config["loss"]["preset"] == "ms+cs"
    assert run.embedding_kinds() == ["backbone", "projected"]


def test_tables_have_contract_columns(run: Run) -> None:
    train = run.train_metrics()
    assert {"loss/ms/0", "loss/ms/3", "loss/cs/0-3", "loss/cs/0-2", "loss/contrastive"} <= set(train.columns)
    assert list(run.val_metrics().columns) == ["step", "epoch", "miou", "pixel_acc", "mean_acc"]
    assert len(run.per_class()) == 4
    assert run.confusion().shape == (4, 4) and run.confusion().dtype == np.int64
    assert len(run.per_image()) == NUM_VAL_IMAGES
    assert run.eval_summary()["split"] == "val"
    assert set(run.sampler_steps()["stage"]) == {0, 1, 2, 3}
    assert len(run.sampler_class_counts()) == len(run.sampler_steps()) * 4


def test_cached_tables_are_not_shared_with_callers(run: Run) -> None:
    table = run.train_metrics()
    table["step"] = -1
    assert (run.train_metrics()["step"] >= 0).all()


def test_refresh_rereads_a_growing_run(tmp_path) -> None:
    run = load_run(write_fake_run(tmp_path / "r"))
    rows = len(run.val_metrics())
    val = run.val_metrics()
    pd.concat([val, val.tail(1).assign(step=999)]).to_csv(run.path / "metrics" / "val.csv", index=False)
    assert len(run.val_metrics()) == rows  # cached
    run.refresh()
    assert len(run.val_metrics()) == rows + 1


def test_embeddings_are_float32_with_one_row_per_pixel(run: Run) -> None:
    pixels = run.pixels()
    assert len(pixels) == NUM_VAL_IMAGES * PIXELS_PER_IMAGE
    for stage, dim in enumerate(fake_backbone_dims(4)):
        backbone = run.embeddings(stage, "backbone")
        assert backbone.dtype == np.float32 and backbone.shape == (len(pixels), dim)
    assert run.embeddings(2).shape == (len(pixels), 8)
    assert run.embeddings(2) is run.embeddings(2)  # served from the in-object cache


def test_predictions_and_dense(run: Run) -> None:
    assert run.prediction_ids() == [f"val_{i:03d}" for i in range(NUM_PREDICTION_IMAGES)]
    sample = run.prediction("val_001")
    assert sample["image"].shape == (32, 32, 3) and sample["image"].dtype == np.uint8
    assert sample["label"].shape == sample["prediction"].shape == (32, 32)
    with pytest.raises(KeyError, match="val_999"):
        run.prediction("val_999")
    dense = run.dense(run.dense_ids()[0])
    assert dense["stage0_projected"].dtype == np.float32
    assert dense["stage0_backbone"].shape == (8, 8, 8) and dense["stage3_backbone"].shape == (32, 1, 1)


def test_has(run: Run) -> None:
    assert run.has("embeddings/stage2_projected.npy")
    assert not run.has("embeddings/stage9_projected.npy")


def test_missing_artifact_names_file_and_hint(tmp_path) -> None:
    run = load_run(write_fake_run(tmp_path / "r", missing=("embeddings/stage2_projected.npy", "sampler")))
    with pytest.raises(MissingArtifactError) as info:
        run.embeddings(2, "projected")
    assert info.value.artifact == "embeddings/stage2_projected.npy"
    assert "mscl export" in info.value.hint
    assert "embeddings/stage2_projected.npy is missing" in str(info.value)
    with pytest.raises(MissingArtifactError, match="sampler/steps.parquet") as info:
        run.sampler_steps()
    assert "contrastive" in info.value.hint
    assert not run.has("embeddings/stage2_projected.npy")


def test_run_without_projector(tmp_path) -> None:
    run = load_run(write_fake_run(tmp_path / "ce", with_projector=False))
    assert not run.has_projector
    assert run.embedding_kinds() == ["backbone"]
    with pytest.raises(MissingArtifactError, match="no projectors"):
        run.embeddings(0, "projected")
    assert "loss/contrastive" not in run.train_metrics().columns


def test_bad_csv_columns(tmp_path) -> None:
    path = write_fake_run(tmp_path / "r")
    val = pd.read_csv(path / "metrics" / "val.csv").drop(columns=["miou"])
    val.to_csv(path / "metrics" / "val.csv", index=False)
    with pytest.raises(RunFormatError, match=r"metrics/val\.csv: missing column\(s\) \['miou'\]"):
        load_run(path).val_metrics()


def test_embedding_rows_must_match_pixels(tmp_path) -> None:
    path = write_fake_run(tmp_path / "r")
    np.save(path / "embeddings" / "stage1_backbone.npy", np.zeros((7, 16), dtype=np.float16))
    with pytest.raises(RunFormatError, match=r"embeddings/stage1_backbone\.npy: shape \(7, 16\)"):
        load_run(path).embeddings(1, "backbone")


def test_confusion_shape_checked(tmp_path) -> None:
    path = write_fake_run(tmp_path / "r")
    np.save(path / "eval" / "confusion.npy", np.zeros((3, 3), dtype=np.int64))
    with pytest.raises(RunFormatError, match=r"eval/confusion\.npy: expected .*\(4, 4\)"):
        load_run(path).confusion()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda meta: meta["dataset"].pop("palette"), "missing key\\(s\\) \\['palette'\\]"),
    (lambda meta: meta.update(format_version=7), "format_version"),
    (lambda meta: meta["dataset"].update(palette=[[0, 0, 0]]), "dataset.palette"),
    (lambda meta: meta["dataset"].update(palette=[[0, 0], [1, 2, 3], [4, 5, 6], [7, 8, 9]]), "dataset.palette"),
    (lambda meta: meta["model"].update(stage_strides=[4]), "stage_strides"),
])
def test_malformed_run_json(tmp_path, edit, message) -> None:
    path = write_fake_run(tmp_path / "r")
    meta = json.loads((path / "run.json").read_text())
    edit(meta)
    (path / "run.json").write_text(json.dumps(meta))
    with pytest.raises(RunFormatError, match=message):
        load_run(path)


def test_not_a_run(tmp_path) -> None:
    with pytest.raises(MissingArtifactError, match="run.json"):
        load_run(tmp_path)


def test_list_runs_two_levels_and_invalid(tmp_path) -> None:
    write_fake_run(tmp_path / "a", seed=1)
    write_fake_run(tmp_path / "group" / "b", seed=2, with_projector=False)
    write_fake_run(tmp_path / "x" / "y" / "too_deep", seed=3)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run.json").write_text("{not json")
    table = list_runs(tmp_path)
    assert list(table["path"]) == sorted(str((tmp_path / p).resolve()) for p in ("a", "broken", "group/b"))
    by_name = table.set_index("name")
    assert by_name.loc["fake-ms+cs-1", "loss_preset"] == "ms+cs"
    assert by_name.loc["fake-ce-2", "model"] == "tiny"
    summary = json.loads((tmp_path / "a" / "eval" / "summary.json").read_text())
    assert by_name.loc["fake-ms+cs-1", "miou"] == pytest.approx(summary["miou"])
    assert by_name.loc["broken", "status"] == "invalid"
    assert "not valid JSON" in by_name.loc["broken", "error"]
    assert by_name.loc["fake-ms+cs-1", "error"] == ""
