"""Checks of a training config's data before step 1, and the dataset report of ``mscl check-data``.

Every train and val file the run uses is decoded once (:mod:`mscl.data.inspection`, cached), then:

* **unreadable files** (empty, truncated, wrong label mode) and **image/mask size mismatches** are
  problems naming the files;
* each raw label value is a declared class, declared void (both from the dataset's
  :class:`~mscl.data.base.LabelValues`) or UNKNOWN; UNKNOWN values are a problem naming the values, their
  pixel counts and up to 5 files, unless ``data.unknown_labels: ignore`` (then they read as the ignore
  index, as void does, and are only reported);
* a split without a single class pixel is a problem (its loss and metrics would be empty);
* train images of different sizes without ``data.crop_size`` (and ``data.batch_size`` > 1) are a problem:
  a batch cannot be stacked. Validation handles mixed sizes (:func:`mscl.evaluation.collate_by_size`);
* classes without a pixel in a split are warnings.

The raw-value histogram of each split goes to ``run.json`` as ``dataset.raw_label_histogram``
(docs/run-format.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mscl.data.base import DataError, DatasetInfo, LabelValues, SegmentationDataset
from mscl.data.inspection import SampleScan, ScanCache, scan_samples

MAX_NAMED_FILES = 5
MAX_NAMED_CLASSES = 8


@dataclass
class SplitReport:
    """What the scan found in the files of one split that a run uses (the first ``num_used`` of ``num_images``)."""

    split: str
    num_images: int
    limit_key: str
    scans: list[SampleScan]

    @property
    def num_used(self) -> int:
        return len(self.scans)

    @property
    def histogram(self) -> dict[int, int]:
        """Raw label value -> pixel count over the readable label files, in increasing value order."""
        total: Counter[int] = Counter()
        for scan in self.scans:
            total.update(scan.label.histogram or {})
        return dict(sorted(total.items()))

    @property
    def image_sizes(self) -> dict[tuple[int, int], int]:
        """(width, height) -> number of readable images, most frequent first."""
        return dict(Counter(scan.image.size for scan in self.scans if scan.image.size is not None).most_common())


@dataclass
class DataReport:
    """The dataset report: splits, label values, and the problems (stop training) and warnings found."""

    dataset: str
    root: str
    info: DatasetInfo
    labels: LabelValues
    unknown_labels: str
    splits: list[SplitReport]
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def raw_label_histogram(self) -> dict[str, dict[str, int]]:
        """``{split: {raw value: pixel count}}`` for run.json (JSON object keys are strings)."""
        return {report.split: {str(v): c for v, c in report.histogram.items()} for report in self.splits}

    def error_message(self) -> str | None:
        """One line with every problem, or None when the data is clean."""
        if not self.problems:
            return None
        if len(self.problems) == 1:
            return f"data check failed: {self.problems[0]}"
        listed = " ".join(f"({k}) {problem}." for k, problem in enumerate(self.problems, start=1))
        return f"data check failed with {len(self.problems)} problems: {listed}"

    def format(self) -> str:
        """The text ``mscl check-data`` prints."""
        info = self.info
        lines = [
            f"dataset {self.dataset} at {self.root}: {info.num_classes} classes, ignore index {info.ignore_index}",
            f"label values: {self.labels.describe()}; data.unknown_labels: {self.unknown_labels}",
        ]
        for report in self.splits:
            used = "all used" if report.num_used == report.num_images else f"first {report.num_used} used ({report.limit_key})"
            sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in report.image_sizes.items()) or "none readable"
            unreadable = report.num_used - sum(report.image_sizes.values())
            sizes += f", {unreadable} unreadable" if unreadable and report.image_sizes else ""
            lines += ["", f"split {report.split}: {report.num_images} images ({used}); sizes (WxH): {sizes}"]
            histogram = report.histogram
            total = sum(histogram.values())
            lines.append(f"  {'raw value':>9}  {'meaning':<24} {'pixels':>14} {'share':>8}")
            for value, count in histogram.items():
                lines.append(f"  {value:>9}  {self._meaning(value):<24} {count:>14,} {100 * count / total:>7.2f}%")
            absent = [value for value in self.labels.classes if value not in histogram]
            for value in sorted(absent):
                lines.append(f"  {value:>9}  {self._meaning(value):<24} {0:>14,} {0:>7.2f}%")
        lines.append("")
        lines += self._listing("problems", self.problems) + self._listing("warnings", self.warnings)
        return "\n".join(lines)

    def _meaning(self, value: int) -> str:
        kind = self.labels.kind(value)
        if kind == "class":
            return f"class {self.info.class_names[self.labels.classes[value]]}"
        return "void" if kind == "void" else "UNKNOWN"

    @staticmethod
    def _listing(title: str, items: list[str]) -> list[str]:
        if not items:
            return [f"{title}: none"]
        return [f"{title} ({len(items)}):", *(f"  - {item}" for item in items)]


def _some(paths: list[str], total: int) -> str:
    shown = ", ".join(paths[:MAX_NAMED_FILES])
    return shown + (f" and {total - MAX_NAMED_FILES} more" if total > MAX_NAMED_FILES else "")


def _pixels(histogram: Mapping[int, int], values: list[int]) -> str:
    return ", ".join(f"{value} ({histogram[value]:,} px)" for value in values)


def _file_problems(report: SplitReport) -> list[str]:
    problems = []
    errors = [message for scan in report.scans for message in (scan.image.error, scan.label.error) if message]
    if errors:
        shown = "; ".join(errors[:MAX_NAMED_FILES])
        more = f"; and {len(errors) - MAX_NAMED_FILES} more" if len(errors) > MAX_NAMED_FILES else ""
        problems.append(f"split {report.split!r}: {len(errors)} file(s) cannot be read: {shown}{more}")
    mismatched = [
        f"image {scan.files.image_path} is {scan.image.size[0]}x{scan.image.size[1]} but its label "
        f"{scan.files.label_path} is {scan.label.size[0]}x{scan.label.size[1]}"
        for scan in report.scans
        if scan.image.size is not None and scan.label.size is not None and scan.image.size != scan.label.size
    ]
    if mismatched:
        problems.append(
            f"split {report.split!r}: {len(mismatched)} image/label pair(s) differ in size (WxH): "
            f"{_some(mismatched, len(mismatched))}; a label must have its image's size"
        )
    return problems


def _label_findings(report: SplitReport, labels: LabelValues, info: DatasetInfo, policy: str) -> tuple[list[str], list[str]]:
    problems: list[str] = []
    warnings: list[str] = []
    histogram = report.histogram
    readable = [scan for scan in report.scans if scan.label.histogram is not None]
    unknown = [value for value in histogram if labels.kind(value) == "unknown"]
    if unknown:
        files = [str(s.files.label_path) for s in readable if any(labels.kind(v) == "unknown" for v in s.label.histogram)]
        found = (
            f"split {report.split!r}: label values outside the class list: {_pixels(histogram, unknown)} "
            f"in {len(files)} of {len(readable)} label files ({_some(files, len(files))}); {labels.describe()}"
        )
        if policy == "error":
            problems.append(f"{found}; {labels.fix}, or set data.unknown_labels: ignore to train with them ignored")
        else:
            warnings.append(f"{found}; they read as the ignore index (data.unknown_labels: ignore)")
    if readable and not any(labels.kind(value) == "class" for value in histogram):
        problems.append(
            f"split {report.split!r}: no pixel of its {len(readable)} label files holds a class value "
            f"(values found: {_pixels(histogram, list(histogram))}); {labels.describe()}; "
            "every pixel would be ignored, so check the label files against the class list"
        )
    elif readable:
        absent = [f"{info.class_names[train_id]} (raw {value})" for value, train_id in labels.classes.items() if value not in histogram]
        if absent:
            more = f" and {len(absent) - MAX_NAMED_CLASSES} more" if len(absent) > MAX_NAMED_CLASSES else ""
            named = ", ".join(absent[:MAX_NAMED_CLASSES]) + more
            warnings.append(f"split {report.split!r}: {len(absent)} of {info.num_classes} classes have no pixel: {named}")
    return problems, warnings


def _size_problem(report: SplitReport, data: Any) -> str | None:
    """Train images of several sizes cannot be stacked into a batch without a crop (or a fixed resize)."""
    sizes = report.image_sizes
    fixed_resize = isinstance(data.resize, (list, tuple))
    if len(sizes) < 2 or data.crop_size is not None or fixed_resize or data.batch_size < 2:
        return None
    scale = float(data.resize) if data.resize is not None else 1.0
    crop = [max(1, round(min(h for _, h in sizes) * scale)), max(1, round(min(w for w, _ in sizes) * scale))]
    found = ", ".join(f"{w}x{h}: {n} images" for (w, h), n in sizes.items())
    return (
        f"split {report.split!r} has images of {len(sizes)} sizes (WxH {found}) and data.crop_size is not set, so "
        f"training batches of data.batch_size={data.batch_size} cannot be stacked; set data.crop_size "
        f"(e.g. {crop}, the smallest image after data.resize) or data.batch_size=1"
    )


def inspect_split(
    dataset: SegmentationDataset, split: str, limit: int | None, limit_key: str, cache: ScanCache | None, progress: bool = False
) -> SplitReport:
    """Scan the first ``limit`` files (all when None) of one split."""
    samples = dataset.samples[:limit]
    return SplitReport(split, len(dataset.samples), limit_key, scan_samples(samples, cache, progress, desc=f"checking {split} data"))


def check_data(
    config: Any,
    datasets: Mapping[str, SegmentationDataset] | None = None,
    cache: ScanCache | None = None,
    progress: bool = False,
) -> DataReport:
    """The dataset report of ``config.data``'s train and val splits (as far as the run uses them).

    ``datasets`` maps split names to already built datasets (the trainer's); missing ones are built from
    ``config.data``. ``cache`` defaults to the user scan cache (:class:`~mscl.data.inspection.ScanCache`).
    """
    from mscl.data import build_dataset

    data = config.data
    datasets = dict(datasets or {})
    limits = {data.train_split: (data.max_train_images, "data.max_train_images")}
    limits.setdefault(data.val_split, (data.max_val_images, "data.max_val_images"))
    own_cache = cache is None
    cache = ScanCache() if own_cache else cache
    for split in limits:
        if split not in datasets:
            datasets[split] = build_dataset(data.name, data.root, split)
    try:
        splits = [inspect_split(datasets[split], split, limit, key, cache, progress) for split, (limit, key) in limits.items()]
    finally:
        if own_cache:
            cache.close()
    first = datasets[data.train_split]
    report = DataReport(data.name, str(Path(data.root)), first.info, first.label_values, data.unknown_labels, splits)
    if cache.problem:
        report.warnings.append(cache.problem)
    for split_report in splits:
        report.problems += _file_problems(split_report)
        problems, warnings = _label_findings(split_report, first.label_values, first.info, data.unknown_labels)
        report.problems += problems
        report.warnings += warnings
    size_problem = _size_problem(splits[0], data)
    if size_problem:
        report.problems.append(size_problem)
    return report


def require_clean(report: DataReport) -> None:
    """Raise :class:`~mscl.data.base.DataError` with every problem of ``report`` on one line."""
    message = report.error_message()
    if message:
        raise DataError(message)
