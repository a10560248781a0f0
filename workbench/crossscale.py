"""Cross-scale similarity of pixel embeddings (``docs/workbench.md``, view 3).

Class prototypes, linear CKA between stages, and per-pixel similarity maps across stages: the
quantities the paper's cross-scale loss (``docs/method.md`` §3) is meant to change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from runformat.geometry import cell_of
from workbench.separability import l2_normalize

if TYPE_CHECKING:
    from workbench.runs import Run

__all__ = [
    "class_prototypes",
    "prototype_similarity",
    "linear_cka",
    "cka_matrix",
    "stage_position",
    "pixel_similarity_maps",
]


def class_prototypes(X: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Normalised class means [C, D]: mean of the L2-normalised rows of each class, L2-normalised.

    Rows of classes without pixels (and labels outside 0..C-1, e.g. ignore) are NaN.
    """
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(labels)
    if X.ndim != 2 or labels.shape != (X.shape[0],):
        raise ValueError(f"need X [M, D] and labels [M], got {X.shape} and {labels.shape}")
    Z = l2_normalize(X)
    valid = (labels >= 0) & (labels < num_classes)
    sums = np.zeros((num_classes, X.shape[1]))
    np.add.at(sums, labels[valid], Z[valid])
    counts = np.bincount(labels[valid], minlength=num_classes)
    prototypes = np.full((num_classes, X.shape[1]), np.nan)
    present = counts > 0
    prototypes[present] = l2_normalize(sums[present] / counts[present, None])
    return prototypes


def prototype_similarity(run: Run, stage_a: int, stage_b: int, kind: str = "projected") -> np.ndarray:
    """[C, C] cosine similarity between class prototypes of ``stage_a`` (rows) and ``stage_b`` (columns).

    Needs equal embedding widths: projected embeddings, or backbone stages of equal width. Entries of
    classes absent from the exported pixels are NaN.
    """
    X_a, X_b = run.embeddings(stage_a, kind), run.embeddings(stage_b, kind)
    if X_a.shape[1] != X_b.shape[1]:
        raise ValueError(
            f"prototype similarity needs equal widths, but {kind} stage {stage_a} has {X_a.shape[1]} channels "
            f"and stage {stage_b} has {X_b.shape[1]}; use kind='projected' (a common embedding space) or "
            "linear CKA, which allows different widths"
        )
    labels = run.pixels()["label"].to_numpy()
    proto_a = class_prototypes(X_a, labels, run.num_classes)
    proto_b = class_prototypes(X_b, labels, run.num_classes)
    return proto_a @ proto_b.T


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Linear CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred X [M, D1], Y [M, D2]."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0] or X.shape[0] < 2:
        raise ValueError(f"linear CKA needs [M, D1] and [M, D2] with the same M >= 2, got {X.shape} and {Y.shape}")
    X = X - X.mean(axis=0)
    Y = Y - Y.mean(axis=0)
    norm_x = np.linalg.norm(X.T @ X if X.shape[1] <= X.shape[0] else X @ X.T)
    norm_y = np.linalg.norm(Y.T @ Y if Y.shape[1] <= Y.shape[0] else Y @ Y.T)
    if norm_x == 0 or norm_y == 0:
        raise ValueError("linear CKA is undefined for a constant feature matrix (zero variance after centring)")
    return float(np.linalg.norm(Y.T @ X) ** 2 / (norm_x * norm_y))


def cka_matrix(run: Run, kind: str = "backbone", pixels: np.ndarray | None = None) -> pd.DataFrame:
    """Stage x stage linear CKA over the exported pixels (or embedding rows ``pixels``).

    Index and columns are the stage numbers; the matrix is symmetric with ones on the diagonal.
    """
    stages = run.embedding_stages()
    rows = slice(None) if pixels is None else np.asarray(pixels)
    features = {s: run.embeddings(s, kind)[rows] for s in stages}
    matrix = np.eye(len(stages))
    for i, a in enumerate(stages):
        for j in range(i + 1, len(stages)):
            matrix[i, j] = matrix[j, i] = linear_cka(features[a], features[stages[j]])
    return pd.DataFrame(matrix, index=pd.Index(stages, name="stage"), columns=pd.Index(stages, name="stage"))


def stage_position(y: int, x: int, image_shape: tuple[int, int], map_shape: tuple[int, int]) -> tuple[int, int]:
    """Cell of an [h, w] stage map that contains input pixel (y, x) of an [H, W] image: the one cell rule of
    ``runformat.geometry`` (``docs/method.md`` §1), so the workbench reads the cell the sampler and export read."""
    height, width = image_shape
    if not (0 <= y < height and 0 <= x < width):
        raise ValueError(f"pixel (y={y}, x={x}) is outside the {height}x{width} image")
    return cell_of(y, x, (height, width), (int(map_shape[0]), int(map_shape[1])))


def _stage_maps(dense: dict[str, np.ndarray], kind: str) -> list[np.ndarray]:
    stages = sorted(int(key[5:].split("_")[0]) for key in dense if key.startswith("stage") and key.endswith(f"_{kind}"))
    if not stages:
        raise KeyError(f"dense maps have no '{kind}' features (keys: {sorted(dense)})")
    return [np.asarray(dense[f"stage{s}_{kind}"], dtype=np.float32) for s in stages]


def pixel_similarity_maps(dense: dict[str, np.ndarray], y: int, x: int, kind: str = "projected",
                          query_stage: int = 0) -> list[np.ndarray]:
    """Cosine similarity of one query pixel to every position of every stage (one [h_s, w_s] map per stage).

    (y, x) are input-resolution coordinates of ``dense["image"]``, mapped to the nearest cell of each
    stage. ``projected`` features share one space: the query is the embedding at ``query_stage`` (the
    finest by default) and it is compared with every stage. ``backbone`` stages have different widths:
    each stage is compared with its own feature at the query's mapped position (within-stage
    similarity). Positions with an all-zero feature vector have similarity 0.
    """
    if kind not in ("projected", "backbone"):
        raise ValueError(f"kind must be 'projected' or 'backbone', got {kind!r}")
    maps = _stage_maps(dense, kind)
    if not 0 <= query_stage < len(maps):
        raise ValueError(f"query_stage must be in 0..{len(maps) - 1}, got {query_stage}")
    image_shape = dense["image"].shape[:2]
    normalised = []
    for features in maps:
        channels, h, w = features.shape
        normalised.append(l2_normalize(features.reshape(channels, -1).T).T.reshape(channels, h, w))
    if kind == "projected":
        qy, qx = stage_position(y, x, image_shape, normalised[query_stage].shape[1:])
        query = normalised[query_stage][:, qy, qx]
        widths = {features.shape[0] for features in normalised}
        if len(widths) != 1:
            raise ValueError(f"projected features must share one width across stages, got widths {sorted(widths)}")
        queries = [query] * len(normalised)
    else:
        queries = []
        for features in normalised:
            qy, qx = stage_position(y, x, image_shape, features.shape[1:])
            queries.append(features[:, qy, qx])
    return [np.einsum("c,chw->hw", q, f).astype(np.float32) for q, f in zip(queries, normalised)]
