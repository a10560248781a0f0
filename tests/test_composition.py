"""The composition root (mscl.composition): each part built from the config, the torch LR schedule against the poly
formula, its checkpoint round trip, the export settings, the shared seeds and loaders, the registries, and a trainer
that runs the parts it is handed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from mscl.checkpoints import CheckpointError, lr_schedule_to_scalars, restore_lr_schedule
from mscl.cli import resolve_config_path
from mscl.composition import (
    PolyWarmup,
    SnapshotHook,
    TensorBoardHook,
    TrainingHook,
    build_optimizer,
    build_scheduler,
    build_training_parts,
)
from mscl.config import load_config
from mscl.data import DATASETS, generate_synthetic_dataset
from mscl.data.loading import EpochSampler, evaluation_loader, validation_loader
from mscl.export import ExportSettings
from mscl.losses import MSCSLoss
from mscl.models import MODEL_CLASSES, TinySegNet
from mscl.registry import Registry
from mscl.run_writer import RunWriter
from mscl.seeding import loader_generator, step_generator
from mscl.trainer import Trainer


def poly_lr_reference(base_lr: float, step: int, total: int, power: float, warmup: int) -> float:
    """The learning rate of step ``step`` as the loop computed it before the torch scheduler (reference formula)."""
    if warmup and step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * (1.0 - min(step, total - 1) / total) ** power


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic", n_train=10, n_val=5, size=(32, 48), seed=0)


def config_for(root: Path, out: Path, *extra: str):
    overrides = [
        "name=parts", f"output_dir={out}", f"data.root={root}", "train.steps=4", "data.batch_size=4", "data.val_batch_size=2",
        "data.max_val_images=3", "train.progress=false", "train.device=cpu", "train.log_every=2", "train.val_every=2",
        "train.checkpoint_every=2", "export.num_pixels=40", "export.num_prediction_images=1", "export.num_dense_images=1",
        "export.project=false", "loss.projector_dim=8", "optim.name=sgd", "optim.lr=0.02", "optim.warmup_steps=1",
    ]
    replaced = {text.split("=", 1)[0] for text in extra}
    return load_config(resolve_config_path("synthetic-tiny"), [o for o in overrides if o.split("=", 1)[0] not in replaced] + list(extra))


# ------------------------------------------------------------------------------------------ the parts


def test_every_part_is_built_from_the_config(synthetic_root: Path, tmp_path: Path) -> None:
    config = config_for(synthetic_root, tmp_path, "loss.preset=ms+cs", "loss.temperature=0.2", "train.tensorboard=true")
    parts = build_training_parts(config)
    assert parts.runtime.device == torch.device("cpu") and parts.runtime.is_main and not parts.runtime.distributed

    data = parts.data
    assert isinstance(data.sampler, EpochSampler) and len(data.sampler.indices) == 10
    assert (data.sampler.batch_size, data.sampler.seed, data.sampler.batches_per_epoch) == (4, config.seed, 2)
    assert data.val_indices == [0, 1, 2] and data.num_classes == len(data.info.class_names) == 7
    assert data.report is not None and data.report.problems == []
    batch = next(iter(data.train_loader(0)))
    assert batch["image"].shape == (4, 3, 32, 48)
    assert [len(sub["index"]) for loaded in data.val_loader() for sub in loaded] == [2, 1]

    assert isinstance(parts.module.model, TinySegNet) and parts.network is parts.module
    projected = parts.module.projectors(parts.module.model(batch["image"]).features)
    assert [p.shape[1] for p in projected] == [8, 8, 8, 8]
    assert isinstance(parts.contrastive_loss, MSCSLoss)
    assert [term.loss.temperature for term in parts.contrastive_loss.terms] == [0.2, 0.2]

    assert isinstance(parts.optimizer, torch.optim.SGD)
    decay, no_decay = parts.optimizer.param_groups
    assert (decay["lr"], decay["momentum"], decay["weight_decay"], no_decay["weight_decay"]) == (0.02, 0.9, 1e-4, 0.0)
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(parts.module.parameters()))
    assert isinstance(parts.scheduler, LambdaLR)
    assert [vars(f) for f in parts.scheduler.lr_lambdas] == [{"total_steps": 4, "power": 0.9, "warmup_steps": 1}] * 2

    assert isinstance(parts.writer, RunWriter) and parts.writer.run_dir == tmp_path / "parts"
    assert [type(h) for h in parts.hooks] == [TensorBoardHook, SnapshotHook]
    assert parts.hooks[1].recorder.image_indices == [0, 1, 2]
    assert parts.export == ExportSettings("val", num_pixels=40, num_prediction_images=1, num_dense_images=1, seed=0, progress=False,
                                          project=False)


def test_a_cross_entropy_run_has_no_projectors_loss_or_hooks(synthetic_root: Path, tmp_path: Path) -> None:
    config = config_for(synthetic_root, tmp_path, "loss.preset=ce", "export.snapshots=false", "optim.name=adamw")
    parts = build_training_parts(config)
    assert parts.module.projectors is None and parts.contrastive_loss is None and parts.hooks == []
    assert isinstance(parts.optimizer, torch.optim.AdamW)


def test_the_same_seed_builds_the_same_initial_weights(synthetic_root: Path, tmp_path: Path) -> None:
    first = build_training_parts(config_for(synthetic_root, tmp_path, "export.snapshots=false")).module.state_dict()
    again = build_training_parts(config_for(synthetic_root, tmp_path, "export.snapshots=false")).module.state_dict()
    other = build_training_parts(config_for(synthetic_root, tmp_path, "export.snapshots=false", "seed=1")).module.state_dict()
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not all(torch.equal(first[key], other[key]) for key in first)


# ------------------------------------------------------------------------------------------ learning-rate schedule


def _scheduler(steps: int, warmup: int, lr: float = 0.01, power: float = 0.9) -> LambdaLR:
    config = load_config(overrides=[f"train.steps={steps}", f"optim.warmup_steps={warmup}", f"optim.lr={lr}", f"optim.poly_power={power}"])
    return build_scheduler(config, build_optimizer(config, torch.nn.Linear(3, 2)))


@pytest.mark.parametrize(("steps", "warmup", "power"), [(100, 0, 0.9), (100, 10, 0.9), (7, 3, 1.0), (5, 0, 2.0)])
def test_scheduler_learning_rate_equals_the_poly_formula_at_every_step(steps: int, warmup: int, power: float) -> None:
    scheduler = _scheduler(steps, warmup, power=power)
    for step in range(steps):
        expected = poly_lr_reference(0.01, step, steps, power, warmup)
        for group in scheduler.optimizer.param_groups:
            if warmup:
                assert group["lr"] == pytest.approx(expected, rel=1e-15, abs=0), step  # the same value up to the last bit
            else:
                assert group["lr"] == expected, step  # bit for bit
        scheduler.optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr()[0] > 0


def test_poly_warmup_factor() -> None:
    factor = PolyWarmup(total_steps=100, power=0.9, warmup_steps=10)
    assert [factor(s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert factor(50) == pytest.approx(0.5**0.9) and factor(99) == factor(150) == pytest.approx(0.01**0.9)


def test_scheduler_state_round_trips_through_a_checkpoint_set() -> None:
    trained = _scheduler(20, 4)
    for _ in range(7):
        trained.optimizer.step()
        trained.step()
    scalars = json.loads(json.dumps({"lr_schedule": lr_schedule_to_scalars("poly", trained)}))  # state.json is JSON
    assert scalars["lr_schedule"]["name"] == "poly" and scalars["lr_schedule"]["state"]["last_epoch"] == 7
    resumed = _scheduler(20, 4)
    restore_lr_schedule(resumed, scalars, 7, "state.json", "way out")
    for _ in range(13):
        assert [g["lr"] for g in resumed.optimizer.param_groups] == [g["lr"] for g in trained.optimizer.param_groups]
        for scheduler in (trained, resumed):
            scheduler.optimizer.step()
            scheduler.step()


def test_a_set_without_scheduler_state_resumes_at_its_step_and_a_mismatch_is_refused() -> None:
    old_format = _scheduler(20, 0)
    restore_lr_schedule(old_format, {"step": 5}, 5, "state.json", "way out")
    assert [g["lr"] for g in old_format.optimizer.param_groups] == [poly_lr_reference(0.01, 5, 20, 0.9, 0)] * 2
    stepped = _scheduler(20, 0)
    stepped.optimizer.step()
    stepped.step()
    with pytest.raises(CheckpointError, match=r"^state.json: lr_schedule is at step 1 but the set at step 4; way out$"):
        restore_lr_schedule(_scheduler(20, 0), {"lr_schedule": lr_schedule_to_scalars("poly", stepped)}, 4, "state.json", "way out")


def test_a_resume_with_more_steps_follows_the_new_schedule() -> None:
    """The schedule's shape is the config's (``mscl train --resume RUN --steps N``), its position the checkpoint's."""
    short = _scheduler(10, 0)
    for _ in range(4):
        short.optimizer.step()
        short.step()
    longer = _scheduler(40, 0)
    restore_lr_schedule(longer, {"lr_schedule": lr_schedule_to_scalars("poly", short)}, 4, "state.json", "way out")
    assert longer.optimizer.param_groups[0]["lr"] == poly_lr_reference(0.01, 4, 40, 0.9, 0)


