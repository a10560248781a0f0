"""Generic folder dataset (``name="folder"``), also the format of the synthetic scenes.

Layout::

    root/classes.json  (or classes.yaml / classes.yml)
    root/images/<split>/NAME.png|jpg|jpeg      RGB images
    root/masks/<split>/NAME.png                single-channel (8- or 16-bit) raw class ids

Images and masks are paired by file stem; an image without a mask is an error. The classes file::

    {"name": "my_data",                       # optional, default "folder"
     "classes": [{"id": 0, "name": "road", "color": [128, 64, 128]}, ...],
     "ignore_index": 255,                      # optional, default 255
     "void": [254]}                            # optional: more raw values that mean "not labelled"

Raw mask value ``id`` becomes train id = rank of ``id`` among the class ids (identity for ids
0..K-1); every other raw value maps to ``ignore_index``. Only the values the file declares void
(``ignore_index`` when the file sets it, and the ``void`` list) are void on purpose; any other
unlisted value is UNKNOWN, and training stops on it unless ``data.unknown_labels: ignore``
(:mod:`mscl.data.validation`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from mscl.data.base import (
    DatasetInfo,
    JointTransform,
    LabelValues,
    SampleFiles,
    SegmentationDataset,
    list_images,
    require_dir,
)

CLASSES_FILE_NAMES = ("classes.json", "classes.yaml", "classes.yml")
DEFAULT_IGNORE_INDEX = 255


def find_classes_file(root: Path) -> Path:
    for name in CLASSES_FILE_NAMES:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"classes file not found: expected one of {', '.join(CLASSES_FILE_NAMES)} in {root}")


def _class_entry(path: Path, position: int, entry: Any) -> tuple[int, str, tuple[int, int, int]]:
    where = f"classes file {path}: classes[{position}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a mapping with keys id, name, color; got {entry!r}")
    for key in ("id", "name", "color"):
        if key not in entry:
            raise ValueError(f"{where} is missing key {key!r}")
    raw_id, name, colour = entry["id"], entry["name"], entry["color"]
    if not isinstance(raw_id, int) or isinstance(raw_id, bool) or raw_id < 0:
        raise ValueError(f"{where}: 'id' must be a non-negative integer, got {raw_id!r}")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: 'name' must be a non-empty string, got {name!r}")
    if (
        not isinstance(colour, (list, tuple))
        or len(colour) != 3
        or not all(isinstance(c, int) and 0 <= c <= 255 for c in colour)
    ):
        raise ValueError(f"{where}: 'color' must be [r, g, b] with integers 0..255, got {colour!r}")
    return raw_id, name, (colour[0], colour[1], colour[2])


def load_classes_file(path: Path) -> tuple[DatasetInfo, LabelValues]:
    """Parse a classes file into the DatasetInfo and its label values (raw id -> train id, declared void)."""
    text = path.read_text()
    try:
        document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"classes file {path} is not valid {path.suffix[1:].upper()}: {error}") from error
    if not isinstance(document, dict):
        raise ValueError(f"classes file {path} must hold a mapping with key 'classes'")
    if "classes" not in document:
        raise ValueError(f"classes file {path} is missing key 'classes'")
    entries = document["classes"]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"classes file {path}: 'classes' must be a non-empty list")
    parsed = sorted((_class_entry(path, k, e) for k, e in enumerate(entries)), key=lambda item: item[0])
    raw_ids = [raw_id for raw_id, _, _ in parsed]
    if len(set(raw_ids)) != len(raw_ids):
        raise ValueError(f"classes file {path}: duplicate class ids in {raw_ids}")
    ignore_index = document.get("ignore_index", DEFAULT_IGNORE_INDEX)
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise ValueError(f"classes file {path}: 'ignore_index' must be an integer, got {ignore_index!r}")
    if ignore_index in raw_ids:
        raise ValueError(f"classes file {path}: 'ignore_index' {ignore_index} is also a class id")
    void = document.get("void", [])
    if not isinstance(void, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in void):
        raise ValueError(f"classes file {path}: 'void' must be a list of non-negative integers, got {void!r}")
    if set(void) & set(raw_ids):
        raise ValueError(f"classes file {path}: 'void' values {sorted(set(void) & set(raw_ids))} are also class ids")
    declared_void = set(void) | ({ignore_index} if "ignore_index" in document else set())
    name = document.get("name", "folder")
    try:
        info = DatasetInfo(
            name=str(name),
            class_names=tuple(n for _, n, _ in parsed),
            palette=tuple(c for _, _, c in parsed),
            ignore_index=ignore_index,
        )
    except ValueError as error:
        raise ValueError(f"classes file {path}: {error}") from error
    labels = LabelValues(
        classes={raw_id: train_id for train_id, raw_id in enumerate(raw_ids)},
        void=frozenset(declared_void),
        source=f"classes file {path}",
        fix=f"declare them in {path} (as classes, or as void under 'void' or 'ignore_index')",
    )
    return info, labels


def write_classes_file(path: Path, info: DatasetInfo, extra: dict[str, Any] | None = None) -> None:
    """Write ``info`` as a classes.json (raw id = train id), plus optional extra top-level keys."""
    document: dict[str, Any] = {
        "name": info.name,
        "classes": [
            {"id": k, "name": n, "color": list(c)} for k, (n, c) in enumerate(zip(info.class_names, info.palette))
        ],
        "ignore_index": info.ignore_index,
    }
    document.update(extra or {})
    path.write_text(json.dumps(document, indent=2) + "\n")


def pair_by_stem(image_dir: Path, mask_dir: Path) -> list[SampleFiles]:
    """Pair ``image_dir/NAME.*`` with ``mask_dir/NAME.png``; a missing mask is an error naming the image."""
    samples = []
    seen: dict[str, Path] = {}
    for image_path in list_images(image_dir):
        if image_path.stem in seen:
            raise ValueError(f"two images share the name {image_path.stem!r}: {seen[image_path.stem]} and {image_path}")
        seen[image_path.stem] = image_path
        mask_path = mask_dir / f"{image_path.stem}.png"
        if not mask_path.is_file():
            raise FileNotFoundError(f"image {image_path} has no mask: expected {mask_path}")
        samples.append(SampleFiles(image_path.stem, image_path, mask_path))
    if not samples:
        raise FileNotFoundError(f"no images (.png/.jpg/.jpeg) found in {image_dir}")
    return samples


class FolderDataset(SegmentationDataset):
    """A dataset in the folder layout described in the module docstring."""

    def __init__(
        self, root: str | Path, split: str, transform: JointTransform | None = None, seed: int | None = None
    ) -> None:
        root = require_dir(Path(root), "dataset root")
        info, labels = load_classes_file(find_classes_file(root))
        image_dir = require_dir(root / "images" / split, f"image folder of split {split!r}")
        mask_dir = require_dir(root / "masks" / split, f"mask folder of split {split!r}")
        super().__init__(pair_by_stem(image_dir, mask_dir), info, labels, transform, seed)
