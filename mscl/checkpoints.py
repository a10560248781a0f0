"""Checkpoint I/O of ``mscl`` runs (docs/run-format.md, "Checkpoints"): weights files, checkpoint sets for
``--resume`` and rebuilding a run's model for ``mscl eval`` / ``mscl export``.

A checkpoint set ``checkpoints/set-<step>/`` holds the weights, the optimizer and RNG tensors and the loop
scalars (step, epoch, best mIoU, train seconds, optimizer param groups, learning-rate schedule) of one
step. It is written under a temporary name and renamed into place in one step, so a kill leaves either the
whole set or none of it; the previous set is kept until the new one is complete. ``checkpoints/last.safetensors``
is then linked to the new set's weights (for ``mscl eval --checkpoint last`` and older tools). Runs of format
version 1 keep their last checkpoint in three separate files; they load and resume too.

Every problem with a checkpoint file is a :class:`CheckpointError` with one line naming the file and the
way out (the other checkpoint, the previous set, or a new run).
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from mscl.config import Config, load_config
from mscl.models import build_model
from mscl.projectors import ProjectorSet
from runformat.atomic import atomic_directory, link_atomically
from runformat.columns import CHECKPOINT_STATE_KEYS
from runformat.layout import (
    CONFIG_YAML,
    KEEP_SETS,
    LAST_WEIGHTS,
    LEGACY_STATE_SCALARS,
    LEGACY_STATE_TENSORS,
    RUN_JSON,
    SET_SCALARS,
    SET_TENSORS,
    SET_WEIGHTS,
    CheckpointSet,
    checkpoint_set,
    checkpoint_sets,
    checkpoint_weights,
)


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged or does not fit the model (one line: the file and the way out)."""


class SegmentationWithProjectors(nn.Module):
    """A segmentation model and, for contrastive presets, one projector per encoder stage.

    The projectors are used only in training (docs/method.md §4): inference cost is unchanged. Its state
    dict is what checkpoints hold: the model under ``model.``, the projectors under ``projectors.``.
    """

    def __init__(self, model: nn.Module, projectors: ProjectorSet | None) -> None:
        super().__init__()
        self.model = model
        self.projectors = projectors

    def forward(self, images: torch.Tensor) -> tuple[Any, list[torch.Tensor] | None]:
        output = self.model(images)
        projected = self.projectors(output.features) if self.projectors is not None else None
        return output, projected


def tensors_to_bytes(tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes of ``tensors`` (made contiguous, on CPU, without shared storage)."""
    plain = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()}
    return save(plain, metadata=metadata)


def read_tensors(path: str | Path, way_out: str) -> dict[str, torch.Tensor]:
    """Load a safetensors file; CheckpointError naming it and ``way_out`` when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found; {way_out}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is damaged or not a safetensors file ({err}); {way_out}") from None


def load_weights(module: nn.Module, weights: Mapping[str, torch.Tensor], path: str | Path, way_out: str) -> None:
    """``module.load_state_dict(weights)``; CheckpointError naming ``path`` when keys or shapes do not fit."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    misshapen = [key for key in expected if key in weights and weights[key].shape != expected[key].shape]
    if missing or unexpected or misshapen:
        parts = [f"{len(keys)} {what} (e.g. {keys[0]})" for what, keys in
                 (("missing key(s)", missing), ("unexpected key(s)", unexpected), ("tensor(s) of another shape", misshapen)) if keys]
        raise CheckpointError(f"{path} does not fit the model: {', '.join(parts)}; {way_out}")
    module.load_state_dict(weights)


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into safetensors-compatible tensors (``optim.<param>.<key>``) and JSON scalars."""
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optim.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": state["param_groups"]}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], scalars: Mapping[str, Any]) -> None:
    """Inverse of :func:`optimizer_to_tensors`."""
    state: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state[int(index)][key] = value
    optimizer.load_state_dict({"state": dict(state), "param_groups": scalars["param_groups"]})


def lr_schedule_to_scalars(name: str, scheduler: LRScheduler) -> dict[str, Any]:
    """``state.json`` ``lr_schedule``: the schedule's ``name`` and the torch scheduler's state (position, base and last
    learning rates, parameters of the factor), JSON-ready."""
    return {"name": name, "state": scheduler.state_dict()}


def restore_lr_schedule(scheduler: LRScheduler, scalars: Mapping[str, Any], step: int, path: str | Path, way_out: str) -> None:
    """Put ``scheduler`` at loop ``step`` from the ``lr_schedule`` of a checkpoint set's ``scalars`` (``path``).

    The schedule's shape (base learning rates, factor parameters) stays the config's, which a resume may change
    (``--steps``); its position comes from the set. Sets without a scheduler state (format version 1) are at
    their ``step``. Every parameter group's ``lr`` is then the schedule's value at ``step``; CheckpointError when
    the saved position is not ``step``.
    """
    saved = (scalars.get("lr_schedule") or {}).get("state")
    position = int(saved["last_epoch"]) if saved else step
    if position != step:
        raise CheckpointError(f"{path}: lr_schedule is at step {position} but the set at step {step}; {way_out}")
    state = scheduler.state_dict()
    state.update(last_epoch=step - 1, _step_count=int(saved["_step_count"]) if saved else step + 1)
    scheduler.load_state_dict(state)
    scheduler.step()


def save_checkpoint_set(
    run_dir: str | Path, step: int, weights: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor], scalars: Mapping[str, Any]
) -> Path:
    """Write ``checkpoints/set-<step>/`` as one unit, point ``checkpoints/last.safetensors`` at it and drop older sets.

    ``scalars`` must hold ``runformat.columns.CHECKPOINT_STATE_KEYS``. The newest ``KEEP_SETS`` sets stay;
    version 1 state files of a resumed old run are removed once a set supersedes them.
    """
    run_dir = Path(run_dir)
    missing = [key for key in CHECKPOINT_STATE_KEYS if key not in scalars]
    if missing:
        raise ValueError(f"checkpoint scalars lack {missing}")
    target = run_dir / checkpoint_set(step)
    with atomic_directory(target) as folder:
        (folder / SET_WEIGHTS).write_bytes(tensors_to_bytes(weights))
        (folder / SET_TENSORS).write_bytes(tensors_to_bytes(tensors))
        (folder / SET_SCALARS).write_text(json.dumps(dict(scalars), indent=2, allow_nan=True) + "\n")
    link_atomically(target / SET_WEIGHTS, run_dir / LAST_WEIGHTS)
    for old in checkpoint_sets(run_dir)[KEEP_SETS:]:
        shutil.rmtree(old.weights.parent, ignore_errors=True)
    for legacy in (LEGACY_STATE_TENSORS, LEGACY_STATE_SCALARS):
        (run_dir / legacy).unlink(missing_ok=True)
    return target


