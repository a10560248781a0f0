"""Path confinement for run directories (``docs/run-format.md``): every path a run file names, and every file
read from a run, must stay inside that run's directory.

A run directory is data anyone may hand over (a shared folder, an archive, a clone). A relative path such as
``../../x.npz`` in ``predictions/index.csv``, an absolute path, or a symbolic link whose target lies outside the
run would make a reader open files the run does not own. :func:`confine` is the one rule: resolve the path
(following every symbolic link) and accept it only when it lies inside the resolved run directory.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from runformat.errors import RunFormatError

__all__ = ["RunPathError", "confine"]


class RunPathError(RunFormatError):
    """A run-relative path leaves its run directory; the message names where the path came from.

    Attributes: ``run_dir`` (resolved run directory), ``relative`` (the path as written), ``source`` (the file,
    and column and row when it came from a table, that named it).
    """

    def __init__(self, message: str, run_dir: Path, relative: str, source: str) -> None:
        super().__init__(message)
        self.run_dir = run_dir
        self.relative = relative
        self.source = source


def confine(run_dir: str | os.PathLike[str], relative: str | os.PathLike[str], source: str) -> Path:
    """The path ``relative`` inside ``run_dir``, resolved, or RunPathError when it is absolute or resolves
    (through ``..`` or symbolic links) outside ``run_dir``.

    Args:
        run_dir: the run directory.
        relative: a path relative to ``run_dir`` (``/`` separated, as in the run format).
        source: where the path came from, for the message, e.g. ``"predictions/index.csv, column 'file', row 3"``
            or the artifact itself when the path is fixed by the format.

    The file need not exist: the existing part of the path is resolved and the rest appended, so the answer
    does not change when the file appears later.
    """
    root = Path(run_dir).resolve()
    text = os.fspath(relative)
    if not text or PurePosixPath(text).is_absolute() or PureWindowsPath(text).is_absolute() \
            or PureWindowsPath(text).drive:
        raise RunPathError(
            f"{source}: {text!r} is not a path relative to the run directory {root}; "
            "run files may only name files inside their own run",
            root, text, source,
        )
    target = (root / text).resolve()
    if not target.is_relative_to(root):
        through = " through a symbolic link" if ".." not in PurePosixPath(text).parts else ""
        raise RunPathError(
            f"{source}: {text!r} resolves{through} to {target}, outside the run directory {root}; "
            "run files may only name files inside their own run",
            root, text, source,
        )
    return target
