"""2-D maps of embedding matrices: UMAP, t-SNE and PCA, and stage alignment (docs/workbench.md, view 2).

Array-level: these functions take matrices and return float32 ``[M, 2]`` maps; the run-level cache lives in
``workbench.projections``. All three methods look at the cosine geometry the contrastive loss shapes (UMAP with
the cosine metric, t-SNE and PCA on L2-normalised rows by default).

- **UMAP** (``umap-learn``) tuned for interactive use: initialised from the PCA of the (normalised) rows instead
  of a spectral embedding, 200 layout epochs for a first view (``REFINED_PARAMS`` asks for more; a map started
  from a neighbour stage's map runs half), exact nearest neighbours (scikit-learn, brute force) up to
  ``EXACT_NEIGHBOURS_MAX_POINTS`` rows, NN-descent above.
- **t-SNE** with openTSNE: exact neighbours up to ``EXACT_NEIGHBOURS_MAX_POINTS`` rows (openTSNE's own index
  above), Barnes-Hut gradients below ``FFT_MIN_POINTS`` rows and FFT-accelerated interpolation (FIt-SNE, one
  interpolation point per interval: about 6x faster than openTSNE's default of 3 at 3,000 rows, for the same
  trustworthiness) from there; ``max_iter`` iterations (500 for a first view: 40 % less time than openTSNE's 750
  for a trustworthiness lower by 0.0004 at 3,000 rows) of which the first ``min(250, max_iter // 3)`` use early
  exaggeration; a map started from a neighbour stage's map skips the exaggeration and runs ``max_iter // 3``
  iterations. One thread: a seed gives the same map, and threads only spin on a busy machine.
- **PCA** (scikit-learn) of the rows.
- **Stage alignment** (:func:`chained_maps`): the same pixels at several stages; each panel's UMAP or t-SNE is
  initialised from the previous panel's map and its centred result rotated/reflected onto it (orthogonal
  Procrustes, ``scipy.linalg.orthogonal_procrustes``), so a cluster stays where it was. :func:`joint_umap` keeps
  the joint optimisation of ``umap.AlignedUMAP`` as an option (method ``umap-joint``; much slower).

numba, which umap compiles its layout with, keeps its compiled functions on disk: ``NUMBA_CACHE_DIR`` is set to
``<user cache>/numba`` (user cache: ``$MSCL_WORKBENCH_CACHE``, else the platform's user cache folder) unless
already set, and umap's functions are compiled with caching on, so only the first process on a machine pays
the compilation. Every function takes ``progress`` (a ``(fraction, message)`` callback or a
:class:`workbench.progress.Progress`) and ``cancel`` (e.g. a ``threading.Event``): it reports progress (UMAP every
1/50 of its layout epochs, t-SNE every 25 iterations) and stops with ``ProjectionCancelled`` at its next report once ``cancel``
is set. Warnings of umap, numba, pynndescent, scikit-learn and openTSNE are silenced while they run.
"""

from __future__ import annotations

import functools
import io
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import platformdirs
from scipy.linalg import orthogonal_procrustes
from sklearn.decomposition import PCA

from workbench.progress import CancelEvent, Progress, ProgressCallback, as_progress
from workbench.separability import l2_normalize

__all__ = [
    "METHODS",
    "ALIGNED_METHODS",
    "DEFAULT_PARAMS",
    "REFINED_PARAMS",
    "EXACT_NEIGHBOURS_MAX_POINTS",
    "FFT_MIN_POINTS",
    "CACHE_ENV_VAR",
    "user_cache_root",
    "configure_numba_cache",
    "quiet_third_party",
    "check_matrix",
    "merge_params",
    "pca_map",
    "tsne_map",
    "umap_map",
    "project",
    "procrustes_chain",
    "chained_maps",
    "joint_umap",
]

