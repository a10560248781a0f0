"""workbench.crossscale: CKA invariances, prototypes and per-pixel similarity maps."""

from __future__ import annotations

import numpy as np
import pytest
from fake_run import write_fake_run

from workbench.crossscale import (
    cka_matrix,
    class_prototypes,
    linear_cka,
    pixel_similarity_maps,
    prototype_similarity,
    stage_position,
)
from workbench.runs import load_run


def orthogonal(dim: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q


def hsic_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """CKA from centred Gram matrices (Kornblith et al. 2019, eq. for linear kernels)."""
    H = np.eye(len(X)) - 1.0 / len(X)
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H
    return float(np.trace(K @ L) / np.sqrt(np.trace(K @ K) * np.trace(L @ L)))


def test_cka_identity_invariances_and_independence() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 10))
    assert linear_cka(X, X) == pytest.approx(1.0)
    assert linear_cka(X, 3.5 * X @ orthogonal(10, 1) + 7.0) == pytest.approx(1.0)
    Y = rng.normal(size=(200, 12))
    assert linear_cka(X, Y) < 0.1
    assert linear_cka(X, Y) == pytest.approx(linear_cka(Y, X))


def test_cka_matches_gram_formula_also_when_wider_than_tall() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(30, 5))
    Y = X @ rng.normal(size=(5, 50)) + 0.5 * rng.normal(size=(30, 50))
    assert linear_cka(X, Y) == pytest.approx(hsic_cka(X, Y))
    assert 0.3 < linear_cka(X, Y) < 1.0


def test_cka_rejects_constant_or_mismatched_input() -> None:
    with pytest.raises(ValueError, match="zero variance"):
        linear_cka(np.ones((5, 2)), np.random.default_rng(0).normal(size=(5, 3)))
    with pytest.raises(ValueError, match="same M"):
        linear_cka(np.zeros((5, 2)), np.zeros((6, 2)))


def test_class_prototypes_normalised_means_and_absent_classes() -> None:
    X = np.array([[2.0, 0.0], [0.0, 3.0], [0.0, 1.0], [5.0, 5.0]])
    labels = np.array([0, 0, 1, 9])  # 9 is ignore: left out
    protos = class_prototypes(X, labels, num_classes=3)
    np.testing.assert_allclose(protos[0], [np.sqrt(0.5), np.sqrt(0.5)])
    np.testing.assert_allclose(protos[1], [0.0, 1.0])
    assert np.isnan(protos[2]).all()


def write_projected(run_path, stage: int, vectors: np.ndarray, labels: np.ndarray, ignore_index: int) -> None:
    rng = np.random.default_rng(stage)
    X = np.where((labels == ignore_index)[:, None], rng.normal(size=(len(labels), vectors.shape[1])),
                 vectors[np.minimum(labels, len(vectors) - 1)] * rng.uniform(0.5, 2.0, size=(len(labels), 1)))
    np.save(run_path / "embeddings" / f"stage{stage}_projected.npy", X.astype(np.float16))


def test_prototype_similarity_of_separated_classes(tmp_path) -> None:
    path = write_fake_run(tmp_path / "r", num_classes=4)
    run = load_run(path)
    labels = run.pixels()["label"].to_numpy()
    # stage 0: one-hot class directions; stage 3: unit vectors with pairwise cosine 0.2
    one_hot = np.eye(8)[:4]
    correlated = np.sqrt(0.8) * np.eye(8)[:4] + np.sqrt(0.2) * np.eye(8)[7]
    write_projected(path, 0, one_hot, labels, run.ignore_index)
    write_projected(path, 3, correlated, labels, run.ignore_index)
    run = load_run(path)
    np.testing.assert_allclose(prototype_similarity(run, 0, 0), np.eye(4), atol=2e-3)
    np.testing.assert_allclose(prototype_similarity(run, 3, 3), 0.8 * np.eye(4) + 0.2, atol=2e-3)
    np.testing.assert_allclose(prototype_similarity(run, 0, 3), np.sqrt(0.8) * np.eye(4), atol=2e-3)


def test_prototype_similarity_needs_equal_widths(tmp_path) -> None:
    run = load_run(write_fake_run(tmp_path / "r"))
    with pytest.raises(ValueError, match="kind='projected'"):
        prototype_similarity(run, 0, 1, kind="backbone")


def test_cka_matrix_over_stages_of_different_width(tmp_path) -> None:
    run = load_run(write_fake_run(tmp_path / "r"))
    matrix = cka_matrix(run, kind="backbone")
    assert list(matrix.index) == list(matrix.columns) == [0, 1, 2, 3]
    np.testing.assert_allclose(np.diag(matrix), 1.0)
    np.testing.assert_allclose(matrix.to_numpy(), matrix.to_numpy().T)
    # stage 0 is noise, later stages encode the labels: they resemble each other more than stage 0
    assert matrix.loc[1, 3] > 0.4 > matrix.loc[0, 3]


def test_stage_position() -> None:
    assert stage_position(5, 1, (8, 8), (4, 4)) == (2, 0)
    assert stage_position(7, 7, (8, 8), (1, 1)) == (0, 0)
    with pytest.raises(ValueError, match="outside"):
        stage_position(8, 0, (8, 8), (4, 4))


def test_pixel_similarity_maps_projected_and_backbone() -> None:
    stage0 = np.zeros((2, 4, 4), dtype=np.float32)
    stage0[1] = 1.0          # every position points along e1 ...
    stage0[:, 2, 0] = [1, 0]  # ... except the query cell of pixel (5, 1), along e0
    stage0[:, 0, 3] = [1, 1]
    stage1 = np.zeros((2, 2, 2), dtype=np.float32)
    stage1[0] = 3.0
    stage1[:, 0, 1] = [-1, 0]
    backbone1 = np.zeros((3, 2, 2), dtype=np.float32)
    backbone1[2] = 1.0
    backbone1[:, 1, 0] = [0, 4, 0]  # query cell of pixel (5, 1) at stage 1
    dense = {"image": np.zeros((8, 8, 3), np.uint8), "label": np.zeros((8, 8), np.int64),
             "stage0_projected": stage0, "stage1_projected": stage1,
             "stage0_backbone": stage0, "stage1_backbone": backbone1}
    maps = pixel_similarity_maps(dense, 5, 1, kind="projected")
    assert [m.shape for m in maps] == [(4, 4), (2, 2)]
    expected0 = np.zeros((4, 4))
    expected0[2, 0], expected0[0, 3] = 1.0, np.sqrt(0.5)
    np.testing.assert_allclose(maps[0], expected0, atol=1e-6)
    np.testing.assert_allclose(maps[1], [[1, -1], [1, 1]], atol=1e-6)
    backbone = pixel_similarity_maps(dense, 5, 1, kind="backbone")
    np.testing.assert_allclose(backbone[0], expected0, atol=1e-6)
    np.testing.assert_allclose(backbone[1], [[0, 0], [1, 0]], atol=1e-6)
    with pytest.raises(KeyError, match="no 'projected' features"):
        pixel_similarity_maps({"image": dense["image"], "stage0_backbone": stage0}, 0, 0, kind="projected")
