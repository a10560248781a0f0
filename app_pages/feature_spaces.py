"""Feature spaces page: 2-D maps (UMAP, PCA, t-SNE) of the per-stage pixel embeddings of run A and B,
the same pixels in every panel, next to the separability numbers of those embeddings."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import streamlit as st

from app_pages import common
from workbench import figures, separability
from workbench.runs import Run

MIN_SHARED_PIXELS = 100
PANEL_HEIGHT = 270
METHOD_LABELS = {"umap": "UMAP", "pca": "PCA", "tsne": "t-SNE"}
COLOUR_LABELS = {"label": "class", "correct": "correct / wrong"}

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


def _runs_with_embeddings(selection: common.RunSelection) -> list[tuple[str, Run]]:
    usable = []
    for label, run in selection.labelled():
        with common.artifact_guard(label):
            run.embedding_stages()
            usable.append((label, run))
    return usable


def _pixel_rows(usable: list[tuple[str, Run]]) -> list[np.ndarray]:
    """Embedding rows per run: the same pixels in every run when their exports sampled the same pixels
    (then also the rows the projection cache holds), else each run's own, or on request the shared ones."""
    runs = [run for _, run in usable]
    own = [common.own_pixel_rows(run) for run in runs]
    if len(runs) == 1:
        return own
    shared = common.shared_pixel_rows(runs)
    if shared is not None and all(np.array_equal(rows, mine) for rows, mine in zip(shared, own)):
        return own
    shared_count = 0 if shared is None else len(shared[0])
    st.info(f"The runs' exports sampled different pixels (different seed or split): {shared_count} labelled pixels "
            "are common to both, so each run's panels show its own pixels. Export both runs with the same seed to "
            "compare them point by point.")
    if shared_count >= MIN_SHARED_PIXELS and st.toggle(f"Show only the {shared_count} shared pixels", key="space-shared"):
        return shared
    return own


def render() -> None:
    st.title("Feature spaces")
    st.caption("2-D maps of the pixel embeddings of every stage, the same pixels in every panel, next to numbers "
               "that say how well the classes separate. Hover a point for its image, position, label and prediction.")
    selection = common.require_runs()
    usable = _runs_with_embeddings(selection)
    if not usable:
        return
    runs = [run for _, run in usable]
    kinds = common.embedding_kinds(runs)
    stages = runs[0].embedding_stages()

    controls = st.columns([3, 3, 3, 5, 3])
    kind = controls[0].selectbox("Embeddings", kinds, index=kinds.index(common.default_embedding_kind(runs)),
                                 key="space-kind", help="backbone: the encoder's features; projected: the output "
                                                        "of the stage's projector, where the contrastive loss acts.")
    method_options = list(METHOD_LABELS)
    method = controls[1].selectbox(
        "Map", method_options, key="space-method", format_func=METHOD_LABELS.get,
        index=method_options.index(common.default_map_method(runs[0], kind, stages, method_options)),
        help="Maps cached when the run was exported open at once; others are computed on demand (UMAP compiles "
             "for tens of seconds in a fresh process).",
    )
    color_by = controls[2].radio("Colour by", list(COLOUR_LABELS), key="space-colour", format_func=COLOUR_LABELS.get)
    shown_stages = controls[3].pills("Stages (0 = finest)", stages, selection_mode="multi", default=stages,
                                     key="space-stages", format_func=str)
    align = controls[4].toggle("Align stages", value=True, key="space-align",
                               help="Fit the stages of a run jointly (AlignedUMAP, shared t-SNE initialisation, "
                                    "Procrustes-rotated PCA) so a cluster sits at the same place in every panel.")
    if not shown_stages:
        st.info("Pick at least one stage.")
        return
    shown_stages = sorted(shown_stages)

    with common.artifact_guard():
        rows_per_run = _pixel_rows(usable)
        panels_per_run, tables = [], []
        for (label, run), rows in zip(usable, rows_per_run):
            if kind not in run.embedding_kinds():
                st.info(f"**{label}** has no `{kind}` embeddings (no projectors); pick `backbone` to compare it.")
                continue
            cached = common.maps_are_cached(run, shown_stages, kind, method, rows, align)
            waiting = (f"Loading the cached {METHOD_LABELS[method]} maps of {label}…" if cached else
                       f"Computing {METHOD_LABELS[method]} maps of {label} ({len(rows)} pixels × {len(shown_stages)} "
                       "stages; not in the run's projection cache)…")
            with st.spinner(waiting):
                maps = common.stage_maps(run, tuple(shown_stages), kind, method, rows, align)
            panels_per_run.append([
                figures.embedding_panel(run, stage, kind, coords, rows, title=f"{label} · stage {stage}")
                for stage, coords in zip(shown_stages, maps)
            ])
            with st.spinner(f"Measuring separability of {label}…"):
                table = common.cached_call(separability.separability_table, [run], kinds=(kind,))
                table = table[table["stage"].isin(shown_stages)].copy()
                table["trustworthiness"] = [common.map_trustworthiness(run, stage, kind, rows, coords)
                                            for stage, coords in zip(shown_stages, maps)]
            tables.append((label, table))
        if not panels_per_run:
            return
        left, right = st.columns([1, 1])
        with left:
            first = usable[0][1]
            stage_major = [panel for stage_panels in zip(*panels_per_run) for panel in stage_panels]
            columns = len(panels_per_run) if len(panels_per_run) > 1 else min(2, len(shown_stages))
            fig = figures.embedding_panels(stage_major, color_by=color_by, class_names=first.class_names,
                                           palette=first.palette, max_columns=columns)
            fig.update_annotations(font_size=12)
            fig.update_layout(height=max(380, PANEL_HEIGHT * math.ceil(len(stage_major) / columns) + 60))
            common.show_figure(fig, key="feature-space", file_stem=f"feature_space_{kind}_{method}")
        with right:
            st.markdown(f"**Separability of the {kind} embeddings**")
            for label, table in tables:
                by_stage = _metrics_by_stage(table)
                st.caption(f"{label} · {int(table['n_pixels'].iloc[0])} labelled pixels (class-balanced subset)")
                st.dataframe(by_stage, column_config={column: st.column_config.NumberColumn(format="%.3f")
                                                      for column in by_stage.columns})
            st.caption(f"Trustworthiness is that of the {METHOD_LABELS[method]} maps shown.")
            common.explain(EXPLANATIONS)


with common.artifact_guard():
    render()