METHODS = ("umap", "tsne", "pca")
"""Methods of a single map."""
ALIGNED_METHODS = (*METHODS, "umap-joint")
"""Methods of a set of aligned maps: ``umap-joint`` is ``umap.AlignedUMAP``, the others :func:`chained_maps`."""
DEFAULT_PARAMS: dict[str, dict[str, Any]] = {
    "umap": {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine", "n_epochs": 200},
    "tsne": {"perplexity": 30.0, "metric": "cosine", "normalize": True, "max_iter": 500, "learning_rate": "auto",
             "early_exaggeration": 12.0},
    "pca": {"normalize": True},
}
"""Parameters of the first view (the app's default and what ``python -m workbench project`` precomputes)."""
REFINED_PARAMS: dict[str, dict[str, Any]] = {"umap": {"n_epochs": 600}, "tsne": {"max_iter": 1500}, "pca": {}}
"""Changes to ``DEFAULT_PARAMS`` for a refined map (more layout epochs / iterations), computed on request."""
_ALLOWED = {"umap": {"n_neighbors", "min_dist", "metric", "spread", "n_epochs"},
            "tsne": {"perplexity", "metric", "learning_rate", "early_exaggeration", "max_iter", "normalize"},
            "pca": {"normalize"}}
EXACT_NEIGHBOURS_MAX_POINTS = 25_000
"""Up to this many rows (the app maps at most 20,000), UMAP and t-SNE use exact nearest neighbours (brute force:
about 0.15 s of CPU at 3,000 rows and 3 s at 20,000 x 64 dimensions, less than NN-descent's compilation in a fresh
process); the cost grows with the square of the rows, so above this NN-descent is faster."""
FFT_MIN_POINTS = 1_000
"""From this many rows t-SNE uses FFT-accelerated gradients (FIt-SNE); below, Barnes-Hut is faster."""
_FFT_INTERPOLATION_POINTS = 1
_EXACT_METRICS = ("cosine", "euclidean", "manhattan")
_TSNE_MAX_EXAGGERATION_ITER = 250
_TSNE_CALLBACK_EVERY = 25
CACHE_ENV_VAR = "MSCL_WORKBENCH_CACHE"
"""Environment variable naming the user cache folder (default: ``platformdirs.user_cache_dir("mscl-workbench")``)."""
_THIRD_PARTY = r"(umap|pynndescent|numba|sklearn|openTSNE)(\.|$)"


def user_cache_root() -> Path:
    """The user cache folder: ``$MSCL_WORKBENCH_CACHE`` when set, else the platform's user cache folder."""
    return Path(os.environ.get(CACHE_ENV_VAR) or platformdirs.user_cache_dir("mscl-workbench")).expanduser()


def configure_numba_cache() -> None:
    """Point ``NUMBA_CACHE_DIR`` at ``<user cache>/numba`` unless it is set; numba reads it when it is imported,
    so this runs when this module is imported (before umap is)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    os.environ["NUMBA_CACHE_DIR"] = str(user_cache_root() / "numba")
    if "numba.core.config" in sys.modules:
        sys.modules["numba.core.config"].reload_config()


configure_numba_cache()


@contextmanager
def quiet_third_party() -> Iterator[None]:
    """Silence the warnings raised by umap, numba, pynndescent, scikit-learn and openTSNE inside the block (e.g.
    umap's notes on seeds disabling parallelism and on missing search indexes; nothing the user can act on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=_THIRD_PARTY)
        yield


@functools.cache
def _umap() -> ModuleType:
    """umap, imported quietly, with caching switched on for its numba functions (compiled once per machine)."""
    with quiet_third_party():
        import umap
        import umap.aligned_umap
        import umap.distances
        import umap.layouts
        import umap.spectral
        import umap.umap_
        import umap.utils
        from numba.core.dispatcher import Dispatcher

        for module in (umap.umap_, umap.layouts, umap.utils, umap.spectral, umap.distances, umap.aligned_umap):
            for value in vars(module).values():
                if isinstance(value, Dispatcher) and value.py_func.__module__ == module.__name__:
                    value.enable_caching()
    return umap


def check_matrix(X: np.ndarray) -> np.ndarray:
    """``X`` as float32 ``[M >= 3, D]``; ValueError naming the problem otherwise."""
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[0] < 3:
        raise ValueError(f"projection needs a matrix [M >= 3, D], got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("projection input contains NaN or infinite values")
    return X


def merge_params(method: str, params: dict[str, Any]) -> dict[str, Any]:
    """``DEFAULT_PARAMS[method]`` updated with ``params`` (``umap-joint`` takes UMAP's); ValueError on an unknown
    method or parameter."""
    base = "umap" if method == "umap-joint" else method
    if base not in METHODS:
        raise ValueError(f"projection method must be one of {ALIGNED_METHODS}, got {method!r}")
    unknown = set(params) - _ALLOWED[base]
    if unknown:
        raise ValueError(f"unknown {base} parameter(s) {sorted(unknown)}; allowed: {sorted(_ALLOWED[base])}")
    return {**DEFAULT_PARAMS[base], **params}


def _exact_neighbours(X: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Indices and distances ``[M, k]`` of each row's ``k`` nearest other rows (brute force, nearest first).

    Cosine neighbours are the euclidean neighbours of the L2-normalised rows, with cosine distance ``d² / 2``:
    scikit-learn's euclidean search is its fast, chunked path (about 3x faster than its cosine one at 3,000 rows)."""
    from sklearn.neighbors import NearestNeighbors

    data = l2_normalize(X).astype(np.float32) if metric == "cosine" else X
    index = NearestNeighbors(n_neighbors=k, metric="euclidean" if metric == "cosine" else metric, algorithm="brute").fit(data)
    distances, indices = index.kneighbors()
    distances = distances.astype(np.float64) ** 2 / 2 if metric == "cosine" else distances
    return indices.astype(np.int32), np.maximum(distances, 0.0).astype(np.float32)


def _pca_init(X: np.ndarray, normalize: bool, seed: int) -> np.ndarray:
    data = l2_normalize(X) if normalize else np.asarray(X, dtype=np.float64)
    return PCA(n_components=2, random_state=seed).fit_transform(data)


def pca_map(X: np.ndarray, params: dict[str, Any], seed: int, progress: Progress | ProgressCallback | None = None,
            cancel: CancelEvent | None = None) -> np.ndarray:
    """PCA of the rows (L2-normalised with ``normalize``), float64 ``[M, 2]``."""
    progress = as_progress(progress, cancel)
    progress.update(0.0, "PCA")
    coords = _pca_init(X, params["normalize"], seed)
    progress.update(1.0, "PCA")
    return coords


def tsne_map(X: np.ndarray, params: dict[str, Any], seed: int, init: np.ndarray | None = None,
             progress: Progress | ProgressCallback | None = None,
             cancel: CancelEvent | None = None) -> np.ndarray:
    """openTSNE map of the rows, float64 ``[M, 2]``, started from the PCA of the rows, see module doc.

    Started from a given map ``init`` instead (a neighbour stage's map), the clusters are already formed: no early
    exaggeration and ``max_iter // 3`` iterations (at 3,000 rows: trustworthiness within 0.001 of a map from
    scratch, a third of the time). ``params``
    as ``DEFAULT_PARAMS["tsne"]``; ``learning_rate="auto"`` is openTSNE's ``max(200, M / exaggeration)``.
    """
    from openTSNE import TSNEEmbedding, affinity, initialization
    from openTSNE.nearest_neighbors import PrecomputedNeighbors

    progress = as_progress(progress, cancel)
    points = X.shape[0]
    perplexity = float(params["perplexity"])
    if perplexity >= points:
        raise ValueError(f"t-SNE perplexity ({perplexity}) must be smaller than the number of points ({points})")
    data = l2_normalize(X) if params["normalize"] else np.asarray(X, dtype=np.float64)
    if int(params["max_iter"]) < 6:
        raise ValueError(f"t-SNE max_iter must be at least 6, got {params['max_iter']}")
    total = int(params["max_iter"]) if init is None else int(params["max_iter"]) // 3
    fft = points >= FFT_MIN_POINTS
    progress.update(0.0, "t-SNE neighbours")
    with quiet_third_party():
        if points <= EXACT_NEIGHBOURS_MAX_POINTS and params["metric"] in _EXACT_METRICS:
            indices, distances = _exact_neighbours(data, min(points - 1, int(3 * perplexity)), params["metric"])
            affinities = affinity.PerplexityBasedNN(knn_index=PrecomputedNeighbors(indices, distances),
                                                    perplexity=perplexity, n_jobs=1)
        else:
            affinities = affinity.PerplexityBasedNN(data, perplexity=perplexity, metric=params["metric"], n_jobs=1,
                                                    random_state=seed)
        start = initialization.pca(data, random_state=seed) if init is None \
            else initialization.rescale(np.asarray(init, dtype=np.float64))
        exaggerated = min(_TSNE_MAX_EXAGGERATION_ITER, total // 3) if init is None else 0
        done = [0]

        def report(iteration: int, error: float, embedding: np.ndarray) -> bool:
            progress.update((done[0] + iteration) / total, f"t-SNE iteration {done[0] + iteration}/{total}")
            return False

        gradient = {"negative_gradient_method": "fft", "n_interpolation_points": _FFT_INTERPOLATION_POINTS} if fft \
            else {"negative_gradient_method": "bh"}
        embedding = TSNEEmbedding(start, affinities, n_jobs=1, random_state=seed, callbacks=report,
                                  callbacks_every_iters=_TSNE_CALLBACK_EVERY, **gradient)
        progress.update(0.0, f"t-SNE iteration 0/{total}")
        if exaggerated:
            embedding = embedding.optimize(exaggerated, exaggeration=float(params["early_exaggeration"]), momentum=0.5,
                                           learning_rate=params["learning_rate"])
            done[0] = exaggerated
        embedding = embedding.optimize(total - exaggerated, momentum=0.8, learning_rate=params["learning_rate"])
    progress.update(1.0, f"t-SNE iteration {total}/{total}")
    return np.asarray(embedding, dtype=np.float64)


class _EpochStream(io.TextIOBase):
    """The file umap's layout progress bar (tqdm, format ``{n}``) writes to: each epoch count it writes becomes a
    progress report (which raises ``ProjectionCancelled`` when the job is cancelled, stopping the layout)."""

    def __init__(self, progress: Progress, epochs: int) -> None:
        self.progress = progress
        self.epochs = epochs

    def write(self, text: str) -> int:
        count = text.strip()
        if count.isdigit():
            self.progress.update(int(count) / self.epochs, f"UMAP epoch {count}/{self.epochs}")
        return len(text)


def umap_map(X: np.ndarray, params: dict[str, Any], seed: int, init: np.ndarray | None = None,
             progress: Progress | ProgressCallback | None = None,
             cancel: CancelEvent | None = None) -> np.ndarray:
    """UMAP map of the rows, float64 ``[M, 2]``, started from the PCA of the rows (normalised for the cosine metric),
    see module doc. Started from a given map ``init`` instead (a neighbour stage's map), ``n_epochs // 2`` epochs
    (at 3,000 rows: the same trustworthiness, half the time). ``params`` as ``DEFAULT_PARAMS["umap"]``."""
    progress = as_progress(progress, cancel)
    progress.update(0.0, "UMAP neighbours")
    umap = _umap()
    points = X.shape[0]
    metric = params["metric"]
    start = _pca_init(X, metric == "cosine", seed) if init is None else np.asarray(init, dtype=np.float64)
    kwargs: dict[str, Any] = {}
    neighbours = int(params["n_neighbors"])
    if neighbours < points <= EXACT_NEIGHBOURS_MAX_POINTS and metric in _EXACT_METRICS:
        indices, distances = _exact_neighbours(X, neighbours - 1, metric)
        kwargs["precomputed_knn"] = (np.hstack([np.arange(points, dtype=np.int32)[:, None], indices]),
                                     np.hstack([np.zeros((points, 1), np.float32), distances]), None)
    epochs = int(params["n_epochs"]) if init is None else max(1, int(params["n_epochs"]) // 2)
    watched = progress.callback is not None or progress.cancel is not None
    stream = _EpochStream(progress, epochs)
    tqdm_kwds = {"disable": not watched, "file": stream, "bar_format": "{n}", "mininterval": 0, "miniters": max(1, epochs // 50),
                 "leave": False}
    model = umap.UMAP(n_components=2, random_state=seed, n_jobs=1, init=start, tqdm_kwds=tqdm_kwds, **kwargs,
                      **{**params, "n_epochs": epochs})
    with quiet_third_party():
        coords = model.fit_transform(X)
    progress.update(1.0, f"UMAP epoch {epochs}/{epochs}")
    return np.asarray(coords, dtype=np.float64)


def project(X: np.ndarray, method: str = "umap", seed: int = 0, init: np.ndarray | None = None,
            progress: Progress | ProgressCallback | None = None,
            cancel: CancelEvent | None = None, **params: Any) -> np.ndarray:
    """2-D map of the rows of X (float32 ``[M, 2]``); parameters default to ``DEFAULT_PARAMS[method]``; ``init``
    (UMAP, t-SNE) starts the layout from a given map."""
    X = check_matrix(X)
    params = merge_params(method, params)
    progress = as_progress(progress, cancel)
    if method == "umap":
        coords = umap_map(X, params, seed, init, progress)
    elif method == "tsne":
        coords = tsne_map(X, params, seed, init, progress)
    elif method == "pca":
        coords = pca_map(X, params, seed, progress)
    else:
        raise ValueError(f"{method!r} makes aligned sets only; a single map takes one of {METHODS}")
    return np.asarray(coords, dtype=np.float32)


def procrustes_chain(panels: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Centre every panel and rotate/reflect it onto the previous, already aligned panel (orthogonal Procrustes:
    the orthogonal ``R`` minimising ``||A R - B||_F``); float64 ``[M, 2]`` each."""
    aligned: list[np.ndarray] = []
    for coords in panels:
        centred = np.asarray(coords, dtype=np.float64) - np.mean(coords, axis=0)
        if aligned:
            rotation, _ = orthogonal_procrustes(centred, aligned[-1])
            centred = centred @ rotation
        aligned.append(centred)
    return aligned


def chained_maps(matrices: Sequence[np.ndarray], method: str, seed: int = 0, first: np.ndarray | None = None,
                 progress: Progress | ProgressCallback | None = None,
                 cancel: CancelEvent | None = None, **params: Any) -> list[np.ndarray]:
    """Aligned maps of the same rows in several matrices (e.g. the stages of a run; docs/workbench.md, view 2).

    Panel 0 is ``project(matrices[0])`` (or ``first`` when given, e.g. from a cache); panel i > 0 is the map of
    ``matrices[i]`` initialised from panel i-1 (UMAP, t-SNE; PCA needs no start), and every panel is centred and
    rotated onto the previous one (:func:`procrustes_chain`). Returns float32 ``[M, 2]`` panels.
    """
    progress = as_progress(progress, cancel)
    panels: list[np.ndarray] = []
    for number, X in enumerate(matrices):
        part = progress.part(number, len(matrices), f"panel {number + 1}/{len(matrices)}")
        if number == 0 and first is not None:
            coords = np.asarray(first, dtype=np.float64)
        else:
            start = panels[-1] if panels and method != "pca" else None
            coords = project(X, method, seed, init=start, progress=part, **params).astype(np.float64)
        panels.append(procrustes_chain([panels[-1], coords])[1] if panels else coords - coords.mean(axis=0))
    return [panel.astype(np.float32) for panel in panels]


def joint_umap(matrices: Sequence[np.ndarray], seed: int = 0, progress: Progress | ProgressCallback | None = None,
               cancel: CancelEvent | None = None, **params: Any) -> list[np.ndarray]:
    """``umap.AlignedUMAP`` of the same rows in several matrices (identity relations between consecutive ones):
    one joint optimisation, slower than :func:`chained_maps`. Returns float32 ``[M, 2]`` panels."""
    progress = as_progress(progress, cancel)
    params = merge_params("umap-joint", params)
    data = [check_matrix(X) for X in matrices]
    progress.update(0.0, "AlignedUMAP")
    umap = _umap()
    identity = {i: i for i in range(len(data[0]))}
    model = umap.AlignedUMAP(n_components=2, random_state=seed, **params)
    with quiet_third_party():
        model.fit(data, relations=[identity] * (len(data) - 1))
    progress.update(1.0, "AlignedUMAP")
    return [np.asarray(panel, dtype=np.float32) for panel in model.embeddings_]
