"""Filling a run's projection cache (``projections/``, docs/run-format.md) from ``mscl`` without importing the workbench.

``mscl train`` (at the end), ``mscl export`` and ``mscl project`` run ``python -m workbench project RUN`` as a
child process: UMAP's numba threads stay spinning in the process that ran it (they slowed later training in
the same process several-fold), and ``mscl`` stays free of workbench imports.
"""

from __future__ import annotations

import codecs
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO


class ProjectionError(RuntimeError):
    """``python -m workbench project`` failed in its child process (the message holds its one-line error)."""


def _stop_with_parent() -> None:
    """In the child, before exec: ask Linux to send SIGTERM when the parent dies (even by SIGKILL)."""
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def stop_child(process: subprocess.Popen, grace_seconds: float = 10.0) -> None:
    """SIGTERM ``process``, then SIGKILL it if it has not ended after ``grace_seconds``; waits for it."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def projection_command(run_dir: str | Path, seed: int) -> list[str]:
    """The workbench command that fills a run's projection cache."""
    return [sys.executable, "-m", "workbench", "project", str(run_dir), "--seed", str(seed)]


def _relay(stream: IO[bytes], keep: int = 4096) -> str:
    """Copy a child's stderr to this process's stderr as it arrives (its progress bar included); returns the last
    ``keep`` characters."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = ""
    while chunk := stream.read1(keep):
        text = decoder.decode(chunk)
        sys.stderr.write(text)
        sys.stderr.flush()
        tail = (tail + text)[-keep:]
    return tail


def project_in_child_process(run_dir: str | Path, seed: int, capture: bool = True) -> int:
    """Run ``projection_command`` as a child process and wait for it; returns its exit status.

    If this process is interrupted (Ctrl-C, or SIGTERM turned into KeyboardInterrupt) the child is stopped
    before the interruption goes on; on Linux the child also ends when this process is killed. With
    ``capture`` (end of training, ``mscl export``) its stdout is dropped, its stderr (the progress bar) is relayed
    to this process's stderr, and a failure raises ProjectionError with the child's last error line; without it
    (``mscl project``) the child writes to this terminal.
    """
    preexec = _stop_with_parent if sys.platform == "linux" else None
    process = subprocess.Popen(projection_command(run_dir, seed), stdout=subprocess.DEVNULL if capture else None,
                               stderr=subprocess.PIPE if capture else None, preexec_fn=preexec)
    try:
        errors = _relay(process.stderr) if capture else ""
        process.wait()
    except BaseException:
        stop_child(process)
        raise
    if capture and process.returncode != 0:
        lines = [line for line in errors.replace("\r", "\n").splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {process.returncode}"
        raise ProjectionError(f"precomputing the projections of {run_dir} failed: {reason}; retry with python -m workbench project {run_dir}")
    return process.returncode
