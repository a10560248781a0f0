"""IoU page: per-class IoU of A and B with their sorted difference and class frequency, row-normalised
confusion matrices and their difference, and the images where B helps or hurts most."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app_pages import common
from workbench import figures, iou
from workbench.runs import Run

IOU_COLUMNS = {
    "iou_a": st.column_config.NumberColumn("IoU A", format="%.3f"),
    "iou_b": st.column_config.NumberColumn("IoU B", format="%.3f"),
    "diff": st.column_config.NumberColumn("B − A", format="%+.3f"),
    "gt_frequency": st.column_config.NumberColumn("gt share", format="percent"),
    "iou": st.column_config.NumberColumn("IoU", format="%.3f"),
    "acc": st.column_config.NumberColumn("accuracy", format="%.3f"),
    "miou_a": st.column_config.NumberColumn("mIoU A", format="%.3f"),
    "miou_b": st.column_config.NumberColumn("mIoU B", format="%.3f"),
}


def _confusion_figure(matrix, run: Run, title: str, key: str, zmid: float | None = None) -> None:
    common.show_figure(figures.heatmap(matrix, run.class_names, run.class_names, title, zmid=zmid),
                       key=key, file_stem=key)


def _single_run(label: str, run: Run) -> None:
    st.info("Choose a run B in the sidebar to compare per-class IoU, confusions and per-image mIoU.")
    left, right = st.columns([2, 3])
    with left, common.artifact_guard(label):
        st.subheader(f"{label}: per-class IoU")
        st.dataframe(run.per_class(), hide_index=True, column_config=IOU_COLUMNS)
    with right, common.artifact_guard(label):
        _confusion_figure(iou.row_normalize(run.confusion()), run,
                          f"{label}: confusion (row-normalised, rows = ground truth)", key="confusion-a")


def _image_label(per_image: pd.DataFrame, image_id: str) -> str:
    row = per_image[per_image["image_id"] == image_id].iloc[0]
    return f"{image_id}  (B − A = {row['diff']:+.3f})"


def render() -> None:
    st.title("IoU")
    st.caption(common.NAN_IOU_NOTE)
    selection = common.require_runs()
    labelled = selection.labelled()
    if selection.run_b is None:
        _single_run(*labelled[0])
        return
    (label_a, run_a), (label_b, run_b) = labelled

    st.header("Per-class IoU")
    st.caption(f"A = {label_a}, B = {label_b}. diff = IoU(B) − IoU(A), sorted; gt share = share of the "
               "labelled val pixels that belong to the class.")
    with common.artifact_guard():
        diff = common.cached_call(iou.per_class_iou_diff, [run_a, run_b])
        left, right = st.columns([3, 2])
        with left:
            common.show_figure(figures.iou_diff_figure(diff, label_a, label_b), key="iou-diff",
                               file_stem="per_class_iou_diff")
        with right:
            st.dataframe(diff.drop(columns="class_id"), hide_index=True, column_config=IOU_COLUMNS)

    st.header("Confusion matrices")
    st.caption("Row-normalised: each row (a ground-truth class) shows where its pixels went. "
               "The difference is B − A: positive cells received more of the row's pixels in B.")
    with common.artifact_guard():
        conf_a, conf_b, conf_diff = common.cached_call(iou.confusion_difference, [run_a, run_b])
        columns = st.columns(3)
        with columns[0]:
            _confusion_figure(conf_a, run_a, f"A: {label_a}", key="confusion-a")
        with columns[1]:
            _confusion_figure(conf_b, run_a, f"B: {label_b}", key="confusion-b")
        with columns[2]:
            _confusion_figure(conf_diff, run_a, "B − A", key="confusion-diff", zmid=0.0)

    st.header("Per-image mIoU")
    st.caption("Images sorted by mIoU(B) − mIoU(A): the top ones are where B helps most, the bottom ones where it hurts.")
    with common.artifact_guard():
        per_image = common.cached_call(iou.per_image_diff, [run_a, run_b])
        left, right = st.columns([3, 2])
        with left:
            common.show_figure(figures.per_image_diff_figure(per_image, label_a, label_b), key="per-image-diff",
                               file_stem="per_image_diff")
        with right:
            st.dataframe(per_image.drop(columns="image_index"), hide_index=True, height=360, column_config=IOU_COLUMNS)
        saved = set(common.shared_prediction_ids(selection.runs))
        shown = [image_id for image_id in per_image["image_id"] if image_id in saved]
        if not shown:
            st.info("None of these images has saved predictions in both runs (predictions/index.csv).")
            return
        image_id = st.selectbox("Show the predictions of", shown, key="iou_image",
                                format_func=lambda image_id: _image_label(per_image, image_id),
                                help="Only images whose predictions both runs saved (predictions/) can be shown.")
        common.show_prediction(labelled, image_id, key="iou-prediction")
        common.palette_legend(run_a)


with common.artifact_guard():
    render()
