"""CamVid, SegNet split (11 classes + void).

Layout (``root`` = the folder holding the list files)::

    train.txt / val.txt / test.txt     "image_path label_path" per line, relative to root
    train/*.png  trainannot/*.png      8-bit labels, ids 0..10 = classes, 11 = void

Void (11) is the ignore index; any other raw id is UNKNOWN (read as void, reported by
:mod:`mscl.data.validation`).
"""

from __future__ import annotations

from pathlib import Path

from mscl.data.base import (
    DatasetInfo,
    JointTransform,
    SampleFiles,
    SegmentationDataset,
    format_label_values,
    require_dir,
    require_file,
)

CAMVID_INFO = DatasetInfo(
    name="camvid",
    class_names=(
        "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
        "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
    ),
    palette=(
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
        (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    ),
    ignore_index=11,
)

CAMVID_SPLITS = ("train", "val", "test")
CAMVID_LABEL_VALUES = format_label_values("camvid", {k: k for k in range(CAMVID_INFO.num_classes)}, [CAMVID_INFO.ignore_index])


def read_pair_list(list_file: Path, root: Path) -> list[SampleFiles]:
    """Parse a "image_path label_path" list; every listed file must exist."""
    samples = []
    for line_number, line in enumerate(list_file.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(
                f"{list_file}:{line_number}: expected 'image_path label_path', got {line.strip()!r}"
            )
        image_path = require_file(root / fields[0], f"image listed in {list_file}")
        label_path = require_file(root / fields[1], f"label listed in {list_file}")
        samples.append(SampleFiles(image_path.stem, image_path, label_path))
    if not samples:
        raise ValueError(f"list file {list_file} names no image/label pairs")
    return samples


class CamVidDataset(SegmentationDataset):
    """CamVid read from ``<root>/<split>.txt``."""

    def __init__(
        self, root: str | Path, split: str, transform: JointTransform | None = None, seed: int | None = None
    ) -> None:
        root = require_dir(Path(root), "CamVid root")
        if split not in CAMVID_SPLITS:
            raise ValueError(f"CamVid split must be one of {CAMVID_SPLITS}, got {split!r}")
        list_file = require_file(root / f"{split}.txt", f"CamVid {split} list")
        super().__init__(read_pair_list(list_file, root), CAMVID_INFO, CAMVID_LABEL_VALUES, transform, seed)
