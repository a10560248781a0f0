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
    np.testing.assert_allclose(val.data[0].y, 100 * runs[0].val_metrics()["miou"])
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
    fig = figures.embedding_panels(panels, "label", run.class_names)
    assert all(trace.type == "scattergl" for trace in fig.data)
    assert points(fig) == 2 * len(rows)
    assert len(fig.data) == 2 * run.num_classes
    assert {trace.name for trace in fig.data} == set(run.class_names)
    assert sum(trace.showlegend for trace in fig.data) == run.num_classes
    class1 = next(trace for trace in fig.data if trace.name == "class1")
    assert class1.marker.color == figures.CLASS_COLORS[1]
    assert len(class1.x) == int((run.pixels()["label"].to_numpy()[rows] == 1).sum())
    assert class1.customdata[0][3] == "class1"
    by_correct = figures.embedding_panels(panels, "correct", run.class_names)
    pixels = run.pixels().iloc[rows]
    right = int((pixels["label"] == pixels["prediction"]).sum())
    assert [len(t.x) for t in by_correct.data if t.name == "correct"] == [right, right]
    assert [len(t.x) for t in by_correct.data if t.name == "wrong"] == [len(rows) - right] * 2
    with pytest.raises(ValueError, match="at least one panel"):
        figures.embedding_panels([], "label", run.class_names)
    with pytest.raises(ValueError, match="coords"):
        figures.embedding_panels([{"coords": np.zeros((0, 2)), "pixels": pixels.iloc[:0]}], "label", run.class_names)


def test_heatmap() -> None:
    matrix = np.array([[1.0, 0.2, np.nan], [0.1, 0.9, 0.0]])
    fig = figures.heatmap(matrix, ["a", "b", "c"], [0, 1], "title", zmid=0.0)
    assert np.asarray(fig.data[0].z).shape == (2, 3)
    assert list(fig.data[0].x) == ["a", "b", "c"] and list(fig.data[0].y) == ["0", "1"]
    assert fig.data[0].texttemplate == "%{text}" and fig.data[0].zmid == 0.0
    assert [list(row) for row in fig.data[0].text] == [["1.00", "0.20", ""], ["0.10", "0.90", ""]]
    assert fig.data[0].hovertemplate == "%{y} → %{x}: %{z:.3f}<extra></extra>"
    large = figures.heatmap(np.eye(40), list(range(40)), list(range(40)), "large")
    assert large.data[0].texttemplate is None and large.data[0].text is None
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
    fig = figures.class_timeline_figure(per_class)
    assert [trace.name for trace in fig.data] == list(runs[0].class_names[: per_class["class_id"].nunique()])
    first = per_class[per_class["class_id"] == 0]
    np.testing.assert_array_equal(fig.data[0].y, first["sampled"])
    assert [trace.line.color for trace in fig.data] == list(figures.CLASS_COLORS[: len(fig.data)])
    with pytest.raises(ValueError, match="non-empty"):
        figures.class_timeline_figure(pd.DataFrame())


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


# ------------------------------------------------------------------------------------------ readability


def relative_luminance(color: str) -> float:
    """WCAG 2.x relative luminance of a ``#RRGGBB`` colour."""
    channels = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)]) / 255
    linear = np.where(channels <= 0.04045, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4)
    return float(linear @ [0.2126, 0.7152, 0.0722])


def contrast_with_white(color: str) -> float:
    """WCAG 2.x contrast ratio (L1 + 0.05) / (L2 + 0.05) against white (L = 1)."""
    return 1.05 / (relative_luminance(color) + 0.05)


# Machado, Oliveira and Fernandes (2009), severity 1.0, applied to linear RGB
DICHROMACY = {
    "protan": [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]],
    "deutan": [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.011820, 0.042940, 0.968881]],
    "tritan": [[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602], [0.004733, 0.691367, 0.303900]],
}


