"""2-D maps (UMAP, t-SNE, PCA) of per-stage pixel embeddings of runs, cached on disk (docs/workbench.md, view 2).

The maps themselves are computed by ``workbench.projection_methods`` (method details there); this module picks
the pixels, keys and stores the results, and aligns panels.

Cache: ``<cache folder>/<key>.npz`` with ``coords`` [M, 2] float32, ``pixels`` [M] int64 (embedding
rows) and ``params`` (JSON). The cache folder (:func:`cache_dir`) is ``RUN/projections`` for a run folder
you can write to; for runs shipped with the repository (``sample_data/``, ``results/``) and for read-only run
folders it is ``<user cache>/projections/<run name>-<path hash>`` (user cache: ``$MSCL_WORKBENCH_CACHE``,
else the platform's user cache folder for ``mscl-workbench``), so the app never writes into the repository.
Reads look in ``RUN/projections`` first (caches shipped with a run), then in the user cache. The key is the
SHA-1 of the cache format, stage, kind, method, the sorted parameters, the seed and a hash of the pixel rows;
the file also records the size and SHA-1 of the embeddings file it was computed from and is recomputed when they
changed (re-export). Aligned sets go to ``aligned-<key>.npz`` in the cache folder of the first run of the set,
with ``coords`` [P, M, 2] and ``pixels`` [P, M]. Files are written atomically (``runformat.atomic``).

Aligned panels show the same pixels in every panel (``projection_methods.chained_maps``): the first panel is
the single map of its stage (read from its cache), each further panel's UMAP or t-SNE is started from the
previous panel's map, and every panel is centred and rotated/reflected onto the previous one (orthogonal
Procrustes); PCA panels are only rotated. Method ``umap-joint`` fits all panels jointly with ``umap.AlignedUMAP``
instead (slower). Across runs, pixels are matched on (image_id, y, x): when the runs' pixel tables differ, only
pixels present in every run are used (``aligned_pixel_rows``).

Every computing function takes ``progress`` (a ``workbench.progress.Progress``: progress reports and a cancel
event); a cancelled computation raises ``ProjectionCancelled`` and caches nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from runformat.atomic import atomic_file
from workbench.progress import CancelEvent, Progress, ProgressCallback, as_progress
from workbench.projection_methods import (
    ALIGNED_METHODS,
    CACHE_ENV_VAR,
    DEFAULT_PARAMS,
    METHODS,
    REFINED_PARAMS,
    chained_maps,
    check_matrix,
    joint_umap,
    merge_params,
    project,
    user_cache_root,
)
from workbench.runs import Run

__all__ = [
    "METHODS",
    "ALIGNED_METHODS",
    "DEFAULT_MAX_POINTS",
    "DEFAULT_SEED",
    "DEFAULT_PARAMS",
    "REFINED_PARAMS",
    "project",
    "select_pixels",
    "projection",
    "projection_cache_path",
    "aligned_pixel_rows",
    "aligned_cache_path",
    "aligned_projections",
    "precompute_projections",
    "CACHE_ENV_VAR",
    "cache_dir",
    "user_cache_root",
]

logger = logging.getLogger(__name__)

DEFAULT_MAX_POINTS = 20000
DEFAULT_SEED = 0
CACHE_FORMAT = 2
"""Part of every cache key: format 1 maps (scikit-learn t-SNE, spectral-initialised UMAP) are not reused."""
REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_RUN_FOLDERS = (REPO_ROOT / "sample_data", REPO_ROOT / "results")
"""Folders of the repository whose runs are shipped: their projection caches never go into the repository."""


def _balanced_subset(labels: np.ndarray, candidates: np.ndarray, max_points: int, seed: int) -> np.ndarray:
    """Up to ``max_points`` of ``candidates``, as even across classes as class sizes allow (sorted)."""
    if len(candidates) <= max_points:
        return np.sort(candidates)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels[candidates], return_counts=True)
    remaining = max_points
    chosen = []
    for position, class_index in enumerate(np.argsort(counts, kind="stable")):
        share = remaining // (len(classes) - position)
        members = candidates[labels[candidates] == classes[class_index]]
        take = min(len(members), share)
        chosen.append(rng.choice(members, size=take, replace=False))
        remaining -= take
    return np.sort(np.concatenate(chosen))


def select_pixels(run: Run, max_points: int = DEFAULT_MAX_POINTS, seed: int = 0) -> np.ndarray:
    """Class-balanced subset of labelled embedding rows (int64, sorted; ignore-labelled rows excluded).

    Classes with fewer pixels than an even share give all of theirs; the rest is shared evenly.
    """
    if max_points < 1:
        raise ValueError(f"max_points must be positive, got {max_points}")
    labels = run.pixels()["label"].to_numpy()
    candidates = np.flatnonzero(labels != run.ignore_index)
    if len(candidates) == 0:
        raise ValueError(f"run {run.name!r}: embeddings/pixels.parquet has no labelled pixels")
    return _balanced_subset(labels, candidates, max_points, seed).astype(np.int64)


def _pixel_hash(pixels: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(pixels, dtype=np.int64).tobytes()).hexdigest()


def _cache_key(payload: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _source_fingerprint(run: Run, stage: int, kind: str) -> list:
    """Size and SHA-1 of the embeddings file: unchanged by copies and fresh clones, changed by a re-export."""
    path = run.embedding_file(stage, kind)
    return [path.stat().st_size, hashlib.sha1(path.read_bytes()).hexdigest()]


def _run_identity(run: Run) -> list:
    """A run's identity in cache keys that does not depend on where the run directory lives."""
    return [run.name, run.meta.get("created")]


