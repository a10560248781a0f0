"""Training dynamics page: how the per-stage feature spaces of run A and B evolved during training (from the
embedding snapshots ``mscl train`` keeps at every validation), and an export of a run's last or best checkpoint in a
child process for runs without exported embeddings.

The timeline and step maps are cached on the snapshot index (``timeline.snapshot_stamp``), not on the whole run
directory, so a running export (which changes the directory) does not recompute them at every progress update."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import streamlit as st

from app_pages import common
from workbench import selection as run_selection
from workbench import stage_separability, timeline
from workbench.export_job import ExportJob, available_checkpoints
from workbench.runs import EMBEDDING_KINDS, Run

JOBS_KEY = "dynamics-export-jobs"
POLL_SECONDS = 0.5
METHOD_LABELS = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
COLOUR_LABELS = {"label": "class", "correct": "correct / wrong"}
RESULT_METRICS = {"silhouette": "silhouette", "knn_accuracy": "kNN acc", "alignment": "alignment",
                  "uniformity": "uniformity"}


@st.cache_data(show_spinner=False, max_entries=64)
def _timeline(path: str, stamp: int) -> pd.DataFrame:
    return timeline.timeline(common.get_run(path))


@st.cache_data(show_spinner=False, max_entries=64)
def _step_maps(path: str, stamp: int, stage: int, kind: str, method: str) -> dict[int, np.ndarray]:
    return timeline.step_maps(common.get_run(path), stage, kind, method)


def _curves(usable: list[tuple[str, Run]]) -> tuple[str, list[int]]:
    """Separability per stage over training for every run, val mIoU on the second axis; returns the kind and stages."""
    kinds = [kind for kind in EMBEDDING_KINDS if any(kind in run.snapshots().kinds for _, run in usable)]
    everywhere = [kind for kind in kinds if all(kind in run.snapshots().kinds for _, run in usable)]
    stages = usable[0][1].snapshots().stages
    controls = st.columns([2, 3, 5])
    kind = controls[0].selectbox("Embeddings", kinds, index=kinds.index(everywhere[-1] if everywhere else kinds[0]),
                                 key="dynamics-kind", help="backbone: the encoder's features; projected: the output of "
                                                          "the stage's projector, where the contrastive loss acts.")
    metric = controls[1].selectbox("Metric", timeline.METRICS, format_func=timeline.METRIC_LABELS.get, key="dynamics-metric")
    shown = controls[2].pills("Stages (0 = finest)", stages, selection_mode="multi", default=stages,
                              key="dynamics-stages", format_func=str)
    for label, run in usable:
        if kind not in run.snapshots().kinds:
            st.info(f"**{label}** has no `{kind}` snapshots (no projectors); pick `backbone` to compare it.")
    tables = {}
    for label, run in usable:
        with st.spinner(f"Measuring separability of every snapshot of {label}…"):
            tables[label] = _timeline(str(run.path), timeline.snapshot_stamp(run))
    with common.artifact_guard():
        fig = timeline.timeline_figure(tables, metric, kind, shown or stages)
        common.show_figure(fig, key="dynamics-curves", file_stem=f"dynamics_{metric}_{kind}")
    common.explain({timeline.METRIC_LABELS[name]: text for name, text in timeline.METRIC_HELP.items()})
    return kind, stages


def _maps(usable: list[tuple[str, Run]], kind: str, stages: list[int]) -> None:
    """The aligned 2-D map of one stage, moved through the snapshots with a step slider."""
    st.subheader("Feature space through training")
    st.caption("The same pixels at every step; each step's map is rotated onto the previous one, so a point moves as "
               "its embedding changes relative to the others. Axes are fixed over all steps.")
    usable = [(label, run) for label, run in usable if kind in run.snapshots().kinds]
    if not usable:
        return
    steps = sorted(set().union(*(run.snapshots().steps for _, run in usable)))
    controls = st.columns([2, 2, 3, 6])
    stage = controls[0].selectbox("Stage", stages, key="dynamics-map-stage")
    method = controls[1].selectbox("Map", list(METHOD_LABELS), format_func=METHOD_LABELS.get, key="dynamics-map-method",
                                   help="PCA is immediate; t-SNE and UMAP start each step from the previous map and "
                                        "take seconds per step.")
    color_by = controls[2].radio("Colour by", list(COLOUR_LABELS), format_func=COLOUR_LABELS.get,
                                 key="dynamics-map-colour", horizontal=True)
    step = steps[0]
    if len(steps) > 1:
        step = controls[3].select_slider("Step", steps, value=steps[-1], key="dynamics-step")
    items = []
    for label, run in usable:
        with st.spinner(f"Computing the {METHOD_LABELS[method]} maps of {label} (stage {stage}, every snapshot)…"):
            items.append((label, run, _step_maps(str(run.path), timeline.snapshot_stamp(run), stage, kind, method)))
    fig = timeline.step_map_figure(items, step, stage, kind, color_by=color_by)
    common.show_figure(fig, key="dynamics-map", file_stem=f"dynamics_map_s{stage}_{kind}_{method}_step{step}")


def _export_result(label: str, run: Run) -> None:
    """What the run's current export holds: its checkpoint, val mIoU and the separability of its embeddings."""
    meta = run.embedding_meta()
    summary = run.eval_summary()
    st.markdown(f"**{label}** — `embeddings/` holds checkpoint `{meta['checkpoint']}` · val mIoU "
                f"{100 * float(summary['miou']):.2f}")
    kind = run_selection.default_embedding_kind([run])
    table = common.cached_call(stage_separability.separability_table, [run], kinds=(kind,))
    by_stage = table.set_index("stage")[list(RESULT_METRICS)].rename(columns=RESULT_METRICS).T
    by_stage.columns = [f"stage {stage}" for stage in by_stage.columns]
    st.dataframe(by_stage, column_config={column: st.column_config.NumberColumn(format="%.3f")
                                          for column in by_stage.columns})
    st.caption(f"Separability of the exported {kind} embeddings ({int(table['n_pixels'].iloc[0])} labelled pixels); "
               "every other page shows this export.")


