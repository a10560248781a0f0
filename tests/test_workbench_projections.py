"""workbench.projections and projection_methods: methods, pixel selection, the on-disk cache, aligned panels,
progress and cancel, the map axes and the ``python -m workbench project`` command."""

from __future__ import annotations

import json
import shutil
import threading
import time

import numpy as np
import openTSNE
import pandas as pd
import pytest
from fake_run import write_fake_run

import workbench.projection_methods as methods
import workbench.projections as projections
from workbench.export_job import parse_progress
from workbench.figures import embedding_panels, robust_axis_ranges
from workbench.progress import Progress, ProjectionCancelled
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
TSNE_PARAMS = {"perplexity": 10, "max_iter": 300}


@pytest.fixture()
def run(tmp_path):
    return load_run(write_fake_run(tmp_path / "r"))


def forbid_projection(monkeypatch) -> None:
    """Make every recomputation fail, so a result can only come from the cache."""
    def fail(*args, **kwargs):
        raise AssertionError("projection was recomputed instead of read from the cache")
    for name in ("project", "chained_maps", "joint_umap"):
        monkeypatch.setattr(projections, name, fail)


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


# ------------------------------------------------------------------ stage alignment, openTSNE, progress, cancel


def related_stages(points: int = 150, seed: int = 0) -> list[np.ndarray]:
    """Two 'stages' of the same pixels: shared class centres and per-pixel offsets, each stage rotated and with
    its own noise (so their independent maps differ by more than a rotation)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, points)
    base = rng.normal(size=(6, 16))[labels] + 0.6 * rng.normal(size=(points, 16))
    stages = []
    for _ in range(2):
        rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
        stages.append(((base + 0.7 * rng.normal(size=(points, 16))) @ rotation).astype(np.float32))
    return stages


def disparity(a: np.ndarray, b: np.ndarray) -> float:
    """Sum of squared distances between corresponding points after centring and scaling both maps to unit norm
    (no rotation: this is what a reader comparing two panels sees)."""
    a = a - a.mean(0)
    b = b - b.mean(0)
    return float(np.sum((a / np.linalg.norm(a) - b / np.linalg.norm(b)) ** 2))


def test_procrustes_chain_undoes_a_rotation_and_lowers_disparity() -> None:
    rng = np.random.default_rng(0)
    first = rng.normal(size=(50, 2))
    angle = 2.0
    turned = first @ np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) + [5.0, -3.0]
    aligned = methods.procrustes_chain([first, turned])
    np.testing.assert_allclose(aligned[1], first - first.mean(0), atol=1e-9)
    assert disparity(first, turned) > 1.0 and disparity(*aligned) < 1e-12


@pytest.mark.parametrize(("method", "params"), [("tsne", TSNE_PARAMS), ("umap", {"n_neighbors": 10, "n_epochs": 100})])
def test_chained_maps_have_smaller_disparity_than_unaligned(method, params) -> None:
    """Each stage started from its neighbour's map and rotated onto it: closer to its neighbour than independent
    maps; rotating independent maps onto each other (Procrustes) alone also never increases the disparity."""
    stages = related_stages()
    independent = [methods.project(X, method, seed=0, **params) for X in stages]
    chained = methods.chained_maps(stages, method, seed=0, **params)
    assert [p.shape for p in chained] == [(150, 2), (150, 2)] and all(p.dtype == np.float32 for p in chained)
    rotated_only = methods.procrustes_chain(independent)
    assert disparity(*chained) < 0.7 * disparity(*independent)
    assert disparity(*rotated_only) <= disparity(*independent) + 1e-12
    np.testing.assert_allclose(chained[0], independent[0] - independent[0].mean(0), atol=1e-5)


def test_aligned_set_starts_from_the_cached_single_map(run, monkeypatch) -> None:
    rows = select_pixels(run, max_points=80)
    single = projection(run, 2, "projected", "tsne", pixels=rows, **TSNE_PARAMS)
    calls = []
    original = methods.project
    monkeypatch.setattr(methods, "project", lambda *args, **kwargs: calls.append(kwargs) or original(*args, **kwargs))
    aligned = aligned_projections([(run, 2, "projected"), (run, 3, "projected")], "tsne", pixels=rows, **TSNE_PARAMS)
    assert len(calls) == 1 and calls[0]["init"] is not None, "only the second panel is computed, from the first"
    np.testing.assert_allclose(aligned[0], single - single.mean(0), atol=1e-5)


def test_tsne_is_opentsne_bh_for_small_and_fft_from_1000_points(monkeypatch) -> None:
    seen = []

    class Spy(openTSNE.TSNEEmbedding):
        def __new__(cls, embedding, affinities, **kwargs):
            seen.append((len(embedding), kwargs["negative_gradient_method"], kwargs.get("n_interpolation_points")))
            return super().__new__(cls, embedding, affinities, **kwargs)

    monkeypatch.setattr(openTSNE, "TSNEEmbedding", Spy)
    monkeypatch.setattr("sklearn.manifold.TSNE", None)  # the scikit-learn implementation is not used
    rng = np.random.default_rng(0)
    small = project(rng.normal(size=(100, 8)), "tsne", perplexity=10, max_iter=60)
    large = project(rng.normal(size=(methods.FFT_MIN_POINTS, 8)), "tsne", perplexity=10, max_iter=60)
    assert seen == [(100, "bh", None), (methods.FFT_MIN_POINTS, "fft", 1)]
    assert small.shape == (100, 2) and large.shape == (methods.FFT_MIN_POINTS, 2) and np.isfinite(large).all()


@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_progress_is_reported_from_0_to_1(method) -> None:
    reports = []
    X = related_stages()[0]
    params = TSNE_PARAMS if method == "tsne" else {"n_neighbors": 10, "n_epochs": 2000}
    coords = methods.project(X, method, seed=0, progress=lambda fraction, message: reports.append((fraction, message)),
                             **params)
    fractions = [fraction for fraction, _ in reports]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    unit = "t-SNE iteration" if method == "tsne" else "UMAP epoch"
    assert sum(unit in message for _, message in reports) >= 12, "t-SNE: every 25 iterations; UMAP: every 1/50 of the epochs"
    assert reports[-1][1] == ("t-SNE iteration 300/300" if method == "tsne" else "UMAP epoch 2000/2000")
    np.testing.assert_array_equal(coords, methods.project(X, method, seed=0, **params))


def test_tsne_from_a_neighbours_map_skips_exaggeration_and_runs_a_third_of_the_iterations(monkeypatch) -> None:
    X = related_stages()[1]
    start = methods.project(related_stages()[0], "tsne", seed=0, **TSNE_PARAMS)
    phases = []
    original = openTSNE.TSNEEmbedding.optimize

    def optimize(self, n_iter, **kwargs):
        phases.append((n_iter, kwargs.get("exaggeration")))
        return original(self, n_iter, **kwargs)

    monkeypatch.setattr(openTSNE.TSNEEmbedding, "optimize", optimize)
    reports = []
    methods.project(X, "tsne", seed=0, init=start, progress=lambda f, m: reports.append(m), **TSNE_PARAMS)
    assert phases == [(100, None)] and reports[-1] == "t-SNE iteration 100/100"
    phases.clear()
    methods.project(X, "tsne", seed=0, **TSNE_PARAMS)
    assert phases == [(100, 12.0), (200, None)], "from scratch: a third (at most 250) exaggerated, then the rest"


def test_umap_from_a_neighbours_map_runs_half_the_epochs() -> None:
    stages = related_stages()
    start = methods.project(stages[0], "umap", seed=0, n_neighbors=10, n_epochs=100)
    reports = []
    methods.project(stages[1], "umap", seed=0, init=start, progress=lambda f, m: reports.append(m), n_neighbors=10,
                    n_epochs=100)
    assert reports[-1] == "UMAP epoch 50/50"


@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_cancel_stops_a_projection_midway_and_caches_nothing(run, method) -> None:
    cancel = threading.Event()
    reports = []

    def report(fraction: float, message: str) -> None:
        reports.append(fraction)
        if fraction > 0:
            cancel.set()

    rows = select_pixels(run, max_points=80)
    params = {"perplexity": 10, "max_iter": 5000} if method == "tsne" else {"n_neighbors": 10, "n_epochs": 2000}
    with pytest.raises(ProjectionCancelled, match="cancelled"):
        projection(run, 1, "backbone", method, pixels=rows, progress=report, cancel=cancel, **params)
    assert max(reports) < 0.5, "the computation stopped at the first report after the cancel"
    assert not projection_cache_path(run, 1, "backbone", method, pixels=rows, **params).exists()


def test_cancel_before_start_stops_an_aligned_set(run) -> None:
    cancel = threading.Event()
    cancel.set()
    for method in methods.METHODS:
        with pytest.raises(ProjectionCancelled, match="projection cancelled"):
            methods.project(related_stages()[0], method, cancel=cancel)
    items = [(run, 1, "projected"), (run, 2, "projected")]
    with pytest.raises(ProjectionCancelled):
        aligned_projections(items, "pca", pixels=select_pixels(run, max_points=40), cancel=cancel)
    assert not aligned_cache_path(items, "pca", pixels=select_pixels(run, max_points=40)).exists()


def test_progress_parts_map_onto_the_whole_job() -> None:
    reports = []
    whole = Progress(lambda fraction, message: reports.append((round(fraction, 6), message)), label="job")
    whole.part(1, 4, "b").part(1, 2, "second half").update(0.5, "halfway")
    assert reports == [(0.4375, "job · b · second half · halfway")]  # [0.25, 0.5] -> [0.375, 0.5] -> halfway


def test_precompute_reports_progress_per_map(run) -> None:
    reports = []
    paths = precompute_projections(run, methods=("pca",), max_points=40, progress=lambda f, m: reports.append((f, m)))
    assert len(paths) == 10 and reports[-1][0] == pytest.approx(1.0)
    assert [f for f, _ in reports] == sorted(f for f, _ in reports)
    assert any("pca backbone stages · stage 3" in m for _, m in reports)
    assert any("pca projected aligned stages" in m for _, m in reports)


def test_umap_starts_from_pca_with_exact_neighbours(monkeypatch) -> None:
    umap = methods._umap()
    captured = {}
    original = umap.UMAP

    def spy(**kwargs):
        captured.update(kwargs)
        return original(**kwargs)

    monkeypatch.setattr(umap, "UMAP", spy)
    X = related_stages()[0]
    methods.project(X, "umap", seed=0, n_neighbors=10, n_epochs=20)
    assert isinstance(captured["init"], np.ndarray) and captured["init"].shape == (150, 2)
    indices, distances, index = captured["precomputed_knn"]
    assert indices.shape == distances.shape == (150, 10) and index is None
    np.testing.assert_array_equal(indices[:, 0], np.arange(150))
    normalised = X / np.linalg.norm(X, axis=1, keepdims=True)
    cosine = 1 - normalised @ normalised.T
    np.testing.assert_allclose(distances[:, 1:], np.sort(cosine, axis=1)[:, 1:10], atol=1e-5)
    assert captured["n_epochs"] == 20 and methods.DEFAULT_PARAMS["umap"]["n_epochs"] == 200


def test_numba_cache_lives_in_the_user_cache(tmp_path) -> None:
    import os
    import subprocess
    import sys

    code = "import os, workbench.projection_methods as m; print(os.environ['NUMBA_CACHE_DIR'])"
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_CACHE_DIR"}
    env["MSCL_WORKBENCH_CACHE"] = str(tmp_path / "cache")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip() == str(tmp_path / "cache" / "numba")
    assert all(not dispatcher._cache.__class__.__name__ == "NullCache"
               for dispatcher in [methods._umap().layouts._nb_optimize_layout_euclidean_single_epoch])


def test_warnings_of_umap_are_silenced(recwarn) -> None:
    methods.project(related_stages()[0], "umap", seed=0, n_neighbors=10, n_epochs=20)
    assert [str(w.message) for w in recwarn] == []


# ------------------------------------------------------------------ axes of the maps


def test_robust_axis_ranges_ignore_outliers() -> None:
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(1000, 2))
    coords[:5] = [[400.0, -300.0]] * 5
    ranges = robust_axis_ranges(coords)
    low, high = np.quantile(coords, [0.01, 0.99], axis=0)
    np.testing.assert_allclose(ranges, np.stack([low - 0.1 * (high - low), high + 0.1 * (high - low)], axis=1))
    assert ranges[0, 1] < 5 and ranges[1, 0] > -5, "the 5 outliers do not stretch the view"
    np.testing.assert_allclose(robust_axis_ranges(np.zeros((4, 2))), [[-0.5, 0.5], [-0.5, 0.5]])


def test_embedding_panels_use_the_robust_ranges() -> None:
    rng = np.random.default_rng(1)
    coords = rng.normal(size=(200, 2))
    coords[0] = [1000.0, 1000.0]
    pixels = pd.DataFrame({"label": rng.integers(0, 3, 200)})
    fig = embedding_panels([{"title": "a", "coords": coords, "pixels": pixels}], class_names=["x", "y", "z"])
    expected = robust_axis_ranges(coords)
    np.testing.assert_allclose(fig.layout.xaxis.range, expected[0])
    np.testing.assert_allclose(fig.layout.yaxis.range, expected[1])


# ------------------------------------------------------------------ python -m workbench project


def test_project_command_prints_progress_on_stderr(run, capsys) -> None:
    from workbench.__main__ import main

    assert main(["project", str(run.path), "--methods", "pca", "--max-points", "40"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"10 projections cached under {run.path / 'projections'}\n"
    updates = [line for line in captured.err.replace("\r", "\n").splitlines() if line.strip()]
    assert updates[-1].startswith("projections: 100%|") and "| 100/100 [" in updates[-1]
    assert parse_progress(updates[-1]) == ("projections", 1.0)
    assert "Warning" not in captured.err