def _damaged_set_way_out(run_dir: Path, sets: list[CheckpointSet], index: int) -> str:
    if index + 1 < len(sets):
        previous = sets[index + 1]
        return (f"delete {sets[index].weights.parent} to resume from the previous set {previous.weights.parent} "
                f"(step {previous.step}), or start again with mscl train --overwrite")
    best = run_dir / checkpoint_weights("best")
    return f"the run has no other checkpoint set: start it again with --overwrite (or another --name); its best weights may be intact in {best}"


def load_checkpoint_set(run_dir: str | Path) -> tuple[CheckpointSet, dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """The newest complete checkpoint set of a run: (set, weights, optimizer/RNG tensors, loop scalars).

    FileNotFoundError when the run has none; CheckpointError naming the damaged file and the way out.
    """
    run_dir = Path(run_dir)
    sets = checkpoint_sets(run_dir)
    if not sets:
        raise FileNotFoundError(f"cannot resume {run_dir}: it holds no complete checkpoint set yet (checkpoints/set-<step>/); "
                                "start it again with mscl train --overwrite")
    latest = sets[0]
    way_out = _damaged_set_way_out(run_dir, sets, 0)
    try:
        scalars = json.loads(latest.scalars.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{latest.scalars} is damaged ({err}); {way_out}") from None
    missing = [key for key in CHECKPOINT_STATE_KEYS if not isinstance(scalars, dict) or key not in scalars]
    if missing:
        raise CheckpointError(f"{latest.scalars} lacks {missing}; {way_out}")
    weights = read_tensors(latest.weights, way_out)
    tensors = read_tensors(latest.tensors, way_out)
    return latest, weights, tensors, scalars


def resolve_checkpoint(run_dir: str | Path, checkpoint: str) -> Path:
    """The weights file of ``--checkpoint last|best``: ``last`` is the newest set's weights (version 1: last.safetensors)."""
    run_dir = Path(run_dir)
    if checkpoint == "last":
        sets = checkpoint_sets(run_dir)
        if sets:
            return sets[0].weights
    return run_dir / checkpoint_weights(checkpoint)


def load_run_module(run_dir: str | Path, checkpoint: str = "last") -> tuple[Config, SegmentationWithProjectors]:
    """Rebuild a run's model (and projectors, if its checkpoint has them) from ``config.yaml`` and a checkpoint."""
    run_dir = Path(run_dir)
    config_path, meta_path = run_dir / CONFIG_YAML, run_dir / RUN_JSON
    for path in (config_path, meta_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {run_dir} a run directory?")
    config = load_config(config_path)
    try:
        num_classes = len(json.loads(meta_path.read_text())["dataset"]["class_names"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{meta_path} is damaged (cannot read dataset.class_names: {err!r}); the run cannot be rebuilt") from None
    other = "best" if checkpoint == "last" else "last"
    way_out = f"try --checkpoint {other}"
    weights_path = resolve_checkpoint(run_dir, checkpoint)
    weights = read_tensors(weights_path, way_out)
    model = build_model(config.model.name, num_classes, encoder=config.model.encoder, **config.model.kwargs)
    has_projectors = any(key.startswith("projectors.") for key in weights)
    projectors = ProjectorSet(list(model.stage_channels), dim=config.loss.projector_dim) if has_projectors else None
    module = SegmentationWithProjectors(model, projectors)
    load_weights(module, weights, weights_path, f"it was not written for the model in {config_path}; {way_out}")
    return config, module
