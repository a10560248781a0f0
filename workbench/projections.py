"""2-D maps (UMAP, t-SNE, PCA) of per-stage pixel embeddings, cached on disk (shared docs/workbench.md, view 2).

Cache: ``RUN/projections/<key>.npz`` with ``coords`` [M, 2] float32, ``pixels`` [M] int64 (embedding
rows) and ``params`` (JSON). The key is the SHA-1 of stage, kind, method, the sorted parameters, the
seed and a hash of the pixel rows; the file also records the size and modification time of the
embeddings file it was computed from and is recomputed when they changed (re-export). Aligned sets
go to ``RUN/projections/aligned-<key>.npz`` (first run of the set) with ``coords`` [P, M, 2] and
``pixels`` [P, M]. Files are written atomically (temporary file + ``os.replace``).

Aligned panels show the same pixels in every panel: UMAP via ``umap.AlignedUMAP`` with identity
relations between consecutive panels; t-SNE with one shared initialisation (PCA of the first panel,
scaled to std 1e-4 as sklearn does); PCA fits each panel and rotates/reflects it onto the first by
orthogonal Procrustes. Across runs, pixels are matched on (image_id, y, x): when the runs' pixel tables
differ, only pixels present in every run are used (``aligned_pixel_rows``).

PCA and t-SNE use L2-normalised rows by default (``normalize=True``), UMAP the cosine metric: all
three look at the cosine geometry the contrastive loss shapes.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.linalg import orthogonal_procrustes
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from workbench.runs import Run
from workbench.separability import l2_normalize

__all__ = [
    "METHODS",
    "DEFAULT_MAX_POINTS",
    "DEFAULT_SEED",
    "DEFAULT_PARAMS",
    "project",
    "select_pixels",
    "projection",
    "projection_cache_path",
    "aligned_pixel_rows",
    "aligned_cache_path",
    "aligned_projections",
    "precompute_projections",
]

METHODS = ("umap", "tsne", "pca")
DEFAULT_MAX_POINTS = 20000
DEFAULT_SEED = 0
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "umap": {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine"},
    "tsne": {"perplexity": 30.0, "metric": "cosine", "normalize": True},
    "pca": {"normalize": True},
}
CACHE_FORMAT = 1
_SMALL_TSNE_POINTS = 2000


def _params(method: str, params: dict[str, Any]) -> dict[str, Any]:
    if method not in METHODS:
        raise ValueError(f"projection method must be one of {METHODS}, got {method!r}")
    allowed = {"umap": {"n_neighbors", "min_dist", "metric", "spread", "n_epochs"},
               "tsne": {"perplexity", "metric", "learning_rate", "early_exaggeration", "max_iter", "normalize"},
               "pca": {"normalize"}}[method]
    unknown = set(params) - allowed
    if unknown:
        raise ValueError(f"unknown {method} parameter(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return {**DEFAULT_PARAMS[method], **params}


def _check_matrix(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] < 3:
        raise ValueError(f"projection needs a matrix [M >= 3, D], got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("projection input contains NaN or infinite values")
    return X


def _umap_model(params: dict[str, Any], seed: int, aligned: bool = False) -> Any:
    import umap

    kwargs = {"n_components": 2, "random_state": seed, **params}
    if aligned:
        return umap.AlignedUMAP(**kwargs)
    return umap.UMAP(n_jobs=1, **kwargs)


@contextmanager
def _seeded_umap_warning_silenced() -> Iterator[None]:
    """umap warns that a seed disables parallelism; seeding is deliberate here (reproducible maps)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="n_jobs value .* overridden", category=UserWarning)
        yield


def _tsne(X: np.ndarray, params: dict[str, Any], seed: int, init: np.ndarray | str = "pca") -> np.ndarray:
    perplexity = float(params["perplexity"])
    if perplexity >= X.shape[0]:
        raise ValueError(f"t-SNE perplexity ({perplexity}) must be smaller than the number of points ({X.shape[0]})")
    kwargs = {k: v for k, v in params.items() if k != "normalize"}
    data = l2_normalize(X) if params["normalize"] else X
    model = TSNE(n_components=2, random_state=seed, init=init, **kwargs)
    if X.shape[0] < _SMALL_TSNE_POINTS:
        # OpenMP threads only add overhead for small inputs, and spin badly on a busy machine
        with threadpool_limits(limits=1, user_api="openmp"):
            return model.fit_transform(data)
    return model.fit_transform(data)


