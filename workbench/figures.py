"""Plotly figures for the workbench views (shared docs/workbench.md); every builder raises ValueError
on empty input rather than drawing an empty plot. ``export_figure`` writes PNG/SVG through kaleido,
which drives a Chrome/Chromium found via ``BROWSER_PATH`` or the ``PATH``."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

if TYPE_CHECKING:
    from workbench.runs import Run

__all__ = [
    "colorize",
    "training_curves",
    "val_curves",
    "embedding_panel",
    "embedding_panels",
    "heatmap",
    "similarity_overlay",
    "sampler_histogram_figure",
    "sampler_timeline_figure",
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
RUN_COLORS = qualitative.Plotly
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def _rgb(color: Sequence[int]) -> str:
    return f"rgb({int(color[0])},{int(color[1])},{int(color[2])})"


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


def _curves(frames: list[pd.DataFrame], labels: list[str], columns: list[str], title: str,
            max_columns: int = 3) -> go.Figure:
    rows, cols = _grid(len(columns), max_columns)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=columns, shared_xaxes=False)
    shown: set[str] = set()
    for number, column in enumerate(columns):
        row, col = number // cols + 1, number % cols + 1
        for run_number, (frame, label) in enumerate(zip(frames, labels)):
            if column not in frame.columns:
                continue
            fig.add_trace(go.Scatter(
                x=frame["step"], y=frame[column], mode="lines", name=label, legendgroup=label,
                showlegend=label not in shown, line={"color": RUN_COLORS[run_number % len(RUN_COLORS)]},
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


def val_curves(runs: Sequence[Run]) -> go.Figure:
    """Validation mIoU, pixel accuracy and mean accuracy over steps, one line per run."""
    if not runs:
        raise ValueError("val_curves needs at least one run")
    frames = [run.val_metrics() for run in runs]
    if all(frame.empty for frame in frames):
        raise ValueError("metrics/val.csv has no validation rows in any of these runs")
    return _curves(frames, _run_labels(runs), ["miou", "pixel_acc", "mean_acc"], "validation")


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


def embedding_panels(panels: Sequence[Mapping[str, Any]], color_by: str = "label",
                     class_names: Sequence[str] = (), palette: np.ndarray | Sequence = (),
                     max_columns: int = 4, marker_size: int = 3) -> go.Figure:
    """Point clouds (Scattergl), one subplot per panel.

    A panel is ``{"title": str, "coords": [M, 2], "pixels": DataFrame}`` with pixel columns ``label``
    and, for hover and ``color_by="correct"``, ``prediction``, ``image_id``, ``y``, ``x`` (see
    ``embedding_panel``). ``color_by="label"``: one trace per class with the palette colour (legend
    toggles a class in every panel); ``"correct"``: correct vs wrong prediction.
    """
    if not panels:
        raise ValueError("embedding_panels needs at least one panel")
    if color_by not in ("label", "correct"):
        raise ValueError(f"color_by must be 'label' or 'correct', got {color_by!r}")
    palette = np.asarray(palette)
    if len(class_names) == 0 or palette.shape != (len(class_names), 3):
        raise ValueError(f"need class_names and a matching [C, 3] palette, got {len(class_names)} names "
                         f"and palette shape {palette.shape}")
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
            groups = [(name, labels == c, _rgb(palette[c])) for c, name in enumerate(class_names)]
            unknown = (labels < 0) | (labels >= len(class_names))
            groups.append(("ignore/unknown", unknown, UNKNOWN_LABEL_COLOR))
        else:
            correct = labels == pixels["prediction"].to_numpy()
            groups = [("correct", correct, CORRECT_COLOR), ("wrong", ~correct, WRONG_COLOR)]
        row, col = number // cols + 1, number % cols + 1
        for name, mask, color in groups:
            if not mask.any():
                continue
            fig.add_trace(go.Scattergl(
                x=coords[mask, 0], y=coords[mask, 1], mode="markers", name=name, legendgroup=name,
                showlegend=name not in shown, marker={"color": color, "size": marker_size},
                customdata=hover[mask],
                hovertemplate="image %{customdata[0]} (y=%{customdata[1]}, x=%{customdata[2]})<br>"
                              "label: %{customdata[3]}<br>prediction: %{customdata[4]}<extra></extra>",
            ), row=row, col=col)
            shown.add(name)
        fig.update_xaxes(showticklabels=False, row=row, col=col)
        fig.update_yaxes(showticklabels=False, row=row, col=col)
    fig.update_annotations(font_size=12)
    fig.update_layout(height=max(380, 330 * rows), legend={"itemsizing": "constant"})
    return fig


def heatmap(matrix: np.ndarray, x_labels: Sequence[Any], y_labels: Sequence[Any], title: str,
            zmid: float | None = None, zmin: float | None = None, zmax: float | None = None,
            show_values: bool | None = None) -> go.Figure:
    """Heatmap with rows drawn top to bottom; ``zmid`` selects a diverging colour scale. Cell values are
    written in the cells when ``show_values`` (default: when both sides have at most 30 labels)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.size == 0:
        raise ValueError(f"heatmap needs a non-empty 2-D matrix, got shape {matrix.shape}")
    if matrix.shape != (len(y_labels), len(x_labels)):
        raise ValueError(f"matrix shape {matrix.shape} does not match {len(y_labels)} y labels x "
                         f"{len(x_labels)} x labels")
    if show_values is None:
        show_values = max(matrix.shape) <= 30
    fig = go.Figure(go.Heatmap(
        z=matrix, x=[str(v) for v in x_labels], y=[str(v) for v in y_labels],
        colorscale="RdBu_r" if zmid is not None else "Viridis", zmid=zmid, zmin=zmin, zmax=zmax,
        texttemplate="%{z:.2f}" if show_values else None, hovertemplate="%{y} → %{x}: %{z:.3f}<extra></extra>",
    ))
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_layout(title=title, height=max(350, 28 * len(y_labels) + 150))
    return fig


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
        go.Bar(x=df["class"], y=df["labelled_fraction"], name="labelled pixels"),
        go.Bar(x=df["class"], y=df["sampled_fraction"], name="sampled anchors"),
    ])
    fig.update_layout(barmode="group", yaxis_title="fraction", xaxis_title="class",
                      title="class histogram: labelled pixels vs sampled anchors")
    return fig


