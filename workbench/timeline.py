"""How the feature spaces evolve during training: the numbers and maps of the app's Training dynamics page.

``mscl train`` keeps an embedding snapshot of one fixed set of class-balanced validation pixels at every
validation (``snapshots/``, docs/run-format.md; layout in ``runformat.snapshots``). This module reads them
(``workbench.snapshots.Snapshots``, via ``Run.snapshots()``) and derives, with the formulas of ``workbench.separability`` and
``workbench.crossscale``:

- :func:`timeline`: a tidy table step x stage x kind x metric with the validation mIoU of each step;
- :func:`step_maps`: 2-D maps of one stage over the steps, the same pixels at every step, each step's map started
  from the previous one (t-SNE, UMAP) and rotated onto it by orthogonal Procrustes, so points move smoothly;
- :func:`timeline_figure` and :func:`step_map_figure`: the plots of the app's Training dynamics page.

Results are cached per ``Run`` object (``Run.refresh`` forgets them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from runformat import snapshots as layout
from workbench import figures
from workbench.crossscale import class_prototypes, linear_cka
from workbench.projection_methods import chained_maps, merge_params
from workbench.runs import Run
from workbench.separability import alignment, knn_accuracy, silhouette, uniformity

__all__ = [
    "METRICS",
    "METRIC_LABELS",
    "METRIC_HELP",
    "MAP_METHODS",
    "TIMELINE_COLUMNS",
    "snapshot_stamp",
    "timeline",
    "step_maps",
    "timeline_figure",
    "step_map_figure",
]

METRICS = ("silhouette", "knn_accuracy", "alignment", "uniformity", "prototype_similarity", "cka_to_finest")
METRIC_LABELS = {
    "silhouette": "silhouette",
    "knn_accuracy": "kNN accuracy",
    "alignment": "alignment",
    "uniformity": "uniformity",
    "prototype_similarity": "prototype similarity to stage 0",
    "cka_to_finest": "linear CKA to stage 0",
}
METRIC_HELP = {
    "silhouette": "cosine silhouette of the ground-truth classes (−1…1); higher = better separated classes.",
    "knn_accuracy": "weighted kNN accuracy (k=20, τ=0.07), neighbours from other images only.",
    "alignment": "E‖z_x − z_y‖² over same-class pairs of unit embeddings; lower = more compact classes.",
    "uniformity": "log E exp(−2‖z_x − z_y‖²) over all pairs; lower = spread more evenly on the sphere.",
    "prototype_similarity": "mean cosine between a class's prototype at this stage and at stage 0 (the diagonal of "
                            "the prototype similarity); only where all stages share a width (projected embeddings).",
    "cka_to_finest": "linear CKA between this stage and stage 0 over the same pixels (any widths); 1 = same "
                     "information up to rotation and scale.",
}
MAP_METHODS = ("pca", "tsne", "umap")
TIMELINE_COLUMNS = ("step", "stage", "kind", "metric", "value", "miou")
STAGE_COLORS = qualitative.D3
RUN_DASHES = ("solid", "dash", "dot", "dashdot")
MIOU_COLOR = "rgb(90,90,90)"
PERCENT = 100.0


def snapshot_stamp(run: Run) -> int:
    """A number that changes whenever a snapshot is added (``snapshots/index.csv`` is rewritten last); 0 without
    snapshots. Caches of ``timeline`` and ``step_maps`` can key on it instead of on the whole run directory, which
    also changes while the run is exported."""
    index = run.path / layout.INDEX
    return index.stat().st_mtime_ns if index.is_file() else 0


def _stage_metrics(X: np.ndarray, labels: np.ndarray, groups: np.ndarray, seed: int) -> dict[str, float]:
    return {
        "silhouette": silhouette(X, labels, seed=seed),
        "knn_accuracy": knn_accuracy(X, labels, groups),
        "alignment": alignment(X, labels),
        "uniformity": uniformity(X, seed=seed),
    }


def _timeline(run: Run, kinds: tuple[str, ...], seed: int) -> pd.DataFrame:
    snaps = run.snapshots()
    pixels = snaps.pixels()
    labels = pixels["label"].to_numpy()
    groups = pixels["image_index"].to_numpy()
    miou = snaps.miou()
    records = []
    for step in snaps.steps:
        for kind in kinds:
            data = [snaps.embeddings(step, stage, kind) for stage in snaps.stages]
            same_width = len({X.shape[1] for X in data}) == 1
            prototypes = [class_prototypes(X, labels, run.num_classes) for X in data] if same_width else []
            present = ~np.isnan(prototypes[0][:, 0]) if same_width else None
            for number, (stage, X) in enumerate(zip(snaps.stages, data)):
                values = _stage_metrics(X, labels, groups, seed)
                values["cka_to_finest"] = linear_cka(data[0], X)
                if same_width:
                    values["prototype_similarity"] = float(
                        np.mean(np.sum(prototypes[0][present] * prototypes[number][present], axis=1)))
                records.extend({"step": step, "stage": stage, "kind": kind, "metric": metric, "value": float(value),
                                "miou": miou[step]} for metric, value in values.items())
    table = pd.DataFrame(records, columns=list(TIMELINE_COLUMNS))
    order = {metric: number for number, metric in enumerate(METRICS)}
    return table.sort_values(["kind", "metric", "stage", "step"], key=lambda c: c.map(order) if c.name == "metric" else c,
                             kind="stable").reset_index(drop=True)


def timeline(run: Run, kinds: Sequence[str] | None = None, seed: int = 0) -> pd.DataFrame:
    """Separability of every snapshot: one row per (step, stage, kind, metric), columns ``TIMELINE_COLUMNS``.

    Metrics (docs/workbench.md, "Numbers, defined once"), on the snapshot's pixels with their ground-truth classes:
    ``silhouette`` (``separability.silhouette``), ``knn_accuracy`` (``separability.knn_accuracy``, images as
    groups), ``alignment``, ``uniformity``, ``cka_to_finest`` (``crossscale.linear_cka`` of the stage and stage 0)
    and, for kinds whose stages share one width, ``prototype_similarity``: the mean over classes of the cosine
    between the class prototype (``crossscale.class_prototypes``) at the stage and at stage 0. ``miou`` is the
    validation mIoU at the step. ``kinds`` defaults to every kind the snapshots hold.
    """
    snaps = run.snapshots()
    chosen = tuple(snaps.kinds if kinds is None else kinds)
    unknown = [kind for kind in chosen if kind not in snaps.kinds]
    if unknown:
        raise ValueError(f"run {run.name!r} has no {unknown} snapshots (kinds: {snaps.kinds})")
    return run._cached(f"timeline/{','.join(chosen)}/{seed}", lambda: _timeline(run, chosen, seed)).copy()


def step_maps(run: Run, stage: int, kind: str = "projected", method: str = "pca", seed: int = 0,
              **params: Any) -> dict[int, np.ndarray]:
    """2-D maps {step: float32 [M, 2]} of the snapshot pixels of one stage and kind, aligned across steps.

    Row i of every map is snapshot pixel i. The steps are mapped as ``projection_methods.chained_maps`` maps the
    stages of a run: each with ``method`` (its defaults updated with ``params``; PCA and t-SNE on L2-normalised rows,
    UMAP with the cosine metric), t-SNE and UMAP starting from the previous step's map, and each map centred and
    rotated/reflected onto the previous one (orthogonal Procrustes), so a point moves only as much as its embedding
    changed relative to the others.
    """
    if method not in MAP_METHODS:
        raise ValueError(f"step map method must be one of {MAP_METHODS}, got {method!r}")
    merged = merge_params(method, params)
    snaps = run.snapshots()

    def compute() -> list[np.ndarray]:
        return chained_maps([snaps.embeddings(step, stage, kind) for step in snaps.steps], method, seed, **merged)

    maps = run._cached(f"step_maps/{stage}/{kind}/{method}/{seed}/{sorted(merged.items())}", compute)
    return {step: coords.copy() for step, coords in zip(snaps.steps, maps)}


def timeline_figure(tables: Mapping[str, pd.DataFrame], metric: str, kind: str,
                    stages: Sequence[int] | None = None) -> go.Figure:
    """One metric per stage over training for several runs (colour = stage, dash = run), and each run's validation
    mIoU in percent (docs/workbench.md, "Numbers") on a second y axis. ``tables`` maps a run label to its ``timeline``
    table (``miou`` a fraction, as ``metrics/val.csv`` stores it)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    drawn = False
    for number, (label, table) in enumerate(tables.items()):
        dash = RUN_DASHES[number % len(RUN_DASHES)]
        rows = table[(table["metric"] == metric) & (table["kind"] == kind)]
        if stages is not None:
            rows = rows[rows["stage"].isin(list(stages))]
        for stage, curve in rows.groupby("stage", sort=True):
            fig.add_trace(go.Scatter(
                x=curve["step"], y=curve["value"], mode="lines+markers", name=f"{label} · stage {stage}",
                legendgroup=label, line={"color": STAGE_COLORS[int(stage) % len(STAGE_COLORS)], "dash": dash},
            ), secondary_y=False)
            drawn = True
        steps = table.drop_duplicates("step").sort_values("step")
        fig.add_trace(go.Scatter(
            x=steps["step"], y=PERCENT * steps["miou"].to_numpy(dtype=np.float64), mode="lines+markers",
            name=f"{label} · val mIoU", legendgroup=label, hovertemplate="%{y:.2f} %",
            line={"color": MIOU_COLOR, "dash": dash, "width": 3}, marker={"symbol": "diamond"},
        ), secondary_y=True)
    if not drawn:
        raise ValueError(f"no {METRIC_LABELS[metric]} values for {kind} embeddings in these runs"
                         + (" (prototype similarity needs stages of one width: pick projected)" if metric ==
                            "prototype_similarity" else ""))
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text=f"{METRIC_LABELS[metric]} ({kind})", secondary_y=False)
    fig.update_yaxes(title_text="val mIoU (%)", secondary_y=True)
    fig.update_layout(title=f"{METRIC_LABELS[metric]} per stage over training", hovermode="x unified", height=520,
                      legend={"orientation": "h", "yanchor": "top", "y": -0.18, "xanchor": "left", "x": 0})
    return fig


