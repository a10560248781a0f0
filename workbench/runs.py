"""Read-only access to run directories (format: docs/run-format.md, versions 1 and 2).

This module is the only reader of the run format. Every loader validates what it reads and raises
:class:`RunFormatError` naming the file and the key or shape that was expected, or
:class:`MissingArtifactError` (a subclass) naming the missing file and how to produce it.
Loaded artifacts are kept in small per-object caches; large arrays (embeddings, dense maps,
predictions) in bounded LRU caches.
"""

from __future__ import annotations

import io
import json
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from runformat import READABLE_FORMAT_VERSIONS, RunStatus, layout
from runformat import paths as run_paths
from runformat.columns import (
    DATASET_KEYS,
    EMBEDDING_KINDS,
    EMBEDDING_META_KEYS,
    MODEL_KEYS,
    PER_CLASS_COLUMNS,
    PER_IMAGE_COLUMNS,
    PIXEL_COLUMNS,
    PREDICTION_INDEX_COLUMNS,
    RUN_META_KEYS,
    SAMPLER_CLASS_COLUMNS,
    SAMPLER_STEP_COLUMNS,
    SUMMARY_KEYS,
    TRAIN_COLUMNS,
    VAL_COLUMNS,
)
from runformat.errors import RunFormatError
from runformat.layout import FORMAT_VERSION
from runformat.paths import RunPathError

if TYPE_CHECKING:
    from workbench.snapshots import Snapshots

__all__ = [
    "FORMAT_VERSION",
    "EMBEDDING_KINDS",
    "RunFormatError",
    "MissingArtifactError",
    "RunPathError",
    "Run",
    "RunTiming",
    "DatasetCounts",
    "ModelInfo",
    "BUILT_IN_ENCODER",
    "parse_time",
    "load_run",
    "list_runs",
]

RUN_KINDS = ("trained", "captured")
"""run.json ``kind``: written by ``mscl train`` (the default when the key is absent) or by ``mscl capture``."""

EVALUATION_COLUMNS = ("split", "checkpoint", "folder", "step", "miou", "pixel_acc", "num_images")




class MissingArtifactError(RunFormatError):
    """A run artifact does not exist; ``artifact`` is its relative path, ``hint`` how to produce it."""

    def __init__(self, run_path: Path, artifact: str, hint: str) -> None:
        self.run_path = Path(run_path)
        self.artifact = artifact
        self.hint = hint
        super().__init__(f"{artifact} is missing in run {self.run_path}: {hint}")


def _no_checkpoint_hint(run_path: Path) -> str:
    """What to do for a file that ``mscl export`` / ``mscl eval`` would make when the run has no checkpoint."""
    return (f"this run has no checkpoint (its `checkpoints/` folder was not shipped or copied with it), so `mscl export` "
            f"and `mscl eval` cannot make it; train the run again with `mscl train --config {run_path}/config.yaml --out runs` "
            "(the new run is exported when training ends) or pick a run that has it")


def _artifact_hint(artifact: str, run_path: Path, has_checkpoint: bool = True) -> str:
    """How a user produces ``artifact`` (used in MissingArtifactError messages); a file made from a checkpoint
    gets :func:`_no_checkpoint_hint` when the run has none."""
    top = artifact.split("/", 1)[0]
    if not has_checkpoint and (top in ("embeddings", "predictions", "eval") or top.startswith("eval-")):
        return _no_checkpoint_hint(run_path)
    if top in ("embeddings", "predictions"):
        return f"run `mscl export {run_path}`"
    if top == "eval":
        return f"run `mscl eval {run_path}`"
    if top.startswith("eval-") and "-" in top[5:]:
        split, checkpoint = top[5:].rsplit("-", 1)
        return f"run `mscl eval {run_path} --split {split} --checkpoint {checkpoint} --save`"
    if top == "sampler":
        return ("sampler statistics are written by `mscl train` only when a contrastive loss is "
                "enabled (loss preset `ms` or `ms+cs`)")
    if top == "metrics":
        return "training metrics are written by `mscl train` as it logs steps and validations"
    if top == "projections":
        return "call `workbench.projections.precompute_projections(run)`"
    if top == "snapshots":
        final = f" (`mscl export {run_path}`)" if has_checkpoint else ""
        return ("embedding snapshots are written by `mscl train` at every validation when `export.snapshots` is true "
                f"(the default); this run was trained without them, so only its final embeddings exist{final}")
    return "written by `mscl train` when the run starts"


def _captured_hint(artifact: str) -> str:
    """Why a captured run (``mscl capture``) lacks ``artifact`` (used in MissingArtifactError messages)."""
    top = artifact.split("/", 1)[0]
    if top in ("metrics", "sampler", "checkpoints", "config.yaml"):
        return ("it was captured from a model with `mscl capture`, not trained, so it has no training metrics, "
                "sampler statistics, checkpoints or training config")
    if top == "projections":
        return "call `workbench.projections.precompute_projections(run)`"
    return "run `mscl capture ... --overwrite` again to rewrite its eval/, predictions/ and embeddings/"


