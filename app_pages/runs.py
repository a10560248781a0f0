"""Runs page: what each run is (config, dataset, model, timings) and how it trained (loss parts and val mIoU,
several runs on one plot)."""

from __future__ import annotations

import streamlit as st

from app_pages import common
from workbench import figures
from workbench.runs import Run


def _describe(label: str, run: Run) -> None:
    meta = run.meta
    dataset, model, timing = meta.get("dataset", {}), meta.get("model", {}), meta.get("timing", {})
    st.subheader(label)
    st.caption(f"`{run.path}`")
    summary = None
    with common.artifact_guard(run.name):
        summary = run.eval_summary()
    columns = st.columns(3)
    columns[0].metric("val mIoU", f"{summary['miou']:.4f}" if summary else "—",
                      help="Final validation mIoU (eval/summary.json); classes absent from both ground truth and "
                           "prediction are left out of the mean.")
    columns[1].metric("pixel accuracy", f"{summary['pixel_acc']:.4f}" if summary else "—",
                      help="Share of labelled val pixels predicted correctly.")
    columns[2].metric("train time", f"{timing.get('train_seconds', 0.0) / 60:.1f} min",
                      help=f"{timing.get('steps', 0)} steps at {timing.get('sec_per_step', 0.0):.3f} s/step")
    st.markdown(
        f"**status** {meta.get('status', '?')} · **loss** `{meta.get('loss_preset', '?')}` · "
        f"**steps** {timing.get('steps', 0)} ({timing.get('sec_per_step', 0.0):.3f} s/step) · "
        f"**dataset** {dataset.get('name', '?')} ({run.num_classes} classes, {dataset.get('num_train', '?')} train / "
        f"{dataset.get('num_val', '?')} val images) · **model** {model.get('name', '?')} / {model.get('encoder', '?')}, "
        f"strides {model.get('stage_strides', '?')}, channels {model.get('stage_channels', '?')}, "
        f"projector {model.get('projector_dim') or 'none'}, "
        f"{model.get('num_parameters', 0):,} parameters · **GPUs** {meta.get('world_size', 1)}"
    )
    with st.expander("Resolved training config"), common.artifact_guard(run.name):
        st.json(run.config, expanded=1)
    with st.expander("run.json"):
        st.json(meta, expanded=1)


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
        format_func=lambda path: common.run_label(selection.table, path),
        help="Any runs of the folder, not only A and B.",
    )
    curve_runs = [common.get_run(path) for path in chosen]
    if not curve_runs:
        st.info("Pick at least one run.")
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
