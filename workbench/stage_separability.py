"""Separability of every stage of a run (``docs/workbench.md``, view 2): the array metrics of
``workbench.separability`` evaluated on a run's embedding sample, one row per stage and embedding kind."""

from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.projections import projection, select_pixels
from workbench.runs import Run
from workbench.separability import (
    DEFAULT_METRIC_POINTS,
    alignment,
    intra_inter_cosine,
    knn_accuracy,
    silhouette,
    trustworthiness,
    uniformity,
)

__all__ = ["separability_table"]


def separability_table(run: Run, kinds: tuple[str, ...] = ("backbone", "projected"),
                       coords: str | dict | None = None, pixels: np.ndarray | None = None,
                       max_points: int = DEFAULT_METRIC_POINTS, seed: int = 0) -> pd.DataFrame:
    """One row per (stage, kind): dim, n_pixels, silhouette, knn_accuracy, alignment, uniformity,
    intra_cosine, inter_cosine and, when ``coords`` is given, trustworthiness.

    Metrics use labelled pixels only: ``pixels`` (embedding row indices) or a class-balanced subset of
    ``max_points`` rows (``projections.select_pixels``). ``kinds`` missing from the run (``projected``
    without projectors) are skipped. ``coords`` is a projection method name (``"umap"``, ``"pca"``,
    ``"tsne"``: the cached default projection of each stage/kind is used) or a dict
    ``{(stage, kind): (rows, coords_2d)}``.
    """
    if pixels is None:
        pixels = select_pixels(run, max_points=max_points, seed=seed)
    pixel_table = run.pixels().iloc[pixels]
    keep = pixel_table["label"].to_numpy() != run.ignore_index
    rows_used = np.asarray(pixels)[keep]
    labels = pixel_table["label"].to_numpy()[keep]
    groups = pixel_table["image_index"].to_numpy()[keep]
    available = [kind for kind in kinds if kind in run.embedding_kinds()]
    if not available:
        raise ValueError(f"none of the kinds {kinds} exist in run {run.name!r} (has {run.embedding_kinds()})")
    records = []
    for stage in run.embedding_stages():
        for kind in available:
            X_all = run.embeddings(stage, kind)
            X = X_all[rows_used]
            intra, inter = intra_inter_cosine(X, labels)
            record = {
                "stage": stage, "kind": kind, "dim": X.shape[1], "n_pixels": len(X),
                "silhouette": silhouette(X, labels, seed=seed),
                "knn_accuracy": knn_accuracy(X, labels, groups),
                "alignment": alignment(X, labels), "uniformity": uniformity(X, seed=seed),
                "intra_cosine": intra, "inter_cosine": inter,
            }
            if isinstance(coords, str):
                map_rows = select_pixels(run, seed=seed)
                map_coords = projection(run, stage, kind, method=coords, pixels=map_rows, seed=seed)
                record["trustworthiness"] = trustworthiness(X_all[map_rows], map_coords, seed=seed)
            elif coords is not None:
                if (stage, kind) not in coords:
                    raise KeyError(f"coords has no entry for (stage={stage}, kind={kind!r})")
                map_rows, map_coords = coords[stage, kind]
                record["trustworthiness"] = trustworthiness(X_all[np.asarray(map_rows)], map_coords, seed=seed)
            records.append(record)
    return pd.DataFrame(records)