def _resolve_pixels(run: Run, pixels: np.ndarray | None, seed: int) -> np.ndarray:
    if pixels is None:
        return select_pixels(run, seed=seed)
    pixels = np.asarray(pixels, dtype=np.int64)
    total = len(run.pixels())
    if pixels.ndim != 1 or len(pixels) < 3 or pixels.min() < 0 or pixels.max() >= total:
        raise ValueError(f"pixels must be >= 3 embedding row indices in [0, {total}), got shape {pixels.shape}")
    return pixels


def _user_cache_dir(run: Run) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", run.name)[:60] or "run"
    return user_cache_root() / "projections" / f"{name}-{hashlib.sha1(str(run.path).encode()).hexdigest()[:12]}"


def _is_shipped(run: Run) -> bool:
    return any(run.path.is_relative_to(folder.resolve()) for folder in SHIPPED_RUN_FOLDERS)


def cache_dir(run: Run) -> Path:
    """The folder new projection caches of ``run`` are written to: ``RUN/projections`` when the run folder is
    writable and not shipped with the repository (``sample_data/``, ``results/``), else the run's folder in
    the user cache (:func:`user_cache_root`)."""
    own = run.path / "projections"
    writable = os.access(own if own.is_dir() else run.path, os.W_OK)
    return own if writable and not _is_shipped(run) else _user_cache_dir(run)


def _cache_candidates(run: Run, folder: Path | None) -> list[Path]:
    """Folders a cache file of ``run`` is looked up in, in order (an explicit ``folder`` first)."""
    found = [] if folder is None else [Path(folder)]
    return found + [run.path / "projections", _user_cache_dir(run)]


def _cache_file(run: Run, name: str, folder: Path | None) -> Path:
    """The first existing ``name`` among the cache folders of ``run``, else where it will be written."""
    for candidate in _cache_candidates(run, folder):
        if (candidate / name).is_file():
            return candidate / name
    return (Path(folder) if folder is not None else cache_dir(run)) / name


def _lookup(run: Run, name: str, folder: Path | None, pixels: np.ndarray, sources: list) -> np.ndarray | None:
    """The first valid cached coords of ``name`` among the cache folders of ``run``, else None."""
    for candidate in _cache_candidates(run, folder):
        coords = _read_cache(candidate / name, pixels, sources)
        if coords is not None:
            return coords
    return None


