"""How well pixel embeddings separate the classes (definitions: `docs/workbench.md`, view 2).

All cosine-based numbers work on L2-normalised rows. Pair expectations are over distinct pairs
(x != y). ``alignment`` and ``intra_inter_cosine`` are computed exactly for any number of rows from
per-class sums (for unit vectors ||z_x - z_y||^2 = 2 - 2 z_x.z_y); ``uniformity`` needs every pair
distance and is exact up to ``max_points`` rows (default 4096, ~8.4 M pairs), above which a seeded
random subset of rows is used. ``trustworthiness`` (sklearn, full distance matrices and sorts) uses a
seeded subset of ``sample_size`` rows (default 2000).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from sklearn.manifold import trustworthiness as sklearn_trustworthiness
from sklearn.metrics import silhouette_score

__all__ = [
    "DEFAULT_METRIC_POINTS",
    "l2_normalize",
    "silhouette",
    "knn_accuracy",
    "alignment",
    "uniformity",
    "intra_inter_cosine",
    "trustworthiness",
]

DEFAULT_METRIC_POINTS = 3000
_KNN_BLOCK_ROWS = 1024


def _check_embeddings(X: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 1:
        raise ValueError(f"expected an embedding matrix [M >= 2, D >= 1], got shape {X.shape}")
    if not np.isfinite(X).all():
        raise ValueError("embeddings contain NaN or infinite values")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (X.shape[0],):
            raise ValueError(f"labels must have shape ({X.shape[0]},), got {labels.shape}")
    return X, labels


def l2_normalize(X: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64; all-zero rows stay zero)."""
    X = np.asarray(X, dtype=np.float64)
    return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), eps)


def silhouette(X: np.ndarray, labels: np.ndarray, metric: str = "cosine", sample_size: int = 5000,
               seed: int = 0) -> float:
    """Mean silhouette coefficient of the ground-truth classes (sklearn; a seeded subset above ``sample_size``)."""
    X, labels = _check_embeddings(X, labels)
    num_labels = len(np.unique(labels))
    if not 2 <= num_labels <= X.shape[0] - 1:
        raise ValueError(f"silhouette needs 2 <= number of classes <= M - 1, got {num_labels} classes "
                         f"for {X.shape[0]} points")
    subset = sample_size if X.shape[0] > sample_size else None
    return float(silhouette_score(X, labels, metric=metric, sample_size=subset, random_state=seed))


def knn_accuracy(X: np.ndarray, labels: np.ndarray, groups: np.ndarray, k: int = 20,
                 temperature: float = 0.07) -> float:
    """Weighted kNN accuracy with neighbours from other images only.

    Each point's k most cosine-similar points whose ``groups`` value (image) differs vote for their
    class with weight exp(sim / temperature); the prediction is the class with the largest total
    (ties: the smallest label). Points with fewer than k candidates use all they have.
    """
    X, labels = _check_embeddings(X, labels)
    groups = np.asarray(groups)
    if groups.shape != labels.shape:
        raise ValueError(f"groups must have shape {labels.shape}, got {groups.shape}")
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")
    if len(np.unique(groups)) < 2:
        raise ValueError("knn_accuracy needs points from at least two images (groups)")
    Z = l2_normalize(X)
    classes, label_ids = np.unique(labels, return_inverse=True)
    correct = 0
    for start in range(0, len(Z), _KNN_BLOCK_ROWS):
        stop = min(start + _KNN_BLOCK_ROWS, len(Z))
        sim = Z[start:stop] @ Z.T
        sim[groups[start:stop, None] == groups[None, :]] = -np.inf
        kk = min(k, sim.shape[1])
        neighbours = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
        neighbour_sim = np.take_along_axis(sim, neighbours, axis=1)
        valid = np.isfinite(neighbour_sim)
        weights = np.where(valid, np.exp((np.where(valid, neighbour_sim, 0.0) - 1.0) / temperature), 0.0)
        votes = np.zeros((stop - start, len(classes)))
        np.add.at(votes, (np.repeat(np.arange(stop - start), kk), label_ids[neighbours].ravel()), weights.ravel())
        correct += int((votes.argmax(axis=1) == label_ids[start:stop]).sum())
    return correct / len(Z)


