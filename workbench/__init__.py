"""MSCL workbench: analysis of run directories (docs/run-format.md) — numbers, tables and plotly figures.

Reads run directories only; never imports the training code. Submodules: ``runs`` (loading),
``projections`` (cached 2-D maps), ``separability``, ``crossscale``, ``iou``, ``sampler_stats``,
``figures``.
"""

from workbench import crossscale, figures, iou, projections, runs, sampler_stats, separability
from workbench.runs import MissingArtifactError, Run, RunFormatError, list_runs, load_run

__all__ = [
    "crossscale",
    "figures",
    "iou",
    "projections",
    "runs",
    "sampler_stats",
    "separability",
    "MissingArtifactError",
    "Run",
    "RunFormatError",
    "list_runs",
    "load_run",
]
