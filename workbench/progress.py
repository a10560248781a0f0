"""Progress reports and cancellation for long workbench computations (2-D maps, docs/workbench.md view 2).

A computation takes a :class:`Progress` and calls :meth:`Progress.update` with the fraction done (0 to 1) and a
short message; :meth:`Progress.part` hands a sub-range of the bar to a sub-task (e.g. one stage of four). Every
update first checks the cancel event (anything with ``is_set()``, e.g. ``threading.Event``) and raises
:class:`ProjectionCancelled` when it is set, so a cancelled job stops at its next report. The user-facing
callbacks receive ``(fraction, message)`` with ``fraction`` of the whole job; :func:`stderr_reporter` prints
them as lines on stderr (at most one every ``interval`` seconds, plus the last).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO

__all__ = ["ProgressCallback", "CancelEvent", "ProjectionCancelled", "Progress", "as_progress", "stderr_reporter"]

ProgressCallback = Callable[[float, str], None]
"""Called with the fraction of the whole job done (0..1) and what it is doing now."""


class CancelEvent(Protocol):
    """What a cancel argument must offer (``threading.Event`` does)."""

    def is_set(self) -> bool: ...


class ProjectionCancelled(Exception):
    """A projection stopped because its cancel event was set."""


class Progress:
    """Reports the progress of one job, or of the part ``[start, end]`` of a larger one, and checks for cancel."""

    def __init__(self, callback: ProgressCallback | None = None, cancel: CancelEvent | None = None,
                 start: float = 0.0, end: float = 1.0, label: str = "") -> None:
        self.callback = callback
        self.cancel = cancel
        self.start = start
        self.end = end
        self.label = label

    def check(self) -> None:
        """Raise :class:`ProjectionCancelled` when the cancel event is set."""
        if self.cancel is not None and self.cancel.is_set():
            raise ProjectionCancelled(f"{self.label or 'projection'} cancelled")

    def update(self, fraction: float, message: str = "") -> None:
        """Report ``fraction`` (0..1) of this part done; raises :class:`ProjectionCancelled` when cancelled."""
        self.check()
        if self.callback is not None:
            done = self.start + (self.end - self.start) * min(max(fraction, 0.0), 1.0)
            self.callback(done, " · ".join(part for part in (self.label, message) if part))

    def part(self, index: int, count: int, label: str = "") -> Progress:
        """The ``index``-th of ``count`` equal sub-ranges of this part, with ``label`` added to its messages."""
        width = (self.end - self.start) / max(count, 1)
        joined = " · ".join(part for part in (self.label, label) if part)
        return Progress(self.callback, self.cancel, self.start + index * width, self.start + (index + 1) * width, joined)


def as_progress(progress: Progress | ProgressCallback | None = None, cancel: CancelEvent | None = None) -> Progress:
    """A :class:`Progress` from what a public function was given: a ``Progress`` (kept; ``cancel`` added when
    given), a ``(fraction, message)`` callback, or nothing."""
    if isinstance(progress, Progress):
        return progress if cancel is None else Progress(progress.callback, cancel, progress.start, progress.end, progress.label)
    return Progress(progress, cancel)


def stderr_reporter(prefix: str, interval: float = 2.0, stream: TextIO | None = None) -> ProgressCallback:
    """A callback printing ``PREFIX  42% message`` lines on ``stream`` (default stderr), at most one every
    ``interval`` seconds except the first and the one at 100 %."""
    last = [float("-inf")]

    def report(fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - last[0] < interval and fraction < 1.0:
            return
        last[0] = now
        print(f"{prefix} {fraction * 100:3.0f}% {message}", file=stream or sys.stderr, flush=True)

    return report
