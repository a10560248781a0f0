"""The 2-D maps of the Feature spaces view (docs/workbench.md, view 2) with the app's default parameters:
which embedding rows a run's panels show, whether a view is already in the projection cache, the maps of every
stage (aligned across stages or one by one) and their trustworthiness.

Thin compositions of :mod:`workbench.projections` and :mod:`workbench.separability`; every function takes the
run(s) first, so the app can cache it on the run paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from workbench import projections, separability
from workbench.progress import ProgressCallback, as_progress
from workbench.runs import Run

__all__ = [
    "MIN_SHARED_PIXELS",
    "own_pixel_rows",
    "shared_pixel_rows",
    "same_pixels",
    "maps_are_cached",
    "default_map_method",
    "stage_maps",
    "map_trustworthiness",
]

MIN_SHARED_PIXELS = 3
"""Fewest pixels common to every run for :func:`shared_pixel_rows` to return them (a 2-D map needs 3 points)."""


def own_pixel_rows(run: Run) -> np.ndarray:
    """The class-balanced embedding rows ``projections.precompute_projections`` maps (default seed and size), so
    the default view reads maps cached at export."""
    return projections.select_pixels(run, max_points=projections.DEFAULT_MAX_POINTS, seed=projections.DEFAULT_SEED)


def shared_pixel_rows(*runs: Run) -> list[np.ndarray] | None:
    """Rows per run that are the same (image_id, y, x) pixels in every run (``projections.aligned_pixel_rows``), or
    None when fewer than :data:`MIN_SHARED_PIXELS` pixels are common to all."""
    try:
        return projections.aligned_pixel_rows(list(runs), seed=projections.DEFAULT_SEED,
                                              max_points=projections.DEFAULT_MAX_POINTS)
    except ValueError:
        return None


def same_pixels(own: Sequence[np.ndarray], shared: Sequence[np.ndarray] | None) -> bool:
    """Whether each run's own rows already are the shared pixels (the runs' exports sampled the same pixels), so
    panels of different runs compare point by point without giving up the cached maps."""
    return shared is not None and len(own) == len(shared) and all(
        np.array_equal(rows, mine) for rows, mine in zip(shared, own))


def maps_are_cached(run: Run, stages: Sequence[int], kind: str, method: str, rows: np.ndarray, align: bool,
                    **params: Any) -> bool:
    """Whether :func:`stage_maps` with these arguments reads the projection cache instead of computing the maps."""
    seed = projections.DEFAULT_SEED
    if align and len(stages) > 1:
        items = [(run, stage, kind) for stage in stages]
        return projections.aligned_cache_path(items, method, pixels=rows, seed=seed, **params).is_file()
    return all(projections.projection_cache_path(run, stage, kind, method, pixels=rows, seed=seed, **params).is_file()
               for stage in stages)


def default_map_method(run: Run, kind: str, stages: Sequence[int], options: Sequence[str]) -> str:
    """The first method of ``options`` whose default view (all ``stages``, aligned, :func:`own_pixel_rows`) is
    cached, else ``pca`` (fast to compute)."""
    rows = own_pixel_rows(run)
    for method in options:
        if maps_are_cached(run, stages, kind, method, rows, align=True):
            return method
    return "pca"


def stage_maps(run: Run, stages: tuple[int, ...], kind: str, method: str, rows: np.ndarray,
               align: bool, progress: ProgressCallback | None = None, **params: Any) -> list[np.ndarray]:
    """One [len(rows), 2] map of embedding ``rows`` per stage: aligned across stages when ``align``
    (``projections.aligned_projections``), else stage by stage; default parameters updated with ``params`` (e.g.
    ``projections.REFINED_PARAMS[method]``), through the projection cache; ``progress(fraction, message)`` while
    computing."""
    seed = projections.DEFAULT_SEED
    if align and len(stages) > 1:
        return projections.aligned_projections([(run, stage, kind) for stage in stages], method, pixels=rows, seed=seed,
                                               progress=progress, **params)
    parts = as_progress(progress)
    return [projections.projection(run, stage, kind, method, pixels=rows, seed=seed,
                                   progress=parts.part(number, len(stages), f"stage {stage}"), **params)
            for number, stage in enumerate(stages)]


def map_trustworthiness(run: Run, stage: int, kind: str, rows: np.ndarray, coords: np.ndarray) -> float:
    """Trustworthiness of the 2-D map ``coords`` of embedding ``rows`` (``separability.trustworthiness``,
    docs/workbench.md, "Numbers")."""
    return separability.trustworthiness(run.embeddings(stage, kind)[rows], coords)