def _store(run: Run, name: str, folder: Path | None, coords: np.ndarray, pixels: np.ndarray,
           params: dict[str, Any]) -> None:
    """Write a cache file to ``folder`` (default :func:`cache_dir`); when that folder cannot be written, to
    the user cache; when neither can, log a warning and keep the map uncached."""
    targets = list(dict.fromkeys([Path(folder) if folder is not None else cache_dir(run), _user_cache_dir(run)]))
    for target in targets:
        try:
            _write_cache(target / name, coords, pixels, params)
            return
        except OSError as err:
            reason = f"{target}: {err.strerror or err}"
    logger.warning("projection of run %r not cached (%s); set %s to a writable folder", run.name, reason, CACHE_ENV_VAR)


def _map_name(run: Run, stage: int, kind: str, method: str, pixels: np.ndarray, seed: int,
              params: dict[str, Any]) -> str:
    if method not in METHODS:
        raise ValueError(f"a single map's method must be one of {METHODS}, got {method!r}")
    key = _cache_key({"format": CACHE_FORMAT, "stage": stage, "kind": kind, "method": method,
                      "params": merge_params(method, params), "seed": seed, "pixels": _pixel_hash(pixels)})
    return f"{key}.npz"


def projection_cache_path(run: Run, stage: int, kind: str = "projected", method: str = "umap",
                          pixels: np.ndarray | None = None, seed: int = 0, cache_folder: Path | None = None,
                          **params: Any) -> Path:
    """Where ``projection`` finds this projection's cache file, or will write it (see :func:`cache_dir`)."""
    pixels = _resolve_pixels(run, pixels, seed)
    return _cache_file(run, _map_name(run, stage, kind, method, pixels, seed, params), cache_folder)