def _job_status(label: str, job: ExportJob, number: int) -> bool:
    """Progress of a running export (True: still running, poll again) or its outcome."""
    progress = job.progress()
    if progress.state == "running":
        text = f"Exporting **{label}** from checkpoint `{job.checkpoint}`: {progress.phase}"
        st.progress(progress.fraction or 0.0, text=text)
        if st.button("Cancel", key=f"dynamics-cancel-{number}", icon=":material/stop:"):
            job.cancel()
            st.warning(f"Export of **{label}** cancelled; the run keeps the files it had.")
            return False
        return True
    if progress.state == "finished":
        summary = job.summary() or {}
        miou = f" · val mIoU {100 * float(summary['miou']):.2f}" if "miou" in summary else ""
        st.success(f"Exported **{label}** from checkpoint `{job.checkpoint}`{miou}.")
    elif progress.state == "cancelled":
        st.warning(f"Export of **{label}** cancelled; the run keeps the files it had.")
    else:
        st.error(f"Export of **{label}** failed: {job.error()}")
    return False


def _export(label: str, run: Run, number: int) -> bool:
    """Checkpoint picker, export button and progress for one run; True while its export runs."""
    jobs: dict[str, ExportJob] = st.session_state.setdefault(JOBS_KEY, {})
    key = str(run.path)
    if key in jobs:
        if _job_status(label, jobs[key], number):
            return True
        del jobs[key]
        run = common.get_run(key)
    checkpoints = available_checkpoints(run.path)
    if not checkpoints:
        st.info(f"**{label}** has no checkpoints to export from.")
        return False
    current = run.embedding_meta()["checkpoint"] if run.has("embeddings/meta.json") else None
    controls = st.columns([3, 4])
    choice = controls[0].radio(f"Checkpoint of {label}", checkpoints, horizontal=True, key=f"dynamics-checkpoint-{number}",
                               index=checkpoints.index(current) if current in checkpoints else 0,
                               help="last: the weights at the end of training; best: those of the best validation mIoU.")
    if choice == current:
        _export_result(label, run)
        return False
    note = "no exported embeddings" if current is None else f"embeddings/ holds checkpoint `{current}`"
    controls[1].markdown(f"**{label}** has {note}. Exporting `{choice}` rewrites its eval/, predictions/ and "
                         "embeddings/ (`mscl export`, in a separate process).")
    if controls[1].button(f"Export checkpoint `{choice}`", key=f"dynamics-export-{number}", icon=":material/play_arrow:"):
        jobs[key] = ExportJob(run.path, choice).start()
        st.progress(0.0, text=f"Exporting **{label}** from checkpoint `{choice}`: starting")
        return True
    return False


def render() -> None:
    st.title("Training dynamics")
    st.caption("When during training do the stages separate, and does the cross-scale term pull the coarse stage along "
               "early or late? At every validation the run kept the embeddings of the same validation pixels; the "
               "curves show their separability per stage, the map shows them move.")
    selection = common.require_runs()
    usable = common.runs_that_open(selection, Run.snapshots)
    if usable:
        with common.artifact_guard():
            kind, stages = _curves(usable)
            _maps(usable, kind, stages)
    st.subheader("Embeddings from a checkpoint")
    polling = False
    for number, (label, run) in enumerate(selection.labelled()):
        with common.artifact_guard(label):
            polling = _export(label, run, number) or polling
    if polling:
        time.sleep(POLL_SECONDS)
        st.rerun()


with common.artifact_guard():
    render()
