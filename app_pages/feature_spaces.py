"""Feature spaces page: 2-D maps (UMAP, PCA, t-SNE) of the per-stage pixel embeddings of run A and B,
the same pixels in every panel, next to the separability numbers of those embeddings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app_pages import common
from workbench import feature_maps, figures, stage_separability
from workbench import selection as run_selection
from workbench.projection_methods import REFINED_PARAMS
from workbench.runs import Run

MIN_SHARED_PIXELS = 100
PANEL_HEIGHT = 270
METHOD_LABELS = {"umap": "UMAP", "pca": "PCA", "tsne": "t-SNE"}
COLOUR_LABELS = {"label": "class", "correct": "correct / wrong"}
CANCELLED_KEY = "space-cancelled"

EXPLANATIONS = {
    "silhouette": "cosine silhouette of the ground-truth classes (−1…1); higher = tighter, better separated classes.",
    "kNN acc": "weighted kNN accuracy (k=20, τ=0.07), neighbours taken from other images only.",
    "alignment": "E‖z_x − z_y‖² over same-class pairs of unit embeddings; lower = more compact classes.",
    "uniformity": "log E exp(−2‖z_x − z_y‖²) over all pairs; lower = embeddings spread more evenly on the sphere.",
    "intra / inter cos": "mean cosine similarity within a class / between classes; a good space has a wide gap.",
    "trustworthiness": "how well the 2-D map keeps each point's 10 nearest input-space neighbours (1 = perfectly).",
}

METRIC_NAMES = {
    "silhouette": "silhouette",
    "knn_accuracy": "kNN acc",
    "alignment": "alignment",
    "uniformity": "uniformity",
    "intra_cosine": "intra cos",
    "inter_cosine": "inter cos",
    "trustworthiness": "trustworthiness",
}


def _metrics_by_stage(table: pd.DataFrame) -> pd.DataFrame:
    """The separability table turned to one row per metric and one column per stage (for reading depth trends)."""
    by_stage = table.set_index("stage")[[column for column in METRIC_NAMES if column in table.columns]]
    by_stage = by_stage.rename(columns=METRIC_NAMES).T
    by_stage.columns = [f"stage {stage}" for stage in by_stage.columns]
    return by_stage


def _pixel_rows(usable: list[tuple[str, Run]]) -> list[np.ndarray]:
    """Embedding rows per run: the same pixels in every run when their exports sampled the same pixels
    (then also the rows the projection cache holds), else each run's own, or on request the shared ones."""
    runs = [run for _, run in usable]
    own = [common.cached_call(feature_maps.own_pixel_rows, [run]) for run in runs]
    if len(runs) == 1:
        return own
    shared = common.cached_call(feature_maps.shared_pixel_rows, runs)
    if feature_maps.same_pixels(own, shared):
        return own
    shared_count = 0 if shared is None else len(shared[0])
    st.info(f"The runs' exports sampled different pixels (different seed or split): {shared_count} labelled pixels "
            "are common to both, so each run's panels show its own pixels. Export both runs with the same seed to "
            "compare them point by point.")
    if shared_count >= MIN_SHARED_PIXELS and st.toggle(f"Show only the {shared_count} shared pixels", key="space-shared"):
        return shared
    return own


def _cancel(job: tuple) -> None:
    st.session_state[CANCELLED_KEY] = job


def _resume() -> None:
    st.session_state.pop(CANCELLED_KEY, None)


def _compute_maps(label: str, run: Run, stages: tuple[int, ...], kind: str, method: str, rows: np.ndarray, align: bool,
                  params: dict) -> list[np.ndarray] | None:
    """Compute maps missing from the projection cache under a progress bar with a Cancel button; None once the
    user cancelled them (until they ask again). Cancel, like any other widget change, stops the computation at its
    next progress report (Streamlit stops the script there)."""
    job = (str(run.path), stages, kind, method, align, tuple(sorted(params.items())))
    if st.session_state.get(CANCELLED_KEY) == job:
        st.info(f"Computing the {METHOD_LABELS[method]} maps of **{common.md(label)}** was cancelled; pick another map, "
                "or compute them now.")
        st.button("Compute them", key=f"space-resume-{label}", on_click=_resume)
        return None
    title = (f"Computing {METHOD_LABELS[method]} maps of {common.md(label)} ({len(rows)} pixels × {len(stages)} stages; "
             "not in the run's projection cache)…")
    slot = st.empty()
    with slot.container():
        bar = st.progress(0.0, text=title)
        st.button("Cancel", key=f"space-cancel-{label}", on_click=_cancel, args=(job,))

    def report(fraction: float, message: str) -> None:
        bar.progress(min(max(fraction, 0.0), 1.0), text=f"{title} {message}")

    feature_maps.stage_maps(run, stages, kind, method, rows, align, progress=report, **params)
    slot.empty()
    return common.cached_call(feature_maps.stage_maps, [run], stages, kind, method, rows, align, **params)


