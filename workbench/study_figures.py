"""Plotly figures of a multi-seed study (``workbench.study``), in the style of ``workbench.figures``: every
builder raises ValueError on empty input. The tables of ``workbench.study`` hold fractions in [0, 1], as the runs
store them; the figures draw mIoU, pixel accuracy and IoU in percent and their differences in percentage points
(docs/workbench.md, "Numbers"), and :func:`in_percent` converts a table the same way for display."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from workbench.figures import CORRECT_COLOR, RUN_COLORS, WRONG_COLOR
from workbench.study import CONFIDENCE, MIOU, PIXEL_ACC

__all__ = ["PERCENT", "PERCENT_COLUMNS", "forest_figure", "in_percent", "per_image_histogram", "per_seed_figure"]

UNDECIDED_COLOR = "rgb(120,120,120)"
SEED_METRICS = {"miou": MIOU, "pixel_acc": PIXEL_ACC}
PERCENT = 100.0
# Columns of the study tables that hold fractions (compare_arms, seed_values, seed_spread, per_image_differences).
PERCENT_COLUMNS = ("mean_a", "mean_b", "diff", "ci_low", "ci_high", "miou", "pixel_acc", "mean", "std", "min", "max",
                   "miou_a", "miou_b")


def in_percent(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of a study table with the fractions of :data:`PERCENT_COLUMNS` times 100 (percent, and percentage points
    for differences, intervals and standard deviations); counts, seeds and p-values unchanged."""
    columns = [column for column in PERCENT_COLUMNS if column in table.columns]
    return table.assign(**{column: PERCENT * table[column].astype(np.float64) for column in columns})


def _interval_color(low: float, high: float) -> str:
    """Green when the interval lies above 0, red when below, grey when it contains 0 or is undefined."""
    if np.isfinite(low) and low > 0:
        return CORRECT_COLOR
    if np.isfinite(high) and high < 0:
        return WRONG_COLOR
    return UNDECIDED_COLOR


def forest_figure(table: pd.DataFrame, name_a: str | None = None, name_b: str | None = None) -> go.Figure:
    """Forest plot of ``study.compare_arms``: per row (mIoU, pixel accuracy, each class's IoU) the mean paired
    difference B − A over seeds with its 95 % t-interval in percentage points, in table order from the top, and a
    line at 0.

    A point without a bar has no interval (a single paired seed); green/red intervals exclude 0.
    """
    if table is None or table.empty:
        raise ValueError("forest_figure needs a non-empty compare_arms table")
    name_a = name_a or table.attrs.get("a", "A")
    name_b = name_b or table.attrs.get("b", "B")
    rows = table[table["n_pairs"] > 0]
    if rows.empty:
        raise ValueError("forest_figure: no row of the compare_arms table has a paired seed")
    diff = PERCENT * rows["diff"].to_numpy(dtype=np.float64)
    low = PERCENT * rows["ci_low"].to_numpy(dtype=np.float64)
    high = PERCENT * rows["ci_high"].to_numpy(dtype=np.float64)
    labels = rows["metric"].astype(str).tolist()
    p_text = [f"p = {p:.3g}" if np.isfinite(p) else "no p-value" for p in rows["p_value"]]
    fig = go.Figure()
    fig.add_vline(x=0.0, line={"dash": "dot", "color": "gray"})
    fig.add_trace(go.Scatter(
        x=diff, y=labels, mode="markers", showlegend=False,
        marker={"size": 9, "color": [_interval_color(lo, hi) for lo, hi in zip(low, high)]},
        error_x={"type": "data", "symmetric": False, "array": np.nan_to_num(high - diff),
                 "arrayminus": np.nan_to_num(diff - low), "thickness": 2, "width": 4},
        customdata=[[float(lo), float(hi), int(n), text] for lo, hi, n, text in zip(low, high, rows["n_pairs"], p_text)],
        hovertemplate=("%{y}: %{x:+.2f} points<br>" + f"{round(100 * CONFIDENCE)} % CI " + "[%{customdata[0]:+.2f}, "
                       "%{customdata[1]:+.2f}]<br>%{customdata[2]} seeds, %{customdata[3]}<extra></extra>"),
    ))
    seeds = table.attrs.get("seeds", [])
    split = table.attrs.get("split", "")
    fig.update_yaxes(type="category", categoryorder="array", categoryarray=labels, autorange="reversed")
    fig.update_layout(
        title=f"{name_b} − {name_a}: mean over {len(seeds)} paired seed{'s' if len(seeds) != 1 else ''}, "
              f"{round(100 * CONFIDENCE)} % CI"
              + (f" — {split} split" if split else ""),
        xaxis_title=f"difference {name_b} − {name_a} (percentage points)",
        height=max(320, 40 + 28 * len(labels)),
    )
    return fig


def per_seed_figure(values: pd.DataFrame, metric: str = "miou") -> go.Figure:
    """One line per arm through its seeds (``study.seed_values``), for ``metric`` ``miou`` or ``pixel_acc`` in percent:
    lines that stay in the same order on every seed show an effect larger than the seed-to-seed spread."""
    if metric not in SEED_METRICS:
        raise ValueError(f"per_seed_figure: metric must be one of {sorted(SEED_METRICS)}, got {metric!r}")
    if values is None or values.empty:
        raise ValueError("per_seed_figure needs a non-empty seed_values table")
    seeds = sorted(int(seed) for seed in values["seed"].unique())
    fig = go.Figure()
    for number, (arm, rows) in enumerate(values.groupby("arm", sort=False)):
        rows = rows.sort_values("seed")
        fig.add_trace(go.Scatter(
            x=[str(seed) for seed in rows["seed"]], y=PERCENT * rows[metric].to_numpy(dtype=np.float64),
            mode="lines+markers", name=str(arm),
            line={"color": RUN_COLORS[number % len(RUN_COLORS)]}, customdata=rows[["name"]].astype(str).to_numpy(),
            hovertemplate=f"{arm}, seed " + "%{x} (%{customdata[0]}): %{y:.2f} %<extra></extra>",
        ))
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=[str(seed) for seed in seeds], title="seed")
    fig.update_layout(title=f"{SEED_METRICS[metric]} per seed and arm", yaxis_title=f"{SEED_METRICS[metric]} (%)",
                      height=380)
    return fig


def per_image_histogram(differences: pd.DataFrame, name_a: str | None = None, name_b: str | None = None) -> go.Figure:
    """Histogram of the per-image mIoU differences B − A in percentage points, pooled over seeds
    (``study.per_image_differences``)."""
    if differences is None or differences.empty:
        raise ValueError("per_image_histogram needs a non-empty per_image_differences table")
    name_a = name_a or differences.attrs.get("a", "A")
    name_b = name_b or differences.attrs.get("b", "B")
    fig = go.Figure(go.Histogram(x=PERCENT * differences["diff"].to_numpy(dtype=np.float64), nbinsx=40, marker_color=RUN_COLORS[0], showlegend=False,
                                 hovertemplate="%{x}: %{y} images<extra></extra>"))
    fig.add_vline(x=0.0, line={"dash": "dot", "color": "gray"})
    fig.update_layout(title=f"per-image mIoU difference {name_b} − {name_a}, pooled over seeds",
                      xaxis_title="difference (percentage points)", yaxis_title="images", height=340)
    return fig
