"""Scan of a dataset's files before training: decode every image and label once, keep their sizes and
each label's raw-value histogram, and cache the result per file in a user cache directory.

A cache entry is keyed by the file's absolute path and kind (image / label) and is reused only while the
file has the same size and modification time (ns), so the second start over an unchanged dataset reads no
image. The cache lives in ``$MSCL_CACHE_DIR``, else the platform's user cache folder (``platformdirs``:
``$XDG_CACHE_HOME/mscl`` or ``~/.cache/mscl`` on Linux) — never inside the repository or the dataset.
What the scan results mean is decided by :mod:`mscl.data.validation`.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs
from tqdm.auto import tqdm

from mscl.data.base import DataError, SampleFiles, read_image, read_label

CACHE_ENV = "MSCL_CACHE_DIR"
CACHE_FILE = "data-scan-v1.sqlite3"
MAX_THREADS = 8


@dataclass(frozen=True)
class FileScan:
    """One decoded file: ``size`` (width, height) and, for labels, ``histogram`` raw value -> pixels;
    ``error`` (one line naming the file) instead when it cannot be read."""

    size: tuple[int, int] | None = None
    histogram: dict[int, int] | None = None
    error: str | None = None

    def to_json(self) -> str:
        histogram = None if self.histogram is None else [[value, count] for value, count in self.histogram.items()]
        return json.dumps({"size": self.size, "histogram": histogram, "error": self.error})

    @classmethod
    def from_json(cls, text: str) -> FileScan:
        data = json.loads(text)
        size = None if data["size"] is None else (int(data["size"][0]), int(data["size"][1]))
        histogram = None if data["histogram"] is None else {int(v): int(c) for v, c in data["histogram"]}
        return cls(size=size, histogram=histogram, error=data["error"])


@dataclass(frozen=True)
class SampleScan:
    """The scan of one dataset item: its image and its label."""

    files: SampleFiles
    image: FileScan
    label: FileScan


def raw_histogram(label: np.ndarray) -> dict[int, int]:
    """Raw value -> pixel count of a label array (only values that occur), in increasing value order."""
    flat = label.ravel()
    if flat.dtype in (np.uint8, np.uint16):
        counts = np.bincount(flat)
        values = np.flatnonzero(counts)
        return {int(v): int(counts[v]) for v in values}
    values, counts = np.unique(flat, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts)}


def scan_image(path: Path) -> FileScan:
    """Decode an image completely (a truncated file fails here, not at step N of training)."""
    try:
        image = read_image(path)
    except (DataError, FileNotFoundError) as error:
        return FileScan(error=str(error))
    return FileScan(size=(int(image.shape[1]), int(image.shape[0])))


def scan_label(path: Path) -> FileScan:
    """Decode a label file and count its raw values."""
    try:
        label = read_label(path)
    except (DataError, FileNotFoundError) as error:
        return FileScan(error=str(error))
    return FileScan(size=(int(label.shape[1]), int(label.shape[0])), histogram=raw_histogram(label))


def cache_dir() -> Path:
    """``$MSCL_CACHE_DIR``, else the user cache folder of ``mscl`` (``platformdirs.user_cache_dir``)."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path(platformdirs.user_cache_dir("mscl"))


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


class ScanCache:
    """SQLite table (kind, path) -> (size, mtime_ns, scan); several processes may share it.

    If the cache folder cannot be created or opened the scan still runs, uncached; ``problem`` then says why.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.path = (directory or cache_dir()) / CACHE_FILE
        self.problem: str | None = None
        self.connection: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.connection = sqlite3.connect(self.path, timeout=30)
            self.connection.execute(
                "CREATE TABLE IF NOT EXISTS scans (kind TEXT, path TEXT, size INTEGER, mtime_ns INTEGER, scan TEXT, "
                "PRIMARY KEY (kind, path))"
            )
            self.connection.commit()
        except (OSError, sqlite3.Error) as error:
            self.problem = f"scan cache {self.path} unavailable ({error}); set {CACHE_ENV} to a writable folder"
            self.connection = None

    def get(self, kind: str, path: Path, stamp: tuple[int, int] | None) -> FileScan | None:
        if self.connection is None or stamp is None:
            return None
        row = self.connection.execute(
            "SELECT size, mtime_ns, scan FROM scans WHERE kind = ? AND path = ?", (kind, str(path))
        ).fetchone()
        if row is None or (row[0], row[1]) != stamp:
            return None
        return FileScan.from_json(row[2])

    def put_many(self, entries: list[tuple[str, Path, tuple[int, int], FileScan]]) -> None:
        if self.connection is None or not entries:
            return
        try:
            with self.connection:
                self.connection.executemany(
                    "INSERT OR REPLACE INTO scans VALUES (?, ?, ?, ?, ?)",
                    [(kind, str(path), stamp[0], stamp[1], scan.to_json()) for kind, path, stamp, scan in entries],
                )
        except sqlite3.Error as error:
            self.problem = f"scan cache {self.path} not updated ({error}); set {CACHE_ENV} to a writable folder"

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


_SCANNERS = {"image": scan_image, "label": scan_label}


def scan_samples(
    samples: Sequence[SampleFiles], cache: ScanCache | None = None, progress: bool = False, desc: str = "checking data"
) -> list[SampleScan]:
    """Scan every image and label of ``samples`` (in order), reusing and filling ``cache``.

    Files are decoded on up to ``MAX_THREADS`` threads (PIL decodes without the GIL; more threads than
    cores still overlap file reads); the result does not depend on the number of threads.
    """
    jobs = [(kind, Path(getattr(s, f"{kind}_path")).absolute()) for s in samples for kind in ("image", "label")]
    stamps = [_stamp(path) for _, path in jobs]
    results: list[FileScan | None] = [
        cache.get(kind, path, stamp) if cache is not None else None for (kind, path), stamp in zip(jobs, stamps)
    ]
    todo = [k for k, result in enumerate(results) if result is None]
    if todo:
        threads = min(MAX_THREADS, len(todo))
        with ThreadPoolExecutor(threads) as pool, tqdm(total=len(todo), desc=desc, disable=not progress, leave=False, delay=1.0) as bar:
            for k, result in zip(todo, pool.map(lambda k: _SCANNERS[jobs[k][0]](jobs[k][1]), todo)):
                results[k] = result
                bar.update(1)
        if cache is not None:
            cache.put_many([(jobs[k][0], jobs[k][1], stamps[k], results[k]) for k in todo if stamps[k] is not None])
    return [SampleScan(sample, results[2 * k], results[2 * k + 1]) for k, sample in enumerate(samples)]
