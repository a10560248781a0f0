"""Study page: the runs of a folder grouped into arms x seeds and two arms compared paired by seed — the
effect with its 95 % interval and p-value, per class, per seed and per image (``workbench.study``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app_pages import common
from workbench import study, study_figures
from workbench.runs import list_runs

DEFAULT_BY = "loss_preset"
PREFERRED_A = ("ce",)
PREFERRED_B = ("ms+cs", "ms")
PERCENT = "%.2f"
POINTS = "%+.2f"
# Column headers of the tables; mIoU, accuracy and IoU columns hold percent (study_figures.in_percent).
COLUMNS = {
    "n_pairs": st.column_config.NumberColumn("seeds", format="%d"),
    "mean_a": st.column_config.NumberColumn("mean A (%)", format=PERCENT),
    "mean_b": st.column_config.NumberColumn("mean B (%)", format=PERCENT),
    "diff": st.column_config.NumberColumn("B − A (points)", format=POINTS),
    "ci_low": st.column_config.NumberColumn("95 % CI low (points)", format=POINTS),
    "ci_high": st.column_config.NumberColumn("95 % CI high (points)", format=POINTS),
    "p_value": st.column_config.NumberColumn("p", format="%.3f"),
    "miou": st.column_config.NumberColumn("mIoU (%)", format=PERCENT),
    "pixel_acc": st.column_config.NumberColumn("pixel accuracy (%)", format=PERCENT),
    "mean": st.column_config.NumberColumn("mean (%)", format=PERCENT),
    "std": st.column_config.NumberColumn("std (points)", format=PERCENT),
    "min": st.column_config.NumberColumn("min (%)", format=PERCENT),
    "max": st.column_config.NumberColumn("max (%)", format=PERCENT),
    "miou_a": st.column_config.NumberColumn("mIoU A (%)", format=PERCENT),
    "miou_b": st.column_config.NumberColumn("mIoU B (%)", format=PERCENT),
}


def folder_stamp(folder: str) -> tuple[int, ...]:
    """Changes whenever a run of ``folder`` gains, loses or replaces a file (``common.run_stamp`` of every run)."""
    listed = list_runs(folder)
    return tuple(common.run_stamp(path) for path in listed["path"])


@st.cache_data(show_spinner=False, max_entries=32)
def _table(folder: str, by: str, stamp: tuple[int, ...]) -> pd.DataFrame:
    return study.study_table(folder, by=by)


@st.cache_data(show_spinner=False, max_entries=32)
def _comparison(folder: str, a: str, b: str, by: str, split: str, stamp: tuple[int, ...]) -> pd.DataFrame:
    return study.compare_arms(folder, a, b, by=by, split=split)


@st.cache_data(show_spinner=False, max_entries=32)
def _seed_values(folder: str, by: str, split: str, stamp: tuple[int, ...]) -> pd.DataFrame:
    return study.seed_values(folder, by=by, split=split)


@st.cache_data(show_spinner=False, max_entries=32)
def _per_image_differences(folder: str, a: str, b: str, by: str, split: str, stamp: tuple[int, ...]) -> pd.DataFrame:
    return study.per_image_differences(folder, a, b, by=by, split=split)


def percent_table(frame: pd.DataFrame) -> None:
    """Show a study table (fractions, as ``workbench.study`` returns them) in percent, under :data:`COLUMNS`."""
    st.dataframe(study_figures.in_percent(frame), hide_index=True, column_config=COLUMNS)


def csv_button(frame: pd.DataFrame, file_stem: str, key: str) -> None:
    """A download button for a study table as CSV, in the units the page shows: the percent columns
    (``study_figures.PERCENT_COLUMNS``) times 100 and named ``<column>_pct``."""
    shown = study_figures.in_percent(frame)
    shown = shown.rename(columns={column: f"{column}_pct" for column in study_figures.PERCENT_COLUMNS})
    st.download_button("CSV", data=shown.to_csv(index=False).encode(), file_name=f"{file_stem}.csv", mime="text/csv",
                       key=key, icon=":material/download:", on_click="ignore")


def _default(options: list[str], preferred: tuple[str, ...], avoid: str | None = None) -> str:
    for name in preferred:
        if name in options and name != avoid:
            return name
    return next((name for name in options if name != avoid), options[0])


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _keep_valid(key: str, options: list[str], fallback: str) -> None:
    if st.session_state.get(key) not in options:
        st.session_state[key] = fallback


def _choose_folder() -> str:
    """The study folder: the sidebar's runs folder unless the user typed another one here."""
    sidebar_root = str(common.current_selection().root)
    if st.session_state.get("study_folder_origin") != sidebar_root:
        st.session_state["study_folder_origin"] = sidebar_root
        st.session_state["study_folder"] = sidebar_root
    return st.text_input("Study folder", key="study_folder",
                         help="A folder holding the runs of the study (one run per arm and seed), e.g. "
                              "results/camvid-lite0. Defaults to the sidebar's runs folder.")


