"""Plotly figures for the workbench views (`docs/workbench.md`); every builder raises ValueError
on empty input rather than drawing an empty plot. ``export_figure`` writes PNG/SVG through kaleido,
which drives a Chrome/Chromium found via ``BROWSER_PATH`` or the ``PATH``.

Plots draw classes in :data:`CLASS_COLORS` (colour-blind safe, visible on white); label images keep the dataset's
own palette. mIoU, IoU and accuracies are drawn in percent (docs/workbench.md, "Numbers"). Legends with one entry
per class or stage sit below the axes, so they never run out of room.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

if TYPE_CHECKING:
    from workbench.runs import Run

__all__ = [
    "CLASS_COLORS",
    "ClassStyle",
    "class_styles",
    "colorize",
    "training_curves",
    "val_curves",
    "embedding_panel",
    "embedding_panels",
    "robust_axis_ranges",
    "heatmap",
    "confusion_figure",
    "similarity_overlay",
    "sampler_histogram_figure",
    "sampler_timeline_figure",
    "class_timeline_figure",
    "iou_diff_figure",
    "per_image_diff_figure",
    "prediction_differences",
    "prediction_figure",
    "find_browser",
    "export_figure",
]

IGNORE_COLOR = (0, 0, 0)
UNKNOWN_LABEL_COLOR = "rgb(150,150,150)"
CORRECT_COLOR = "rgb(44,160,44)"
WRONG_COLOR = "rgb(214,39,40)"
CLASS_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#332288", "#661100", "#882255", "#117733", "#1D99E0",
                "#959532", "#AA3377", "#EE6677")
"""Colours of classes (and runs, stages) in plots: Okabe & Ito's and Paul Tol's colour-blind-safe qualitative
schemes, their light members (sky blue, olive) darkened until every colour has a contrast ratio of at least 3:1
against white (WCAG 2.x); ordered so that the first colours differ most for normal, protan, deutan and tritan
vision. Label images use the dataset's palette instead (``colorize``)."""
CLASS_SYMBOLS = ("circle", "square", "diamond", "triangle-up", "x")
"""Marker symbols; beyond ``len(CLASS_COLORS)`` classes the colours repeat with the next symbol."""
LINE_DASHES = ("solid", "dash", "dot", "dashdot")
"""Line dashes; beyond ``len(CLASS_COLORS)`` classes the colours repeat with the next dash."""
RUN_COLORS = CLASS_COLORS
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
LEGEND_ROW_PX = 22
"""Height of one row of a legend below the axes."""
LEGEND_ENTRY_PX = 130
"""Width one legend entry takes in a row (marker and a class name of about 15 characters)."""
DEFAULT_PLOT_WIDTH = 480
"""Width in pixels a heatmap's cells are assumed to share when deciding whether values fit as text: about half
of a wide page (pass ``plot_width`` for narrower columns)."""
CHARACTER_PX = 7
"""Width of one character of cell text (11 px font)."""
MIN_TEXT_CELL_PX = 24
"""Narrowest heatmap cell that gets text at all (narrower cells show their value on hover only)."""


class ClassStyle(NamedTuple):
    """How one class is drawn in plots: colour, marker symbol and line dash."""

    color: str
    symbol: str
    dash: str


