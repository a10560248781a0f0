"""workbench.projections: methods, pixel selection, the on-disk cache and aligned panels."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest
from fake_run import write_fake_run

import workbench.projections as projections
from workbench.projections import (
    DEFAULT_PARAMS,
    aligned_cache_path,
    aligned_pixel_rows,
    aligned_projections,
    precompute_projections,
    project,
    projection,
    projection_cache_path,
    select_pixels,
)
from workbench.runs import load_run

UMAP_PARAMS = {"n_neighbors": 5, "n_epochs": 30}


@pytest.fixture()
def run(tmp_path):
    return load_run(write_fake_run(tmp_path / "r"))


def forbid_projection(monkeypatch) -> None:
    """Make every recomputation fail, so a result can only come from the cache."""
    def fail(*args, **kwargs):
        raise AssertionError("projection was recomputed instead of read from the cache")
    monkeypatch.setattr(projections, "project", fail)
    monkeypatch.setattr(projections, "_pca", fail)
    monkeypatch.setattr(projections, "_tsne", fail)
    monkeypatch.setattr(projections, "_umap_model", fail)


def test_select_pixels_is_class_balanced_and_skips_ignore(run) -> None:
    labels = run.pixels()["label"].to_numpy()
    rows = select_pixels(run, max_points=40, seed=0)
    assert len(rows) == 40 and np.all(np.diff(rows) > 0)
    assert (labels[rows] != run.ignore_index).all()
    np.testing.assert_array_equal(np.bincount(labels[rows], minlength=4), [10, 10, 10, 10])
    np.testing.assert_array_equal(rows, select_pixels(run, max_points=40, seed=0))
    assert not np.array_equal(rows, select_pixels(run, max_points=40, seed=1))
    everything = select_pixels(run, max_points=10_000)
    np.testing.assert_array_equal(everything, np.flatnonzero(labels != run.ignore_index))


def test_small_classes_give_all_their_pixels() -> None:
    labels = np.array([0] * 3 + [1] * 50 + [2] * 50)
    rows = projections._balanced_subset(labels, np.arange(len(labels)), max_points=23, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[rows]), [3, 10, 10])


def test_project_methods_shapes_and_determinism() -> None:
    X = np.random.default_rng(0).normal(size=(40, 6))
    pca = project(X, "pca")
    assert pca.shape == (40, 2) and pca.dtype == np.float32
    tsne = project(X, "tsne", perplexity=5, max_iter=250)
    assert tsne.shape == (40, 2)
    np.testing.assert_array_equal(tsne, project(X, "tsne", perplexity=5, max_iter=250))
    with pytest.raises(ValueError, match="perplexity"):
        project(X[:5], "tsne", perplexity=30)
    with pytest.raises(ValueError, match="unknown pca parameter"):
        project(X, "pca", n_neighbors=3)
    with pytest.raises(ValueError, match="method must be one of"):
        project(X, "mds")


def test_projection_cache_round_trip(run, monkeypatch) -> None:
    rows = select_pixels(run, max_points=60)
    first = projection(run, 3, "projected", "pca", pixels=rows)
    path = projection_cache_path(run, 3, "projected", "pca", pixels=rows)
    assert path.is_file() and path.parent == run.path / "projections"
    assert not list(path.parent.glob("*.tmp-*"))
    with np.load(path) as cached:
        np.testing.assert_array_equal(cached["pixels"], rows)
        np.testing.assert_array_equal(cached["coords"], first)
    forbid_projection(monkeypatch)
    np.testing.assert_array_equal(projection(run, 3, "projected", "pca", pixels=rows), first)
    with pytest.raises(AssertionError, match="recomputed"):  # other parameters: another key
        projection(run, 3, "projected", "pca", pixels=rows, normalize=False)
    with pytest.raises(AssertionError, match="recomputed"):  # other pixels: another key
        projection(run, 3, "projected", "pca", pixels=rows[:-1])


def test_cache_keys_differ_by_every_part(run) -> None:
    rows = select_pixels(run, max_points=60)
    base = projection_cache_path(run, 1, "projected", "pca", pixels=rows, seed=0)
    variants = [projection_cache_path(run, 2, "projected", "pca", pixels=rows, seed=0),
                projection_cache_path(run, 1, "backbone", "pca", pixels=rows, seed=0),
                projection_cache_path(run, 1, "projected", "tsne", pixels=rows, seed=0),
                projection_cache_path(run, 1, "projected", "pca", pixels=rows, seed=1),
                projection_cache_path(run, 1, "projected", "pca", pixels=rows[1:], seed=0)]
    assert len({base, *variants}) == 6
    assert base == projection_cache_path(run, 1, "projected", "pca", pixels=rows, seed=0, **DEFAULT_PARAMS["pca"])


def test_reexported_embeddings_invalidate_the_cache(run) -> None:
    rows = select_pixels(run, max_points=60)
    before = projection(run, 2, "backbone", "pca", pixels=rows)
    embeddings_file = run.path / "embeddings" / "stage2_backbone.npy"
    np.save(embeddings_file, -np.load(embeddings_file) * 2 + 1)
    fresh = load_run(run.path)
    after = projection(fresh, 2, "backbone", "pca", pixels=rows)
    assert not np.allclose(before, after)


def test_aligned_pca_removes_rotations(run) -> None:
    """A stage whose embeddings are an orthogonal transform of another's gets the same 2-D map."""
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(8, 8)))
    X = run.embeddings(3, "projected")
    np.save(run.path / "embeddings" / "stage1_projected.npy", (X @ q).astype(np.float16))
    run = load_run(run.path)
    rows = select_pixels(run, max_points=80)
    panels = aligned_projections([(run, 3, "projected"), (run, 1, "projected")], "pca", pixels=rows)
    assert [p.shape for p in panels] == [(80, 2), (80, 2)]
    np.testing.assert_allclose(panels[0], panels[1], atol=2e-2)
    assert aligned_cache_path([(run, 3, "projected"), (run, 1, "projected")], "pca", pixels=rows).is_file()