def _file_stem(a: str, b: str, split: str, what: str) -> str:
    safe = "".join(char if char.isalnum() or char in "+-." else "_" for char in f"{b}_vs_{a}_{split}")
    return f"study_{what}_{safe}"


def _choose_arms() -> tuple[str, str, str, str, str, tuple[int, ...]] | None:
    """Folder, grouping key, split and the two arms the user compares (with the folder's stamp); None, with a
    message saying why, when the folder cannot give a comparison."""
    folder = _choose_folder()
    by = st.text_input("Arms differ by", value=DEFAULT_BY, key="study_by",
                       help="`loss_preset` (run.json) or any dotted config.yaml key, e.g. `loss.temperature`; "
                            "runs of an arm differ only by `seed`.")
    if not Path(folder).expanduser().is_dir():
        st.warning(f"`{folder}` is not a folder.")
        return None
    folder = str(Path(folder).expanduser().resolve())
    stamp = folder_stamp(folder)
    if not stamp:
        st.info(f"No runs in `{folder}`. A study needs runs of two arms with the same seeds, e.g. "
                "`python scripts/camvid_study.py --out runs/study --seeds 0 1 2`.")
        return None
    table = _table(folder, by, stamp)
    splits = sorted(set(table["split"]) - {""}, key=lambda split: (split != "val", split))
    if not splits:
        st.info(f"No run in `{folder}` has an evaluation yet (eval/ or eval-<split>-<checkpoint>/).")
        return None
    columns = st.columns(3)
    _keep_valid("study_split", splits, splits[0])
    split = columns[0].selectbox("Split", splits, key="study_split",
                                 help="Evaluations found in the runs: eval/ and eval-<split>-<checkpoint>/ "
                                      "(`mscl eval RUN --split test --save`).")
    arms = sorted(set(table.loc[table["split"] == split, "arm"]))
    if len(arms) < 2:
        st.info(f"Only one arm ({', '.join(arms)}) has a {split} evaluation in `{folder}` when grouping by `{by}`; "
                "a comparison needs two.")
        return None
    _keep_valid("study_arm_a", arms, _default(arms, PREFERRED_A))
    arm_a = columns[1].selectbox("Arm A (baseline)", arms, key="study_arm_a")
    _keep_valid("study_arm_b", arms, _default(arms, PREFERRED_B, avoid=arm_a))
    arm_b = columns[2].selectbox("Arm B", arms, key="study_arm_b")
    return folder, by, split, arm_a, arm_b, stamp