def class_styles(count: int) -> list[ClassStyle]:
    """Styles of ``count`` classes: :data:`CLASS_COLORS` in order, then again with the next marker symbol and line
    dash, so every class has its own (colour, symbol, dash) up to ``len(CLASS_COLORS) * len(LINE_DASHES)`` classes."""
    if count < 0:
        raise ValueError(f"class_styles needs a class count >= 0, got {count}")
    colors = len(CLASS_COLORS)
    return [ClassStyle(CLASS_COLORS[index % colors], CLASS_SYMBOLS[(index // colors) % len(CLASS_SYMBOLS)],
                       LINE_DASHES[(index // colors) % len(LINE_DASHES)]) for index in range(count)]


def _legend_below(fig: go.Figure, entries: int, plot_height: int, width: int = 900) -> None:
    """A horizontal legend under the axes, the figure made taller by the legend's rows so the plot keeps
    ``plot_height`` pixels and no entry is cut off."""
    per_row = max(1, width // LEGEND_ENTRY_PX)
    legend_px = math.ceil(entries / per_row) * LEGEND_ROW_PX
    fig.update_layout(height=plot_height + legend_px + 80, margin={"b": legend_px + 80},
                      legend={"orientation": "h", "yref": "container", "yanchor": "bottom", "y": 0,
                              "xanchor": "left", "x": 0, "itemsizing": "constant"})


def _grid(count: int, max_columns: int) -> tuple[int, int]:
    columns = min(count, max_columns)
    return math.ceil(count / columns), columns


def colorize(label: np.ndarray, palette: np.ndarray, ignore_index: int) -> np.ndarray:
    """uint8 [H, W, 3] image of a label map with the dataset palette (ignore pixels black)."""
    label = np.asarray(label)
    palette = np.asarray(palette, dtype=np.uint8)
    if label.ndim != 2 or label.size == 0:
        raise ValueError(f"colorize needs a non-empty [H, W] label map, got shape {label.shape}")
    if palette.ndim != 2 or palette.shape[1] != 3:
        raise ValueError(f"palette must be [C, 3], got shape {palette.shape}")
    ignore = label == ignore_index
    bad = ~ignore & ((label < 0) | (label >= len(palette)))
    if bad.any():
        raise ValueError(f"label map has values {np.unique(label[bad])[:10].tolist()} outside 0..{len(palette) - 1} "
                         f"and not the ignore index {ignore_index}")
    out = palette[np.where(ignore, 0, label)]
    out[ignore] = IGNORE_COLOR
    return out


def _run_labels(runs: Sequence[Run]) -> list[str]:
    names = [run.name for run in runs]
    return [f"{name} ({run.path.name})" if names.count(name) > 1 else name for name, run in zip(names, runs)]


def _curves(frames: list[pd.DataFrame], labels: list[str], columns: list[str], title: str, max_columns: int = 3,
            titles: Mapping[str, str] | None = None, scale: float = 1.0, markers: bool = False) -> go.Figure:
    """One subplot per column, one line per run; values times ``scale``. A run with a single point in a subplot
    (one validation so far) is drawn as a marker, which a line alone would not show; ``markers`` marks every point."""
    rows, cols = _grid(len(columns), max_columns)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[(titles or {}).get(c, c) for c in columns], shared_xaxes=False)
    shown: set[str] = set()
    for number, column in enumerate(columns):
        row, col = number // cols + 1, number % cols + 1
        for run_number, (frame, label) in enumerate(zip(frames, labels)):
            if column not in frame.columns:
                continue
            points = frame[["step", column]].dropna()
            mode = "lines+markers" if markers or len(points) < 2 else "lines"
            color = RUN_COLORS[run_number % len(RUN_COLORS)]
            fig.add_trace(go.Scatter(
                x=points["step"], y=points[column] * scale, mode=mode, name=label, legendgroup=label,
                showlegend=label not in shown, line={"color": color}, marker={"color": color, "size": 7},
            ), row=row, col=col)
            shown.add(label)
        fig.update_xaxes(title_text="step", row=row, col=col)
    fig.update_layout(title=title, height=280 * rows, hovermode="x unified")
    return fig


def training_curves(runs: Sequence[Run], columns: Sequence[str] | None = None) -> go.Figure:
    """One subplot per metrics/train.csv column (default: every ``loss/...`` part), one line per run."""
    if not runs:
        raise ValueError("training_curves needs at least one run")
    frames = [run.train_metrics() for run in runs]
    if columns is None:
        columns = list(dict.fromkeys(c for frame in frames for c in frame.columns if c.startswith("loss/")))
    columns = [c for c in columns if any(c in frame.columns for frame in frames)]
    if not columns:
        raise ValueError("none of the requested columns exist in metrics/train.csv of these runs")
    return _curves(frames, _run_labels(runs), list(columns), "training losses")


VAL_TITLES = {"miou": "val mIoU (%)", "pixel_acc": "pixel accuracy (%)", "mean_acc": "mean class accuracy (%)"}


def val_curves(runs: Sequence[Run]) -> go.Figure:
    """Validation mIoU, pixel accuracy and mean accuracy in percent over steps, one line with a marker per validation
    for each run (a run validated once shows one marker)."""
    if not runs:
        raise ValueError("val_curves needs at least one run")
    frames = [run.val_metrics() for run in runs]
    if all(frame.empty for frame in frames):
        raise ValueError("metrics/val.csv has no validation rows in any of these runs")
    return _curves(frames, _run_labels(runs), list(VAL_TITLES), "validation", titles=VAL_TITLES, scale=100.0,
                   markers=True)


def embedding_panel(run: Run, stage: int, kind: str, coords: np.ndarray, rows: np.ndarray,
                    title: str | None = None) -> dict[str, Any]:
    """A panel for ``embedding_panels``: 2-D ``coords`` of embedding ``rows`` of ``run``."""
    coords = np.asarray(coords)
    rows = np.asarray(rows)
    if coords.shape != (len(rows), 2):
        raise ValueError(f"coords must be [{len(rows)}, 2] (one per row), got {coords.shape}")
    return {"title": title or f"{run.name}<br>stage {stage} {kind}", "coords": coords,
            "pixels": run.pixels().iloc[rows].reset_index(drop=True)}


def _name_lookup(values: np.ndarray, class_names: Sequence[str]) -> np.ndarray:
    names = np.array(list(class_names) + ["ignore/unknown"], dtype=object)
    index = np.where((values >= 0) & (values < len(class_names)), values, len(class_names))
    return names[index]


def robust_axis_ranges(coords: np.ndarray, quantiles: tuple[float, float] = (0.01, 0.99),
                       margin: float = 0.1) -> np.ndarray:
    """Axis ranges ``[[x_low, x_high], [y_low, y_high]]`` of a 2-D map that a few outliers cannot stretch: per axis
    the ``quantiles`` (default 1st and 99th percentile) of the coordinates widened by ``margin`` times their distance
    on each side (docs/workbench.md, view 2). Points beyond stay in the figure, outside the initial view."""
    coords = np.asarray(coords, dtype=np.float64)
    low, high = np.quantile(coords, quantiles, axis=0)
    pad = np.where(high > low, (high - low) * margin, 0.5)
    return np.stack([low - pad, high + pad], axis=1)


def embedding_panels(panels: Sequence[Mapping[str, Any]], color_by: str = "label",
                     class_names: Sequence[str] = (), max_columns: int = 4, marker_size: int = 3,
                     panel_height: int = 330) -> go.Figure:
    """Point clouds (Scattergl), one subplot per panel.

    A panel is ``{"title": str, "coords": [M, 2], "pixels": DataFrame}`` with pixel columns ``label``
    and, for hover and ``color_by="correct"``, ``prediction``, ``image_id``, ``y``, ``x`` (see
    ``embedding_panel``). ``color_by="label"``: one trace per class in its :func:`class_styles` colour and
    symbol (the legend below the panels toggles a class in every panel); ``"correct"``: correct vs wrong prediction.
    Each row of panels is ``panel_height`` pixels high; each panel's axes span :func:`robust_axis_ranges` of its
    coordinates, so outliers do not shrink the clusters.
    """
    if not panels:
        raise ValueError("embedding_panels needs at least one panel")
    if color_by not in ("label", "correct"):
        raise ValueError(f"color_by must be 'label' or 'correct', got {color_by!r}")
    if len(class_names) == 0:
        raise ValueError("embedding_panels needs the class names")
    styles = class_styles(len(class_names))
    rows, cols = _grid(len(panels), max_columns)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[str(p.get("title", "")) for p in panels],
                        horizontal_spacing=0.03, vertical_spacing=0.08)
    shown: set[str] = set()
    for number, panel in enumerate(panels):
        coords = np.asarray(panel["coords"])
        pixels: pd.DataFrame = panel["pixels"]
        if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) == 0 or len(coords) != len(pixels):
            raise ValueError(f"panel {number}: coords must be [M > 0, 2] with one pixels row each, "
                             f"got coords {coords.shape} and {len(pixels)} pixel rows")
        labels = pixels["label"].to_numpy()
        has_prediction = "prediction" in pixels.columns
        if color_by == "correct" and not has_prediction:
            raise ValueError(f"panel {number}: color_by='correct' needs a 'prediction' column in pixels")
        hover = pd.DataFrame({
            "image_id": pixels["image_id"].astype(str) if "image_id" in pixels else "",
            "y": pixels["y"] if "y" in pixels else "", "x": pixels["x"] if "x" in pixels else "",
            "label": _name_lookup(labels, class_names),
            "prediction": _name_lookup(pixels["prediction"].to_numpy(), class_names) if has_prediction else "",
        }).to_numpy(dtype=object)
        if color_by == "label":
            groups = [(name, labels == c, style.color, style.symbol) for c, (name, style) in enumerate(zip(class_names, styles))]
            unknown = (labels < 0) | (labels >= len(class_names))
            groups.append(("ignore/unknown", unknown, UNKNOWN_LABEL_COLOR, "circle"))
        else:
            correct = labels == pixels["prediction"].to_numpy()
            groups = [("correct", correct, CORRECT_COLOR, "circle"), ("wrong", ~correct, WRONG_COLOR, "circle")]
        row, col = number // cols + 1, number % cols + 1
        for name, mask, color, symbol in groups:
            if not mask.any():
                continue
            fig.add_trace(go.Scattergl(
                x=coords[mask, 0], y=coords[mask, 1], mode="markers", name=name, legendgroup=name,
                showlegend=name not in shown, marker={"color": color, "size": marker_size, "symbol": symbol},
                customdata=hover[mask],
                hovertemplate="image %{customdata[0]} (y=%{customdata[1]}, x=%{customdata[2]})<br>"
                              "label: %{customdata[3]}<br>prediction: %{customdata[4]}<extra></extra>",
            ), row=row, col=col)
            shown.add(name)
        (x_low, x_high), (y_low, y_high) = robust_axis_ranges(coords)
        fig.update_xaxes(showticklabels=False, range=[x_low, x_high], row=row, col=col)
        fig.update_yaxes(showticklabels=False, range=[y_low, y_high], row=row, col=col)
    fig.update_annotations(font_size=12)
    _legend_below(fig, len(shown), max(380, panel_height * rows))
    return fig


def _cell_text(matrix: np.ndarray, value_format: str) -> np.ndarray:
    """Cell texts: each value in ``value_format``; empty where it shows as zero (or is NaN), so the few large
    values stand out."""
    texts = np.array([[format(value, value_format) if np.isfinite(value) else "" for value in row] for row in matrix],
                     dtype=object)
    shows_zero = np.vectorize(lambda text: text != "" and float(text) == 0.0, otypes=[bool])(texts)
    texts[shows_zero] = ""
    return texts


def _text_fits(texts: np.ndarray, columns: int, plot_width: int) -> bool:
    """Whether the longest cell text fits in a cell ``plot_width / columns`` pixels wide: :data:`CHARACTER_PX` per
    character and 8 pixels of padding, and never in a cell narrower than :data:`MIN_TEXT_CELL_PX`."""
    longest = max((len(text) for text in texts.ravel()), default=0)
    return max(MIN_TEXT_CELL_PX, longest * CHARACTER_PX + 8) <= plot_width / columns


def heatmap(matrix: np.ndarray, x_labels: Sequence[Any], y_labels: Sequence[Any], title: str,
            zmid: float | None = None, zmin: float | None = None, zmax: float | None = None,
            show_values: bool | None = None, value_format: str = ".2f", hover_format: str = ".3f",
            hover_unit: str = "", plot_width: int = DEFAULT_PLOT_WIDTH) -> go.Figure:
    """Heatmap with rows drawn top to bottom; ``zmid`` selects a diverging colour scale. Hovering a cell shows its
    row, column and value (``hover_format``, ``hover_unit`` after it). Values (``value_format``; zeros left blank) are written in the
    cells when ``show_values``; by default only when the longest one fits the cell width, the cells sharing
    ``plot_width`` pixels."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"heatmap needs a non-empty 2-D matrix, got shape {matrix.shape}")
    if matrix.shape != (len(y_labels), len(x_labels)):
        raise ValueError(f"matrix shape {matrix.shape} does not match {len(y_labels)} y labels x "
                         f"{len(x_labels)} x labels")
    texts = _cell_text(matrix, value_format)
    if show_values is None:
        show_values = _text_fits(texts, matrix.shape[1], plot_width)
    fig = go.Figure(go.Heatmap(
        z=matrix, x=[str(v) for v in x_labels], y=[str(v) for v in y_labels],
        colorscale="RdBu_r" if zmid is not None else "Viridis", zmid=zmid, zmin=zmin, zmax=zmax,
        text=texts if show_values else None, texttemplate="%{text}" if show_values else None,
        hovertemplate="%{y} → %{x}: %{z:" + hover_format + "}" + hover_unit + "<extra></extra>",
    ))
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_layout(title=title, height=max(350, 28 * len(y_labels) + 150))
    return fig


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str], title: str, difference: bool = False,
                     plot_width: int = DEFAULT_PLOT_WIDTH) -> go.Figure:
    """A row-normalised confusion matrix (``iou.row_normalize``: rows = ground truth, each row sums to 1), or the
    difference of two (``difference``), in percent of the row: cells hold whole percents where they fit, hovering
    gives one decimal."""
    matrix = 100.0 * np.asarray(matrix, dtype=np.float64)
    if difference:
        return heatmap(matrix, class_names, class_names, title, zmid=0.0, value_format="+.0f", hover_format="+.1f",
                       hover_unit=" points of the row", plot_width=plot_width)
    return heatmap(matrix, class_names, class_names, title, zmin=0.0, zmax=100.0, value_format=".0f", hover_format=".1f",
                   hover_unit=" % of the row", plot_width=plot_width)


def similarity_overlay(image: np.ndarray, maps: Sequence[np.ndarray], query_yx: tuple[int, int],
                       titles: Sequence[str] | None = None, opacity: float = 0.6) -> go.Figure:
    """The image with each stage's similarity map (cells stretched over the image) and the query marked."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        raise ValueError(f"image must be a non-empty [H, W, 3] array, got shape {image.shape}")
    if not maps:
        raise ValueError("similarity_overlay needs at least one similarity map")
    titles = list(titles) if titles is not None else [f"stage {s} ({m.shape[0]}x{m.shape[1]})"
                                                      for s, m in enumerate(maps)]
    height, width = image.shape[:2]
    fig = make_subplots(rows=1, cols=len(maps), subplot_titles=titles, horizontal_spacing=0.02)
    for number, similarity in enumerate(maps):
        similarity = np.asarray(similarity)
        if similarity.ndim != 2 or similarity.size == 0:
            raise ValueError(f"similarity map {number} must be a non-empty [h, w] array, got {similarity.shape}")
        dy, dx = height / similarity.shape[0], width / similarity.shape[1]
        fig.add_trace(go.Image(z=image, hoverinfo="skip"), row=1, col=number + 1)
        fig.add_trace(go.Heatmap(
            z=similarity, x0=dx / 2 - 0.5, dx=dx, y0=dy / 2 - 0.5, dy=dy, zmin=-1, zmax=1,
            colorscale="RdBu_r", opacity=opacity, showscale=number == len(maps) - 1,
            hovertemplate="cosine %{z:.3f}<extra></extra>",
        ), row=1, col=number + 1)
        fig.add_trace(go.Scatter(
            x=[query_yx[1]], y=[query_yx[0]], mode="markers", showlegend=False, hoverinfo="skip",
            marker={"symbol": "x", "size": 12, "color": "black", "line": {"width": 2, "color": "white"}},
        ), row=1, col=number + 1)
        fig.update_xaxes(showticklabels=False, row=1, col=number + 1)
        fig.update_yaxes(showticklabels=False, row=1, col=number + 1)
    fig.update_annotations(font_size=12)
    fig.update_layout(height=max(300, int(320 * height / max(width, 1))) + 80)
    return fig


def sampler_histogram_figure(df: pd.DataFrame) -> go.Figure:
    """Grouped bars of labelled-pixel vs sampled-anchor class fractions (``sampler_histogram`` output)."""
    if df is None or df.empty:
        raise ValueError("sampler_histogram_figure needs a non-empty sampler_histogram table")
    fig = go.Figure([
        go.Bar(x=df["class"], y=df["labelled_fraction"], name="labelled pixels", marker_color=RUN_COLORS[0]),
        go.Bar(x=df["class"], y=df["sampled_fraction"], name="sampled anchors", marker_color=RUN_COLORS[1]),
    ])
    fig.update_layout(barmode="group", yaxis_title="fraction", xaxis_title="class",
                      title="class histogram: labelled pixels vs sampled anchors")
    return fig


SAMPLER_TIMELINE_METRICS = {"views": ("views per image-class group", "views"),
                            "groups": ("image-class groups", "groups"),
                            "n_sampled": ("sampled features", "features")}
"""``sampler_timeline`` columns drawn over training: subplot title and y-axis title (docs/method.md §1)."""
MARKERS_SHOWN = 12
"""Markers drawn at most per line of many points (they tell overlapping lines apart, not every point)."""


def sampler_timeline_figure(df: pd.DataFrame, strides: Sequence[int] | None = None) -> go.Figure:
    """Views per group, image-class groups and sampled features per step (docs/method.md §1), one line per stage.
    Stages of equal stride sample alike and their lines coincide, so each stage also has its own dash and marker
    symbol; with ``strides`` (per stage, finest first) the legend names each stage's stride."""
    if df is None or df.empty:
        raise ValueError("sampler_timeline_figure needs a non-empty sampler_timeline table")
    fig = make_subplots(rows=len(SAMPLER_TIMELINE_METRICS), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[title for title, _ in SAMPLER_TIMELINE_METRICS.values()])
    stages = sorted(int(stage) for stage in df["stage"].unique())
    for number, stage in enumerate(stages):
        rows = df[df["stage"] == stage]
        color = RUN_COLORS[number % len(RUN_COLORS)]
        name = f"stage {stage}" if strides is None or stage >= len(strides) else f"stage {stage} (stride {strides[stage]})"
        style = {"line": {"color": color, "dash": LINE_DASHES[number % len(LINE_DASHES)], "width": 2},
                 "marker": {"color": color, "symbol": CLASS_SYMBOLS[number % len(CLASS_SYMBOLS)], "size": 8,
                            "maxdisplayed": MARKERS_SHOWN}}
        for row, metric in enumerate(SAMPLER_TIMELINE_METRICS, start=1):
            fig.add_trace(go.Scatter(x=rows["step"], y=rows[metric], mode="lines+markers", name=name, legendgroup=name,
                                     showlegend=row == 1, **style), row=row, col=1)
    for row, (_, axis_title) in enumerate(SAMPLER_TIMELINE_METRICS.values(), start=1):
        fig.update_yaxes(title_text=axis_title, row=row, col=1)
    fig.update_xaxes(title_text="step", row=len(SAMPLER_TIMELINE_METRICS), col=1)
    fig.update_layout(title="sampler over training")
    _legend_below(fig, len(stages), 650)
    return fig


def class_timeline_figure(df: pd.DataFrame) -> go.Figure:
    """Sampled views per class over training at one stage (``sampler_stats.class_timeline``), one line per
    class in its :func:`class_styles` colour and dash, the legend below the axes: shows which classes the sampler
    never or rarely fed the loss (docs/method.md §1)."""
    if df is None or df.empty:
        raise ValueError("class_timeline_figure needs a non-empty class_timeline table")
    class_ids = sorted(int(class_id) for class_id in df["class_id"].unique())
    styles = class_styles(max(class_ids) + 1)
    fig = go.Figure()
    for class_id in class_ids:
        rows = df[df["class_id"] == class_id]
        style = styles[class_id]
        fig.add_trace(go.Scatter(x=rows["step"], y=rows["sampled"], mode="lines", name=str(rows["class"].iloc[0]),
                                 line={"color": style.color, "dash": style.dash}))
    fig.update_layout(title="sampled views per class", xaxis_title="step", yaxis_title="views")
    _legend_below(fig, len(class_ids), 360)
    return fig


def iou_diff_figure(df: pd.DataFrame, name_a: str | None = None, name_b: str | None = None) -> go.Figure:
    """Per-class IoU of both runs in percent, the difference (B - A, percentage points) in table order, and the
    class's share of the ground-truth pixels in percent (docs/workbench.md, "Numbers")."""
    if df is None or df.empty:
        raise ValueError("iou_diff_figure needs a non-empty per_class_iou_diff table")
    name_a = name_a or df.attrs.get("run_a", "A")
    name_b = name_b or df.attrs.get("run_b", "B")
    classes = df["class_name"].astype(str).tolist()
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, row_heights=[0.4, 0.4, 0.2], vertical_spacing=0.05,
                        subplot_titles=["IoU (%)", f"IoU difference ({name_b} - {name_a}, points)",
                                        "ground-truth pixel share (%)"])
    for number, (column, name) in enumerate((("iou_a", name_a), ("iou_b", name_b))):
        fig.add_trace(go.Bar(x=classes, y=100 * df[column], name=name, marker_color=RUN_COLORS[number],
                             hovertemplate="%{x}: %{y:.1f} %<extra>" + name + "</extra>"), row=1, col=1)
    diff = 100 * df["diff"].to_numpy(dtype=np.float64)
    fig.add_trace(go.Bar(x=classes, y=diff, name="difference", showlegend=False,
                         marker_color=[CORRECT_COLOR if d >= 0 else WRONG_COLOR for d in np.nan_to_num(diff)],
                         customdata=100 * df[["gt_frequency"]].to_numpy(),
                         hovertemplate="%{x}: %{y:+.2f} points (pixel share %{customdata[0]:.2f} %)<extra></extra>"),
                  row=2, col=1)
    fig.add_trace(go.Bar(x=classes, y=100 * df["gt_frequency"], name="pixel share", showlegend=False,
                         marker_color="rgb(120,120,120)", hovertemplate="%{x}: %{y:.2f} %<extra></extra>"), row=3, col=1)
    fig.update_layout(barmode="group", height=700)
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=classes)
    return fig


def per_image_diff_figure(df: pd.DataFrame, name_a: str | None = None, name_b: str | None = None) -> go.Figure:
    """Per-image mIoU of B against A in percent (one point per image, ``customdata`` = image_id), coloured by the
    difference, with the diagonal over the range of the points; the axes fit the points (not 0..100), so images
    with similar scores do not crowd a corner."""
    if df is None or df.empty:
        raise ValueError("per_image_diff_figure needs a non-empty per_image_diff table")
    name_a = name_a or df.attrs.get("run_a", "A")
    name_b = name_b or df.attrs.get("run_b", "B")
    miou_a, miou_b = 100 * df["miou_a"].to_numpy(dtype=np.float64), 100 * df["miou_b"].to_numpy(dtype=np.float64)
    diff = 100 * df["diff"].to_numpy(dtype=np.float64)
    values = np.concatenate([miou_a, miou_b])
    values = values[np.isfinite(values)]
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 100.0)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[low, high], y=[low, high], mode="lines", line={"dash": "dot", "color": "gray"},
                             hoverinfo="skip", showlegend=False))
    spread = np.abs(diff[np.isfinite(diff)])
    limit = float(spread.max()) if spread.size and spread.max() > 0 else 1.0
    fig.add_trace(go.Scatter(
        x=miou_a, y=miou_b, mode="markers", name="images", showlegend=False,
        customdata=df[["image_id"]].astype(str).to_numpy(),
        marker={"color": diff, "colorscale": "RdYlGn", "cmin": -limit, "cmax": limit, "size": 8,
                "colorbar": {"title": "B − A (points)"}},
        hovertemplate=("%{customdata[0]}<br>" + f"{name_a}: " + "%{x:.1f} %<br>"
                       + f"{name_b}: " + "%{y:.1f} %<extra></extra>"),
    ))
    fig.update_xaxes(autorange=True)
    fig.update_yaxes(autorange=True)
    fig.update_layout(xaxis_title=f"mIoU {name_a} (%)", yaxis_title=f"mIoU {name_b} (%)", height=500,
                      title=f"per-image mIoU (above the diagonal: {name_b} better)")
    return fig


