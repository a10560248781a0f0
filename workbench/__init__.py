"""MSCL workbench: analysis of run directories (docs/run-format.md) — numbers, tables and plotly figures.

Reads run directories only; never imports the training code. Submodules: ``runs`` (loading),
``selection`` (default run pair, run labels, what runs share), ``projections`` (cached 2-D maps),
``feature_maps`` (the Feature spaces view's maps), ``separability`` (array metrics), ``stage_separability`` (those
metrics per stage of a run), ``crossscale``, ``iou``, ``sampler_stats``, ``study`` (arms over seeds), ``snapshots`` and
``timeline`` (training dynamics), ``figures``.
"""

from workbench import (
    crossscale,
    feature_maps,
    figures,
    iou,
    projections,
    runs,
    sampler_stats,
    selection,
    separability,
    stage_separability,
)
from workbench.runs import MissingArtifactError, Run, RunFormatError, list_runs, load_run

__all__ = [
    "crossscale",
    "feature_maps",
    "figures",
    "iou",
    "projections",
    "runs",
    "sampler_stats",
    "selection",
    "separability",
    "stage_separability",
    "MissingArtifactError",
    "Run",
    "RunFormatError",
    "list_runs",
    "load_run",
]
