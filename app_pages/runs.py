"""Runs page: what each run is (config, dataset, model, timings) and how it trained (loss parts and val mIoU,
several runs on one plot)."""

from __future__ import annotations

import streamlit as st

from app_pages import common
from workbench import figures
from workbench.runs import Run


def _number(value: float | int | None, template: str = "{:,}") -> str:
    return "?" if value is None else template.format(value)


def _description(run: Run) -> str:
    """One markdown line of what the run is: status, loss, steps, dataset, model and GPUs (``Run`` accessors)."""
    md, timing, counts, model = common.md, run.timing, run.dataset_counts, run.model_info
    return (
        f"**status** {md(run.status)} · **loss** {common.md_code(run.loss_preset)} · "
        f"**steps** {_number(timing.steps)} ({_number(timing.sec_per_step, '{:.3f}')} s/step) · "
        f"**dataset** {md(run.dataset_name)} ({run.num_classes} classes, {_number(counts.num_train)} "
        f"train / {_number(counts.num_val)} val images) · **model** {md(model.name)} / {md(model.encoder_label)}, "
        f"strides {md(list(model.stage_strides))}, channels {md(list(model.stage_channels))}, "
        f"projector {md(model.projector_dim or 'none')}, {_number(model.num_parameters)} parameters · "
        f"**GPUs** {run.world_size}"
    )


def _describe(label: str, run: Run) -> None:
    st.subheader(common.md(label))
    st.caption(common.md_code(run.path))
    summary = None
    with common.artifact_guard(run.name):
        summary = run.eval_summary()
    timing = run.timing
    columns = st.columns(3)
    columns[0].metric("val mIoU", f"{100 * summary['miou']:.2f} %" if summary else "—",
                      help="Final validation mIoU in percent (eval/summary.json); classes absent from both ground truth "
                           "and prediction are left out of the mean.")
    columns[1].metric("pixel accuracy", f"{100 * summary['pixel_acc']:.2f} %" if summary else "—",
                      help="Share of labelled val pixels predicted correctly.")
    minutes = None if timing.train_seconds is None else timing.train_seconds / 60
    columns[2].metric("train time", f"{_number(minutes, '{:.1f}')} min",
                      help=f"{_number(timing.steps)} steps at {_number(timing.sec_per_step, '{:.3f}')} s/step")
    st.markdown(_description(run))
    with st.expander("Resolved training config"), common.artifact_guard(run.name):
        st.json(run.config, expanded=1)
    with st.expander("run.json"):
        st.json(run.meta, expanded=1)


def render() -> None:
    st.title("Runs")
    st.caption("What was trained, how long it took, and how every part of the loss and the val mIoU evolved.")
    selection = common.require_runs()

    columns = st.columns(len(selection.runs))
    for column, (label, run) in zip(columns, selection.labelled()):
        with column:
            _describe(label, run)

    st.header("Training curves")
    paths = [str(path) for path in selection.table["path"]]
    chosen = st.multiselect(
        "Runs on the curves",
        paths,
        default=[str(run.path) for run in selection.runs],
        format_func=selection.label,
        help="Any runs of the folder, not only A and B.",
    )
    curve_runs = [common.get_run(path) for path in chosen]
    for run in curve_runs:
        if run.kind == "captured":
            st.info(f"Run **{run.name}** was captured from a model with `mscl capture`, not trained: it has no training curves.")
    curve_runs = [run for run in curve_runs if run.kind != "captured"]
    if not curve_runs:
        st.info("Pick at least one trained run.")
        return
    with common.artifact_guard():
        loss_columns = list(dict.fromkeys(column for run in curve_runs for column in run.train_metrics().columns
                                          if column.startswith("loss/")))
        parts = st.multiselect("Loss parts", loss_columns, default=loss_columns,
                               help="loss/ce: cross-entropy; loss/ms/<s>: multi-scale InfoNCE at stage s; "
                                    "loss/cs/<a>-<b>: cross-scale InfoNCE between stages a and b; "
                                    "loss/total = CE + 0.1 * weighted contrastive parts.")
        if parts:
            common.show_figure(figures.training_curves(curve_runs, columns=parts), key="training-curves",
                               file_stem="training_curves")
    with common.artifact_guard():
        st.subheader("Validation")
        common.show_figure(figures.val_curves(curve_runs), key="val-curves", file_stem="val_curves")


with common.artifact_guard():
    render()