def _read_cache(path: Path, pixels: np.ndarray, sources: list) -> np.ndarray | None:
    """Cached coords when the file exists and matches the pixel rows and source files, else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            coords, cached_pixels, params = data["coords"], data["pixels"], json.loads(str(data["params"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if params.get("sources") != sources or not np.array_equal(cached_pixels, pixels) \
            or coords.shape != (*pixels.shape, 2):
        return None
    return coords.astype(np.float32)


def _write_cache(path: Path, coords: np.ndarray, pixels: np.ndarray, params: dict[str, Any]) -> None:
    """Compressed: the sorted pixel rows shrink several-fold (caches may ship with a run)."""
    with atomic_file(path) as handle:
        np.savez_compressed(handle, coords=coords.astype(np.float32), pixels=pixels.astype(np.int64),
                 params=np.array(json.dumps(params, sort_keys=True, default=str)))


def projection(run: Run, stage: int, kind: str = "projected", method: str = "umap",
               pixels: np.ndarray | None = None, seed: int = 0, cache_folder: Path | None = None,
               progress: Progress | ProgressCallback | None = None,
               cancel: CancelEvent | None = None, **params: Any) -> np.ndarray:
    """2-D map (float32 [len(pixels), 2]) of embedding rows ``pixels`` (default: ``select_pixels(run)``)
    of one stage/kind, read from or written to the on-disk cache (``cache_folder``, default :func:`cache_dir`)."""
    pixels = _resolve_pixels(run, pixels, seed)
    merged = merge_params(method, params)
    name = _map_name(run, stage, kind, method, pixels, seed, params)
    sources = [_source_fingerprint(run, stage, kind)]
    cached = _lookup(run, name, cache_folder, pixels, sources)
    if cached is not None:
        return cached
    coords = project(run.embeddings(stage, kind)[pixels], method=method, seed=seed, progress=as_progress(progress, cancel),
                     **merged)
    _store(run, name, cache_folder, coords, pixels, {"format": CACHE_FORMAT, "stage": stage, "kind": kind,
                                                     "method": method, "params": merged, "seed": seed, "sources": sources})
    return coords


def _pixel_keys(run: Run) -> pd.DataFrame:
    return run.pixels()[["image_id", "y", "x"]].reset_index(drop=True)


def aligned_pixel_rows(runs: list[Run], pixels: np.ndarray | None = None, seed: int = 0,
                       max_points: int = DEFAULT_MAX_POINTS) -> list[np.ndarray]:
    """Embedding row indices per run such that row i of every run is the same (image_id, y, x) pixel.

    ``pixels`` are rows of the first run (default: ``select_pixels(runs[0])``). When the runs' pixel
    tables differ, only pixels present in every run are kept (the subset is drawn among those);
    raises ValueError when fewer than 3 remain.
    """
    if not runs:
        raise ValueError("aligned_pixel_rows needs at least one run")
    first = _pixel_keys(runs[0])
    if all(_pixel_keys(run).equals(first) for run in runs[1:]):
        rows = _resolve_pixels(runs[0], pixels, seed) if pixels is not None \
            else select_pixels(runs[0], max_points=max_points, seed=seed)
        return [rows.copy() for _ in runs]
    labels = runs[0].pixels()["label"].to_numpy()
    candidates = np.asarray(pixels, dtype=np.int64) if pixels is not None \
        else np.flatnonzero(labels != runs[0].ignore_index)
    keys = first.iloc[candidates].assign(row0=candidates)
    for number, run in enumerate(runs[1:], start=1):
        other = _pixel_keys(run)
        other = other.assign(**{f"row{number}": np.arange(len(other))}).drop_duplicates(["image_id", "y", "x"])
        keys = keys.merge(other, on=["image_id", "y", "x"], how="inner")
    if len(keys) < 3:
        raise ValueError(
            f"runs {[run.name for run in runs]} share only {len(keys)} sampled pixels (matched on "
            "image_id, y, x); export them with the same split and seed to compare their feature spaces"
        )
    if pixels is None:
        chosen = set(_balanced_subset(labels, keys["row0"].to_numpy(), max_points, seed).tolist())
        keys = keys[keys["row0"].isin(chosen)]
    keys = keys.sort_values("row0")
    return [keys[f"row{number}"].to_numpy(dtype=np.int64) for number in range(len(runs))]


def _aligned_plan(items: list[tuple[Run, int, str]], method: str, pixels: np.ndarray | None, seed: int,
                  params: dict[str, Any]) -> tuple[list[np.ndarray], dict[str, Any], str]:
    """Pixel rows per item, merged parameters and cache file name of an aligned projection."""
    if not items:
        raise ValueError("aligned projections need at least one (run, stage, kind) item")
    merged = merge_params(method, params)
    unique_runs = list({id(run): run for run, _, _ in items}.values())
    run_rows = dict(zip((id(run) for run in unique_runs), aligned_pixel_rows(unique_runs, pixels, seed)))
    rows = [run_rows[id(run)] for run, _, _ in items]
    key = _cache_key({"format": CACHE_FORMAT, "aligned": [[_run_identity(run), stage, kind] for run, stage, kind in items],
                      "method": method, "params": merged, "seed": seed, "pixels": [_pixel_hash(r) for r in rows]})
    return rows, merged, f"aligned-{key}.npz"


def aligned_cache_path(items: list[tuple[Run, int, str]], method: str = "umap", pixels: np.ndarray | None = None,
                       seed: int = 0, cache_folder: Path | None = None, **params: Any) -> Path:
    """Where ``aligned_projections`` finds these panels' cache file, or will write it (first run's cache folder)."""
    return _cache_file(items[0][0], _aligned_plan(items, method, pixels, seed, params)[2], cache_folder)


def aligned_projections(items: list[tuple[Run, int, str]], method: str = "umap",
                        pixels: np.ndarray | None = None, seed: int = 0, cache_folder: Path | None = None,
                        progress: Progress | ProgressCallback | None = None,
                        cancel: CancelEvent | None = None, **params: Any) -> list[np.ndarray]:
    """One 2-D map per (run, stage, kind) panel over the same pixels, so panels compare point by point.

    Row i of every panel is the pixel ``aligned_pixel_rows(runs, pixels, seed)[run][i]``. ``method``: one of
    ``ALIGNED_METHODS`` (see the module doc). Cached under the first run's cache folder (``cache_folder``,
    default :func:`cache_dir`); a single item is the single map of ``projection`` (``umap-joint``: ``umap``).
    """
    rows, merged, name = _aligned_plan(items, method, pixels, seed, params)
    single = "umap" if method == "umap-joint" else method
    if len(items) == 1:
        run, stage, kind = items[0]
        return [projection(run, stage, kind, single, pixels=rows[0], seed=seed, cache_folder=cache_folder,
                           progress=progress, cancel=cancel, **merged)]
    sources = [_source_fingerprint(run, stage, kind) for run, stage, kind in items]
    stacked_rows = np.stack(rows)
    cached = _lookup(items[0][0], name, cache_folder, stacked_rows, sources)
    if cached is not None:
        return list(cached)
    progress = as_progress(progress, cancel)
    data = [check_matrix(run.embeddings(stage, kind)[r]) for (run, stage, kind), r in zip(items, rows)]
    if method == "umap-joint":
        panels = joint_umap(data, seed=seed, progress=progress, **merged)
    else:
        run, stage, kind = items[0]
        first = projection(run, stage, kind, method, pixels=rows[0], seed=seed, cache_folder=cache_folder,
                           progress=progress.part(0, len(items), f"panel 1/{len(items)}"), **merged)
        panels = chained_maps(data, method, seed=seed, first=first, progress=progress, **merged)
    coords = np.stack(panels).astype(np.float32)
    _store(items[0][0], name, cache_folder, coords, stacked_rows, {
        "format": CACHE_FORMAT, "items": [[_run_identity(run), stage, kind] for run, stage, kind in items],
        "method": method, "params": merged, "seed": seed, "sources": sources})
    return list(coords)


def precompute_projections(run: Run, methods: tuple[str, ...] = METHODS, kinds: tuple[str, ...] | None = None,
                           max_points: int = DEFAULT_MAX_POINTS, seed: int = DEFAULT_SEED,
                           aligned_methods: tuple[str, ...] = METHODS, cache_folder: Path | None = None,
                           progress: Progress | ProgressCallback | None = None,
                           cancel: CancelEvent | None = None) -> list[Path]:
    """Fill the projection cache with the default parameters (``DEFAULT_PARAMS``) the app uses.

    The files go to ``cache_folder`` when given (e.g. ``RUN/projections`` to ship them with a run), else to
    :func:`cache_dir` (the user cache for shipped and read-only runs).

    For every exported stage, kind (default: all the run has) and method: the single-panel projection
    of ``select_pixels(run, max_points, seed)``. For methods also in ``aligned_methods`` (which may add
    ``umap-joint``), the stage-aligned set per kind too (``aligned_projections([(run, s, kind) for s in stages],
    method)``); its first panel is the single map of stage 0, so it costs one map less. ``progress`` counts the
    maps. Returns the cache files.
    """
    kinds = tuple(run.embedding_kinds()) if kinds is None else kinds
    pixels = select_pixels(run, max_points=max_points, seed=seed)
    stages = run.embedding_stages()
    aligned = [method for method in aligned_methods if method in methods or method == "umap-joint"] if len(stages) > 1 else []
    jobs = [(what, method, kind) for method in dict.fromkeys([*methods, *aligned])
            for what in ("single", "aligned") for kind in kinds
            if (what == "single" and method in methods) or (what == "aligned" and method in aligned)]
    progress = as_progress(progress, cancel)
    written = []
    for number, (what, method, kind) in enumerate(jobs):
        label = f"{method} {kind} {'aligned stages' if what == 'aligned' else 'stages'}"
        part = progress.part(number, len(jobs), label)
        if what == "single":
            for index, stage in enumerate(stages):
                projection(run, stage, kind, method, pixels=pixels, seed=seed, cache_folder=cache_folder,
                           progress=part.part(index, len(stages), f"stage {stage}"))
                written.append(projection_cache_path(run, stage, kind, method, pixels=pixels, seed=seed,
                                                     cache_folder=cache_folder))
        else:
            items = [(run, stage, kind) for stage in stages]
            aligned_projections(items, method, pixels=pixels, seed=seed, cache_folder=cache_folder, progress=part)
            written.append(aligned_cache_path(items, method, pixels=pixels, seed=seed, cache_folder=cache_folder))
        part.update(1.0)
    return written