def test_aligned_tsne_same_rows_in_every_panel_and_cached(run, monkeypatch) -> None:
    items = [(run, s, "backbone") for s in (1, 2, 3)]
    rows = select_pixels(run, max_points=50)
    panels = aligned_projections(items, "tsne", pixels=rows, perplexity=5, max_iter=250)
    assert [p.shape for p in panels] == [(50, 2)] * 3
    forbid_projection(monkeypatch)
    cached = aligned_projections(items, "tsne", pixels=rows, perplexity=5, max_iter=250)
    for a, b in zip(panels, cached):
        np.testing.assert_array_equal(a, b)


def drop_pixel_rows(run_path, keep: np.ndarray) -> None:
    """Rewrite an exported run so that only embedding rows ``keep`` remain (in reversed order)."""
    keep = keep[::-1]
    pixels = pd.read_parquet(run_path / "embeddings" / "pixels.parquet").iloc[keep].reset_index(drop=True)
    pixels["pixel"] = np.arange(len(pixels))
    pixels.to_parquet(run_path / "embeddings" / "pixels.parquet", index=False)
    for file in (run_path / "embeddings").glob("stage*.npy"):
        np.save(file, np.load(file)[keep])
    meta_file = run_path / "embeddings" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["num_pixels"] = len(keep)
    meta_file.write_text(json.dumps(meta))


