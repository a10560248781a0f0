"""The only writer of run directories (format: ``docs/run-format.md``).

Every file is written to a temporary name in its final folder and then renamed, so an interrupted run
never leaves a half-written file behind.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save

FORMAT_VERSION = 1


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file and an atomic rename."""
    path = Path(path)
    with _atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    return path


def _write_with(path: str | Path, writer: Callable[[io.BytesIO], None]) -> Path:
    buffer = io.BytesIO()
    writer(buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def write_json(path: str | Path, value: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(value, indent=2, allow_nan=True) + "\n").encode())


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def write_csv(path: str | Path, frame: pd.DataFrame) -> Path:
    return atomic_write_bytes(path, frame.to_csv(index=False).encode())


def write_parquet(path: str | Path, frame: pd.DataFrame) -> Path:
    return _write_with(path, lambda buffer: frame.to_parquet(buffer, index=False))


def write_npy(path: str | Path, array: np.ndarray) -> Path:
    return _write_with(path, lambda buffer: np.save(buffer, array, allow_pickle=False))


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> Path:
    return _write_with(path, lambda buffer: np.savez_compressed(buffer, **arrays))


def write_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Save tensors (made contiguous, on CPU, without shared storage) with safetensors."""
    plain = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()}
    return atomic_write_bytes(path, save(plain, metadata=metadata))


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return load_file(str(path))


def now_iso() -> str:
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

    def write_meta(self, **updates: Any) -> None:
        """Merge ``updates`` into ``run.json`` and rewrite it (format version and timestamps included)."""
        if not self._meta and self.path("run.json").is_file():
            self._meta = json.loads(self.path("run.json").read_text())
        self._meta.setdefault("format_version", FORMAT_VERSION)
        self._meta.setdefault("created", now_iso())
        self._meta.update(updates)
        self._meta["updated"] = now_iso()
        write_json(self.path("run.json"), self._meta)

    def restore_tables(self, step: int) -> None:
        """On resume: reload the metric and sampler tables, dropping rows after ``step``."""
        for attr, relative, reader in (
            ("train_rows", "metrics/train.csv", pd.read_csv),
            ("val_rows", "metrics/val.csv", pd.read_csv),
            ("sampler_step_rows", "sampler/steps.parquet", pd.read_parquet),
            ("sampler_class_rows", "sampler/class_counts.parquet", pd.read_parquet),
        ):
            file = self.path(relative)
            if file.is_file():
                frame = reader(file)
                setattr(self, attr, frame[frame["step"] <= step].to_dict("records"))

    def log_train(self, row: dict[str, Any]) -> None:
        self.train_rows.append(row)

    def log_val(self, row: dict[str, Any]) -> None:
        self.val_rows.append(row)
        write_csv(self.path("metrics/val.csv"), pd.DataFrame(self.val_rows))

    def log_sampler(self, step: int, records: Mapping[int, Any]) -> None:
        """Append one row per stage (and per class) from the sampler's records of this step."""
        for stage, record in sorted(records.items()):
            sampled = list(record.sampled_per_class)
            self.sampler_step_rows.append(
                {
                    "step": step,
                    "stage": int(stage),
                    "groups": int(record.groups),
                    "views": int(record.views),
                    "filtered_groups": int(record.filtered_groups),
                    "cap_max_views": bool(record.cap_max_views),
                    "cap_total": bool(record.cap_total),
                    "n_sampled": int(sum(sampled)),
                }
            )
            for class_id, (labelled, count) in enumerate(zip(record.labelled_per_class, sampled)):
                self.sampler_class_rows.append(
                    {"step": step, "stage": int(stage), "class_id": class_id, "labelled": int(labelled), "sampled": int(count)}
                )

    def flush_tables(self) -> None:
        """Rewrite the per-step tables (called at each log and checkpoint)."""
        if self.train_rows:
            write_csv(self.path("metrics/train.csv"), pd.DataFrame(self.train_rows))
        if self.sampler_step_rows:
            write_parquet(self.path("sampler/steps.parquet"), pd.DataFrame(self.sampler_step_rows))
            write_parquet(self.path("sampler/class_counts.parquet"), pd.DataFrame(self.sampler_class_rows))

    def save_weights(self, name: str, state: Mapping[str, torch.Tensor]) -> Path:
        return write_safetensors(self.path(f"checkpoints/{name}.safetensors"), state)

    def save_training_state(self, tensors: Mapping[str, torch.Tensor], scalars: dict[str, Any]) -> None:
        """Optimizer tensors and loop scalars for ``--resume`` (tensors first, the JSON last marks it complete)."""
        write_safetensors(self.path("checkpoints/last_state.safetensors"), tensors)
        write_json(self.path("checkpoints/last_state.json"), scalars)
