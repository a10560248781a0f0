"""Read-only access to run directories (format: docs/run-format.md, version 1).

This module is the only reader of the run format. Every loader validates what it reads and raises
:class:`RunFormatError` naming the file and the key or shape that was expected, or
:class:`MissingArtifactError` (a subclass) naming the missing file and how to produce it.
Loaded artifacts are kept in small per-object caches; large arrays (embeddings, dense maps,
predictions) in bounded LRU caches.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

__all__ = [
    "FORMAT_VERSION",
    "EMBEDDING_KINDS",
    "RunFormatError",
    "MissingArtifactError",
    "Run",
    "load_run",
    "list_runs",
]

FORMAT_VERSION = 1
EMBEDDING_KINDS = ("backbone", "projected")

TRAIN_COLUMNS = ("step", "epoch", "lr", "loss/total")
VAL_COLUMNS = ("step", "epoch", "miou", "pixel_acc", "mean_acc")
PER_CLASS_COLUMNS = ("class_id", "class_name", "iou", "acc", "gt_pixels", "pred_pixels")
PER_IMAGE_COLUMNS = ("image_index", "image_id", "miou", "pixel_acc")
SAMPLER_STEP_COLUMNS = (
    "step", "stage", "groups", "views", "filtered_groups", "cap_max_views", "cap_total", "n_sampled",
)
SAMPLER_CLASS_COLUMNS = ("step", "stage", "class_id", "labelled", "sampled")
PREDICTION_INDEX_COLUMNS = ("image_index", "image_id", "file")
PIXEL_COLUMNS = ("pixel", "image_index", "image_id", "y", "x", "label", "prediction")
SUMMARY_KEYS = ("split", "checkpoint", "step", "miou", "pixel_acc", "mean_acc", "num_images")
EMBEDDING_META_KEYS = (
    "num_pixels", "stages", "strides", "backbone_dims", "projected_dims", "has_projector",
    "split", "checkpoint", "seed",
)


class RunFormatError(Exception):
    """A run-directory file does not follow docs/run-format.md (message names file and key)."""


class MissingArtifactError(RunFormatError):
    """A run artifact does not exist; ``artifact`` is its relative path, ``hint`` how to produce it."""

    def __init__(self, run_path: Path, artifact: str, hint: str) -> None:
        self.run_path = Path(run_path)
        self.artifact = artifact
        self.hint = hint
        super().__init__(f"{artifact} is missing in run {self.run_path}: {hint}")


def _artifact_hint(artifact: str, run_path: Path) -> str:
    """How a user produces ``artifact`` (used in MissingArtifactError messages)."""
    top = artifact.split("/", 1)[0]
    if top in ("embeddings", "predictions"):
        return f"run `mscl export {run_path}`"
    if top == "eval":
        return f"run `mscl eval {run_path}`"
    if top == "sampler":
        return ("sampler statistics are written by `mscl train` only when a contrastive loss is "
                "enabled (loss preset `ms` or `ms+cs`)")
    if top == "metrics":
        return "training metrics are written by `mscl train` as it logs steps and validations"
    if top == "projections":
        return "call `workbench.projections.precompute_projections(run)`"
    return "written by `mscl train` when the run starts"


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
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunFormatError(f"{artifact}: not valid JSON ({err})") from err


def _validate_run_meta(meta: Any, artifact: str = "run.json") -> dict:
    _require_keys(meta, ("format_version", "name", "status", "loss_preset", "dataset", "model"), artifact)
    if meta["format_version"] != FORMAT_VERSION:
        raise RunFormatError(
            f"{artifact}: key 'format_version' is {meta['format_version']!r}; this workbench reads "
            f"format version {FORMAT_VERSION}"
        )
    _require_keys(meta["dataset"], ("name", "class_names", "palette", "ignore_index"), f"{artifact} 'dataset'")
    _require_keys(meta["model"], ("name", "stage_strides", "stage_channels"), f"{artifact} 'model'")
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
    strides, channels = meta["model"]["stage_strides"], meta["model"]["stage_channels"]
    if not isinstance(strides, list) or not strides or len(strides) != len(channels):
        raise RunFormatError(
            f"{artifact}: keys 'model.stage_strides' and 'model.stage_channels' must be non-empty "
            f"lists of equal length, got {strides!r} and {channels!r}"
        )
    return meta


class Run:
    """One run directory, read lazily.

    Attributes follow docs/architecture.md: ``path``, ``meta`` (run.json), ``name``, ``config``
    (config.yaml), ``class_names``, ``palette`` (uint8 [C, 3]), ``ignore_index``, ``num_classes``,
    ``stages`` (0..S-1, finest first), ``has_projector``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        run_json = self.path / "run.json"
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

    def _file(self, artifact: str) -> Path:
        path = self.path / artifact
        if not path.exists():
            raise MissingArtifactError(self.path, artifact, _artifact_hint(artifact, self.path))
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
        except (OSError, ValueError) as err:
            raise RunFormatError(f"{artifact}: cannot be read as a NumPy .npz archive ({err})") from err

    # ---------------------------------------------------------------- metadata
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
        """embeddings/meta.json, validated against run.json."""
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

    # ----------------------------------------------------------------- metrics
    def train_metrics(self) -> pd.DataFrame:
        """metrics/train.csv: one row per logged step (loss parts as columns)."""
        return self._csv("metrics/train.csv", TRAIN_COLUMNS)

    def val_metrics(self) -> pd.DataFrame:
        """metrics/val.csv: one row per validation."""
        return self._csv("metrics/val.csv", VAL_COLUMNS)

    def eval_summary(self) -> dict:
        """eval/summary.json of the final validation."""
        return self._json("eval/summary.json", SUMMARY_KEYS)

    def per_class(self) -> pd.DataFrame:
        """eval/per_class.csv (iou NaN where the class is absent from gt and prediction)."""
        df = self._csv("eval/per_class.csv", PER_CLASS_COLUMNS)
        if len(df) != self.num_classes:
            raise RunFormatError(
                f"eval/per_class.csv: {len(df)} rows, expected one per class ({self.num_classes})"
            )
        return df

    def confusion(self) -> np.ndarray:
        """eval/confusion.npy: int64 [C, C], rows = ground truth, columns = prediction."""
        artifact = "eval/confusion.npy"

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

    def per_image(self) -> pd.DataFrame:
        """eval/per_image.csv: per validation image mIoU and pixel accuracy."""
        df = self._csv("eval/per_image.csv", PER_IMAGE_COLUMNS)
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
        df = self._csv("predictions/index.csv", PREDICTION_INDEX_COLUMNS)
        df["image_id"] = df["image_id"].astype(str)
        return df

    def prediction_ids(self) -> list[str]:
        """Image ids of the fixed prediction images, in index order."""
        return self._prediction_index()["image_id"].tolist()

    def prediction(self, image_id: str) -> dict[str, np.ndarray]:
        """``image`` uint8 [H, W, 3], ``label`` and ``prediction`` int64 [H, W] of one image."""
        index = self._prediction_index()
        rows = index[index["image_id"] == str(image_id)]
        if rows.empty:
            raise KeyError(f"image {image_id!r} is not in predictions/index.csv of run {self.name!r}")
        artifact = f"predictions/{rows['file'].iloc[0]}"

        def load() -> dict[str, np.ndarray]:
            data = self._npz(artifact)
            missing = [k for k in ("image", "label", "prediction") if k not in data]
            if missing:
                raise RunFormatError(f"{artifact}: missing array(s) {missing}")
            image = data["image"]
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
        except (OSError, ValueError) as err:
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


