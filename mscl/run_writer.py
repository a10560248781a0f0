"""The writer of run directories (format: ``docs/run-format.md``), on top of ``runformat``.

Every file goes through the one atomic writer (``runformat.atomic``): written under a temporary name in
its final folder, flushed to disk and renamed, so an interrupted run never leaves a half-written file.
Checkpoint sets are written by ``mscl.checkpoints``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save

from runformat import FORMAT_VERSION, layout
from runformat.atomic import atomic_file, atomic_write_bytes, write_json, write_text
from runformat.columns import SAMPLER_CLASS_COLUMNS, SAMPLER_STEP_COLUMNS

__all__ = [
    "RunWriter",
    "atomic_write_bytes",
    "now_iso",
    "write_csv",
    "write_json",
    "write_npy",
    "write_npz",
    "write_parquet",
    "write_safetensors",
    "write_text",
]


def write_csv(path: str | Path, frame: pd.DataFrame) -> Path:
    """Write ``frame`` (without its index) as CSV atomically."""
    return atomic_write_bytes(path, frame.to_csv(index=False).encode())


def write_parquet(path: str | Path, frame: pd.DataFrame) -> Path:
    """Write ``frame`` (without its index) as Parquet atomically."""
    with atomic_file(path) as handle:
        frame.to_parquet(handle, index=False)
    return Path(path)


def write_npy(path: str | Path, array: np.ndarray) -> Path:
    """Write one array as ``.npy`` atomically (no pickled objects)."""
    with atomic_file(path) as handle:
        np.save(handle, array, allow_pickle=False)
    return Path(path)


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Write named arrays as a compressed ``.npz`` atomically."""
    with atomic_file(path) as handle:
        np.savez_compressed(handle, **arrays)
    return Path(path)


def write_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Save tensors (made contiguous, on CPU, without shared storage) with safetensors, atomically."""
    plain = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()}
    return atomic_write_bytes(path, save(plain, metadata=metadata))


def now_iso() -> str:
    """The current UTC time, ISO-8601 to the second (``created`` / ``updated`` of run.json)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunWriter:
    """Writes one run directory: metadata, config, metrics tables, checkpoints and sampler records."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._meta: dict[str, Any] = {}
        self.train_rows: list[dict[str, Any]] = []
        self.val_rows: list[dict[str, Any]] = []
        self.sampler_step_rows: list[dict[str, Any]] = []
        self.sampler_class_rows: list[dict[str, Any]] = []

    def path(self, relative: str) -> Path:
        return self.run_dir / relative

    def write_meta(self, remove: tuple[str, ...] = (), **updates: Any) -> None:
        """Merge ``updates`` into ``run.json``, drop the keys in ``remove`` and rewrite it (timestamps included).

        A new ``run.json`` gets ``runformat.FORMAT_VERSION``; ``status`` takes ``runformat.RunStatus`` values.
        """
        if not self._meta and self.path(layout.RUN_JSON).is_file():
            self._meta = json.loads(self.path(layout.RUN_JSON).read_text())
        self._meta.setdefault("format_version", FORMAT_VERSION)
        self._meta.setdefault("created", now_iso())
        self._meta.update(updates)
        for key in remove:
            self._meta.pop(key, None)
        self._meta["updated"] = now_iso()
        write_json(self.path(layout.RUN_JSON), self._meta)

    def restore_tables(self, step: int) -> None:
        """On resume: reload the metric and sampler tables, dropping rows after ``step``."""
        for attr, relative, reader in (
            ("train_rows", layout.TRAIN_METRICS, pd.read_csv),
            ("val_rows", layout.VAL_METRICS, pd.read_csv),
            ("sampler_step_rows", layout.SAMPLER_STEPS, pd.read_parquet),
            ("sampler_class_rows", layout.SAMPLER_CLASS_COUNTS, pd.read_parquet),
        ):
            file = self.path(relative)
            if file.is_file():
                frame = reader(file)
                setattr(self, attr, frame[frame["step"] <= step].to_dict("records"))

    def log_train(self, row: dict[str, Any]) -> None:
        self.train_rows.append(row)

    def log_val(self, row: dict[str, Any]) -> None:
        self.val_rows.append(row)
        write_csv(self.path(layout.VAL_METRICS), pd.DataFrame(self.val_rows))

    def log_sampler(self, step: int, records: Mapping[int, Any]) -> None:
        """Append one row per stage (and per class) from the sampler's records of this step."""
        for stage, record in sorted(records.items()):
            sampled = list(record.sampled_per_class)
            values = (step, int(stage), int(record.groups), int(record.views), int(record.filtered_groups),
                      bool(record.cap_max_views), bool(record.cap_total), int(sum(sampled)))
            self.sampler_step_rows.append(dict(zip(SAMPLER_STEP_COLUMNS, values)))
            for class_id, (labelled, count) in enumerate(zip(record.labelled_per_class, sampled)):
                self.sampler_class_rows.append(dict(zip(SAMPLER_CLASS_COLUMNS, (step, int(stage), class_id, int(labelled), int(count)))))

    def flush_tables(self) -> None:
        """Rewrite the per-step tables (called at each log and checkpoint)."""
        if self.train_rows:
            write_csv(self.path(layout.TRAIN_METRICS), pd.DataFrame(self.train_rows))
        if self.sampler_step_rows:
            write_parquet(self.path(layout.SAMPLER_STEPS), pd.DataFrame(self.sampler_step_rows))
            write_parquet(self.path(layout.SAMPLER_CLASS_COUNTS), pd.DataFrame(self.sampler_class_rows))

    def save_weights(self, name: str, state: Mapping[str, torch.Tensor]) -> Path:
        """``checkpoints/<name>.safetensors`` (``best``; ``last`` is linked by ``mscl.checkpoints.save_checkpoint_set``)."""
        return write_safetensors(self.path(layout.checkpoint_weights(name)), state)