def sampler_timeline_figure(df: pd.DataFrame) -> go.Figure:
    """Views per group, image-class groups and sampled features per step, one line per stage."""
    if df is None or df.empty:
        raise ValueError("sampler_timeline_figure needs a non-empty sampler_timeline table")
    metrics = ["views", "groups", "n_sampled"]
    fig = make_subplots(rows=len(metrics), cols=1, shared_xaxes=True,
                        subplot_titles=["views per image-class group", "image-class groups", "sampled features"])
    for number, stage in enumerate(sorted(df["stage"].unique())):
        rows = df[df["stage"] == stage]
        color = RUN_COLORS[number % len(RUN_COLORS)]
        for row, metric in enumerate(metrics, start=1):
            fig.add_trace(go.Scatter(x=rows["step"], y=rows[metric], mode="lines", name=f"stage {stage}",
                                     legendgroup=f"stage {stage}", showlegend=row == 1, line={"color": color}),
                          row=row, col=1)
    fig.update_xaxes(title_text="step", row=len(metrics), col=1)
    fig.update_layout(height=650, title="sampler over training")
    return fig


def class_timeline_figure(df: pd.DataFrame, palette: np.ndarray | Sequence) -> go.Figure:
    """Sampled views per class over training at one stage (``sampler_stats.class_timeline``), one line per
    class in its palette colour: shows which classes the sampler never or rarely fed the loss."""
    if df is None or df.empty:
        raise ValueError("class_timeline_figure needs a non-empty class_timeline table")
    palette = np.asarray(palette)
    fig = go.Figure()
    for class_id, rows in df.groupby("class_id", sort=True):
        fig.add_trace(go.Scatter(x=rows["step"], y=rows["sampled"], mode="lines", name=str(rows["class"].iloc[0]),
                                 line={"color": _rgb(palette[int(class_id)])}))
    fig.update_layout(title="sampled views per class", xaxis_title="step", yaxis_title="views", height=360)
    return fig


def iou_diff_figure(df: pd.DataFrame, name_a: str | None = None, name_b: str | None = None) -> go.Figure:
    """Per-class IoU of both runs, the difference (B - A) in table order, and the class pixel frequency."""
    if df is None or df.empty:
        raise ValueError("iou_diff_figure needs a non-empty per_class_iou_diff table")
    name_a = name_a or df.attrs.get("run_a", "A")
    name_b = name_b or df.attrs.get("run_b", "B")
    classes = df["class_name"].astype(str).tolist()
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, row_heights=[0.4, 0.4, 0.2], vertical_spacing=0.05,
                        subplot_titles=["IoU", f"IoU difference ({name_b} - {name_a})", "ground-truth pixel share"])
    fig.add_trace(go.Bar(x=classes, y=df["iou_a"], name=name_a, marker_color=RUN_COLORS[0]), row=1, col=1)
    fig.add_trace(go.Bar(x=classes, y=df["iou_b"], name=name_b, marker_color=RUN_COLORS[1]), row=1, col=1)
    diff = df["diff"].to_numpy(dtype=np.float64)
    fig.add_trace(go.Bar(x=classes, y=diff, name="difference", showlegend=False,
                         marker_color=[CORRECT_COLOR if d >= 0 else WRONG_COLOR for d in np.nan_to_num(diff)],
                         customdata=df[["gt_frequency"]].to_numpy(),
                         hovertemplate="%{x}: %{y:+.4f} (pixel share %{customdata[0]:.3%})<extra></extra>"),
                  row=2, col=1)
    fig.add_trace(go.Bar(x=classes, y=df["gt_frequency"], name="pixel share", showlegend=False,
                         marker_color="rgb(120,120,120)"), row=3, col=1)
    fig.update_layout(barmode="group", height=700)
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=classes)
    return fig


def per_image_diff_figure(df: pd.DataFrame, name_a: str | None = None, name_b: str | None = None) -> go.Figure:
    """Per-image mIoU of B against A (one point per image, ``customdata`` = image_id), with the diagonal."""
    if df is None or df.empty:
        raise ValueError("per_image_diff_figure needs a non-empty per_image_diff table")
    name_a = name_a or df.attrs.get("run_a", "A")
    name_b = name_b or df.attrs.get("run_b", "B")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "gray"},
                             hoverinfo="skip", showlegend=False))
    finite = np.abs(df["diff"].to_numpy(dtype=np.float64))
    finite = finite[np.isfinite(finite)]
    limit = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    fig.add_trace(go.Scatter(
        x=df["miou_a"], y=df["miou_b"], mode="markers", name="images", showlegend=False,
        customdata=df[["image_id"]].astype(str).to_numpy(),
        marker={"color": df["diff"], "colorscale": "RdYlGn", "cmin": -limit, "cmax": limit, "size": 8,
                "colorbar": {"title": "diff"}},
        hovertemplate=("%{customdata[0]}<br>" + f"{name_a}: " + "%{x:.3f}<br>"
                       + f"{name_b}: " + "%{y:.3f}<extra></extra>"),
    ))
    fig.update_layout(xaxis_title=f"mIoU {name_a}", yaxis_title=f"mIoU {name_b}", height=500,
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