def _pca(X: np.ndarray, params: dict[str, Any], seed: int) -> np.ndarray:
    data = l2_normalize(X) if params["normalize"] else np.asarray(X, dtype=np.float64)
    return PCA(n_components=2, random_state=seed).fit_transform(data)


def project(X: np.ndarray, method: str = "umap", seed: int = 0, **params: Any) -> np.ndarray:
    """2-D map of the rows of X (float32 [M, 2]); parameters default to ``DEFAULT_PARAMS[method]``."""
    X = _check_matrix(X)
    params = _params(method, params)
    if method == "umap":
        with _seeded_umap_warning_silenced():
            coords = _umap_model(params, seed).fit_transform(X)
    elif method == "tsne":
        coords = _tsne(X, params, seed)
    else:
        coords = _pca(X, params, seed)
    return np.asarray(coords, dtype=np.float32)


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


def projection_cache_path(run: Run, stage: int, kind: str = "projected", method: str = "umap",
                          pixels: np.ndarray | None = None, seed: int = 0, **params: Any) -> Path:
    """Where ``projection`` caches this projection (the file may not exist yet)."""
    pixels = _resolve_pixels(run, pixels, seed)
    key = _cache_key({"stage": stage, "kind": kind, "method": method, "params": _params(method, params),
                      "seed": seed, "pixels": _pixel_hash(pixels)})
    return run.path / "projections" / f"{key}.npz"