def _effect(folder: str, by: str, split: str, arm_a: str, arm_b: str, stamp: tuple[int, ...]) -> None:
    """The effect sentence, the forest plot and the table of ``study.compare_arms`` (in percent)."""
    st.header("Effect")
    with common.artifact_guard():
        comparison = _comparison(folder, arm_a, arm_b, by, split, stamp)
        st.markdown(f"**{study.effect_sentence(comparison)}**")
        for note in comparison.attrs["unpaired"]:
            st.warning(f"Not paired: {note}.", icon=":material/link_off:")
        for note in comparison.attrs["excluded"]:
            st.warning(f"Left out: {note}.", icon=":material/folder_off:")
        left, right = st.columns([3, 2])
        with left:
            common.show_figure(study_figures.forest_figure(comparison), key="study-forest",
                               file_stem=_file_stem(arm_a, arm_b, split, "forest"))
        with right:
            percent_table(comparison)
            csv_button(comparison, _file_stem(arm_a, arm_b, split, "effects"), key="study-effects-csv")
    common.explain({
        "diff": "mean over the paired seeds of B − A (same seed = same data order and augmentation), in percentage points.",
        "95 % CI": "diff ± t(0.975, n − 1) · sd / √n; no interval from a single seed.",
        "p": "two-sided paired t-test of a zero mean difference; none when every seed gives the same difference.",
        "class rows": f"per-class IoU; seeds where a class has no IoU (NaN) are left out of its pairs. {common.NAN_IOU_NOTE}",
    })


def _per_seed(folder: str, by: str, split: str, stamp: tuple[int, ...]) -> None:
    """One line per arm through its seeds, and each arm's seed-to-seed spread (in percent)."""
    st.header("Per seed")
    st.caption("Every arm with a run on this split; lines in the same order on every seed mean the effect is larger "
               "than the seed-to-seed spread.")
    with common.artifact_guard():
        values = _seed_values(folder, by, split, stamp)
        metric = st.radio("Metric", ["miou", "pixel_acc"], horizontal=True, key="study_seed_metric",
                          format_func=lambda name: study_figures.SEED_METRICS[name])
        left, right = st.columns([3, 2])
        with left:
            common.show_figure(study_figures.per_seed_figure(values, metric), key="study-seeds",
                               file_stem=f"study_per_seed_{metric}_{split}")
        with right:
            percent_table(study.seed_spread(values))
            csv_button(values.drop(columns="path"), f"study_per_seed_{split}", key="study-seeds-csv")


def _per_image(folder: str, by: str, split: str, arm_a: str, arm_b: str, stamp: tuple[int, ...]) -> None:
    """Per-image mIoU differences B − A pooled over the paired seeds: counts, histogram and table (in percent)."""
    st.header("Per image")
    with common.artifact_guard():
        differences = _per_image_differences(folder, arm_a, arm_b, by, split, stamp)
        counts = study.per_image_summary(differences)
        st.caption(f"{arm_b} is better on {counts['better']} and worse on {counts['worse']} of {counts['images']} "
                   f"image evaluations ({_count(len(differences.attrs['seeds']), 'seed')} pooled; {counts['tied']} tied); "
                   f"median difference {study_figures.PERCENT * counts['median_diff']:+.2f} points.")
        left, right = st.columns([3, 2])
        with left:
            common.show_figure(study_figures.per_image_histogram(differences), key="study-images",
                               file_stem=_file_stem(arm_a, arm_b, split, "per_image"))
        with right:
            st.dataframe(study_figures.in_percent(differences), hide_index=True, height=360, column_config=COLUMNS)
            csv_button(differences, _file_stem(arm_a, arm_b, split, "per_image"), key="study-images-csv")


def render() -> None:
    st.title("Study")
    st.caption("Two arms of a study (runs that differ in one setting, e.g. the loss preset) compared **paired by "
               "seed**: for each seed the difference B − A, then its mean over seeds with a 95 % Student-t interval "
               "(n − 1 degrees of freedom) and a paired t-test. mIoU, pixel accuracy and IoU are in percent, their "
               "differences in percentage points (points).")
    chosen = _choose_arms()
    if chosen is None:
        return
    folder, by, split, arm_a, arm_b, stamp = chosen
    _effect(folder, by, split, arm_a, arm_b, stamp)
    _per_seed(folder, by, split, stamp)
    _per_image(folder, by, split, arm_a, arm_b, stamp)


with common.artifact_guard():
    render()
