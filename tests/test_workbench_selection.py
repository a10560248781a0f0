"""workbench.selection, workbench.feature_maps and the typed accessors of workbench.runs.Run, without Streamlit:
the default A/B pair, unique run labels, what runs share, the Feature spaces maps and what run.json says."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_run import PROJECTED_DIM, fake_backbone_dims, fake_strides, write_fake_run

from workbench import feature_maps, projections, selection, separability
from workbench.runs import BUILT_IN_ENCODER, MissingArtifactError, RunFormatError, list_runs, load_run

STAGES = 4


@pytest.fixture(autouse=True)
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "user-cache"
    monkeypatch.setenv(projections.CACHE_ENV_VAR, str(folder))
    return folder


def edit_meta(run: Path, **changes: object) -> None:
    meta = json.loads((run / "run.json").read_text())
    for key, value in changes.items():
        section, _, field = key.rpartition("__")
        (meta[section] if section else meta)[field] = value
    (run / "run.json").write_text(json.dumps(meta))


def runs_table(**columns: list) -> pd.DataFrame:
    count = len(columns["path"])
    defaults = {"status": ["finished"] * count, "dataset": ["camvid"] * count, "model": ["deeplabv3"] * count,
                "created": [""] * count, "updated": [""] * count}
    return pd.DataFrame({**defaults, **columns})


# ------------------------------------------------------------------------------------------ default pair


def test_default_pair_is_the_newest_ce_run_and_the_newest_contrastive_run() -> None:
    table = runs_table(
        path=["ce-s0", "ce-s1", "ms-s0", "mscs-s0", "mscs-s1"],
        loss_preset=["ce", "ce", "ms", "ms+cs", "ms+cs"],
        created=["2024-01-01T00:00:00+00:00", "2024-01-03T00:00:00+00:00", "2024-01-05T00:00:00+00:00",
                 "2024-01-02T00:00:00+00:00", "2024-01-04T00:00:00"],
    )
    assert selection.default_pair(table) == ("ce-s1", "ms-s0")
    assert selection.default_pair(table.iloc[[0, 1, 3, 4]]) == ("ce-s1", "mscs-s1")
    assert selection.default_pair(table.iloc[:0]) == (None, None)
    assert selection.default_pair(table.iloc[:1]) == ("ce-s0", None)


def test_default_pair_prefers_the_same_setup_then_finished_runs_with_embeddings(tmp_path: Path) -> None:
    names = ["ce", "ce-running", "ce-not-exported", "mscs-other-model", "mscs-running", "mscs-not-exported", "mscs"]
    for name in ("ce", "ce-running", "mscs-other-model", "mscs-running", "mscs"):
        (tmp_path / name / "embeddings").mkdir(parents=True)
        (tmp_path / name / "embeddings" / "meta.json").write_text("{}")
    table = runs_table(
        path=[str(tmp_path / name) for name in names],
        loss_preset=["ce", "ce", "ce", "ms+cs", "ms+cs", "ms+cs", "ms+cs"],
        status=["finished", "running", "finished", "finished", "running", "finished", "finished"],
        model=["deeplabv3", "deeplabv3", "deeplabv3", "upernet", "deeplabv3", "deeplabv3", "deeplabv3"],
        created=["2024-01-01", "2024-02-01", "2024-02-02", "2024-03-01", "2024-04-01", "2024-04-02", "2024-01-15"],
    )
    assert selection.default_pair(table) == (str(tmp_path / "ce"), str(tmp_path / "mscs"))
    (tmp_path / "mscs" / "embeddings" / "meta.json").unlink()
    assert selection.default_pair(table)[1] == str(tmp_path / "mscs-not-exported")


def test_default_pair_uses_updated_when_created_is_absent_and_table_order_on_ties() -> None:
    table = runs_table(path=["ce-a", "ce-b", "mscs-a", "mscs-b"], loss_preset=["ce", "ce", "ms+cs", "ms+cs"],
                       updated=["2024-01-01", "2024-02-01", "", "not a time"])
    assert selection.default_pair(table) == ("ce-b", "mscs-a")
    no_baseline = runs_table(path=["ms", "mscs"], loss_preset=["ms", "ms+cs"], created=["2024-01-01", "2024-02-01"])
    assert selection.default_pair(no_baseline) == ("mscs", "ms")


def test_newest_first_orders_by_created_then_updated() -> None:
    table = runs_table(path=["a", "b", "c", "d"], loss_preset=["ce"] * 4,
                       created=["2024-01-02T00:00:00+01:00", "", "2024-01-01T23:30:00+00:00", ""],
                       updated=["", "2024-03-01", "", ""])
    assert selection.newest_first(table)["path"].tolist() == ["b", "c", "a", "d"]


# ------------------------------------------------------------------------------------------ labels


def test_config_differences_name_what_sets_runs_apart() -> None:
    configs = {
        "w0.3": {"name": "mscs-s0", "output_dir": "x", "seed": 0, "loss": {"preset": "ms+cs", "weight": 0.3, "tau": 0.1}},
        "tau0.2": {"name": "mscs-s0", "output_dir": "y", "seed": 0, "loss": {"preset": "ms+cs", "weight": 0.1, "tau": 0.2}},
        "base": {"name": "mscs-s0", "output_dir": "z", "seed": 0, "loss": {"preset": "ms", "weight": 0.1, "tau": 0.1},
                 "data": {"mean": [0.5]}},
        "captured": {},
    }
    assert selection.config_differences(configs) == {
        "w0.3": {"loss.weight": 0.3}, "tau0.2": {"loss.tau": 0.2}, "base": {}, "captured": {}}
    assert selection.config_differences({"only": {"seed": 1}}) == {"only": {}}
    assert selection.flatten_config({"a": {"b": {"c": 1}}, "d": [1, 2]}) == {"a.b.c": 1, "d": [1, 2]}


def test_run_labels_are_unique_for_runs_of_the_same_name(tmp_path: Path) -> None:
    runs = {}
    for folder, temperature in (("tau0.1", "0.1"), ("tau0.2", "0.2"), ("tau0.5", "0.5")):
        runs[folder] = write_fake_run(tmp_path / folder / "mscs-s0", seed=1, stages=STAGES)
        config = runs[folder] / "config.yaml"
        config.write_text(config.read_text().replace("temperature: 0.1", f"temperature: {temperature}"))
    baseline = write_fake_run(tmp_path / "ce", seed=0, stages=STAGES, with_projector=False)
    edit_meta(baseline, name=load_run(runs["tau0.1"]).name)
    (baseline / "eval" / "summary.json").unlink()
    (baseline / "metrics" / "val.csv").write_text("step,miou,pixel_acc,mean_acc\n")
    table = list_runs(tmp_path)
    labels = selection.run_labels(table, tmp_path)
    assert len(set(labels.values())) == len(labels) == 4
    miou = 100 * load_run(runs["tau0.5"]).eval_summary()["miou"]
    assert labels[str(runs["tau0.5"].resolve())] == f"tau0.5/mscs-s0 · ms+cs · mIoU {miou:.1f} % · temperature 0.5"
    assert labels[str(baseline.resolve())] == "ce · ce"
    assert selection.run_labels(table.iloc[[0]], baseline)[str(baseline.resolve())] == "ce · ce"


def test_run_label_formats_lists_and_keeps_at_most_three_differences() -> None:
    row = {"path": "/runs/a/b", "loss_preset": "ms", "miou": 0.4567}
    differences = {"loss.ms_weights": [0.1, 0.4], "seed": 2, "model.encoder": None, "loss.tau": 0.2}
    assert selection.run_label(row, "/runs", differences) == "a/b · ms · mIoU 45.7 % · ms_weights [0.1, 0.4], seed 2, encoder none"
    assert selection.run_label({**row, "miou": float("nan")}, "/elsewhere") == "/runs/a/b · ms"


def test_short_labels_use_names_then_paths(tmp_path: Path) -> None:
    first = load_run(write_fake_run(tmp_path / "x" / "run", seed=1, stages=STAGES))
    second = load_run(write_fake_run(tmp_path / "y" / "run", seed=1, stages=STAGES))
    other = load_run(write_fake_run(tmp_path / "z", seed=2, stages=STAGES))
    assert selection.short_labels([first, other], tmp_path) == [first.name, other.name]
    assert selection.short_labels([first, second], tmp_path) == ["x/run", "y/run"]
    assert selection.short_labels([first, first], tmp_path) == ["A: x/run", "B: x/run"]


# ------------------------------------------------------------------------------------------ what runs share


def test_shared_ids_and_embedding_kinds(tmp_path: Path) -> None:
    contrastive = load_run(write_fake_run(tmp_path / "a", seed=0, stages=STAGES))
    baseline_path = write_fake_run(tmp_path / "b", seed=1, stages=STAGES, with_projector=False)
    index = pd.read_csv(baseline_path / "predictions" / "index.csv")
    index.iloc[1:].to_csv(baseline_path / "predictions" / "index.csv", index=False)
    baseline = load_run(baseline_path)
    assert selection.shared_prediction_ids([contrastive, baseline]) == contrastive.prediction_ids()[1:]
    assert selection.shared_prediction_ids([]) == []
    assert selection.shared_dense_ids([contrastive, baseline]) == contrastive.dense_ids()
    assert selection.embedding_kinds([baseline]) == ["backbone"]
    assert selection.embedding_kinds([baseline, contrastive]) == ["backbone", "projected"]
    assert selection.default_embedding_kind([contrastive]) == "projected"
    assert selection.default_embedding_kind([contrastive, baseline]) == "backbone"


# ------------------------------------------------------------------------------------------ typed accessors


def test_run_accessors_read_run_json(tmp_path: Path) -> None:
    path = write_fake_run(tmp_path / "run", seed=0, stages=STAGES)
    run = load_run(path)
    assert run.status == "finished" and run.loss_preset == "ms+cs" and run.world_size == 1 and run.dataset_name == "fake"
    assert run.created == datetime(2024, 1, 1, tzinfo=UTC) and run.updated == datetime(2024, 1, 1, 1, tzinfo=UTC)
    assert (run.timing.train_seconds, run.timing.steps, run.timing.sec_per_step) == (60.0, 200, 0.3)
    assert (run.dataset_counts.num_train, run.dataset_counts.num_val) == (10, 6)
    info = run.model_info
    assert (info.name, info.stage_strides, info.stage_channels) == ("tiny", tuple(fake_strides(STAGES)),
                                                                   tuple(fake_backbone_dims(STAGES)))
    assert (info.projector_dim, info.num_parameters, info.encoder_label) == (PROJECTED_DIM, 1234, "none")
    assert run.embedding_widths("backbone") == dict(enumerate(fake_backbone_dims(STAGES)))
    assert run.embedding_widths("projected") == dict.fromkeys(range(STAGES), PROJECTED_DIM)
    assert run.has_checkpoint


def test_run_accessors_for_missing_and_null_values(tmp_path: Path) -> None:
    path = write_fake_run(tmp_path / "run", seed=0, stages=STAGES, with_projector=False)
    edit_meta(path, model__encoder=None, timing={}, created="2024-05-01T12:00:00")
    meta = json.loads((path / "run.json").read_text())
    for key in ("updated", "world_size"):
        del meta[key]
    del meta["dataset"]["num_train"]
    (path / "run.json").write_text(json.dumps(meta))
    run = load_run(path)
    assert run.model_info.encoder is None and run.model_info.encoder_label == BUILT_IN_ENCODER == "built-in encoder"
    assert (run.timing.train_seconds, run.timing.steps, run.timing.sec_per_step) == (None, None, None)
    assert run.dataset_counts.num_train is None and run.updated is None and run.world_size == 1
    assert run.created == datetime(2024, 5, 1, 12, tzinfo=UTC)
    with pytest.raises(ValueError, match="has no projectors, so no projected embeddings; use kind='backbone'"):
        run.embedding_widths("projected")
    edit_meta(path, created="yesterday")
    with pytest.raises(RunFormatError, match=r"^run.json: key 'created' must be an ISO 8601 time such as "
                                             r"2024-01-01T00:00:00\+00:00, got 'yesterday'$"):
        _ = load_run(path).created


def test_missing_export_hint_depends_on_the_checkpoint(tmp_path: Path) -> None:
    with_checkpoint = load_run(write_fake_run(tmp_path / "kept", seed=0, stages=STAGES, missing=("embeddings",)))
    with pytest.raises(MissingArtifactError) as kept:
        with_checkpoint.embedding_meta()
    assert kept.value.hint == f"run `mscl export {with_checkpoint.path}`"
    shipped = load_run(write_fake_run(tmp_path / "shipped", seed=0, stages=STAGES, missing=("embeddings", "predictions", "checkpoints")))
    assert not shipped.has_checkpoint
    for load in (shipped.embedding_meta, shipped.prediction_ids, lambda: shipped.eval_summary("eval-test-best")):
        with pytest.raises(MissingArtifactError) as missing:
            load()
        assert missing.value.hint == (
            "this run has no checkpoint (its `checkpoints/` folder was not shipped or copied with it), so `mscl export` "
            f"and `mscl eval` cannot make it; train the run again with `mscl train --config {shipped.path}/config.yaml "
            "--out runs` (the new run is exported when training ends) or pick a run that has it")
    with pytest.raises(MissingArtifactError) as snapshots:
        shipped.snapshots().steps
    assert "mscl export" not in snapshots.value.hint


# ------------------------------------------------------------------------------------------ feature maps


def test_feature_maps_read_and_fill_the_projection_cache(tmp_path: Path) -> None:
    first = load_run(write_fake_run(tmp_path / "a", seed=3, stages=STAGES))
    second = load_run(write_fake_run(tmp_path / "b", seed=3, stages=STAGES))
    rows = feature_maps.own_pixel_rows(first)
    np.testing.assert_array_equal(rows, projections.select_pixels(first, seed=projections.DEFAULT_SEED))
    shared = feature_maps.shared_pixel_rows(first, second)
    assert shared is not None and feature_maps.same_pixels([rows, feature_maps.own_pixel_rows(second)], shared)
    assert not feature_maps.same_pixels([rows, rows[::-1]], shared) and not feature_maps.same_pixels([rows], None)
    stages = tuple(first.embedding_stages())
    assert not feature_maps.maps_are_cached(first, stages, "projected", "pca", rows, align=True)
    assert feature_maps.default_map_method(first, "projected", stages, ["tsne", "pca"]) == "pca"
    maps = feature_maps.stage_maps(first, stages, "projected", "pca", rows, align=True)
    assert [coords.shape for coords in maps] == [(len(rows), 2)] * STAGES
    assert feature_maps.maps_are_cached(first, stages, "projected", "pca", rows, align=True)
    assert not feature_maps.maps_are_cached(first, stages[:1], "projected", "tsne", rows, align=False)
    single = feature_maps.stage_maps(first, stages[:2], "backbone", "pca", rows, align=False)
    assert feature_maps.maps_are_cached(first, stages[:2], "backbone", "pca", rows, align=False)
    expected = separability.trustworthiness(first.embeddings(0, "backbone")[rows], single[0])
    assert feature_maps.map_trustworthiness(first, 0, "backbone", rows, single[0]) == pytest.approx(expected)
    assert 0.0 <= expected <= 1.0


def test_shared_pixel_rows_is_none_without_common_pixels(tmp_path: Path) -> None:
    first = load_run(write_fake_run(tmp_path / "a", seed=3, stages=STAGES))
    other_path = write_fake_run(tmp_path / "b", seed=4, stages=STAGES)
    pixels = pd.read_parquet(other_path / "embeddings" / "pixels.parquet")
    pixels.assign(image_id="elsewhere").to_parquet(other_path / "embeddings" / "pixels.parquet", index=False)
    assert feature_maps.shared_pixel_rows(first, load_run(other_path)) is None
