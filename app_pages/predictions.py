"""Predictions page: image, ground truth, each run's prediction and where the runs differ, in the
dataset's palette."""

from __future__ import annotations

import streamlit as st

from app_pages import common
from workbench import selection as run_selection
from workbench.runs import Run


def _image_scores(labelled: list[tuple[str, Run]], image_id: str) -> None:
    columns = st.columns(len(labelled) + 2)
    for column, (label, run) in zip(columns, labelled):
        with column, common.artifact_guard(label):
            per_image = run.per_image()
            row = per_image[per_image["image_id"] == image_id]
            value = f"{100 * row['miou'].iloc[0]:.1f} %" if not row.empty else "—"
            column.metric(f"mIoU of this image · {common.md(label)}", value,
                          help="From eval/per_image.csv; classes absent from both ground truth and prediction "
                               "are left out of the image's mean.")


def render() -> None:
    st.title("Predictions")
    st.caption("The fixed prediction images saved with each run: ground truth, each run's prediction and the "
               "pixels where the runs disagree, in the dataset's palette (ignore pixels black).")
    selection = common.require_runs()
    labelled = selection.labelled()
    with common.artifact_guard():
        image_ids = run_selection.shared_prediction_ids(selection.runs)
        if not image_ids:
            st.info("The selected runs have no prediction image in common (predictions/index.csv).")
            return
        image_id = st.selectbox("Image", image_ids, key="prediction-image")
        _image_scores(labelled, image_id)
        common.show_prediction(labelled, image_id, key="predictions")
        common.palette_legend(selection.run_a)


with common.artifact_guard():
    render()