def _panels_and_tables(usable: list[tuple[str, Run]], kind: str, method: str, shown_stages: list[int],
                       align: bool, params: dict) -> tuple[list[list[dict]], list[tuple[str, pd.DataFrame]]]:
    """Per run with ``kind`` embeddings: one panel per shown stage and its separability table (with the
    trustworthiness of the maps); a note for each run without them."""
    panels_per_run, tables = [], []
    for (label, run), rows in zip(usable, _pixel_rows(usable)):
        if kind not in run.embedding_kinds():
            st.info(f"**{common.md(label)}** has no `{kind}` embeddings (no projectors); pick `backbone` to compare it.")
            continue
        if feature_maps.maps_are_cached(run, shown_stages, kind, method, rows, align, **params):
            with st.spinner(f"Loading the cached {METHOD_LABELS[method]} maps of {common.md(label)}…"):
                maps = common.cached_call(feature_maps.stage_maps, [run], tuple(shown_stages), kind, method, rows, align,
                                          **params)
        else:
            maps = _compute_maps(label, run, tuple(shown_stages), kind, method, rows, align, params)
            if maps is None:
                continue
        panels_per_run.append([figures.embedding_panel(run, stage, kind, coords, rows, title=f"{label} · stage {stage}")
                               for stage, coords in zip(shown_stages, maps)])
        with st.spinner(f"Measuring separability of {common.md(label)}…"):
            table = common.cached_call(stage_separability.separability_table, [run], kinds=(kind,))
            table = table[table["stage"].isin(shown_stages)].copy()
            table["trustworthiness"] = [common.cached_call(feature_maps.map_trustworthiness, [run], stage, kind, rows, coords)
                                        for stage, coords in zip(shown_stages, maps)]
        tables.append((label, table))
    return panels_per_run, tables


def _show(first: Run, panels_per_run: list[list[dict]], tables: list[tuple[str, pd.DataFrame]], color_by: str,
          kind: str, method: str, stage_count: int) -> None:
    """The maps (stage by stage, runs side by side) on the left, the separability tables on the right."""
    left, right = st.columns([1, 1])
    with left:
        stage_major = [panel for stage_panels in zip(*panels_per_run) for panel in stage_panels]
        columns = len(panels_per_run) if len(panels_per_run) > 1 else min(2, stage_count)
        fig = figures.embedding_panels(stage_major, color_by=color_by, class_names=first.class_names,
                                       max_columns=columns, panel_height=PANEL_HEIGHT)
        common.show_figure(fig, key="feature-space", file_stem=f"feature_space_{kind}_{method}")
    with right:
        st.markdown(f"**Separability of the {kind} embeddings**")
        for label, table in tables:
            by_stage = _metrics_by_stage(table)
            st.caption(f"{common.md(label)} · {int(table['n_pixels'].iloc[0])} labelled pixels (class-balanced subset)")
            st.dataframe(by_stage, column_config={column: st.column_config.NumberColumn(format="%.3f")
                                                  for column in by_stage.columns})
        st.caption(f"Trustworthiness is that of the {METHOD_LABELS[method]} maps shown.")
        common.explain(EXPLANATIONS)


def render() -> None:
    st.title("Feature spaces")
    st.caption("2-D maps of the pixel embeddings of every stage, the same pixels in every panel, next to numbers "
               "that say how well the classes separate. Hover a point for its image, position, label and prediction.")
    selection = common.require_runs()
    usable = common.runs_that_open(selection, Run.embedding_stages)
    if not usable:
        return
    runs = [run for _, run in usable]
    kinds = run_selection.embedding_kinds(runs)
    stages = runs[0].embedding_stages()

    controls = st.columns([3, 3, 3, 5, 3])
    kind = controls[0].selectbox("Embeddings", kinds, index=kinds.index(run_selection.default_embedding_kind(runs)),
                                 key="space-kind", help="backbone: the encoder's features; projected: the output "
                                                        "of the stage's projector, where the contrastive loss acts.")
    method_options = list(METHOD_LABELS)
    method = controls[1].selectbox(
        "Map", method_options, key="space-method", format_func=METHOD_LABELS.get,
        index=method_options.index(feature_maps.default_map_method(runs[0], kind, stages, method_options)),
        help="Maps cached when the run was exported open at once; others are computed on demand, under a progress "
             "bar with a Cancel button (UMAP or t-SNE of 3,000 pixels: a few seconds per stage).",
    )
    color_by = controls[2].radio("Colour by", list(COLOUR_LABELS), key="space-colour", format_func=COLOUR_LABELS.get)
    shown_stages = controls[3].pills("Stages (0 = finest)", stages, selection_mode="multi", default=stages,
                                     key="space-stages", format_func=str)
    align = controls[4].toggle("Align stages", value=True, key="space-align",
                               help="Start each stage's UMAP or t-SNE from the map of the stage before it and rotate "
                                    "every map onto its neighbour (Procrustes), so a cluster sits at the same place in "
                                    "every panel.")
    refine = controls[4].toggle("Refine", value=False, key="space-refine", disabled=method == "pca",
                                help="More layout epochs (UMAP) or iterations (t-SNE) than the first view: "
                                     "crisper clusters, computed on request.")
    params = REFINED_PARAMS[method] if refine else {}
    if not shown_stages:
        st.info("Pick at least one stage.")
        return
    shown_stages = sorted(shown_stages)

    with common.artifact_guard():
        panels_per_run, tables = _panels_and_tables(usable, kind, method, shown_stages, align, params)
        if panels_per_run:
            _show(usable[0][1], panels_per_run, tables, color_by, kind, method, len(shown_stages))

with common.artifact_guard():
    render()