# ------------------------------------------------------------------------------------------ export settings


def test_export_settings_from_config() -> None:
    config = load_config(overrides=["seed=3", "data.val_split=test", "export.num_pixels=123", "export.num_prediction_images=5",
                                    "export.num_dense_images=2", "export.project=true", "train.progress=false"])
    settings = ExportSettings.from_config(config)
    assert settings == ExportSettings(split="test", num_pixels=123, num_prediction_images=5, num_dense_images=2, seed=3,
                                      progress=False, project=True)
    assert ExportSettings.from_config(config, progress=True, project=False) == ExportSettings("test", 123, 5, 2, 3, True, False)


# ------------------------------------------------------------------------------------------ seeds, loaders, registries


def test_seeds_follow_the_fixed_derivations() -> None:
    assert step_generator(3, 5, 1).initial_seed() == 3 * 1_000_003 + 5 * 7919 + 1
    assert loader_generator(3, 2, 1).initial_seed() == 3 * 7919 + 2 * 104_729 + 1


def test_evaluation_loaders_leave_the_global_generator_alone(synthetic_root: Path, tmp_path: Path) -> None:
    from mscl.data.loading import build_split

    config = config_for(synthetic_root, tmp_path)
    dataset = build_split(config, "val", train=False)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    indices = [int(i) for loaded in validation_loader(config, dataset) for sub in loaded for i in sub["index"]]
    list(evaluation_loader(dataset, None, batch_size=4, num_workers=0, seed=0))
    assert torch.equal(torch.rand(3), expected)
    assert indices == [0, 1, 2]


