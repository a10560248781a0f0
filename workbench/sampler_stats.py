"""What the class-balanced sampler fed the contrastive loss (`docs/workbench.md` view 4; `docs/method.md` §1)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from workbench.runs import Run

__all__ = ["sampler_histogram", "sampler_timeline", "class_timeline", "cap_rates"]


def _stage_rows(df: pd.DataFrame, stage: int, artifact: str) -> pd.DataFrame:
    rows = df[df["stage"] == stage]
    if rows.empty:
        raise ValueError(f"{artifact} has no rows for stage {stage} (stages: {sorted(df['stage'].unique())})")
    return rows


def sampler_histogram(run: Run, stage: int, steps: Sequence[int] | None = None) -> pd.DataFrame:
    """Per class at ``stage``, summed over logged steps (all, or ``steps``): class_id, class, labelled,
    sampled, labelled_fraction, sampled_fraction (fractions of the stage totals; 0 when a total is 0)."""
    counts = _stage_rows(run.sampler_class_counts(), stage, "sampler/class_counts.parquet")
    if steps is not None:
        counts = counts[counts["step"].isin(list(steps))]
        if counts.empty:
            raise ValueError(f"sampler/class_counts.parquet has no rows for stage {stage} at steps {list(steps)}")
    totals = counts.groupby("class_id")[["labelled", "sampled"]].sum()
    totals = totals.reindex(range(run.num_classes), fill_value=0)
    df = pd.DataFrame({"class_id": np.arange(run.num_classes), "class": run.class_names,
                       "labelled": totals["labelled"].to_numpy(), "sampled": totals["sampled"].to_numpy()})
    for column in ("labelled", "sampled"):
        total = df[column].sum()
        df[f"{column}_fraction"] = df[column] / total if total > 0 else 0.0
    return df


def sampler_timeline(run: Run) -> pd.DataFrame:
    """step, stage, views (per image-class group), groups, n_sampled, filtered_groups; sorted by step, stage."""
    steps = run.sampler_steps()
    columns = ["step", "stage", "views", "groups", "n_sampled", "filtered_groups"]
    return steps[columns].sort_values(["step", "stage"], kind="stable").reset_index(drop=True)


def class_timeline(run: Run, stage: int) -> pd.DataFrame:
    """Sampled views per class per logged step at ``stage``: step, class_id, class, sampled, labelled."""
    counts = _stage_rows(run.sampler_class_counts(), stage, "sampler/class_counts.parquet")
    names = dict(enumerate(run.class_names))
    df = counts[["step", "class_id", "sampled", "labelled"]].sort_values(["step", "class_id"], kind="stable")
    df.insert(2, "class", df["class_id"].map(names))
    return df.reset_index(drop=True)


def cap_rates(run: Run) -> pd.DataFrame:
    """Per stage over logged steps: steps, cap_max_views_rate and cap_total_rate (fraction of steps where
    ``max_views_per_class`` / ``max_features_total`` limited the views), filtered_rate (fraction of steps
    where ``min_views_per_class`` dropped at least one group), filtered_groups_mean, filtered_groups_total."""
    steps = run.sampler_steps()
    grouped = steps.groupby("stage")
    df = pd.DataFrame({
        "steps": grouped["step"].count(),
        "cap_max_views_rate": grouped["cap_max_views"].mean(),
        "cap_total_rate": grouped["cap_total"].mean(),
        "filtered_rate": grouped["filtered_groups"].apply(lambda s: float((s > 0).mean())),
        "filtered_groups_mean": grouped["filtered_groups"].mean(),
        "filtered_groups_total": grouped["filtered_groups"].sum(),
    })
    return df.reset_index()
