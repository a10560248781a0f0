"""workbench.separability against hand-built cases and direct pairwise formulas."""

from __future__ import annotations

import numpy as np
import pytest
from fake_run import write_fake_run

from workbench.runs import load_run
from workbench.separability import (
    alignment,
    intra_inter_cosine,
    knn_accuracy,
    silhouette,
    trustworthiness,
    uniformity,
)
from workbench.stage_separability import separability_table


def blobs(seed: int = 0, classes: int = 4, per_class: int = 50, dim: int = 16, spread: float = 0.1):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    X = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    groups = rng.integers(0, 5, size=len(labels))
    return X, labels, groups


def unit(X: np.ndarray) -> np.ndarray:
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_separable_clusters_score_high_and_shuffled_labels_near_chance() -> None:
    X, labels, groups = blobs()
    assert silhouette(X, labels) > 0.7
    assert knn_accuracy(X, labels, groups) == 1.0
    shuffled = np.random.default_rng(1).permutation(labels)
    assert abs(silhouette(X, shuffled)) < 0.1
    assert 0.1 < knn_accuracy(X, shuffled, groups) < 0.45  # chance = 0.25


def reference_knn(X, labels, groups, k, temperature):
    Z = unit(X)
    correct = 0
    for i in range(len(Z)):
        candidates = np.flatnonzero(groups != groups[i])
        sims = Z[candidates] @ Z[i]
        top = candidates[np.argsort(-sims)[:k]]
        votes = {}
        for j in top:
            votes[labels[j]] = votes.get(labels[j], 0.0) + np.exp(Z[j] @ Z[i] / temperature)
        correct += max(votes, key=votes.get) == labels[i]
    return correct / len(Z)


def test_knn_matches_reference_loop() -> None:
    X, labels, groups = blobs(seed=3, spread=1.5, per_class=15)
    assert knn_accuracy(X, labels, groups, k=7, temperature=0.2) == pytest.approx(
        reference_knn(X, labels, groups, 7, 0.2))


def test_knn_uses_only_other_images() -> None:
    # image 0: class 0 near u, class 1 near v; image 1: class 1 near u', class 0 near v' (u' ~ u, v' ~ v).
    rng = np.random.default_rng(0)
    u, v = np.eye(3)[0], np.eye(3)[1]
    u2, v2 = unit(np.array([[1.0, 0.0, 0.15], [0.0, 1.0, 0.15]]))
    tight = lambda centre: centre + 1e-3 * rng.normal(size=(5, 3))  # noqa: E731
    X = np.vstack([tight(u), tight(v), tight(u2), tight(v2)])
    labels = np.repeat([0, 1, 1, 0], 5)
    images = np.repeat([0, 0, 1, 1], 5)
    assert knn_accuracy(X, labels, images, k=4) == 0.0
    assert knn_accuracy(X, labels, np.arange(len(X)), k=4) == 1.0  # same-image neighbours allowed


def test_knn_needs_two_images() -> None:
    X, labels, _ = blobs()
    with pytest.raises(ValueError, match="two images"):
        knn_accuracy(X, labels, np.zeros(len(X)))


def test_alignment_uniformity_intra_inter_match_pairwise_formulas() -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(40, 6))
    labels = rng.integers(0, 3, size=40)
    Z = unit(X)
    i, j = np.where(~np.eye(40, dtype=bool))
    same = labels[i] == labels[j]
    distances_sq = ((Z[i] - Z[j]) ** 2).sum(1)
    cosines = (Z[i] * Z[j]).sum(1)
    assert alignment(X, labels) == pytest.approx(distances_sq[same].mean())
    assert uniformity(X) == pytest.approx(np.log(np.exp(-2.0 * distances_sq).mean()))
    assert uniformity(X, t=0.5) == pytest.approx(np.log(np.exp(-0.5 * distances_sq).mean()))
    intra, inter = intra_inter_cosine(X, labels)
    assert intra == pytest.approx(cosines[same].mean())
    assert inter == pytest.approx(cosines[~same].mean())


def test_uniformity_subsamples_deterministically_above_max_points() -> None:
    X = np.random.default_rng(0).normal(size=(300, 4))
    assert uniformity(X, max_points=100, seed=1) == uniformity(X, max_points=100, seed=1)
    assert uniformity(X, max_points=100, seed=1) == pytest.approx(uniformity(X), abs=0.1)


def test_collapsed_classes_have_zero_alignment() -> None:
    X = np.repeat(np.eye(3), 4, axis=0) * 5.0
    labels = np.repeat(np.arange(3), 4)
    assert alignment(X, labels) == pytest.approx(0.0)
    assert intra_inter_cosine(X, labels) == pytest.approx((1.0, 0.0))


def test_trustworthiness_of_pca_on_2d_data_is_one() -> None:
    from workbench.projections import project

    X = np.random.default_rng(0).normal(size=(60, 2)) * [3.0, 1.0]
    coords = project(X, "pca", normalize=False)
    assert trustworthiness(X, coords, n_neighbors=5, metric="euclidean") == pytest.approx(1.0)
    scrambled = np.random.default_rng(1).permutation(coords)
    assert trustworthiness(X, scrambled, n_neighbors=5, metric="euclidean") < 0.7


def test_separability_table_on_fake_run(tmp_path) -> None:
    run = load_run(write_fake_run(tmp_path / "r"))
    table = separability_table(run, coords="pca")
    assert len(table) == 8 and set(table["kind"]) == {"backbone", "projected"}
    assert not table.isna().any().any()
    by_key = table.set_index(["stage", "kind"])
    # stage 0 is noise, stage 3 is separated (fake_run.fake_separation)
    assert by_key.loc[(3, "projected"), "knn_accuracy"] > 0.95 > by_key.loc[(0, "projected"), "knn_accuracy"]
    assert by_key.loc[(3, "backbone"), "silhouette"] > 0.5 > by_key.loc[(0, "backbone"), "silhouette"]
    assert by_key.loc[(3, "projected"), "alignment"] < by_key.loc[(0, "projected"), "alignment"]
    assert (table["n_pixels"] == int((run.pixels()["label"] != run.ignore_index).sum())).all()
    assert table["trustworthiness"].between(0, 1).all()