def test_cross_run_alignment_intersects_on_pixel_keys(tmp_path) -> None:
    run_a = load_run(write_fake_run(tmp_path / "a"))
    path_b = write_fake_run(tmp_path / "b", seed=1)
    drop_pixel_rows(path_b, np.arange(0, 240, 2))
    run_b = load_run(path_b)
    rows_a, rows_b = aligned_pixel_rows([run_a, run_b], max_points=1000)
    keys = ["image_id", "y", "x"]
    pd.testing.assert_frame_equal(run_a.pixels().iloc[rows_a][keys].reset_index(drop=True),
                                  run_b.pixels().iloc[rows_b][keys].reset_index(drop=True))
    assert 0 < len(rows_a) < 240
    panels = aligned_projections([(run_a, 3, "projected"), (run_b, 3, "projected")], "pca", pixels=None)
    assert [len(p) for p in panels] == [len(rows_a)] * 2
    drop_pixel_rows(path_b, np.arange(0, 2))
    with pytest.raises(ValueError, match="share only"):
        aligned_pixel_rows([run_a, load_run(path_b)], pixels=np.arange(100, 200))


@pytest.fixture(scope="module")
def umap_run(tmp_path_factory):
    """One tiny UMAP and one aligned UMAP (numba compiles once per process: keep this module-scoped)."""
    run = load_run(write_fake_run(tmp_path_factory.mktemp("umap") / "r"))
    rows = select_pixels(run, max_points=60)
    single = projection(run, 3, "projected", "umap", pixels=rows, **UMAP_PARAMS)
    items = [(run, 2, "projected"), (run, 3, "projected")]
    aligned = aligned_projections(items, "umap", pixels=rows, **UMAP_PARAMS)
    return run, rows, single, items, aligned


def test_umap_projection_and_cache(umap_run, monkeypatch) -> None:
    run, rows, single, items, aligned = umap_run
    assert single.shape == (60, 2) and np.isfinite(single).all()
    assert projection_cache_path(run, 3, "projected", "umap", pixels=rows, **UMAP_PARAMS).is_file()
    forbid_projection(monkeypatch)
    np.testing.assert_array_equal(projection(run, 3, "projected", "umap", pixels=rows, **UMAP_PARAMS), single)


def test_aligned_umap_same_rows_and_cache(umap_run, monkeypatch) -> None:
    run, rows, _, items, aligned = umap_run
    assert [p.shape for p in aligned] == [(60, 2), (60, 2)]
    assert np.isfinite(np.stack(aligned)).all()
    forbid_projection(monkeypatch)
    for a, b in zip(aligned, aligned_projections(items, "umap", pixels=rows, **UMAP_PARAMS)):
        np.testing.assert_array_equal(a, b)


def test_precompute_fills_the_cache_the_app_reads(run, monkeypatch) -> None:
    paths = precompute_projections(run, methods=("pca",), max_points=50)
    stages = run.embedding_stages()
    assert len(paths) == 2 * (len(stages) + 1) and all(p.is_file() for p in paths)
    forbid_projection(monkeypatch)
    rows = select_pixels(run, max_points=50)
    for stage in stages:
        assert projection(run, stage, "backbone", "pca", pixels=rows).shape == (50, 2)
    aligned = aligned_projections([(run, s, "projected") for s in stages], "pca", pixels=rows)
    assert len(aligned) == len(stages)


def test_cache_survives_copying_the_run_elsewhere(run, tmp_path, monkeypatch) -> None:
    """A fresh clone has new paths and new file times: the shipped caches must still be hits."""
    rows = select_pixels(run, max_points=60)
    single = projection(run, 1, "backbone", "pca", pixels=rows)
    aligned = aligned_projections([(run, 0, "projected"), (run, 3, "projected")], "pca", pixels=rows)
    time.sleep(0.01)
    copy = load_run(shutil.copytree(run.path, tmp_path / "elsewhere" / "r", copy_function=shutil.copy))
    assert (copy.path / "embeddings/stage1_backbone.npy").stat().st_mtime_ns != (run.path / "embeddings/stage1_backbone.npy").stat().st_mtime_ns
    forbid_projection(monkeypatch)
    np.testing.assert_array_equal(projection(copy, 1, "backbone", "pca", pixels=rows), single)
    for panel, expected in zip(aligned_projections([(copy, 0, "projected"), (copy, 3, "projected")], "pca", pixels=rows), aligned):
        np.testing.assert_array_equal(panel, expected)