def cielab(linear_rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of linear sRGB rows."""
    xyz = np.clip(linear_rgb, 0, 1) @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                                                [0.0193, 0.1192, 0.9505]]).T / [0.95047, 1.0, 1.08883]
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def test_class_colours_stay_visible_on_white_and_apart_for_colour_blind_readers() -> None:
    colors = figures.CLASS_COLORS
    assert len(set(colors)) == len(colors) >= 12
    assert min(contrast_with_white(color) for color in colors) >= 3.0
    srgb = np.array([[int(color[i:i + 2], 16) for i in (1, 3, 5)] for color in colors]) / 255
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    for vision, matrix in {"normal": np.eye(3), **DICHROMACY}.items():
        lab = cielab(linear @ np.asarray(matrix).T)
        distance = np.linalg.norm(lab[:, None] - lab[None], axis=-1) + np.diag([np.inf] * len(colors))
        assert distance.min() >= 10.0, f"two class colours are {distance.min():.1f} ΔE apart for {vision} vision"
    styles = figures.class_styles(48)
    assert len(set(styles)) == 48 and [style.color for style in styles[:12]] == list(colors)


def test_class_colours_of_plots_are_not_the_dataset_palette(runs) -> None:
    """A near-white dataset colour (CamVid-like "sheep") is drawn in a plot colour that shows on white; label
    images keep the dataset palette."""
    run = runs[0]
    rows = np.flatnonzero(run.pixels()["label"].to_numpy() != run.ignore_index)
    panel = figures.embedding_panel(run, 0, "backbone", np.random.default_rng(1).normal(size=(len(rows), 2)), rows)
    fig = figures.embedding_panels([panel], "label", run.class_names)
    colours = {trace.name: trace.marker.color for trace in fig.data if trace.name in run.class_names}
    assert colours == dict(zip(run.class_names, figures.CLASS_COLORS))
    assert all(contrast_with_white(color) >= 3.0 for color in colours.values())
    sheep = np.array([[245, 245, 245]] + run.palette[1:].tolist(), dtype=np.uint8)
    np.testing.assert_array_equal(figures.colorize(np.array([[0]]), sheep, run.ignore_index)[0, 0], [245, 245, 245])


def test_single_validation_is_drawn_as_a_marker(runs, tmp_path) -> None:
    run = load_run(write_fake_run(tmp_path / "once", seed=5))
    val = run.val_metrics().iloc[:1]
    val.to_csv(run.path / "metrics" / "val.csv", index=False)
    fig = figures.val_curves([load_run(run.path)])
    assert all("markers" in trace.mode and len(trace.x) == 1 for trace in fig.data)
    np.testing.assert_allclose([trace.y[0] for trace in fig.data], 100 * val[["miou", "pixel_acc", "mean_acc"]].iloc[0])
    curves = figures.training_curves(list(runs))
    assert all(trace.mode == "lines" for trace in curves.data)


def test_per_image_scatter_fits_its_points() -> None:
    table = pd.DataFrame({"image_id": ["a", "b", "c"], "miou_a": [0.31, 0.36, 0.42], "miou_b": [0.33, 0.35, 0.47]})
    table["diff"] = table["miou_b"] - table["miou_a"]
    fig = figures.per_image_diff_figure(table, "A", "B")
    diagonal, points = fig.data
    assert list(diagonal.x) == pytest.approx([31.0, 47.0]) and list(diagonal.y) == pytest.approx([31.0, 47.0])
    np.testing.assert_allclose(points.x, [31.0, 36.0, 42.0])
    assert fig.layout.xaxis.range is None and fig.layout.yaxis.range is None
    assert fig.layout.xaxis.title.text == "mIoU A (%)"


def test_confusion_matrices_are_row_percent_with_text_only_where_it_fits() -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=(11, 11)) + np.diag([500] * 11)
    rows = counts / counts.sum(axis=1, keepdims=True)
    names = [f"class{c}" for c in range(11)]
    fig = figures.confusion_figure(rows, names, "A", plot_width=320)
    heat = fig.data[0]
    np.testing.assert_allclose(np.asarray(heat.z).sum(axis=1), 100.0)
    assert heat.texttemplate == "%{text}" and heat.zmin == 0 and heat.zmax == 100
    assert heat.text[0][0] == f"{100 * rows[0, 0]:.0f}" and "%{z:.1f} % of the row" in heat.hovertemplate
    assert figures.confusion_figure(rows, names, "A", plot_width=120).data[0].text is None
    many = np.full((21, 21), 1 / 21)
    wide = figures.confusion_figure(many, [f"c{c}" for c in range(21)], "B", plot_width=320).data[0]
    assert wide.text is None and wide.texttemplate is None and "%{z:.1f}" in wide.hovertemplate
    difference = figures.confusion_figure(rows - rows.T, names, "B − A", difference=True, plot_width=320).data[0]
    assert difference.zmid == 0 and "points of the row" in difference.hovertemplate
    signed = figures.heatmap(np.array([[-0.4, 5.4, 0.4]]), ["a", "b", "c"], ["r"], "t", value_format="+.0f").data[0]
    assert [list(row) for row in signed.text] == [["", "+5", ""]]


def test_class_legends_sit_below_the_axes_and_grow_the_figure() -> None:
    steps = np.repeat([10, 20], 11)
    table = pd.DataFrame({"step": steps, "class_id": np.tile(range(11), 2), "class": [f"class{c}" for c in range(11)] * 2,
                          "sampled": np.arange(22)})
    few = figures.class_timeline_figure(table[table["class_id"] < 2])
    fig = figures.class_timeline_figure(table)
    legend = fig.layout.legend
    assert legend.orientation == "h" and legend.yref == "container" and legend.y == 0 and legend.yanchor == "bottom"
    assert fig.layout.height > few.layout.height >= 360
    assert fig.layout.margin.b >= 2 * figures.LEGEND_ROW_PX


def test_sampler_timeline_tells_stages_of_equal_stride_apart(runs) -> None:
    timeline = sampler_timeline(runs[0])
    strides = [4, 8, 8, 8]
    fig = figures.sampler_timeline_figure(timeline, strides)
    first_rows = [trace for trace in fig.data if trace.showlegend]
    assert [trace.name for trace in first_rows] == [f"stage {s} (stride {strides[s]})" for s in range(4)]
    assert len({trace.line.dash for trace in first_rows}) == 4 and len({trace.marker.symbol for trace in first_rows}) == 4
    assert [fig.layout[f"yaxis{n}"].title.text for n in ("", "2", "3")] == ["views", "groups", "features"]