def _decode_image(encoded: np.ndarray, artifact: str, run_path: Path) -> np.ndarray:
    """The uint8 [H, W, 3] image of an archive's ``image_jpeg`` bytes (Pillow), or RunFormatError naming the file."""
    try:
        with Image.open(io.BytesIO(np.asarray(encoded, dtype=np.uint8).tobytes())) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError) as err:
        raise RunFormatError(f"{artifact}: 'image_jpeg' cannot be decoded as an image ({err}); "
                             f"rewrite the predictions with `mscl export {run_path}`") from err


class _LRU:
    """A tiny thread-safe least-recently-used cache."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        return value


def _require_keys(mapping: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(mapping, dict):
        raise RunFormatError(f"{where}: expected a JSON object, got {type(mapping).__name__}")
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise RunFormatError(f"{where}: missing key(s) {missing}")


def _require_columns(df: pd.DataFrame, columns: tuple[str, ...], artifact: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise RunFormatError(
            f"{artifact}: missing column(s) {missing}; expected at least {list(columns)}, "
            f"found {list(df.columns)}"
        )


def _read_json(path: Path, artifact: str) -> Any:
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise RunFormatError(f"{artifact}: cannot be read ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise RunFormatError(f"{artifact}: not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8 JSON") from err
    except json.JSONDecodeError as err:
        raise RunFormatError(f"{artifact}: not valid JSON ({err})") from err


def _validate_run_meta(meta: Any, artifact: str = "run.json") -> dict:
    _require_keys(meta, RUN_META_KEYS, artifact)
    if meta["format_version"] not in READABLE_FORMAT_VERSIONS:
        raise RunFormatError(
            f"{artifact}: key 'format_version' is {meta['format_version']!r}; this workbench reads "
            f"format versions {list(READABLE_FORMAT_VERSIONS)}"
        )
    if meta["status"] not in list(RunStatus):
        raise RunFormatError(
            f"{artifact}: key 'status' is {meta['status']!r}; expected one of {[str(status) for status in RunStatus]} "
            "(docs/run-format.md, \"Run status\")"
        )
    _require_keys(meta["dataset"], DATASET_KEYS, f"{artifact} 'dataset'")
    _require_keys(meta["model"], MODEL_KEYS, f"{artifact} 'model'")
    names = meta["dataset"]["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise RunFormatError(f"{artifact}: key 'dataset.class_names' must be a non-empty list of strings")
    try:
        palette = np.asarray(meta["dataset"]["palette"])
    except ValueError as err:
        raise RunFormatError(f"{artifact}: key 'dataset.palette' must be [r, g, b] triples ({err})") from err
    if palette.shape != (len(names), 3) or not np.issubdtype(palette.dtype, np.integer) \
            or palette.min() < 0 or palette.max() > 255:
        raise RunFormatError(
            f"{artifact}: key 'dataset.palette' must be {len(names)} [r, g, b] integer triples in "
            f"0..255 (one per class), got shape {palette.shape}"
        )
    if not isinstance(meta["dataset"]["ignore_index"], int):
        raise RunFormatError(f"{artifact}: key 'dataset.ignore_index' must be an integer")
    if meta.get("kind", "trained") not in RUN_KINDS:
        raise RunFormatError(f"{artifact}: key 'kind' must be one of {list(RUN_KINDS)} (absent means 'trained'), "
                             f"got {meta['kind']!r}")
    strides, channels = meta["model"]["stage_strides"], meta["model"]["stage_channels"]
    if not isinstance(strides, list) or not isinstance(channels, list) or not strides or len(strides) != len(channels):
        raise RunFormatError(
            f"{artifact}: keys 'model.stage_strides' and 'model.stage_channels' must be non-empty "
            f"lists of equal length, got {strides!r} and {channels!r}"
        )
    _check_field_types(meta, artifact)
    return meta


_NUMBER = "a number"
_INTEGER = "an integer"
_TEXT = "a string"
RUN_FIELD_TYPES: tuple[tuple[str, str, bool], ...] = (
    ("name", _TEXT, False), ("status", _TEXT, False), ("loss_preset", _TEXT, False),
    ("created", _TEXT, False), ("updated", _TEXT, False), ("world_size", _INTEGER, False),
    ("dataset.name", _TEXT, False), ("dataset.num_train", _INTEGER, False), ("dataset.num_val", _INTEGER, False),
    ("model.name", _TEXT, False), ("model.encoder", _TEXT, True), ("model.projector_dim", _INTEGER, True),
    ("model.num_parameters", _INTEGER, False), ("timing.train_seconds", _NUMBER, False),
    ("timing.steps", _INTEGER, False), ("timing.sec_per_step", _NUMBER, False),
)
"""run.json keys the workbench shows, with their type (docs/run-format.md) and whether null is allowed; each
may be absent, but when present it must have this type."""


def _has_type(value: Any, kind: str) -> bool:
    if isinstance(value, bool):
        return False
    if kind == _TEXT:
        return isinstance(value, str)
    if kind == _INTEGER:
        return isinstance(value, int)
    return isinstance(value, (int, float)) and bool(np.isfinite(value))


def _check_field_types(meta: dict, artifact: str) -> None:
    """RunFormatError naming the first key of :data:`RUN_FIELD_TYPES` whose value has the wrong type."""
    timing = meta.get("timing", {})
    if not isinstance(timing, dict):
        raise RunFormatError(f"{artifact}: key 'timing' must be an object, got {timing!r}")
    for key, kind, nullable in RUN_FIELD_TYPES:
        section, _, field = key.rpartition(".")
        container = meta.get(section, {}) if section else meta
        if field not in container or (nullable and container[field] is None):
            continue
        if not _has_type(container[field], kind):
            raise RunFormatError(f"{artifact}: key {key!r} must be {kind}, got {container[field]!r}")
    for key in ("model.stage_strides", "model.stage_channels"):
        values = meta["model"][key.split(".")[1]]
        if not all(_has_type(value, _INTEGER) and value > 0 for value in values):
            raise RunFormatError(f"{artifact}: key {key!r} must list positive integers, got {values!r}")


BUILT_IN_ENCODER = "built-in encoder"
"""How the app names the encoder of a model that has no separate (timm) encoder: run.json ``model.encoder`` null."""


def parse_time(value: str, key: str = "created") -> datetime:
    """A run.json time (ISO 8601, e.g. ``2024-01-01T00:00:00+00:00``) as an aware datetime; one without a zone is
    taken as UTC. RunFormatError naming ``key`` when the text is not such a time."""
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError) as err:
        raise RunFormatError(f"run.json: key {key!r} must be an ISO 8601 time such as "
                             f"2024-01-01T00:00:00+00:00, got {value!r}") from err
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class RunTiming:
    """run.json ``timing`` (docs/run-format.md); None for a value the run has not recorded (still training, captured)."""

    train_seconds: float | None
    steps: int | None
    sec_per_step: float | None


@dataclass(frozen=True)
class DatasetCounts:
    """run.json ``dataset.num_train`` / ``dataset.num_val``: images of the training and validation splits (None when
    not recorded)."""

    num_train: int | None
    num_val: int | None


@dataclass(frozen=True)
class ModelInfo:
    """run.json ``model``: architecture, encoder (None for a model with a built-in encoder), per-stage strides and
    backbone widths (finest stage first), projector width (None without projectors) and parameter count."""

    name: str
    encoder: str | None
    stage_strides: tuple[int, ...]
    stage_channels: tuple[int, ...]
    projector_dim: int | None
    num_parameters: int | None

    @property
    def encoder_label(self) -> str:
        """The encoder's name, or :data:`BUILT_IN_ENCODER` when run.json ``model.encoder`` is null or empty."""
        return self.encoder or BUILT_IN_ENCODER


