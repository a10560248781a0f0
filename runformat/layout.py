"""Where each artifact lives in a run directory (docs/run-format.md): paths relative to the run directory.

Also the checkpoint sets of format version 2 (``checkpoints/set-<step>/``) and the three separate
checkpoint files of version 1, found without torch.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

FORMAT_VERSION = 2
"""Version written into ``run.json`` by this code (2: checkpoint sets, export swap, run lock)."""
READABLE_FORMAT_VERSIONS = (1, 2)
"""Versions this code reads and resumes (version 1 keeps its checkpoint in three separate files)."""

RUN_JSON = "run.json"
CONFIG_YAML = "config.yaml"
TRAIN_METRICS = "metrics/train.csv"
VAL_METRICS = "metrics/val.csv"
EVAL_DIR = "eval"
EVAL_SUMMARY = "eval/summary.json"
PER_CLASS = "eval/per_class.csv"
CONFUSION = "eval/confusion.npy"
PER_IMAGE = "eval/per_image.csv"
SAMPLER_STEPS = "sampler/steps.parquet"
SAMPLER_CLASS_COUNTS = "sampler/class_counts.parquet"
PREDICTIONS_DIR = "predictions"
PREDICTION_INDEX = "predictions/index.csv"
EMBEDDINGS_DIR = "embeddings"
EMBEDDING_META = "embeddings/meta.json"
PIXELS = "embeddings/pixels.parquet"
DENSE_DIR = "embeddings/dense"
PROJECTIONS_DIR = "projections"
CHECKPOINTS_DIR = "checkpoints"
LOCK_FILE = ".run.lock"
"""Lock file of ``runformat.lock.RunLock`` (holds the holder's PID, command and start time as JSON)."""
SWAP_JOURNAL = ".swap.json"
"""Present only while an export's folders are being swapped in (``runformat.atomic.swap_folders``)."""
EXPORT_FOLDERS = (EVAL_DIR, PREDICTIONS_DIR, EMBEDDINGS_DIR)
"""Folders one export writes together: they are replaced as one unit."""

SET_PREFIX = "set-"
SET_WEIGHTS = "weights.safetensors"
SET_TENSORS = "state.safetensors"
SET_SCALARS = "state.json"
SET_FILES = (SET_WEIGHTS, SET_TENSORS, SET_SCALARS)
KEEP_SETS = 2
"""Complete checkpoint sets kept: the newest and the one before it (the way back when the newest is damaged)."""
LEGACY_STATE_TENSORS = "checkpoints/last_state.safetensors"
LEGACY_STATE_SCALARS = "checkpoints/last_state.json"
LAST_WEIGHTS = "checkpoints/last.safetensors"
BEST_WEIGHTS = "checkpoints/best.safetensors"

_SET_NAME = re.compile(rf"{SET_PREFIX}(\d+)")


def eval_folder(split: str, checkpoint: str) -> str:
    """Folder of ``mscl eval RUN --split SPLIT --checkpoint CHECKPOINT --save``."""
    return f"eval-{split}-{checkpoint}"


def prediction_file(file: str) -> str:
    """A prediction image's ``.npz`` (``file`` as listed in predictions/index.csv)."""
    return f"{PREDICTIONS_DIR}/{file}"


def embedding_file(stage: int, kind: str) -> str:
    """Embeddings of the sampled pixels at ``stage``; ``kind`` is ``backbone`` or ``projected``."""
    return f"{EMBEDDINGS_DIR}/stage{stage}_{kind}.npy"


def dense_file(image_id: str) -> str:
    """Dense per-stage feature maps of one image."""
    return f"{DENSE_DIR}/{image_id}.npz"


def rank_log(rank: int) -> str:
    """Un-averaged loss parts of one DDP process (``train.log_all_ranks``)."""
    return f"logs/rank{rank}.csv"


def checkpoint_weights(name: str) -> str:
    """``checkpoints/last.safetensors`` or ``checkpoints/best.safetensors``."""
    return f"{CHECKPOINTS_DIR}/{name}.safetensors"


def checkpoint_set(step: int) -> str:
    """The checkpoint set written after optimiser step ``step``."""
    return f"{CHECKPOINTS_DIR}/{SET_PREFIX}{step:08d}"


@dataclass(frozen=True)
class CheckpointSet:
    """One complete checkpoint: model weights, optimizer/RNG tensors and loop scalars of the same step.

    ``legacy`` marks format version 1, where the three files lie directly in ``checkpoints/``
    (``last.safetensors``, ``last_state.safetensors``, ``last_state.json``); its ``step`` is read from the
    JSON file (None when that file cannot be read).
    """

    step: int | None
    weights: Path
    tensors: Path
    scalars: Path
    legacy: bool = False


def checkpoint_sets(run_dir: str | Path) -> list[CheckpointSet]:
    """The run's complete checkpoint sets, newest first.

    A version 2 set is a ``checkpoints/set-<step>`` folder (a set still being written has a temporary
    name) holding all of ``SET_FILES``. Without any, the version 1 files count as one set when all three exist.
    """
    folder = Path(run_dir) / CHECKPOINTS_DIR
    sets = []
    if folder.is_dir():
        for child in folder.iterdir():
            match = _SET_NAME.fullmatch(child.name)
            if match and child.is_dir() and all((child / name).is_file() for name in SET_FILES):
                sets.append(CheckpointSet(int(match.group(1)), *(child / name for name in SET_FILES)))
    if sets:
        return sorted(sets, key=lambda s: s.step, reverse=True)
    run_dir = Path(run_dir)
    legacy = [run_dir / LAST_WEIGHTS, run_dir / LEGACY_STATE_TENSORS, run_dir / LEGACY_STATE_SCALARS]
    if all(path.is_file() for path in legacy):
        try:
            step = int(json.loads(legacy[2].read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            step = None
        return [CheckpointSet(step, *legacy, legacy=True)]
    return []


def latest_checkpoint_set(run_dir: str | Path) -> CheckpointSet | None:
    """The newest complete checkpoint set (what ``mscl train --resume`` continues from), or None."""
    sets = checkpoint_sets(run_dir)
    return sets[0] if sets else None
