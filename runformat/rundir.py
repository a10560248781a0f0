"""Opening a run directory for writing (docs/run-format.md, "Starting, resuming and replacing a run").

With the run's lock held: finish an interrupted export swap, delete temporaries left by killed
processes, then refuse a non-empty directory unless the run is resumed or replaced (``--overwrite``,
which empties it first).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from runformat.atomic import recover_swap, remove_stale_temporaries
from runformat.errors import RunExistsError
from runformat.layout import LOCK_FILE


def run_entries(run_dir: str | Path) -> list[str]:
    """Names in a run directory, sorted, without the lock file."""
    folder = Path(run_dir)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE)


def tidy_run_dir(run_dir: str | Path) -> None:
    """Roll an interrupted export swap forward and remove stale temporaries (call with the lock held)."""
    recover_swap(run_dir)
    remove_stale_temporaries(run_dir)


def empty_run_dir(run_dir: str | Path) -> None:
    """Delete everything in ``run_dir`` except the lock file (call with the lock held)."""
    for name in run_entries(run_dir):
        path = Path(run_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def prepare_run_dir(run_dir: str | Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """Make ``run_dir`` ready for ``mscl train`` (call with the lock held).

    A new run (neither ``resume`` nor ``overwrite``) needs an empty or missing directory; RunExistsError
    otherwise, naming what is there and the three ways out.
    """
    tidy_run_dir(run_dir)
    if resume:
        return
    if overwrite:
        empty_run_dir(run_dir)
        return
    entries = run_entries(run_dir)
    if entries:
        shown = ", ".join(entries[:3]) + (", …" if len(entries) > 3 else "")
        raise RunExistsError(
            f"run directory {run_dir} is not empty ({shown}); continue it with mscl train --resume {run_dir}, "
            "replace it with --overwrite, or choose another --name"
        )
