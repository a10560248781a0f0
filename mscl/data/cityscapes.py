"""Cityscapes (fine annotations), 19 train classes.

Layout (``root`` = the Cityscapes folder)::

    leftImg8bit/<split>/<city>/<frame>_leftImg8bit.png
    gtFine/<split>/<city>/<frame>_gtFine_labelIds.png

``split`` is ``train``, ``val`` or ``test``. labelIds are mapped to the standard 19 train ids
(road=7 -> 0, ..., bicycle=33 -> 18); the other labelIds 0..33 (void, license plate, ...) are declared
void -> 255; a raw value above 33 is UNKNOWN (also 255, reported by :mod:`mscl.data.validation`).
The palette is the official Cityscapes colour table.
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
)

CITYSCAPES_INFO = DatasetInfo(
    name="cityscapes",
    class_names=(
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
        "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
        "motorcycle", "bicycle",
    ),
    palette=(
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ),
    ignore_index=255,
)

# Cityscapes labelId of each train id, in train-id order.
CITYSCAPES_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CITYSCAPES_SPLITS = ("train", "val", "test")
# labelIds 0..33 exist; the 15 that are no train class (unlabeled, ego vehicle, ..., license plate) are void.
CITYSCAPES_LABEL_VALUES = format_label_values(
    "cityscapes",
    {label_id: train_id for train_id, label_id in enumerate(CITYSCAPES_LABEL_IDS)},
    set(range(34)) - set(CITYSCAPES_LABEL_IDS),
)
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"


class CityscapesDataset(SegmentationDataset):
    """Cityscapes fine split; ``image_id`` is the frame name, e.g. ``aachen_000000_000019``."""

    def __init__(
        self, root: str | Path, split: str, transform: JointTransform | None = None, seed: int | None = None
    ) -> None:
        root = require_dir(Path(root), "Cityscapes root")
        if split not in CITYSCAPES_SPLITS:
            raise ValueError(f"Cityscapes split must be one of {CITYSCAPES_SPLITS}, got {split!r}")
        image_root = require_dir(root / "leftImg8bit" / split, "Cityscapes image folder")
        label_root = require_dir(root / "gtFine" / split, "Cityscapes label folder")
        samples = []
        for image_path in sorted(image_root.glob(f"*/*{IMAGE_SUFFIX}")):
            frame = image_path.name[: -len(IMAGE_SUFFIX)]
            label_path = label_root / image_path.parent.name / f"{frame}{LABEL_SUFFIX}"
            if not label_path.is_file():
                raise FileNotFoundError(f"image {image_path} has no label: expected {label_path}")
            samples.append(SampleFiles(frame, image_path, label_path))
        if not samples:
            raise FileNotFoundError(f"no *{IMAGE_SUFFIX} images found under {image_root}/<city>/")
        super().__init__(samples, CITYSCAPES_INFO, CITYSCAPES_LABEL_VALUES, transform, seed)