def prediction_differences(label: np.ndarray, predictions: Sequence[np.ndarray], ignore_index: int) -> np.ndarray:
    """bool [H, W]: where the predictions disagree with each other (one prediction: where it is wrong).

    Ignore pixels of the ground truth are never marked.
    """
    label = np.asarray(label)
    if not predictions:
        raise ValueError("prediction_differences needs at least one prediction")
    stack = np.stack([np.asarray(p) for p in predictions])
    if stack.shape[1:] != label.shape:
        raise ValueError(f"predictions have shape {stack.shape[1:]}, the label {label.shape}")
    differs = stack[0] != label if len(stack) == 1 else (stack != stack[0]).any(axis=0)
    return differs & (label != ignore_index)


def _difference_image(image: np.ndarray, label: np.ndarray, predictions: list[np.ndarray],
                      ignore_index: int) -> np.ndarray:
    """Dimmed image; differing pixels coloured: 2 runs -> green (2nd right), red (1st right), orange
    (both wrong); otherwise red (1 run: wrong) or yellow (runs disagree)."""
    out = (image.astype(np.float64) * 0.35).astype(np.uint8)
    differs = prediction_differences(label, predictions, ignore_index)
    if len(predictions) == 2:
        right_a, right_b = predictions[0] == label, predictions[1] == label
        out[differs & right_b & ~right_a] = (0, 200, 0)
        out[differs & right_a & ~right_b] = (220, 0, 0)
        out[differs & ~right_a & ~right_b] = (255, 165, 0)
    else:
        out[differs] = (220, 0, 0) if len(predictions) == 1 else (255, 230, 0)
    return out


