# %% [markdown]
# # A tour of the workbench
# Every view of the app, built from `workbench` in a notebook (open this file as a notebook in Jupyter
# with jupytext, or in VS Code, or run it: `python notebooks/tour.py [RUN_A RUN_B] --out figures/`).
# Run A is the cross-entropy baseline, run B the ms+cs run of the same model and data.

# %%
from __future__ import annotations

import argparse
from pathlib import Path

import plotly.graph_objects as go

from workbench import crossscale, figures, iou, load_run, projections, sampler_stats, stage_separability

ROOT = Path(__file__).resolve().parents[1] if "__file__" in globals() else Path.cwd().parent
DEFAULT_A = ROOT / "sample_data/runs/synthetic-ce"
DEFAULT_B = ROOT / "sample_data/runs/synthetic-mscs"


# %%
def build_tour(path_a: Path, path_b: Path) -> dict[str, go.Figure]:
    """All the app's figures for runs A and B, keyed by a file-friendly name."""
    a, b = load_run(path_a), load_run(path_b)
    out: dict[str, go.Figure] = {}

    # 1. Runs: loss parts and validation curves on one plot.
    out["training_curves"] = figures.training_curves([a, b])
    out["val_curves"] = figures.val_curves([a, b])

    # 2. Feature spaces: the same pixels in every panel, one panel per stage and run (cached PCA maps).
    stages = b.embedding_stages()
    items = [(run, stage, "backbone") for run in (a, b) for stage in stages]
    rows = projections.aligned_pixel_rows([a, b])
    coords = projections.aligned_projections(items, method="pca", pixels=rows[0])
    panels = [
        figures.embedding_panel(run, stage, kind, xy, rows[0 if run is a else 1])
        for (run, stage, kind), xy in zip(items, coords)
    ]
    out["feature_spaces"] = figures.embedding_panels(panels, class_names=b.class_names)
    table = stage_separability.separability_table(b)
    print(table.round(3).to_string(index=False))

    # 3. Cross-scale similarity: class prototypes of the finest vs the coarsest stage, CKA between stages,
    # and one pixel's similarity to every position of every stage.
    similarity = crossscale.prototype_similarity(b, stages[0], stages[-1])
    out["prototype_similarity"] = figures.heatmap(similarity, b.class_names, b.class_names, f"{b.name}: stage 0 vs {stages[-1]}", zmid=0)
    cka = crossscale.cka_matrix(b)
    out["cka"] = figures.heatmap(cka.to_numpy(), list(cka.columns), list(cka.index), f"{b.name}: linear CKA between stages", zmin=0, zmax=1)
    dense = b.dense(b.dense_ids()[0])
    query = (dense["label"].shape[0] // 2, dense["label"].shape[1] // 2)
    maps = crossscale.pixel_similarity_maps(dense, *query)
    out["pixel_similarity"] = figures.similarity_overlay(dense["image"], maps, query)

    # 4. Sampler: what the class-balanced sampler fed the loss, per stage.
    out["sampler_histogram"] = figures.sampler_histogram_figure(sampler_stats.sampler_histogram(b, stages[0]))
    out["sampler_timeline"] = figures.sampler_timeline_figure(sampler_stats.sampler_timeline(b))
    print(sampler_stats.cap_rates(b).to_string(index=False))

    # 5. IoU: per-class difference (B - A), confusion matrices, per-image differences.
    diff = iou.per_class_iou_diff(a, b)
    out["iou_diff"] = figures.iou_diff_figure(diff, a.name, b.name)
    conf_a, conf_b, conf_diff = iou.confusion_difference(a, b)
    out["confusion_difference"] = figures.heatmap(conf_diff, b.class_names, b.class_names, "row-normalised confusion, B - A", zmid=0)
    per_image = iou.per_image_diff(a, b)
    out["per_image_diff"] = figures.per_image_diff_figure(per_image, a.name, b.name)

    # 6. Predictions: image, ground truth, both predictions and where they differ.
    image_id = a.prediction_ids()[0]
    sample = a.prediction(image_id)
    predictions = {a.name: sample["prediction"], b.name: b.prediction(image_id)["prediction"]}
    out["predictions"] = figures.prediction_figure(sample, predictions, b.palette, b.ignore_index)
    return out


# %%
if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Build every workbench figure for two runs")
    parser.add_argument("runs", nargs="*", default=[str(DEFAULT_A), str(DEFAULT_B)])
    parser.add_argument("--out", help="also export each figure as SVG into this folder")
    args, _ = parser.parse_known_args()
    tour = build_tour(Path(args.runs[0]), Path(args.runs[1]))
    for name, figure in tour.items():
        if args.out:
            figures.export_figure(figure, Path(args.out) / f"{name}.svg", format="svg")
        print(name, len(figure.data), "traces")