def test_registries_share_one_lookup_and_message() -> None:
    registry = Registry("widget", {"a": int, "b": "collections:OrderedDict"})
    assert registry.names() == ["a", "b"] and "b" in registry and len(registry) == 2
    from collections import OrderedDict

    assert registry.lookup("b") is OrderedDict
    with pytest.raises(ValueError, match=r"^unknown widget 'c'; available widgets: a, b$"):
        registry.lookup("c")
    assert MODEL_CLASSES.lookup("tiny") is TinySegNet
    with pytest.raises(ValueError, match=r"^unknown model 'segformer'; available models: tiny, deeplabv3, upernet, hrnet, ocrnet$"):
        MODEL_CLASSES.lookup("segformer")
    with pytest.raises(ValueError, match=r"^unknown dataset 'kitti'; available datasets: camvid, cityscapes, ade20k, "):
        DATASETS.lookup("kitti")


# ------------------------------------------------------------------------------------------ a trainer handed its parts


class RecordingHook(TrainingHook):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_start(self, step: int, resumed: bool) -> None:
        self.calls.append(("start", step, resumed))

    def on_log(self, step: int, row: dict[str, float]) -> None:
        self.calls.append(("log", step, row["lr"]))

    def on_validation(self, step, result, module) -> None:
        self.calls.append(("validation", step, round(result.summary()["miou"], 12), module.training))

    def close(self) -> None:
        self.calls.append(("close",))


def test_the_trainer_runs_the_parts_it_is_handed(synthetic_root: Path, tmp_path: Path) -> None:
    config = config_for(synthetic_root, tmp_path, "loss.preset=ce", "export.snapshots=false")
    parts = build_training_parts(config)
    hook = RecordingHook()
    parts.hooks.append(hook)
    run = Trainer(config, parts=parts).fit()
    val = pd.read_csv(run / "metrics/val.csv")
    train = pd.read_csv(run / "metrics/train.csv")
    lrs = [poly_lr_reference(0.02, step - 1, 4, 0.9, 1) for step in (2, 4)]
    assert hook.calls == [("start", 0, False), ("log", 2, lrs[0]), ("validation", 2, round(val["miou"][0], 12), True),
                          ("log", 4, lrs[1]), ("validation", 4, round(val["miou"][1], 12), True), ("close",)]
    np.testing.assert_array_equal(train["lr"], lrs)
    state = json.loads((run / "checkpoints/set-00000004/state.json").read_text())
    assert state["lr_schedule"]["state"]["last_epoch"] == 4
    with pytest.raises(ValueError, match="give one of them"):
        Trainer(config, resume=True, overwrite=True, parts=parts)