def prediction_figure(sample: Mapping[str, np.ndarray], predictions: Mapping[str, np.ndarray],
                      palette: np.ndarray, ignore_index: int, max_columns: int = 3) -> go.Figure:
    """Image, ground truth, each run's prediction (palette colours) and where the predictions differ."""
    if not predictions:
        raise ValueError("prediction_figure needs at least one prediction")
    image, label = np.asarray(sample["image"]), np.asarray(sample["label"])
    if image.ndim != 3 or image.size == 0 or image.shape[:2] != label.shape:
        raise ValueError(f"sample needs image [H, W, 3] and label [H, W], got {image.shape} and {label.shape}")
    names = list(predictions)
    prediction_maps = [np.asarray(predictions[name]) for name in names]
    if len(prediction_maps) == 2:
        diff_title = "differs"
        legend = f"differs: green = only {names[1]} right, red = only {names[0]} right, orange = both wrong"
    elif len(prediction_maps) == 1:
        diff_title, legend = "wrong", "wrong: red = prediction differs from the ground truth"
    else:
        diff_title, legend = "differs", "differs: yellow = the predictions disagree"
    pictures = [("image", image.astype(np.uint8)), ("ground truth", colorize(label, palette, ignore_index))]
    pictures += [(name, colorize(p, palette, ignore_index)) for name, p in zip(names, prediction_maps)]
    pictures.append((diff_title, _difference_image(image, label, prediction_maps, ignore_index)))
    rows, cols = _grid(len(pictures), max_columns)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[title for title, _ in pictures],
                        horizontal_spacing=0.01, vertical_spacing=0.06)
    for number, (_, picture) in enumerate(pictures):
        row, col = number // cols + 1, number % cols + 1
        fig.add_trace(go.Image(z=picture), row=row, col=col)
        fig.update_xaxes(showticklabels=False, row=row, col=col)
        fig.update_yaxes(showticklabels=False, row=row, col=col)
    height, width = label.shape
    fig.update_annotations(font_size=13)
    fig.update_layout(title={"text": legend, "font": {"size": 13}},
                      height=int(rows * (280 * height / max(width, 1) + 50)) + 80)
    return fig


