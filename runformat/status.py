"""The ``status`` key of ``run.json`` (docs/run-format.md, "Run status")."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """Life cycle of a run: ``running`` -> ``exporting`` -> ``finished``; ``interrupted`` or ``failed`` on the way.

    Members are strings, so ``json.dumps`` writes the plain value and ``RunStatus("finished")`` parses it.
    """

    RUNNING = "running"
    """``mscl train`` is training (or was killed without a chance to record anything else)."""
    EXPORTING = "exporting"
    """Training is done; the final export (eval/, predictions/, embeddings/, projections) is being written."""
    FINISHED = "finished"
    """Trained and exported."""
    INTERRUPTED = "interrupted"
    """Stopped by Ctrl-C or SIGTERM after saving a checkpoint set; ``mscl train --resume RUN`` continues it."""
    FAILED = "failed"
    """Stopped by an error; ``run.json`` holds it under ``error`` (cleared when the run is resumed)."""