class Run:
    """One run directory, read lazily.

    Attributes follow docs/architecture.md: ``path``, ``meta`` (run.json), ``name``, ``config``
    (config.yaml), ``class_names``, ``palette`` (uint8 [C, 3]), ``ignore_index``, ``num_classes``,
    ``stages`` (0..S-1, finest first), ``has_projector``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        run_json = self._confined("run.json", "run.json")
        if not run_json.is_file():
            raise MissingArtifactError(self.path, "run.json", "not a run directory (no run.json)")
        self.meta: dict = _validate_run_meta(_read_json(run_json, "run.json"))
        self.name: str = str(self.meta["name"])
        dataset = self.meta["dataset"]
        self.class_names: list[str] = list(dataset["class_names"])
        self.palette: np.ndarray = np.asarray(dataset["palette"], dtype=np.uint8)
        self.ignore_index: int = int(dataset["ignore_index"])
        self.num_classes: int = len(self.class_names)
        self.stages: list[int] = list(range(len(self.meta["model"]["stage_strides"])))
        self.stage_strides: list[int] = [int(s) for s in self.meta["model"]["stage_strides"]]
        self._tables: dict[str, Any] = {}
        self._tables_lock = threading.Lock()
        self._arrays = _LRU(maxsize=8)
        self._images = _LRU(maxsize=16)

    def __repr__(self) -> str:
        return f"Run(name={self.name!r}, path={str(self.path)!r})"

    def refresh(self) -> None:
        """Forget cached artifacts and re-read run.json (for a run that is still being written)."""
        fresh = Run(self.path)
        self.meta, self.name = fresh.meta, fresh.name
        with self._tables_lock:
            self._tables.clear()
        self._arrays = _LRU(maxsize=8)
        self._images = _LRU(maxsize=16)

    # ----------------------------------------------------------------- helpers
    def has(self, artifact: str) -> bool:
        """Whether the artifact (path relative to the run directory) exists."""
        return (self.path / artifact).exists()

    def _confined(self, relative: str, source: str) -> Path:
        """``self.path / relative`` once ``runformat.paths.confine`` accepts it (RunPathError naming ``source``)."""
        run_paths.confine(self.path, relative, source)
        return self.path / relative

    def _file(self, artifact: str) -> Path:
        path = self._confined(artifact, artifact)
        if not path.exists():
            hint = _captured_hint(artifact) if self.kind == "captured" else _artifact_hint(artifact, self.path, self.has_checkpoint)
            raise MissingArtifactError(self.path, artifact, hint)
        return path

    def _cached(self, key: str, load: Callable[[], Any]) -> Any:
        with self._tables_lock:
            if key in self._tables:
                return self._tables[key]
        value = load()
        with self._tables_lock:
            self._tables[key] = value
        return value

    def _csv(self, artifact: str, columns: tuple[str, ...]) -> pd.DataFrame:
        def load() -> pd.DataFrame:
            try:
                df = pd.read_csv(self._file(artifact))
            except pd.errors.ParserError as err:
                raise RunFormatError(f"{artifact}: cannot be parsed as CSV ({err})") from err
            except pd.errors.EmptyDataError as err:
                raise RunFormatError(f"{artifact}: empty file, expected a header {list(columns)}") from err
            _require_columns(df, columns, artifact)
            return df
        return self._cached(artifact, load).copy()

    def _parquet(self, artifact: str, columns: tuple[str, ...]) -> pd.DataFrame:
        def load() -> pd.DataFrame:
            try:
                df = pd.read_parquet(self._file(artifact))
            except (OSError, ValueError) as err:
                raise RunFormatError(f"{artifact}: cannot be read as Parquet ({err})") from err
            _require_columns(df, columns, artifact)
            return df
        return self._cached(artifact, load).copy()

    def _json(self, artifact: str, keys: tuple[str, ...]) -> dict:
        def load() -> dict:
            data = _read_json(self._file(artifact), artifact)
            _require_keys(data, keys, artifact)
            return data
        return dict(self._cached(artifact, load))

    def _npz(self, artifact: str) -> dict[str, np.ndarray]:
        try:
            with np.load(self._file(artifact), allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise RunFormatError(f"{artifact}: cannot be read as a NumPy .npz archive ({err})") from err

    # ---------------------------------------------------------------- metadata
    @property
    def kind(self) -> str:
        """How the run was made (run.json ``kind``): ``trained`` by ``mscl train`` (also for runs written before
        the key existed) or ``captured`` by ``mscl capture`` (evaluation, predictions and embeddings only)."""
        return str(self.meta.get("kind", "trained"))

    @property
    def status(self) -> RunStatus:
        """Life-cycle state (run.json ``status``, docs/run-format.md "Run status")."""
        return RunStatus(self.meta["status"])

    @property
    def loss_preset(self) -> str:
        """run.json ``loss_preset``: ``ce``, ``ms`` or ``ms+cs`` (docs/method.md §4)."""
        return str(self.meta["loss_preset"])

    @property
    def created(self) -> datetime | None:
        """When ``mscl train`` (or ``mscl capture``) created the run (run.json ``created``), None when not recorded."""
        return parse_time(self.meta["created"], "created") if self.meta.get("created") else None

    @property
    def updated(self) -> datetime | None:
        """When run.json was last rewritten (run.json ``updated``), None when not recorded."""
        return parse_time(self.meta["updated"], "updated") if self.meta.get("updated") else None

    @property
    def world_size(self) -> int:
        """Processes the run trained with (run.json ``world_size``; 1 when not recorded)."""
        return int(self.meta.get("world_size", 1))

    @property
    def timing(self) -> RunTiming:
        """Training time, steps and seconds per step (run.json ``timing``)."""
        timing = self.meta.get("timing", {})
        seconds, per_step = timing.get("train_seconds"), timing.get("sec_per_step")
        return RunTiming(train_seconds=None if seconds is None else float(seconds), steps=timing.get("steps"),
                         sec_per_step=None if per_step is None else float(per_step))

    @property
    def dataset_name(self) -> str:
        """The dataset the run was trained or captured on (run.json ``dataset.name``)."""
        return str(self.meta["dataset"]["name"])

    @property
    def dataset_counts(self) -> DatasetCounts:
        """Images of the training and validation splits (run.json ``dataset.num_train`` / ``num_val``)."""
        dataset = self.meta["dataset"]
        return DatasetCounts(num_train=dataset.get("num_train"), num_val=dataset.get("num_val"))

    @property
    def model_info(self) -> ModelInfo:
        """Architecture, encoder, strides, widths, projector width and parameter count (run.json ``model``)."""
        model = self.meta["model"]
        return ModelInfo(name=str(model["name"]), encoder=model.get("encoder") or None,
                         stage_strides=tuple(int(s) for s in model["stage_strides"]),
                         stage_channels=tuple(int(c) for c in model["stage_channels"]),
                         projector_dim=model.get("projector_dim"), num_parameters=model.get("num_parameters"))

    @property
    def has_checkpoint(self) -> bool:
        """Whether the run keeps weights ``mscl export`` / ``mscl eval`` can load: a checkpoint set, or
        ``checkpoints/last.safetensors`` / ``best.safetensors`` (docs/run-format.md, "Checkpoints")."""
        weights = (layout.checkpoint_weights("last"), layout.checkpoint_weights("best"))
        return any(self.has(name) for name in weights) or bool(layout.checkpoint_sets(self.path))

    @property
    def config(self) -> dict:
        """The resolved training config (config.yaml)."""
        def load() -> dict:
            try:
                data = yaml.safe_load(self._file("config.yaml").read_text())
            except yaml.YAMLError as err:
                raise RunFormatError(f"config.yaml: not valid YAML ({err})") from err
            if not isinstance(data, dict):
                raise RunFormatError("config.yaml: expected a mapping at the top level")
            return data
        return self._cached("config.yaml", load)

    @property
    def has_projector(self) -> bool:
        """Whether the run has per-stage projectors (embeddings/meta.json when exported, else run.json)."""
        if self.has("embeddings/meta.json"):
            return bool(self.embedding_meta()["has_projector"])
        return self.meta["loss_preset"] != "ce" and bool(self.meta["model"].get("projector_dim"))

    def embedding_meta(self) -> dict:
        """embeddings/meta.json, validated against run.json and eval/summary.json (one export)."""
        self._check_one_export()
        meta = self._json("embeddings/meta.json", EMBEDDING_META_KEYS)
        for key in ("stages", "strides", "backbone_dims"):
            if not isinstance(meta[key], list) or len(meta[key]) != len(meta["stages"]):
                raise RunFormatError(
                    f"embeddings/meta.json: key {key!r} must be a list with one entry per exported stage"
                )
        unknown = [s for s in meta["stages"] if s not in self.stages]
        if unknown:
            raise RunFormatError(
                f"embeddings/meta.json: key 'stages' lists {unknown}, not stages of this model {self.stages}"
            )
        return meta

    def embedding_stages(self) -> list[int]:
        """Stages with exported embeddings (embeddings/meta.json)."""
        return [int(s) for s in self.embedding_meta()["stages"]]

    def embedding_kinds(self) -> list[str]:
        """Embedding kinds available: backbone always, projected when the run has projectors."""
        return ["backbone", "projected"] if self.has_projector else ["backbone"]

    def embedding_widths(self, kind: str) -> dict[int, int]:
        """Channels of the exported ``kind`` embeddings per stage (embeddings/meta.json ``backbone_dims`` /
        ``projected_dims``)."""
        if kind not in EMBEDDING_KINDS:
            raise ValueError(f"kind must be one of {EMBEDDING_KINDS}, got {kind!r}")
        if kind == "projected" and not self.has_projector:
            raise ValueError(f"run {self.name!r} has no projectors, so no projected embeddings; use kind='backbone'")
        meta = self.embedding_meta()
        key = "backbone_dims" if kind == "backbone" else "projected_dims"
        dims = meta.get(key)
        if not isinstance(dims, list) or len(dims) != len(meta["stages"]):
            raise RunFormatError(f"embeddings/meta.json: key {key!r} must be a list with one width per exported stage")
        return {int(stage): int(dim) for stage, dim in zip(meta["stages"], dims)}

    # ----------------------------------------------------------------- metrics
    def train_metrics(self) -> pd.DataFrame:
        """metrics/train.csv: one row per logged step (loss parts as columns)."""
        return self._csv("metrics/train.csv", TRAIN_COLUMNS)

    def val_metrics(self) -> pd.DataFrame:
        """metrics/val.csv: one row per validation."""
        return self._csv("metrics/val.csv", VAL_COLUMNS)

    def evaluations(self) -> pd.DataFrame:
        """Every evaluation of the run with tables, one row per (split, checkpoint).

        ``eval/`` holds the final validation of ``mscl train``; ``eval-<split>-<checkpoint>/`` the tables of
        ``mscl eval RUN --split <split> --checkpoint <checkpoint> --save`` (docs/run-format.md). A folder counts
        when it has summary.json and per_class.csv; split and checkpoint come from its summary.json, and a
        ``mscl eval --save`` folder wins over ``eval/`` for the same pair. Columns: split, checkpoint, folder
        (run-relative; pass it as ``folder`` to ``eval_summary``, ``per_class``, ``confusion``, ``per_image``),
        step, miou, pixel_acc, num_images.
        """
        folders = ["eval"] + sorted(p.name for p in self.path.glob("eval-*") if p.is_dir())
        found: dict[tuple[str, str], dict] = {}
        for folder in folders:
            if not (self.has(f"{folder}/summary.json") and self.has(f"{folder}/per_class.csv")):
                continue
            summary = self.eval_summary(folder)
            key = (str(summary["split"]), str(summary["checkpoint"]))
            found[key] = {"split": key[0], "checkpoint": key[1], "folder": folder,
                          **{name: summary[name] for name in ("step", "miou", "pixel_acc", "num_images")}}
        return pd.DataFrame(list(found.values()), columns=list(EVALUATION_COLUMNS))

    def eval_summary(self, folder: str = "eval") -> dict:
        """summary.json of an evaluation (default eval/, the final validation; see ``evaluations``)."""
        if folder == layout.EVAL_DIR:
            self._check_one_export()
        return self._json(f"{folder}/summary.json", SUMMARY_KEYS)

    def _check_one_export(self) -> None:
        """RunFormatError when eval/ and embeddings/ come from different exports (their checkpoint or step differ)
        or an export is being swapped in (docs/run-format.md, "Export")."""
        if self.has(layout.SWAP_JOURNAL):
            raise RunFormatError(
                f"{layout.SWAP_JOURNAL}: an export of run {self.path} is being swapped in or was interrupted doing so; "
                f"reload in a moment, or run `mscl export {self.path}` if no mscl process is writing the run"
            )
        if not (self.has(layout.EVAL_SUMMARY) and self.has(layout.EMBEDDING_META)):
            return

        def load() -> tuple[dict, dict]:
            return (_read_json(self._file(layout.EVAL_SUMMARY), layout.EVAL_SUMMARY),
                    _read_json(self._file(layout.EMBEDDING_META), layout.EMBEDDING_META))
        summary, meta = self._cached("one-export", load)
        for key in ("checkpoint", "step"):
            if isinstance(summary, dict) and isinstance(meta, dict) and key in summary and key in meta and summary[key] != meta[key]:
                raise RunFormatError(
                    f"{layout.EVAL_SUMMARY} has {key} {summary[key]!r} but {layout.EMBEDDING_META} has {meta[key]!r}: the run "
                    f"holds parts of two exports; rewrite them together with `mscl export {self.path} --checkpoint {summary['checkpoint']}`"
                )

    def per_class(self, folder: str = "eval") -> pd.DataFrame:
        """per_class.csv of an evaluation (default eval/; iou NaN where the class is absent from gt and prediction)."""
        artifact = f"{folder}/per_class.csv"
        df = self._csv(artifact, PER_CLASS_COLUMNS)
        if len(df) != self.num_classes:
            raise RunFormatError(
                f"{artifact}: {len(df)} rows, expected one per class ({self.num_classes})"
            )
        return df

    def confusion(self, folder: str = "eval") -> np.ndarray:
        """confusion.npy of an evaluation (default eval/): int64 [C, C], rows = ground truth, columns = prediction."""
        artifact = f"{folder}/confusion.npy"

        def load() -> np.ndarray:
            conf = self._load_npy(artifact)
            expected = (self.num_classes, self.num_classes)
            if conf.shape != expected or not np.issubdtype(conf.dtype, np.integer):
                raise RunFormatError(
                    f"{artifact}: expected an integer array of shape {expected}, "
                    f"got {conf.dtype} {conf.shape}"
                )
            if conf.min() < 0:
                raise RunFormatError(f"{artifact}: negative counts")
            return conf.astype(np.int64)
        return self._cached(artifact, load).copy()

    def per_image(self, folder: str = "eval") -> pd.DataFrame:
        """per_image.csv of an evaluation (default eval/): per image mIoU and pixel accuracy."""
        df = self._csv(f"{folder}/per_image.csv", PER_IMAGE_COLUMNS)
        df["image_id"] = df["image_id"].astype(str)
        return df

    # ----------------------------------------------------------------- sampler
    def sampler_steps(self) -> pd.DataFrame:
        """sampler/steps.parquet: one row per (logged step, stage)."""
        return self._parquet("sampler/steps.parquet", SAMPLER_STEP_COLUMNS)

    def sampler_class_counts(self) -> pd.DataFrame:
        """sampler/class_counts.parquet: one row per (logged step, stage, class)."""
        return self._parquet("sampler/class_counts.parquet", SAMPLER_CLASS_COLUMNS)

    # ------------------------------------------------------------- predictions
    def _prediction_index(self) -> pd.DataFrame:
        """predictions/index.csv; every ``file`` (relative to predictions/) must stay inside the run directory."""
        artifact = "predictions/index.csv"
        df = self._csv(artifact, PREDICTION_INDEX_COLUMNS)
        df["image_id"] = df["image_id"].astype(str)
        for row, file in enumerate(df["file"], start=1):
            source = f"{artifact}, column 'file', row {row}"
            if not isinstance(file, str) or not file.strip():
                raise RunFormatError(f"{source}: expected a file name, got {file!r}")
            self._confined(f"predictions/{file}", source)
        return df

    def prediction_ids(self) -> list[str]:
        """Image ids of the fixed prediction images, in index order."""
        return self._prediction_index()["image_id"].tolist()

    def prediction(self, image_id: str) -> dict[str, np.ndarray]:
        """``image`` uint8 [H, W, 3], ``label`` and ``prediction`` int64 [H, W] of one image.

        The archive holds the image as JPEG bytes (``image_jpeg``) and uint8 labels where the classes fit, or, as
        written before, the raw ``image`` and int16 labels (docs/run-format.md); both read the same."""
        index = self._prediction_index()
        rows = index[index["image_id"] == str(image_id)]
        if rows.empty:
            raise KeyError(f"image {image_id!r} is not in predictions/index.csv of run {self.name!r}")
        artifact = f"predictions/{rows['file'].iloc[0]}"

        def load() -> dict[str, np.ndarray]:
            data = self._npz(artifact)
            missing = [k for k in ("label", "prediction") if k not in data]
            if "image" not in data and "image_jpeg" not in data:
                missing.insert(0, "image or image_jpeg")
            if missing:
                raise RunFormatError(f"{artifact}: missing array(s) {missing}")
            image = data["image"] if "image" in data else _decode_image(data["image_jpeg"], artifact, self.path)
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise RunFormatError(f"{artifact}: 'image' must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
            for key in ("label", "prediction"):
                if data[key].shape != image.shape[:2]:
                    raise RunFormatError(
                        f"{artifact}: {key!r} has shape {data[key].shape}, expected {image.shape[:2]}"
                    )
            return {"image": image, "label": data["label"].astype(np.int64),
                    "prediction": data["prediction"].astype(np.int64)}
        return self._images.get(("prediction", artifact), load)

    # -------------------------------------------------------------- embeddings
    def pixels(self) -> pd.DataFrame:
        """embeddings/pixels.parquet: the sampled pixels (rows of every embeddings array)."""
        artifact = "embeddings/pixels.parquet"
        df = self._parquet(artifact, PIXEL_COLUMNS)
        expected = int(self.embedding_meta()["num_pixels"])
        if len(df) != expected:
            raise RunFormatError(
                f"{artifact}: {len(df)} rows, but embeddings/meta.json says num_pixels={expected}"
            )
        df["image_id"] = df["image_id"].astype(str)
        return df

    def _load_npy(self, artifact: str) -> np.ndarray:
        try:
            return np.load(self._file(artifact), allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise RunFormatError(f"{artifact}: cannot be read as a NumPy .npy array ({err})") from err

    def embeddings(self, stage: int, kind: str = "projected") -> np.ndarray:
        """float32 [M, D] embeddings of the sampled pixels at ``stage`` (row i = pixels() row i)."""
        if kind not in EMBEDDING_KINDS:
            raise ValueError(f"kind must be one of {EMBEDDING_KINDS}, got {kind!r}")
        stages = self.embedding_stages()
        if stage not in stages:
            raise ValueError(f"stage {stage} has no exported embeddings in run {self.name!r}; stages: {stages}")
        artifact = f"embeddings/stage{stage}_{kind}.npy"
        if kind == "projected" and not self.has(artifact) and not self.has_projector:
            raise MissingArtifactError(
                self.path, artifact,
                f"run {self.name!r} has no projectors; use kind='backbone'",
            )

        def load() -> np.ndarray:
            array = self._load_npy(artifact)
            rows = len(self.pixels())
            if array.ndim != 2 or array.shape[0] != rows:
                raise RunFormatError(
                    f"{artifact}: shape {array.shape}, expected [{rows}, D] "
                    f"(one row per row of embeddings/pixels.parquet)"
                )
            if not np.issubdtype(array.dtype, np.floating):
                raise RunFormatError(f"{artifact}: expected a float array, got {array.dtype}")
            array = array.astype(np.float32, copy=False)
            if not np.isfinite(array).all():
                raise RunFormatError(f"{artifact}: contains NaN or infinite values")
            return array
        return self._arrays.get(("embeddings", stage, kind), load)

    def embedding_file(self, stage: int, kind: str = "projected") -> Path:
        """Path of the embeddings file of ``stage``/``kind`` (raises MissingArtifactError when absent)."""
        return self._file(f"embeddings/stage{stage}_{kind}.npy")

    def dense_ids(self) -> list[str]:
        """Image ids with dense per-stage feature maps (embeddings/dense/<image_id>.npz)."""
        folder = self._file("embeddings/dense")
        return sorted(p.stem for p in folder.glob("*.npz"))

    def dense(self, image_id: str) -> dict[str, np.ndarray]:
        """Dense maps of one image: ``image`` uint8 [H,W,3], ``label`` [H,W], ``stage<s>_<kind>`` float32 [C,h,w]."""
        artifact = f"embeddings/dense/{image_id}.npz"

        def load() -> dict[str, np.ndarray]:
            data = self._npz(artifact)
            missing = [k for k in ("image", "label") if k not in data]
            if missing:
                raise RunFormatError(f"{artifact}: missing array(s) {missing}")
            if data["image"].ndim != 3 or data["image"].shape[2] != 3:
                raise RunFormatError(f"{artifact}: 'image' must be [H, W, 3], got {data['image'].shape}")
            if data["label"].shape != data["image"].shape[:2]:
                raise RunFormatError(
                    f"{artifact}: 'label' has shape {data['label'].shape}, expected {data['image'].shape[:2]}"
                )
            out: dict[str, np.ndarray] = {"image": data["image"].astype(np.uint8),
                                          "label": data["label"].astype(np.int64)}
            for key, value in data.items():
                if key.startswith("stage"):
                    if value.ndim != 3:
                        raise RunFormatError(f"{artifact}: {key!r} must be [C, h, w], got shape {value.shape}")
                    out[key] = value.astype(np.float32, copy=False)
            if not any(k.startswith("stage") for k in out):
                raise RunFormatError(f"{artifact}: no 'stage<s>_backbone' / 'stage<s>_projected' arrays")
            return out
        return self._images.get(("dense", artifact), load)

    # --------------------------------------------------------------- snapshots
    def snapshots(self) -> Snapshots:
        """The embedding snapshots taken at every validation (snapshots/, docs/run-format.md; ``workbench.snapshots``)."""
        from workbench.snapshots import Snapshots

        return self._cached("snapshots", lambda: Snapshots(self))


def load_run(path: str | Path) -> Run:
    """Open the run directory at ``path`` (reads and validates run.json only)."""
    return Run(path)


LIST_COLUMNS = ("path", "name", "status", "dataset", "model", "encoder", "loss_preset", "miou",
                "created", "updated", "error")


def _run_dirs(root: Path, depth: int) -> list[tuple[Path, str]]:
    """(folder, "") for each folder holding run.json at ``root`` or up to ``depth`` levels below it, and
    (folder, reason) for each folder that cannot be inspected (the others are still listed)."""
    try:
        found = [(root, "")] if (root / "run.json").is_file() else []
        children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if depth > 0 else []
    except OSError as err:
        return [(root, f"{root}: cannot be read ({err.strerror or err})")]
    for child in children:
        found.extend(_run_dirs(child, depth - 1))
    return found


def _final_miou(path: Path) -> float:
    summary = path / "eval" / "summary.json"
    val = path / "metrics" / "val.csv"
    try:
        if summary.is_file():
            run_paths.confine(path, "eval/summary.json", "eval/summary.json")
            return float(json.loads(summary.read_bytes())["miou"])
        if val.is_file():
            run_paths.confine(path, "metrics/val.csv", "metrics/val.csv")
            df = pd.read_csv(val)
            if "miou" in df.columns and len(df):
                return float(df["miou"].iloc[-1])
    except (OSError, ValueError, KeyError, TypeError, pd.errors.ParserError, pd.errors.EmptyDataError, RunPathError):
        return float("nan")
    return float("nan")


def list_runs(root: str | Path) -> pd.DataFrame:
    """One row per run directory (holding run.json) at ``root`` or up to 2 levels below it.

    Columns: path, name, status, dataset, model, encoder, loss_preset, miou (eval/summary.json, else
    the last validation, else NaN when the run has not been validated), created, updated, error (the
    RunFormatError message for a malformed run.json, else empty). A run.json that cannot be read or
    decoded, or a folder that cannot be listed, gives one row of status ``invalid`` with the reason; the
    other runs are listed as usual.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs root {root} is not a directory")
    rows = []
    for path, unreadable in _run_dirs(root, depth=2):
        row: dict[str, Any] = dict.fromkeys(LIST_COLUMNS, "")
        row["path"] = str(path.resolve())
        row["miou"] = float("nan")
        try:
            if unreadable:
                raise RunFormatError(unreadable)
            run_json = run_paths.confine(path, "run.json", "run.json")
            meta = _validate_run_meta(_read_json(run_json, "run.json"))
        except RunFormatError as err:
            error = str(err) if unreadable else f"{path / 'run.json'}: {err}"
            row.update(name=path.name, status="invalid", error=error)
            rows.append(row)
            continue
        row.update(
            name=str(meta["name"]), status=str(meta["status"]), dataset=str(meta["dataset"]["name"]),
            model=str(meta["model"]["name"]), encoder=str(meta["model"].get("encoder") or ""),
            loss_preset=str(meta["loss_preset"]), miou=_final_miou(path),
            created=str(meta.get("created", "")), updated=str(meta.get("updated", "")),
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=list(LIST_COLUMNS))