def find_browser() -> str | None:
    """Chrome/Chromium for kaleido: ``BROWSER_PATH`` when set, else the first of ``BROWSER_NAMES`` on PATH."""
    configured = os.environ.get("BROWSER_PATH")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    for name in BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def export_figure(fig: go.Figure, path: str | Path, format: str = "png", width: int | None = None,
                  height: int | None = None, scale: float = 2.0) -> Path:
    """Write ``fig`` as a static PNG or SVG (kaleido + Chrome/Chromium) and return the path.

    A path without suffix gets ``.<format>``; a different suffix is an error.
    """
    if format not in ("png", "svg"):
        raise ValueError(f"format must be 'png' or 'svg', got {format!r}")
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(f".{format}")
    elif path.suffix.lower() != f".{format}":
        raise ValueError(f"path {path} has suffix {path.suffix!r} but format is {format!r}")
    browser = find_browser()
    if browser is None:
        configured = os.environ.get("BROWSER_PATH")
        where = f"BROWSER_PATH={configured} is not executable" if configured else \
            f"none of {list(BROWSER_NAMES)} is on PATH and BROWSER_PATH is not set"
        raise RuntimeError(f"static export needs Chrome or Chromium for kaleido: {where}; install Chromium "
                           "(e.g. `apt-get install chromium`) or set BROWSER_PATH to its executable")
    os.environ.setdefault("BROWSER_PATH", browser)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.write_image(str(path), format=format, width=width, height=height, scale=scale)
    except Exception as err:
        raise RuntimeError(f"static export to {path} with kaleido and {browser} failed: {err}") from err
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError(f"static export wrote no data to {path}")
    return path
