"""Errors of the run directory format (``docs/run-format.md``); every message is one line for the user."""

from __future__ import annotations


class RunFormatError(Exception):
    """A run-directory file does not follow docs/run-format.md (the message names the file and the key)."""


class RunNameError(ValueError):
    """A run name is not one plain folder name (``runformat.names.check_run_name``)."""


class RunExistsError(FileExistsError):
    """A new run would reuse a non-empty run directory without ``--resume`` or ``--overwrite``."""


class RunLockedError(RuntimeError):
    """Another process holds the run directory's lock (``runformat.lock.RunLock``)."""
