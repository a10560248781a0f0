"""``mscl export`` of a run's checkpoint in a child process, with its progress, for the app's Training dynamics page.

The app never imports torch: it starts ``python -m mscl.cli export RUN --checkpoint last|best`` and reads the
child's output. The evaluation pass prints tqdm progress (``eval:  45%|...| 5/11 [...]``); each such update gives
the fraction done, and ``... projections cached ...`` marks the projection phase. The job can be cancelled: the
child gets SIGINT (it then stops like a Ctrl-C, its atomic writes leaving no half files), then SIGKILL if it has
not exited after a grace period.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from runformat import layout

__all__ = ["CHECKPOINTS", "ExportJob", "ExportProgress", "available_checkpoints", "export_command", "parse_progress"]

CHECKPOINTS = ("last", "best")
TQDM_LINE = re.compile(r"(?P<desc>[\w .-]+):\s+\d+%\|.*?\|\s*(?P<done>\d+)/(?P<total>\d+)\s*\[")
PROJECTION_LINE = re.compile(r"projections cached")
LINE_END = re.compile(r"[\r\n]")
OUTPUT_LINES = 200
CANCEL_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class ExportProgress:
    """Where an export job is: ``state`` (running, finished, failed, cancelled), a ``phase`` for the user, and
    ``fraction`` done in [0, 1] (None while unknown)."""

    state: str
    phase: str
    fraction: float | None


def available_checkpoints(run_dir: str | Path) -> list[str]:
    """The checkpoints ``mscl export RUN --checkpoint`` accepts for this run, in ``CHECKPOINTS`` order: ``last`` when
    the run has a complete checkpoint set (or the ``checkpoints/last.safetensors`` of format version 1), ``best`` when
    it has ``checkpoints/best.safetensors``."""
    run_dir = Path(run_dir)
    found = []
    if layout.checkpoint_sets(run_dir) or (run_dir / layout.checkpoint_weights("last")).is_file():
        found.append("last")
    if (run_dir / layout.checkpoint_weights("best")).is_file():
        found.append("best")
    return found


def export_command(run_dir: str | Path, checkpoint: str = "last", project: bool = False, device: str = "auto",
                   python: str = sys.executable) -> list[str]:
    """The command line of the job: ``python -m mscl.cli export RUN --checkpoint ... [--no-project]``."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
    command = [python, "-m", "mscl.cli", "export", str(run_dir), "--checkpoint", checkpoint, "--device", device]
    return command if project else [*command, "--no-project"]


def parse_progress(line: str) -> tuple[str, float | None] | None:
    """(phase, fraction) from one line of ``mscl export`` output, or None when the line says nothing about progress.

    A tqdm line ``eval:  45%|####   | 5/11 [00:01<00:01]`` gives ``("eval", 5 / 11)``; the projection summary gives
    ``("projections", None)``.
    """
    match = TQDM_LINE.search(line)
    if match:
        total = int(match["total"])
        return match["desc"].strip(), (int(match["done"]) / total if total else None)
    if PROJECTION_LINE.search(line):
        return "projections", None
    return None


class ExportJob:
    """One running ``mscl export`` child process (``start`` launches it; ``progress``, ``cancel``, ``wait``).

    ``popen`` is the process factory (``subprocess.Popen``; tests may pass their own).
    """

    def __init__(self, run_dir: str | Path, checkpoint: str = "last", *, project: bool = False, device: str = "auto",
                 command: Sequence[str] | None = None, popen: Callable[..., subprocess.Popen] = subprocess.Popen) -> None:
        self.run_dir = Path(run_dir)
        self.checkpoint = checkpoint
        self.command = list(command) if command is not None else export_command(run_dir, checkpoint, project, device)
        self._popen = popen
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._lines: deque[str] = deque(maxlen=OUTPUT_LINES)
        self._phase = "starting"
        self._fraction: float | None = None
        self._cancelled = False
        self._lock = threading.Lock()

    def start(self) -> ExportJob:
        """Launch the child process (stdout and stderr merged, unbuffered) and a thread reading its output."""
        if self._process is not None:
            raise RuntimeError(f"the export of {self.run_dir} was already started")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._process = self._popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        self._reader = threading.Thread(target=self._read, name=f"export-{self.run_dir.name}", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        """Split the output on "\\r" and "\\n" as it arrives: tqdm redraws a line with "\\r" and ends it only at the
        next redraw, so the unfinished last piece is parsed for progress too (and kept once it is finished)."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        stream = self._process.stdout
        while chunk := stream.read1(4096):
            *finished, pending = LINE_END.split(pending + decoder.decode(chunk))
            self._take(finished, pending)
        self._take([pending + decoder.decode(b"", final=True)], "")
        stream.close()

    def _take(self, finished: list[str], pending: str) -> None:
        with self._lock:
            for line in (line.rstrip() for line in finished):
                if line:
                    self._lines.append(line)
                    self._update(line)
            self._update(pending)

    def _update(self, line: str) -> None:
        parsed = parse_progress(line)
        if parsed is not None:
            self._phase, self._fraction = parsed

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def state(self) -> str:
        """``running``, ``finished`` (exit status 0), ``cancelled`` or ``failed``."""
        if self._process is None:
            return "not started"
        code = self._process.poll()
        if code is None or (self._reader is not None and self._reader.is_alive()):
            return "running"
        if self._cancelled:
            return "cancelled"
        return "finished" if code == 0 else "failed"

    def progress(self) -> ExportProgress:
        state = self.state
        with self._lock:
            phase, fraction = self._phase, self._fraction
        if state == "finished":
            return ExportProgress(state, "done", 1.0)
        return ExportProgress(state, phase, fraction)

    def output(self) -> list[str]:
        """The last lines the child printed."""
        with self._lock:
            return list(self._lines)

    def error(self) -> str:
        """The child's one-line error (``mscl export: error: ...``) or its last line of output; empty when none."""
        lines = self.output()
        errors = [line for line in lines if "error:" in line]
        return (errors or lines or [""])[-1]

    def summary(self) -> dict | None:
        """The evaluation summary ``mscl export`` prints last (split, checkpoint, step, miou, ...), once finished."""
        if self.state != "finished":
            return None
        text = "\n".join(self.output())
        start = text.rfind("{\n")
        try:
            return json.loads(text[start:]) if start >= 0 else None
        except json.JSONDecodeError:
            return None

    def cancel(self, grace: float = CANCEL_GRACE_SECONDS) -> None:
        """Stop the child: SIGINT (Ctrl-C), then SIGKILL after ``grace`` seconds."""
        if not self.running:
            return
        self._cancelled = True
        self._process.send_signal(signal.SIGINT if os.name == "posix" else signal.SIGTERM)
        try:
            self._process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self.wait()

    def wait(self, timeout: float | None = None) -> str:
        """Wait for the child and its output to end; returns ``state``."""
        if self._process is not None:
            self._process.wait(timeout=timeout)
            if self._reader is not None:
                self._reader.join(timeout=timeout)
        return self.state
