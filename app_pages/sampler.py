"""Sampler page: what the class-balanced sampler fed the contrastive loss (method.md §1): sampled vs
labelled class histograms per stage, views and groups over training, how often the caps fired."""

from __future__ import annotations

import streamlit as st

from app_pages import common
from workbench import figures, sampler_stats
from workbench.runs import Run

EXPLANATIONS = {
    "sampled vs labelled": "share of the sampled anchors per class next to its share of labelled pixels at the stage; "
                           "a balanced sampler flattens the labelled distribution.",
    "groups": "(image, class) pairs kept as anchor groups at a step.",
    "views": "pixels taken per group: min(smallest kept class count, max_views_per_class), shrunk so that "
             "views × groups ≤ max_features_total.",
    "views cap": "share of logged steps where max_views_per_class limited the views.",
    "total cap": "share of logged steps where max_features_total shrank the views.",
    "filtered": "share of logged steps where min_views_per_class dropped at least one (image, class) pair; "
                "filt./step and filt. total count the dropped pairs.",
}

RATE_COLUMNS = {
    "steps": st.column_config.NumberColumn("steps", width="small"),
    "cap_max_views_rate": st.column_config.NumberColumn("views cap", format="percent", width="small"),
    "cap_total_rate": st.column_config.NumberColumn("total cap", format="percent", width="small"),
    "filtered_rate": st.column_config.NumberColumn("filtered", format="percent", width="small"),
    "filtered_groups_mean": st.column_config.NumberColumn("filt./step", format="%.2f", width="small"),
    "filtered_groups_total": st.column_config.NumberColumn("filt. total", format="%d", width="small"),
}


def _empty_sampler_table(run: Run) -> str | None:
    """The first sampler table of ``run`` that has no rows (a run that has not logged a step yet), else None."""
    if run.sampler_steps().empty:
        return "sampler/steps.parquet"
    if run.sampler_class_counts().empty:
        return "sampler/class_counts.parquet"
    return None


def _has_sampler_rows(label: str, run: Run) -> bool:
    """Whether ``run`` has sampler rows to draw; otherwise says why (full width, so the runs that have them get
    the page) and returns False."""
    with common.artifact_guard(label):
        empty = _empty_sampler_table(run)
        if empty is None:
            return True
        st.info(f"Run **{common.md(label)}**: {common.md_code(empty)} has no rows yet; the sampler adds rows at "
                "every logged training step (`train.log_every`).", icon=":material/hourglass_empty:")
    return False


def _run_section(label: str, run: Run, key: str) -> None:
    st.subheader(common.md(label))
    with common.artifact_guard(label):
        logged_steps = sorted(int(step) for step in run.sampler_steps()["step"].unique())
        stage = st.selectbox("Stage", run.stages, key=f"sampler-stage-{key}",
                             format_func=lambda stage: f"stage {stage} (stride {run.stage_strides[stage]})")
        first, last = logged_steps[0], logged_steps[-1]
        low, high = (first, last) if last == first else st.slider(
            "Training steps", first, last, (first, last), key=f"sampler-steps-{key}")
        chosen_steps = tuple(step for step in logged_steps if low <= step <= high)
        histogram = common.cached_call(sampler_stats.sampler_histogram, [run], stage, chosen_steps)
        common.show_figure(figures.sampler_histogram_figure(histogram), key=f"sampler-histogram-{key}",
                           file_stem=f"sampler_histogram_{run.name}_stage{stage}")
        per_class = common.cached_call(sampler_stats.class_timeline, [run], stage)
        common.show_figure(figures.class_timeline_figure(per_class), key=f"sampler-classes-{key}",
                           file_stem=f"sampler_classes_{run.name}_stage{stage}")
        timeline = common.cached_call(sampler_stats.sampler_timeline, [run])
        common.show_figure(figures.sampler_timeline_figure(timeline, run.stage_strides), key=f"sampler-timeline-{key}",
                           file_stem=f"sampler_timeline_{run.name}")
        st.markdown("**How often the caps and the filter fired** (per stage, over logged steps)")
        st.dataframe(common.cached_call(sampler_stats.cap_rates, [run]), hide_index=True, column_config=RATE_COLUMNS)


def render() -> None:
    st.title("Sampler")
    st.caption("What the class-balanced sampler actually fed the contrastive loss, per stage and over training.")
    selection = common.require_runs()
    with st.expander("What the numbers mean"):
        common.explain(EXPLANATIONS)
    shown = [(label, run, key) for (label, run), key in zip(selection.labelled(), ("a", "b"))
             if _has_sampler_rows(label, run)]
    for column, (label, run, key) in zip(st.columns(len(shown)) if shown else [], shown):
        with column:
            _run_section(label, run, key)


with common.artifact_guard():
    render()