def _class_sums(Z: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, label_ids, counts = np.unique(labels, return_inverse=True, return_counts=True)
    sums = np.zeros((len(counts), Z.shape[1]))
    np.add.at(sums, label_ids, Z)
    return sums, counts.astype(np.float64)


def alignment(X: np.ndarray, labels: np.ndarray) -> float:
    """E ||z_x - z_y||^2 over distinct same-class pairs of L2-normalised embeddings (exact).

    Per class c with n_c points and sum s_c: sum over ordered pairs = 2 n_c^2 - 2 ||s_c||^2.
    """
    X, labels = _check_embeddings(X, labels)
    Z = l2_normalize(X)
    sums, counts = _class_sums(Z, labels)
    norms_sq = np.einsum("ij,ij->i", Z, Z)
    _, label_ids = np.unique(labels, return_inverse=True)
    per_class_norm = np.bincount(label_ids, weights=norms_sq)
    pairs = float((counts * (counts - 1)).sum())
    if pairs == 0:
        raise ValueError("alignment needs at least one class with two or more points")
    total = (2 * counts * per_class_norm - 2 * np.einsum("ij,ij->i", sums, sums)).sum()
    return float(max(total, 0.0) / pairs)


def uniformity(X: np.ndarray, t: float = 2.0, max_points: int = 4096, seed: int = 0) -> float:
    """log E exp(-t ||z_x - z_y||^2) over distinct pairs of L2-normalised embeddings.

    Exact for M <= ``max_points``; otherwise over a seeded random subset of ``max_points`` rows.
    """
    X, _ = _check_embeddings(X)
    if X.shape[0] > max_points:
        rows = np.random.default_rng(seed).choice(X.shape[0], size=max_points, replace=False)
        X = X[np.sort(rows)]
    Z = l2_normalize(X)
    # ||z_x - z_y||^2 = 2 - 2 z_x.z_y for unit rows; the diagonal (x = y) is left out
    log_kernel = -t * np.maximum(2.0 - 2.0 * (Z @ Z.T), 0.0)
    np.fill_diagonal(log_kernel, -np.inf)
    pairs = len(Z) * (len(Z) - 1)
    return float(logsumexp(log_kernel) - np.log(pairs))


def intra_inter_cosine(X: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Mean cosine similarity over distinct same-class pairs and over different-class pairs (exact)."""
    X, labels = _check_embeddings(X, labels)
    Z = l2_normalize(X)
    sums, counts = _class_sums(Z, labels)
    _, label_ids = np.unique(labels, return_inverse=True)
    self_sim = np.bincount(label_ids, weights=np.einsum("ij,ij->i", Z, Z))
    same_total = np.einsum("ij,ij->i", sums, sums)
    intra_pairs = (counts * (counts - 1)).sum()
    inter_pairs = counts.sum() ** 2 - (counts ** 2).sum()
    if intra_pairs == 0 or inter_pairs == 0:
        raise ValueError("intra_inter_cosine needs two or more classes and a class with two or more points")
    all_total = float(np.dot(Z.sum(0), Z.sum(0)))
    intra = (same_total - self_sim).sum() / intra_pairs
    inter = (all_total - same_total.sum()) / inter_pairs
    return float(intra), float(inter)


def trustworthiness(X: np.ndarray, coords: np.ndarray, n_neighbors: int = 10, metric: str = "cosine",
                    sample_size: int = 2000, seed: int = 0) -> float:
    """``sklearn.manifold.trustworthiness`` of a 2-D map (``metric`` in the input space).

    sklearn builds full distance matrices, so above ``sample_size`` rows a seeded subset is used.
    """
    X, _ = _check_embeddings(X)
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 2 or coords.shape[0] != X.shape[0]:
        raise ValueError(f"coords must have shape [{X.shape[0]}, k], got {coords.shape}")
    if X.shape[0] > sample_size:
        rows = np.sort(np.random.default_rng(seed).choice(X.shape[0], size=sample_size, replace=False))
        X, coords = X[rows], coords[rows]
    if not 1 <= n_neighbors < X.shape[0] / 2:
        raise ValueError(f"trustworthiness needs 1 <= n_neighbors < M / 2, got {n_neighbors} for M={X.shape[0]}")
    return float(sklearn_trustworthiness(X, coords, n_neighbors=n_neighbors, metric=metric))