def _shown_step(steps: Sequence[int], step: int) -> int:
    """The latest snapshot step at or before ``step`` (the first one when all are later)."""
    earlier = [s for s in steps if s <= step]
    return earlier[-1] if earlier else steps[0]


def step_map_figure(items: Sequence[tuple[str, Run, Mapping[int, np.ndarray]]], step: int, stage: int, kind: str,
                    color_by: str = "label") -> go.Figure:
    """The step maps of several runs at ``step`` (each run at its latest snapshot at or before it), one panel per
    run, with axis ranges fixed over all steps so that moving through the steps shows the points move.

    ``items`` are ``(label, run, step_maps(run, stage, kind, ...))``; ``color_by`` is ``label`` or ``correct`` (the
    prediction at the shown step).
    """
    if not items:
        raise ValueError("step_map_figure needs at least one run")
    panels, ranges = [], []
    for label, run, maps in items:
        shown = _shown_step(sorted(maps), step)
        snaps = run.snapshots()
        pixels = snaps.pixels().assign(prediction=snaps.predictions(shown))
        panels.append({"title": f"{label} · stage {stage} {kind} · step {shown}", "coords": maps[shown], "pixels": pixels})
        stacked = np.concatenate(list(maps.values()))
        low, high = stacked.min(0), stacked.max(0)
        pad = 0.05 * np.maximum(high - low, 1e-6)
        ranges.append((low - pad, high + pad))
    first = items[0][1]
    fig = figures.embedding_panels(panels, color_by=color_by, class_names=first.class_names,
                                   max_columns=len(panels))
    for column, (low, high) in enumerate(ranges, start=1):
        fig.update_xaxes(range=[float(low[0]), float(high[0])], row=1, col=column)
        fig.update_yaxes(range=[float(low[1]), float(high[1])], row=1, col=column)
    fig.update_layout(height=460)
    return fig
