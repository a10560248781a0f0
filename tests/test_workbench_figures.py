"""workbench.figures: traces carry the expected points/classes; empty input is refused; static export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from fake_run import write_fake_run

from workbench import figures
from workbench.crossscale import pixel_similarity_maps
from workbench.iou import per_class_iou_diff, per_image_diff
from workbench.runs import load_run
from workbench.sampler_stats import class_timeline, sampler_histogram, sampler_timeline


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("figures")
    return load_run(write_fake_run(root / "a", seed=0)), load_run(write_fake_run(root / "b", seed=1))


def points(fig: go.Figure, trace_type: str = "scattergl") -> int:
    return sum(len(trace.x) for trace in fig.data if trace.type == trace_type)


def test_colorize() -> None:
    palette = np.array([[255, 0, 0], [0, 255, 0]], dtype=np.uint8)
    label = np.array([[0, 1], [9, 0]])
    out = figures.colorize(label, palette, ignore_index=9)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[0, 1], [0, 255, 0])
    np.testing.assert_array_equal(out[1, 0], figures.IGNORE_COLOR)
    with pytest.raises(ValueError, match="outside"):
        figures.colorize(np.array([[2]]), palette, ignore_index=9)


def test_training_and_val_curves(runs) -> None:
    fig = figures.training_curves(list(runs))
    loss_columns = [c for c in runs[0].train_metrics().columns if c.startswith("loss/")]
    assert len(fig.data) == 2 * len(loss_columns)
    assert all(len(trace.x) == len(runs[0].train_metrics()) for trace in fig.data)
    assert {trace.name for trace in fig.data} == {runs[0].name, runs[1].name}
    assert sum(trace.showlegend for trace in fig.data) == 2
    only_ce = figures.training_curves(list(runs), columns=["loss/ce", "not/a/column"])
    assert len(only_ce.data) == 2
    val = figures.val_curves(list(runs))
    assert len(val.data) == 6
    with pytest.raises(ValueError, match="at least one run"):
        figures.training_curves([])
    with pytest.raises(ValueError, match="none of the requested columns"):
        figures.training_curves(list(runs), columns=["nope"])


def test_embedding_panels_by_label_and_correctness(runs) -> None:
    run = runs[0]
    rows = np.flatnonzero(run.pixels()["label"].to_numpy() != run.ignore_index)
    rng = np.random.default_rng(0)
    panels = [figures.embedding_panel(run, stage, "projected", rng.normal(size=(len(rows), 2)), rows)
              for stage in (0, 3)]
    fig = figures.embedding_panels(panels, "label", run.class_names, run.palette)
    assert all(trace.type == "scattergl" for trace in fig.data)
    assert points(fig) == 2 * len(rows)
    assert len(fig.data) == 2 * run.num_classes
    assert {trace.name for trace in fig.data} == set(run.class_names)
    assert sum(trace.showlegend for trace in fig.data) == run.num_classes
    class1 = next(trace for trace in fig.data if trace.name == "class1")
    assert class1.marker.color == "rgb({},{},{})".format(*run.palette[1])
    assert len(class1.x) == int((run.pixels()["label"].to_numpy()[rows] == 1).sum())
    assert class1.customdata[0][3] == "class1"
    by_correct = figures.embedding_panels(panels, "correct", run.class_names, run.palette)
    pixels = run.pixels().iloc[rows]
    right = int((pixels["label"] == pixels["prediction"]).sum())
    assert [len(t.x) for t in by_correct.data if t.name == "correct"] == [right, right]
    assert [len(t.x) for t in by_correct.data if t.name == "wrong"] == [len(rows) - right] * 2
    with pytest.raises(ValueError, match="at least one panel"):
        figures.embedding_panels([], "label", run.class_names, run.palette)
    with pytest.raises(ValueError, match="coords"):
        figures.embedding_panels([{"coords": np.zeros((0, 2)), "pixels": pixels.iloc[:0]}], "label",
                                 run.class_names, run.palette)


def test_heatmap() -> None:
    matrix = np.array([[1.0, 0.2, np.nan], [0.1, 0.9, 0.0]])
    fig = figures.heatmap(matrix, ["a", "b", "c"], [0, 1], "title", zmid=0.0)
    assert np.asarray(fig.data[0].z).shape == (2, 3)
    assert list(fig.data[0].x) == ["a", "b", "c"] and list(fig.data[0].y) == ["0", "1"]
    assert fig.data[0].texttemplate == "%{z:.2f}" and fig.data[0].zmid == 0.0
    large = figures.heatmap(np.eye(40), list(range(40)), list(range(40)), "large")
    assert large.data[0].texttemplate is None
    with pytest.raises(ValueError, match="does not match"):
        figures.heatmap(matrix, ["a", "b"], [0, 1], "title")
    with pytest.raises(ValueError, match="non-empty"):
        figures.heatmap(np.zeros((0, 0)), [], [], "title")


def test_similarity_overlay(runs) -> None:
    dense = runs[0].dense(runs[0].dense_ids()[0])
    maps = pixel_similarity_maps(dense, 10, 20)
    fig = figures.similarity_overlay(dense["image"], maps, (10, 20))
    assert [trace.type for trace in fig.data] == ["image", "heatmap", "scatter"] * len(maps)
    heatmaps = [trace for trace in fig.data if trace.type == "heatmap"]
    assert [np.asarray(h.z).shape for h in heatmaps] == [m.shape for m in maps]
    assert heatmaps[1].dx == pytest.approx(32 / maps[1].shape[1])
    with pytest.raises(ValueError, match="at least one"):
        figures.similarity_overlay(dense["image"], [], (0, 0))


def test_sampler_figures(runs) -> None:
    hist = sampler_histogram(runs[0], 0)
    fig = figures.sampler_histogram_figure(hist)
    assert [len(trace.x) for trace in fig.data] == [runs[0].num_classes] * 2
    np.testing.assert_allclose(fig.data[1].y, hist["sampled_fraction"])
    timeline = sampler_timeline(runs[0])
    fig = figures.sampler_timeline_figure(timeline)
    assert len(fig.data) == 3 * timeline["stage"].nunique()
    assert sum(len(trace.x) for trace in fig.data) == 3 * len(timeline)
    for builder in (figures.sampler_histogram_figure, figures.sampler_timeline_figure):
        with pytest.raises(ValueError, match="non-empty"):
            builder(pd.DataFrame())
    per_class = class_timeline(runs[0], 0)
    fig = figures.class_timeline_figure(per_class, runs[0].palette)
    assert [trace.name for trace in fig.data] == list(runs[0].class_names[: per_class["class_id"].nunique()])
    first = per_class[per_class["class_id"] == 0]
    np.testing.assert_array_equal(fig.data[0].y, first["sampled"])
    assert fig.data[0].line.color == f"rgb({','.join(str(int(c)) for c in runs[0].palette[0])})"
    with pytest.raises(ValueError, match="non-empty"):
        figures.class_timeline_figure(pd.DataFrame(), runs[0].palette)


def test_iou_figures(runs) -> None:
    diff = per_class_iou_diff(*runs)
    fig = figures.iou_diff_figure(diff)
    assert len(fig.data) == 4 and all(len(trace.x) == runs[0].num_classes for trace in fig.data)
    assert list(fig.data[2].x) == list(diff["class_name"])
    assert fig.data[0].name == runs[0].name and fig.data[1].name == runs[1].name
    per_image = per_image_diff(*runs)
    fig = figures.per_image_diff_figure(per_image)
    assert len(fig.data[1].x) == len(per_image)
    assert [row[0] for row in fig.data[1].customdata] == list(per_image["image_id"])
    for builder in (figures.iou_diff_figure, figures.per_image_diff_figure):
        with pytest.raises(ValueError, match="non-empty"):
            builder(pd.DataFrame())


def test_prediction_differences_and_figure(runs) -> None:
    label = np.array([[0, 1, 2], [1, 1, 5]])
    a = np.array([[0, 1, 1], [0, 1, 0]])
    b = np.array([[0, 2, 1], [1, 1, 3]])
    np.testing.assert_array_equal(figures.prediction_differences(label, [a], ignore_index=5),
                                  [[False, False, True], [True, False, False]])
    np.testing.assert_array_equal(figures.prediction_differences(label, [a, b], ignore_index=5),
                                  [[False, True, False], [True, False, False]])
    run = runs[0]
    sample = run.prediction(run.prediction_ids()[0])
    other = runs[1].prediction(run.prediction_ids()[0])["prediction"]
    fig = figures.prediction_figure(sample, {"A": sample["prediction"], "B": other}, run.palette, run.ignore_index)
    assert [trace.type for trace in fig.data] == ["image"] * 5
    titles = [annotation.text for annotation in fig.layout.annotations]
    assert titles == ["image", "ground truth", "A", "B", "differs"]
    assert "only B right" in fig.layout.title.text
    np.testing.assert_array_equal(fig.data[1].z, figures.colorize(sample["label"], run.palette, run.ignore_index))
    with pytest.raises(ValueError, match="at least one prediction"):
        figures.prediction_figure(sample, {}, run.palette, run.ignore_index)


@pytest.mark.skipif(figures.find_browser() is None,
                    reason="kaleido needs Chrome/Chromium (set BROWSER_PATH or put chromium on PATH)")
def test_export_svg_and_png(tmp_path) -> None:
    fig = figures.heatmap(np.eye(3), ["a", "b", "c"], ["a", "b", "c"], "export")
    svg = figures.export_figure(fig, tmp_path / "figure", format="svg")
    assert svg.suffix == ".svg" and svg.stat().st_size > 0 and "<svg" in svg.read_text()[:500]
    png = figures.export_figure(fig, tmp_path / "figure.png", format="png", width=300, height=200)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_export_errors(tmp_path, monkeypatch) -> None:
    fig = figures.heatmap(np.eye(2), ["a", "b"], ["a", "b"], "export")
    with pytest.raises(ValueError, match="suffix"):
        figures.export_figure(fig, tmp_path / "figure.svg", format="png")
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    with pytest.raises(RuntimeError, match="BROWSER_PATH=.*not executable"):
        figures.export_figure(fig, tmp_path / "figure.png")
