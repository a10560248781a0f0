"""The exclusive lock of a run directory (docs/run-format.md, "Lock").

``mscl train``, ``mscl export`` and ``mscl eval --save`` hold it for as long as they write the run, with
``fcntl.flock`` on ``RUN/.run.lock``; the kernel releases it when the process ends, however it ends.
The lock file records the holder (PID, command, start time) so a second process can say who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from runformat.errors import RunLockedError
from runformat.layout import LOCK_FILE


def _holder_text(raw: bytes) -> str:
    try:
        holder = json.loads(raw.decode())
        return f"process {holder['pid']} ({holder['command']}, started {holder['started']})"
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        return "another process"


class RunLock:
    """Exclusive, non-blocking lock on one run directory (created if needed); use as a context manager.

    ``command`` is what the lock file records for other processes' messages (default: program and subcommand).
    ``create=False`` is for commands that write into an existing run (``mscl export``, ``mscl eval --save``): a
    missing run directory is then a FileNotFoundError instead of a new folder.
    """

    def __init__(self, run_dir: str | Path, command: str | None = None, create: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.create = create
        self.path = self.run_dir / LOCK_FILE
        self.command = command if command is not None else " ".join([Path(sys.argv[0]).name, *sys.argv[1:2]])
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock, or raise RunLockedError naming the holder's PID and start time."""
        if self._fd is not None:
            return self
        if not self.create and not self.run_dir.is_dir():
            raise FileNotFoundError(f"run directory {self.run_dir} not found")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(os.pread(fd, 4096, 0))
            os.close(fd)
            raise RunLockedError(
                f"run directory {self.run_dir} is in use by {holder}; wait for it to finish or stop it, then try again"
            ) from None
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        record = json.dumps({"pid": os.getpid(), "command": self.command, "started": started}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock back (the lock file stays: deleting it would let two processes lock different files)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.release()
