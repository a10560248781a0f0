"""Trainer, run directory, resume, eval/export CLI and config handling, on small synthetic scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from mscl.cli import main as cli_main
from mscl.cli import resolve_config_path
from mscl.config import ConfigError, load_config
from mscl.data import generate_synthetic_dataset
from mscl.data.loading import EpochSampler
from mscl.metrics import iou_per_class
from mscl.trainer import Trainer

RUN_FILES = [
    "run.json",
    "config.yaml",
    "metrics/train.csv",
    "metrics/val.csv",
    "checkpoints/last.safetensors",
    "checkpoints/best.safetensors",
    "checkpoints/set-00000006/weights.safetensors",
    "checkpoints/set-00000006/state.safetensors",
    "checkpoints/set-00000006/state.json",
    "eval/summary.json",
    "eval/per_class.csv",
    "eval/confusion.npy",
    "eval/per_image.csv",
    "sampler/steps.parquet",
    "sampler/class_counts.parquet",
    "predictions/index.csv",
    "embeddings/meta.json",
    "embeddings/pixels.parquet",
]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic", n_train=16, n_val=6, size=(48, 64), seed=0)


def small_config(root: Path, out: Path, name: str, preset: str = "ms+cs", steps: int = 6, extra: list[str] | None = None):
    overrides = [
        f"name={name}",
        f"output_dir={out}",
        f"data.root={root}",
        f"loss.preset={preset}",
        f"train.steps={steps}",
        "data.batch_size=4",
        "data.val_batch_size=3",
        "data.color_jitter=0.0",
        "data.hflip=false",
        "train.log_every=2",
        "train.val_every=3",
        "train.checkpoint_every=2",
        "train.progress=false",
        "train.device=cpu",
        "export.num_pixels=200",
        "export.num_prediction_images=3",
        "export.num_dense_images=2",
        "export.project=false",
        "loss.projector_dim=16",
    ]
    replaced = {text.split("=", 1)[0] for text in extra or []}  # load_config refuses a key given twice
    overrides = [text for text in overrides if text.split("=", 1)[0] not in replaced]
    return load_config(resolve_config_path("synthetic-tiny"), overrides + (extra or []))


@pytest.fixture(scope="module")
def mscs_run(synthetic_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    return Trainer(small_config(synthetic_root, out, "mscs")).fit()


def test_run_directory_is_complete(mscs_run: Path) -> None:
    for relative in RUN_FILES:
        assert (mscs_run / relative).is_file(), relative
    meta = json.loads((mscs_run / "run.json").read_text())
    assert meta["status"] == "finished"
    assert meta["loss_preset"] == "ms+cs"
    assert meta["timing"]["steps"] == 6
    assert len(meta["model"]["stage_strides"]) == 4
    assert not list(mscs_run.rglob("*.tmp-*")), "temporary files left behind"


def test_metrics_hold_every_loss_part(mscs_run: Path) -> None:
    train = pd.read_csv(mscs_run / "metrics/train.csv")
    assert list(train["step"]) == [2, 4, 6]
    for column in ["loss/total", "loss/ce", "loss/contrastive", "loss/ms/0", "loss/ms/3", "loss/cs/0-3", "loss/cs/0-2", "lr"]:
        assert column in train.columns, column
        assert np.isfinite(train[column]).all()
    recomposed = train["loss/ce"] + 0.1 * train["loss/contrastive"]
    np.testing.assert_allclose(train["loss/total"], recomposed, rtol=1e-5)
    weighted = sum(w * train[f"loss/ms/{s}"] for s, w in enumerate([1.0, 0.7, 0.4, 0.1])) + train["loss/cs/0-3"] + train["loss/cs/0-2"]
    np.testing.assert_allclose(train["loss/contrastive"], weighted, rtol=1e-5)
    assert train["lr"].is_monotonic_decreasing
    val = pd.read_csv(mscs_run / "metrics/val.csv")
    assert list(val["step"]) == [3, 6]


def test_eval_tables_are_consistent(mscs_run: Path) -> None:
    summary = json.loads((mscs_run / "eval/summary.json").read_text())
    confusion = np.load(mscs_run / "eval/confusion.npy")
    per_class = pd.read_csv(mscs_run / "eval/per_class.csv")
    np.testing.assert_allclose(per_class["iou"], iou_per_class(confusion), equal_nan=True)
    assert summary["miou"] == pytest.approx(np.nanmean(iou_per_class(confusion)))
    assert summary["num_images"] == 6
    assert confusion.sum() == per_class["gt_pixels"].sum()
    val = pd.read_csv(mscs_run / "metrics/val.csv")
    assert summary["miou"] == pytest.approx(val["miou"].iloc[-1]), "final validation and export disagree"


def test_sampler_records(mscs_run: Path) -> None:
    steps = pd.read_parquet(mscs_run / "sampler/steps.parquet")
    counts = pd.read_parquet(mscs_run / "sampler/class_counts.parquet")
    assert sorted(steps["stage"].unique()) == [0, 1, 2, 3]
    assert (steps["n_sampled"] == steps["groups"] * steps["views"]).all()
    sampled = counts.groupby(["step", "stage"])["sampled"].sum().reset_index()
    merged = steps.merge(sampled, on=["step", "stage"])
    assert (merged["n_sampled"] == merged["sampled"]).all()


def test_embeddings_are_aligned_and_balanced(mscs_run: Path) -> None:
    pixels = pd.read_parquet(mscs_run / "embeddings/pixels.parquet")
    meta = json.loads((mscs_run / "embeddings/meta.json").read_text())
    assert meta["has_projector"] and meta["stages"] == [0, 1, 2, 3]
    assert len(pixels) == meta["num_pixels"] > 0
    for stage in range(4):
        backbone = np.load(mscs_run / f"embeddings/stage{stage}_backbone.npy")
        projected = np.load(mscs_run / f"embeddings/stage{stage}_projected.npy")
        assert backbone.shape == (len(pixels), meta["backbone_dims"][stage])
        assert projected.shape == (len(pixels), 16)
        assert np.isfinite(backbone.astype(np.float32)).all()
    per_class = pixels["label"].value_counts()
    quota = 200 // pixels["label"].nunique()
    assert per_class.max() <= quota
    dense = list((mscs_run / "embeddings/dense").glob("*.npz"))
    assert len(dense) == 2
    with np.load(dense[0]) as arrays:
        assert arrays["stage0_projected"].shape[0] == 16
        assert arrays["image"].shape[:2] == arrays["label"].shape


def test_checkpoint_holds_model_and_projectors(mscs_run: Path) -> None:
    weights = load_file(str(mscs_run / "checkpoints/last.safetensors"))
    assert any(k.startswith("model.") for k in weights)
    assert any(k.startswith("projectors.") for k in weights)


def test_cli_eval_reproduces_stored_miou(mscs_run: Path, capsys) -> None:
    stored = json.loads((mscs_run / "eval/summary.json").read_text())["miou"]
    assert cli_main(["eval", str(mscs_run), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{") :])
    assert summary["miou"] == pytest.approx(stored, abs=1e-9)


def test_cli_export_rewrites_embeddings(mscs_run: Path) -> None:
    target = mscs_run / "embeddings/stage2_projected.npy"
    before = np.load(target)
    target.unlink()
    assert cli_main(["export", str(mscs_run), "--device", "cpu", "--no-project"]) == 0
    np.testing.assert_array_equal(np.load(target), before)


def test_resume_matches_uninterrupted_training(synthetic_root, tmp_path, monkeypatch) -> None:
    full = Trainer(small_config(synthetic_root, tmp_path, "full", steps=6, extra=["export.num_pixels=50"])).fit()

    original = Trainer.train_step

    def interrupt_at_step_3(self, batch, generator):
        if self.step == 3:
            raise KeyboardInterrupt
        return original(self, batch, generator)

    monkeypatch.setattr(Trainer, "train_step", interrupt_at_step_3)
    config = small_config(synthetic_root, tmp_path, "resumed", steps=6, extra=["export.num_pixels=50"])
    with pytest.raises(KeyboardInterrupt):
        Trainer(config).fit()
    assert json.loads((tmp_path / "resumed/run.json").read_text())["status"] == "interrupted"
    assert json.loads((tmp_path / "resumed/checkpoints/set-00000003/state.json").read_text())["step"] == 3
    monkeypatch.setattr(Trainer, "train_step", original)
    Trainer(config, resume=True).fit()

    expected = load_file(str(full / "checkpoints/last.safetensors"))
    resumed = load_file(str(tmp_path / "resumed/checkpoints/last.safetensors"))
    for key, value in expected.items():
        torch.testing.assert_close(resumed[key], value, rtol=1e-5, atol=1e-6, msg=key)
    steps = pd.read_csv(tmp_path / "resumed/metrics/train.csv")["step"].tolist()
    assert steps == [2, 4, 6]


def test_fresh_training_refuses_existing_run(synthetic_root, mscs_run: Path) -> None:
    config = small_config(synthetic_root, mscs_run.parent, mscs_run.name)
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(config).fit()


def test_ce_run_has_no_contrastive_parts(synthetic_root, tmp_path) -> None:
    run = Trainer(small_config(synthetic_root, tmp_path, "ce", preset="ce", steps=2)).fit()
    train = pd.read_csv(run / "metrics/train.csv")
    assert not any(c.startswith("loss/ms") or c.startswith("loss/cs") for c in train.columns)
    np.testing.assert_allclose(train["loss/total"], train["loss/ce"], rtol=1e-6)
    assert not (run / "sampler/steps.parquet").exists()
    assert not (run / "embeddings/stage0_projected.npy").exists()
    assert (run / "embeddings/stage0_backbone.npy").exists()


def test_config_errors_name_the_key(tmp_path) -> None:
    with pytest.raises(ConfigError, match="loss.temprature"):
        load_config(overrides=["loss.temprature=0.2"])
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(overrides=["train.steps=many"])
    with pytest.raises(ConfigError, match="loss.preset"):
        load_config(overrides=["loss.preset=supcon"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  nme: camvid\n")
    with pytest.raises(ConfigError, match="bad.yaml.*data.nme"):
        load_config(bad)
    with pytest.raises(ConfigError, match="data.crop_size"):
        load_config(overrides=["data.crop_size=null", "data.scale_range=[0.5, 2.0]"])
    with pytest.raises(ConfigError, match="presets"):
        resolve_config_path("no-such-config")
    with pytest.raises(ConfigError, match="data.mean needs one value per RGB channel"):
        load_config(overrides=["data.mean=[0.5, 0.5]"])
    with pytest.raises(ConfigError, match="data.std must be positive"):
        load_config(overrides=["data.std=[0.5, 0.0, 0.5]"])
    config = load_config(overrides=["loss.temperature=0.2", "data.crop_size=[64, 64]"])
    assert config.loss.temperature == 0.2 and config.data.crop_size == [64, 64]


def test_epoch_sampler_shards_and_resumes() -> None:
    indices = list(range(20))
    ranks = [EpochSampler(indices, batch_size=3, seed=1, rank=r, world_size=2) for r in range(2)]
    for sampler in ranks:
        sampler.set_epoch(4)
    shards = [list(s) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == 9
    assert not set(shards[0]) & set(shards[1])
    resumed = EpochSampler(indices, batch_size=3, seed=1, rank=0, world_size=2)
    resumed.set_epoch(4, start_batch=2)
    assert list(resumed) == shards[0][6:]
    other_epoch = EpochSampler(indices, batch_size=3, seed=1)
    other_epoch.set_epoch(5)
    first_epoch = EpochSampler(indices, batch_size=3, seed=1)
    first_epoch.set_epoch(4)
    assert list(other_epoch) != list(first_epoch)


@pytest.mark.slow
def test_demo_writes_two_comparable_runs_with_cached_projections(tmp_path) -> None:
    from mscl.demo import make_demo
    from workbench import load_run
    from workbench.projections import projection_cache_path, select_pixels

    runs = make_demo(tmp_path, steps=4, n_train=16, n_val=4, size=(96, 128))
    assert [p.name for p in runs] == ["synthetic-ce", "synthetic-mscs"]
    ce, mscs = (load_run(p) for p in runs)
    assert ce.meta["loss_preset"] == "ce" and mscs.meta["loss_preset"] == "ms+cs"
    pd.testing.assert_frame_equal(ce.pixels()[["image_id", "y", "x"]], mscs.pixels()[["image_id", "y", "x"]])
    rows = select_pixels(mscs)
    assert projection_cache_path(mscs, 0, "projected", "umap", pixels=rows).is_file()
    assert projection_cache_path(ce, 3, "backbone", "pca", pixels=select_pixels(ce)).is_file()


@pytest.mark.parametrize("name", sorted(p.stem for p in Path(resolve_config_path("synthetic-tiny")).parent.glob("*.yaml")))
def test_every_shipped_preset_loads(name: str) -> None:
    config = load_config(resolve_config_path(name))
    assert config.loss.preset in ("ce", "ms", "ms+cs")
    assert len(config.loss.ms_weights) == 4


def test_default_config_is_valid() -> None:
    config = load_config()
    assert config.loss.preset == "ms+cs" and config.loss.contrastive_weight == 0.1 and config.loss.temperature == 0.1
    assert config.loss.ms_weights == [1.0, 0.7, 0.4, 0.1] and config.loss.cs_pairs == [[0, -1], [0, -2]]
    assert (config.loss.min_views_per_class, config.loss.max_views_per_class, config.loss.max_features_total) == (5, 2500, 10000)


def test_crash_marks_the_run_failed_with_the_error(synthetic_root, tmp_path, monkeypatch) -> None:
    def broken_step(self, batch, generator):
        raise RuntimeError("deliberate failure in step")

    monkeypatch.setattr(Trainer, "train_step", broken_step)
    with pytest.raises(RuntimeError, match="deliberate"):
        Trainer(small_config(synthetic_root, tmp_path, "crashed")).fit()
    meta = json.loads((tmp_path / "crashed/run.json").read_text())
    assert meta["status"] == "failed"
    assert meta["error"] == "RuntimeError: deliberate failure in step"