def _read_cache(path: Path, pixels: np.ndarray, sources: list) -> np.ndarray | None:
    """Cached coords when the file exists and matches the pixel rows and source files, else None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            coords, cached_pixels, params = data["coords"], data["pixels"], json.loads(str(data["params"]))
    except (OSError, ValueError, KeyError):
        return None
    if params.get("sources") != sources or not np.array_equal(cached_pixels, pixels) \
            or coords.shape != (*pixels.shape, 2):
        return None
    return coords.astype(np.float32)


def _write_cache(path: Path, coords: np.ndarray, pixels: np.ndarray, params: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        np.savez(handle, coords=coords.astype(np.float32), pixels=pixels.astype(np.int64),
                 params=np.array(json.dumps(params, sort_keys=True, default=str)))
    os.replace(tmp, path)


def projection(run: Run, stage: int, kind: str = "projected", method: str = "umap",
               pixels: np.ndarray | None = None, seed: int = 0, **params: Any) -> np.ndarray:
    """2-D map (float32 [len(pixels), 2]) of embedding rows ``pixels`` (default: ``select_pixels(run)``)
    of one stage/kind, read from or written to the on-disk cache."""
    pixels = _resolve_pixels(run, pixels, seed)
    merged = _params(method, params)
    path = projection_cache_path(run, stage, kind, method, pixels, seed, **params)
    sources = [_source_fingerprint(run, stage, kind)]
    cached = _read_cache(path, pixels, sources)
    if cached is not None:
        return cached
    coords = project(run.embeddings(stage, kind)[pixels], method=method, seed=seed, **merged)
    _write_cache(path, coords, pixels, {"format": CACHE_FORMAT, "stage": stage, "kind": kind, "method": method,
                                        "params": merged, "seed": seed, "sources": sources})
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


def _procrustes_align(panels: list[np.ndarray]) -> list[np.ndarray]:
    """Rotate/reflect every centred panel onto the first (orthogonal Procrustes)."""
    reference = panels[0] - panels[0].mean(0)
    aligned = [reference]
    for coords in panels[1:]:
        centred = coords - coords.mean(0)
        rotation, _ = orthogonal_procrustes(centred, reference)
        aligned.append(centred @ rotation)
    return aligned


def _aligned_plan(items: list[tuple[Run, int, str]], method: str, pixels: np.ndarray | None, seed: int,
                  params: dict[str, Any]) -> tuple[list[np.ndarray], dict[str, Any], Path]:
    """Pixel rows per item, merged parameters and cache file of an aligned projection."""
    if not items:
        raise ValueError("aligned projections need at least one (run, stage, kind) item")
    merged = _params(method, params)
    unique_runs = list({id(run): run for run, _, _ in items}.values())
    run_rows = dict(zip((id(run) for run in unique_runs), aligned_pixel_rows(unique_runs, pixels, seed)))
    rows = [run_rows[id(run)] for run, _, _ in items]
    key = _cache_key({"aligned": [[_run_identity(run), stage, kind] for run, stage, kind in items], "method": method,
                      "params": merged, "seed": seed, "pixels": [_pixel_hash(r) for r in rows]})
    return rows, merged, items[0][0].path / "projections" / f"aligned-{key}.npz"


def aligned_cache_path(items: list[tuple[Run, int, str]], method: str = "umap", pixels: np.ndarray | None = None,
                       seed: int = 0, **params: Any) -> Path:
    """Where ``aligned_projections`` caches these panels (the file may not exist yet)."""
    return _aligned_plan(items, method, pixels, seed, params)[2]


def aligned_projections(items: list[tuple[Run, int, str]], method: str = "umap",
                        pixels: np.ndarray | None = None, seed: int = 0, **params: Any) -> list[np.ndarray]:
    """One 2-D map per (run, stage, kind) panel over the same pixels, so panels compare point by point.

    Row i of every panel is the pixel ``aligned_pixel_rows(runs, pixels, seed)[run][i]``. Cached under
    the first run's projections/ folder (a single item uses ``projection``'s cache).
    """
    rows, merged, path = _aligned_plan(items, method, pixels, seed, params)
    if len(items) == 1:
        run, stage, kind = items[0]
        return [projection(run, stage, kind, method, pixels=rows[0], seed=seed, **merged)]
    sources = [_source_fingerprint(run, stage, kind) for run, stage, kind in items]
    stacked_rows = np.stack(rows)
    cached = _read_cache(path, stacked_rows, sources)
    if cached is not None:
        return list(cached)
    data = [_check_matrix(run.embeddings(stage, kind)[r]) for (run, stage, kind), r in zip(items, rows)]
    if method == "umap":
        identity = {i: i for i in range(len(rows[0]))}
        model = _umap_model(merged, seed, aligned=True)
        with _seeded_umap_warning_silenced():
            model.fit(data, relations=[identity] * (len(data) - 1))
        panels = [np.asarray(e, dtype=np.float64) for e in model.embeddings_]
    elif method == "tsne":
        first = l2_normalize(data[0]) if merged["normalize"] else data[0]
        init = PCA(n_components=2, random_state=seed).fit_transform(first)
        init = init / np.std(init[:, 0]) * 1e-4
        panels = [_tsne(X, merged, seed, init=init) for X in data]
    else:
        panels = _procrustes_align([_pca(X, merged, seed) for X in data])
    coords = np.stack(panels).astype(np.float32)
    _write_cache(path, coords, stacked_rows, {
        "format": CACHE_FORMAT, "items": [[_run_identity(run), stage, kind] for run, stage, kind in items],
        "method": method, "params": merged, "seed": seed, "sources": sources})
    return list(coords)


def precompute_projections(run: Run, methods: tuple[str, ...] = ("umap", "pca"), kinds: tuple[str, ...] | None = None,
                           max_points: int = DEFAULT_MAX_POINTS, seed: int = DEFAULT_SEED,
                           aligned_methods: tuple[str, ...] = ("pca", "tsne")) -> list[Path]:
    """Fill the projection cache with the default parameters (``DEFAULT_PARAMS``) the app uses.

    For every exported stage, kind (default: all the run has) and method: the single-panel projection
    of ``select_pixels(run, max_points, seed)``. For methods also in ``aligned_methods``, the
    stage-aligned set per kind too (``aligned_projections([(run, s, kind) for s in stages], method)``);
    aligned UMAP is left out by default because it is slow (about 7 minutes for 4 stages x 20000
    pixels on 2 busy CPU cores, against about 1 minute per single UMAP). Returns the cache files.
    """
    kinds = tuple(run.embedding_kinds()) if kinds is None else kinds
    pixels = select_pixels(run, max_points=max_points, seed=seed)
    stages = run.embedding_stages()
    written = []
    for method in methods:
        for kind in kinds:
            for stage in stages:
                projection(run, stage, kind, method, pixels=pixels, seed=seed)
                written.append(projection_cache_path(run, stage, kind, method, pixels=pixels, seed=seed))
            if method in aligned_methods and len(stages) > 1:
                items = [(run, stage, kind) for stage in stages]
                aligned_projections(items, method, pixels=pixels, seed=seed)
                written.append(aligned_cache_path(items, method, pixels=pixels, seed=seed))
    return written
