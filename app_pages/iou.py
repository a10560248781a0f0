"""IoU page: per-class IoU of A and B with their sorted difference and class frequency, row-normalised
confusion matrices and their difference, and the images where B helps or hurts most."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app_pages import common
from workbench import figures, iou
from workbench import selection as run_selection
from workbench.runs import Run

# Fractions the tables show in percent (docs/workbench.md, "Numbers"); diff in percentage points.
PERCENT_COLUMNS = ("iou_a", "iou_b", "diff", "gt_frequency", "iou", "acc", "miou_a", "miou_b")
IOU_COLUMNS = {
    "iou_a": st.column_config.NumberColumn("IoU A (%)", format="%.1f"),
    "iou_b": st.column_config.NumberColumn("IoU B (%)", format="%.1f"),
    "diff": st.column_config.NumberColumn("B − A (points)", format="%+.1f"),
    "gt_frequency": st.column_config.NumberColumn("gt share (%)", format="%.2f"),
    "iou": st.column_config.NumberColumn("IoU (%)", format="%.1f"),
    "acc": st.column_config.NumberColumn("accuracy (%)", format="%.1f"),
    "miou_a": st.column_config.NumberColumn("mIoU A (%)", format="%.1f"),
    "miou_b": st.column_config.NumberColumn("mIoU B (%)", format="%.1f"),
    "saved": st.column_config.CheckboxColumn("predictions saved", help="both runs saved this image's predictions"),
}
# Pixels a confusion matrix in one of three columns has for its cells (figures.heatmap writes the values that fit).
CONFUSION_PLOT_WIDTH = 320


def _in_percent(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the fractions of :data:`PERCENT_COLUMNS` times 100."""
    columns = [column for column in PERCENT_COLUMNS if column in table.columns]
    return table.assign(**{column: 100 * table[column] for column in columns})


def _confusion_figure(matrix, run: Run, title: str, key: str, difference: bool = False) -> None:
    common.show_figure(figures.confusion_figure(matrix, run.class_names, title, difference=difference,
                                                plot_width=CONFUSION_PLOT_WIDTH), key=key, file_stem=key)


def _single_run(label: str, run: Run) -> None:
    st.info("Choose a run B in the sidebar to compare per-class IoU, confusions and per-image mIoU.")
    left, right = st.columns([2, 3])
    with left, common.artifact_guard(label):
        st.subheader(f"{common.md(label)}: per-class IoU")
        st.dataframe(_in_percent(run.per_class()), hide_index=True, column_config=IOU_COLUMNS)
    with right, common.artifact_guard(label):
        common.show_figure(figures.confusion_figure(iou.row_normalize(run.confusion()), run.class_names,
                                                    f"{label}: confusion (% of each ground-truth row)"),
                           key="confusion-a", file_stem="confusion-a")


def _image_label(per_image: pd.DataFrame, image_id: str) -> str:
    row = per_image[per_image["image_id"] == image_id].iloc[0]
    return f"{image_id}  (B − A = {100 * row['diff']:+.1f} points)"


def openable_note(openable: int, ranked: int) -> str:
    """How many of the ranked images can be opened (their predictions are saved by both runs), and how to keep all."""
    if openable == ranked:
        return f"All {ranked} ranked images have predictions saved by both runs: pick one to see them."
    return (f"{openable} of the {ranked} ranked images can be opened: only those have predictions saved by both runs "
            "(predictions/). To keep every image's, set `export.num_prediction_images: null` (the default for new runs) "
            "in the run's config.yaml and run `mscl export RUN`.")


def _open_predictions(per_image: pd.DataFrame, selection: common.RunSelection, saved: set[str]) -> None:
    """A picker over the ranked images whose predictions both runs saved (``saved``), and those predictions."""
    openable = [image_id for image_id in per_image["image_id"] if image_id in saved]
    if not openable:
        st.info(f"None of the {len(per_image)} ranked images has predictions saved by both runs (predictions/index.csv).")
        return
    st.caption(openable_note(len(openable), len(per_image)))
    image_id = st.selectbox("Show the predictions of", openable, key="iou_image",
                            format_func=lambda image_id: _image_label(per_image, image_id),
                            help="Only images whose predictions both runs saved (predictions/) can be shown.")
    labelled = selection.labelled()
    common.show_prediction(labelled, image_id, key="iou-prediction")
    common.palette_legend(labelled[0][1])


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
    st.caption(f"A = {common.md(label_a)}, B = {common.md(label_b)}. IoU in percent; B − A = IoU(B) − IoU(A) in percentage "
               "points, sorted; gt share = share of the labelled val pixels that belong to the class.")
    with common.artifact_guard():
        diff = common.cached_call(iou.per_class_iou_diff, [run_a, run_b])
        left, right = st.columns([3, 2])
        with left:
            common.show_figure(figures.iou_diff_figure(diff, label_a, label_b), key="iou-diff",
                               file_stem="per_class_iou_diff")
        with right:
            st.dataframe(_in_percent(diff.drop(columns="class_id")), hide_index=True, column_config=IOU_COLUMNS)

    st.header("Confusion matrices")
    st.caption("Row-normalised: each row (a ground-truth class) shows where its pixels went, in percent of the row; "
               "hover a cell for its value. The difference is B − A in percentage points: positive cells received more "
               "of the row's pixels in B.")
    with common.artifact_guard():
        conf_a, conf_b, conf_diff = common.cached_call(iou.confusion_difference, [run_a, run_b])
        columns = st.columns(3)
        with columns[0]:
            _confusion_figure(conf_a, run_a, f"A: {label_a}", key="confusion-a")
        with columns[1]:
            _confusion_figure(conf_b, run_a, f"B: {label_b}", key="confusion-b")
        with columns[2]:
            _confusion_figure(conf_diff, run_a, "B − A", key="confusion-diff", difference=True)

    st.header("Per-image mIoU")
    st.caption("Images sorted by mIoU(B) − mIoU(A): the top ones are where B helps most, the bottom ones where it hurts.")
    with common.artifact_guard():
        per_image = common.cached_call(iou.per_image_diff, [run_a, run_b])
        left, right = st.columns([3, 2])
        with left:
            common.show_figure(figures.per_image_diff_figure(per_image, label_a, label_b), key="per-image-diff",
                               file_stem="per_image_diff")
        with right:
            saved = set(run_selection.shared_prediction_ids(selection.runs))
            shown = _in_percent(per_image.drop(columns="image_index")).assign(saved=per_image["image_id"].isin(saved))
            st.dataframe(shown, hide_index=True, height=360, column_config=IOU_COLUMNS)
        _open_predictions(per_image, selection, saved)


with common.artifact_guard():
    render()
