"""The one atomic writer of run directories (docs/run-format.md, "Atomic writes").

A file is written under a temporary name in its final folder (``<name>.tmp-<pid>-<token>``), flushed to
disk and renamed over the final name, so a reader sees the old or the new file, never half of one. A
folder of files that belong together (a checkpoint set) is written the same way as one unit. The
folders of one export are swapped in through a journal (``.swap.json``) that the next writer rolls
forward. Temporary names left by a killed process are removed when a run is opened for writing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from runformat.layout import SWAP_JOURNAL

TEMP_MARK = ".tmp-"
_TEMP_NAME = re.compile(rf".+{re.escape(TEMP_MARK)}(\d+)(?:-[0-9a-f]+)?")


def temporary_name(path: str | Path) -> Path:
    """A unique temporary sibling of ``path`` naming this process (``<name>.tmp-<pid>-<token>``)."""
    path = Path(path)
    return path.with_name(f"{path.name}{TEMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (renames into it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[IO[bytes]]:
    """Open a binary file that appears at ``path`` complete, or not at all if the block raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    path = Path(path)
    with atomic_file(path) as handle:
        handle.write(data)
    return path


def write_json(path: str | Path, value: Any) -> Path:
    """Write ``value`` as indented JSON atomically (NaN allowed, as Python's json writes it)."""
    return atomic_write_bytes(path, (json.dumps(value, indent=2, allow_nan=True) + "\n").encode())


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write_bytes(path, text.encode())


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(Path(root) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder; when the block succeeds it is flushed and renamed to ``path``.

    An existing ``path`` is moved aside first and deleted afterwards. If the block raises, the temporary
    folder is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        aside = temporary_name(path) if path.exists() else None
        if aside is not None:
            os.rename(path, aside)
        os.rename(tmp, path)
        fsync_dir(path.parent)
        if aside is not None:
            shutil.rmtree(aside)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def link_atomically(source: str | Path, target: str | Path) -> Path:
    """Make ``target`` a hard link to ``source`` (a copy where links are not supported), replacing it atomically."""
    source, target = Path(source), Path(target)
    tmp = temporary_name(target)
    try:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def swap_folders(parent: str | Path, staging: str | Path, names: tuple[str, ...]) -> None:
    """Replace the folders ``parent/<name>`` by ``staging/<name>`` as one unit.

    The journal ``parent/.swap.json`` is written first: from then on the new folders win, and
    ``recover_swap`` finishes the swap if this process is killed half-way. ``staging`` must be a
    folder inside ``parent`` whose content is complete.
    """
    parent, staging = Path(parent), Path(staging)
    _fsync_tree(staging)
    write_json(parent / SWAP_JOURNAL, {"staging": staging.name, "folders": list(names)})
    recover_swap(parent)


def recover_swap(parent: str | Path) -> bool:
    """Finish a swap whose journal is present (idempotent); returns whether there was one."""
    parent = Path(parent)
    journal = parent / SWAP_JOURNAL
    if not journal.is_file():
        return False
    plan = json.loads(journal.read_text())
    staging = parent / plan["staging"]
    for name in plan["folders"]:
        incoming = staging / name
        if not incoming.exists():
            continue
        current = parent / name
        if current.exists():
            os.rename(current, staging / f"{name}.old")
        os.rename(incoming, current)
    fsync_dir(parent)
    journal.unlink()
    fsync_dir(parent)
    shutil.rmtree(staging, ignore_errors=True)
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(root: str | Path) -> list[Path]:
    """Delete ``*.tmp-<pid>*`` files and folders under ``root`` left by a process that is gone (or by this one).

    Call it while holding the run's lock: this process is then the only writer, so its own temporaries
    are leftovers of an earlier, failed attempt. Returns what was removed.
    """
    removed = []
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            match = _TEMP_NAME.fullmatch(name)
            if not match:
                continue
            pid = int(match.group(1))
            if pid != os.getpid() and _pid_alive(pid):
                continue
            path = Path(folder) / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                dirs.remove(name)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed
