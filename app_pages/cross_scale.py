"""Cross-scale similarity page: class-prototype similarity between two stages, linear CKA between all
stages, and the similarity of one pixel of the finest stage to every position of every stage."""

from __future__ import annotations

import streamlit as st

from app_pages import common
from app_pages.common import RunSelection
from workbench import crossscale, figures
from workbench import selection as run_selection
from workbench.runs import Run

EXPLANATIONS = {
    "prototype similarity": "cosine between the normalised class means of stage a (rows) and stage b (columns); "
                            "the cross-scale loss should raise the diagonal and lower the rest.",
    "linear CKA": "||YᵀX||²_F / (||XᵀX||_F ||YᵀY||_F) on column-centred features of the same pixels: 1 = the two "
                  "stages carry the same information up to rotation and scale; allows different widths.",
    "pixel similarity": "cosine between the chosen pixel's embedding and every position of each stage. Projected: "
                        "the query is taken at the finest stage and compared with every stage (one space). "
                        "Backbone: each stage is compared with itself at the query's position (widths differ).",
}


def _with_kind(selection: RunSelection, kind: str) -> list[tuple[str, Run]]:
    """The selected runs that have ``kind`` embeddings; a full-width note for each that has not, so the runs that
    have them share the page."""
    usable = []
    for label, run in selection.labelled():
        if kind in run.embedding_kinds():
            usable.append((label, run))
        else:
            st.info(f"**{common.md(label)}** has no `{kind}` embeddings (no projectors); pick `backbone` to include it.")
    return usable


def _prototype_section(selection: RunSelection) -> None:
    st.header("Class-prototype similarity")
    run_a = selection.run_a
    kinds = run_selection.embedding_kinds(selection.runs)
    controls = st.columns(3)
    kind = controls[0].selectbox("Embeddings", kinds, index=len(kinds) - 1, key="prototype-kind",
                                 help="Stages are compared in one space: projected embeddings, or backbone stages "
                                      "of equal width.")
    stage_a = controls[1].selectbox("Stage a (rows)", run_a.stages, index=0, key="prototype-stage-a")
    stage_b = controls[2].selectbox("Stage b (columns)", run_a.stages, index=len(run_a.stages) - 1,
                                    key="prototype-stage-b")
    usable = _with_kind(selection, kind)
    for column, (label, run) in zip(st.columns(len(usable)) if usable else [], usable):
        with column, common.artifact_guard(label):
            widths = run.embedding_widths(kind)
            if widths[stage_a] != widths[stage_b]:
                st.info(f"**{common.md(label)}**: {kind} stage {stage_a} has {widths[stage_a]} channels and stage {stage_b} "
                        f"{widths[stage_b]}; prototypes of different widths cannot be compared (see CKA below).")
                continue
            matrix = common.cached_call(crossscale.prototype_similarity, [run], stage_a, stage_b, kind)
            common.show_figure(
                figures.heatmap(matrix, run.class_names, run.class_names,
                                f"{label}: stage {stage_a} (rows) vs stage {stage_b}, {kind}", zmid=0.0),
                key=f"prototypes-{label}", file_stem=f"prototype_similarity_{run.name}_s{stage_a}_s{stage_b}",
            )


def _cka_section(selection: RunSelection) -> None:
    st.header("Linear CKA between stages")
    kind = st.radio("Features", run_selection.embedding_kinds(selection.runs), horizontal=True, key="cka-kind")
    usable = _with_kind(selection, kind)
    for column, (label, run) in zip(st.columns(len(usable)) if usable else [], usable):
        with column, common.artifact_guard(label):
            cka = common.cached_call(crossscale.cka_matrix, [run], kind)
            names = [f"stage {stage}" for stage in cka.index]
            common.show_figure(figures.heatmap(cka.to_numpy(), names, names, f"{label}: linear CKA ({kind})"),
                               key=f"cka-{label}", file_stem=f"cka_{run.name}_{kind}")


def _pixel_section(selection: RunSelection) -> None:
    st.header("Similarity of one pixel across stages")
    image_ids = run_selection.shared_dense_ids(selection.runs)
    if not image_ids:
        st.info("The selected runs have no dense feature maps of a common image (embeddings/dense/).")
        return
    kinds = run_selection.embedding_kinds(selection.runs)
    controls = st.columns([2, 1, 2, 2])
    image_id = controls[0].selectbox("Image", image_ids, key="dense-image")
    kind = controls[1].radio("Features", kinds, index=kinds.index(run_selection.default_embedding_kind(selection.runs)),
                             key="dense-kind")
    height, width = selection.run_a.dense(image_id)["image"].shape[:2]
    y = controls[2].slider("y (row)", 0, height - 1, height // 2, key="dense-y")
    x = controls[3].slider("x (column)", 0, width - 1, width // 2, key="dense-x")
    for label, run in selection.labelled():
        with common.artifact_guard(label):
            if kind not in run.embedding_kinds():
                st.info(f"**{common.md(label)}** has no `{kind}` embeddings (no projectors).")
                continue
            dense = run.dense(image_id)
            maps = crossscale.pixel_similarity_maps(dense, y, x, kind=kind)
            st.markdown(f"**{common.md(label)}** — query pixel (y={y}, x={x}), {kind} features")
            common.show_figure(figures.similarity_overlay(dense["image"], maps, (y, x)),
                               key=f"pixel-{label}", file_stem=f"pixel_similarity_{run.name}_{image_id}_{y}_{x}")


def render() -> None:
    st.title("Cross-scale similarity")
    st.caption("Do the stages agree on what each class looks like, and how similar is one pixel to every position "
               "of every stage?")
    selection = common.require_runs()
    with st.expander("What the numbers mean"):
        common.explain(EXPLANATIONS)
    with common.artifact_guard():
        _prototype_section(selection)
    with common.artifact_guard():
        _cka_section(selection)
    with common.artifact_guard():
        _pixel_section(selection)


with common.artifact_guard():
    render()