def load_run(path: str | Path) -> Run:
    """Open the run directory at ``path`` (reads and validates run.json only)."""
    return Run(path)


LIST_COLUMNS = ("path", "name", "status", "dataset", "model", "encoder", "loss_preset", "miou",
                "created", "updated", "error")


def _run_dirs(root: Path, depth: int) -> list[Path]:
    found = [root] if (root / "run.json").is_file() else []
    if depth > 0:
        for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found.extend(_run_dirs(child, depth - 1))
    return found


def _final_miou(path: Path) -> float:
    summary = path / "eval" / "summary.json"
    if summary.is_file():
        try:
            return float(json.loads(summary.read_text())["miou"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            return float("nan")
    val = path / "metrics" / "val.csv"
    if val.is_file():
        try:
            df = pd.read_csv(val)
            if "miou" in df.columns and len(df):
                return float(df["miou"].iloc[-1])
        except (pd.errors.ParserError, pd.errors.EmptyDataError):
            return float("nan")
    return float("nan")


def list_runs(root: str | Path) -> pd.DataFrame:
    """One row per run directory (holding run.json) at ``root`` or up to 2 levels below it.

    Columns: path, name, status, dataset, model, encoder, loss_preset, miou (eval/summary.json, else
    the last validation, else NaN when the run has not been validated), created, updated, error (the
    RunFormatError message for a malformed run.json, else empty).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"runs root {root} is not a directory")
    rows = []
    for path in _run_dirs(root, depth=2):
        row: dict[str, Any] = dict.fromkeys(LIST_COLUMNS, "")
        row["path"] = str(path.resolve())
        row["miou"] = float("nan")
        try:
            meta = _validate_run_meta(_read_json(path / "run.json", "run.json"))
        except RunFormatError as err:
            row.update(name=path.name, status="invalid", error=f"{path / 'run.json'}: {err}")
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
