"""ADE20K scene parsing (SceneParsing challenge 2016), 150 classes.

Layout: ``root`` is either the ``ADEChallengeData2016`` folder or its parent::

    ADEChallengeData2016/images/training/ADE_train_00000001.jpg
    ADEChallengeData2016/annotations/training/ADE_train_00000001.png
    ADEChallengeData2016/images/validation/...   annotations/validation/...

``split`` ``train``/``val`` (or ``training``/``validation``). Raw 0 ("other objects", declared
void) -> 255, raw k in 1..150 -> k-1; a raw value above 150 is UNKNOWN. Class names are the challenge's short names (objectInfo150 order). The
palette is NOT the official one: it is generated deterministically by
:func:`mscl.data.base.deterministic_palette`.
"""

from __future__ import annotations

from pathlib import Path

from mscl.data.base import (
    DatasetInfo,
    JointTransform,
    SegmentationDataset,
    deterministic_palette,
    format_label_values,
    require_dir,
)
from mscl.data.folder import pair_by_stem

ADE20K_CLASS_NAMES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair",
    "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion",
    "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink", "skyscraper",
    "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case", "pool table",
    "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind", "coffee table",
    "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm", "kitchen island",
    "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman",
    "bottle", "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy",
    "washer", "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave", "pot",
    "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce",
    "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

ADE20K_INFO = DatasetInfo(
    name="ade20k",
    class_names=ADE20K_CLASS_NAMES,
    palette=deterministic_palette(len(ADE20K_CLASS_NAMES)),
    ignore_index=255,
)

ADE20K_LABEL_VALUES = format_label_values(
    "ade20k", {raw_id: raw_id - 1 for raw_id in range(1, len(ADE20K_CLASS_NAMES) + 1)}, [0]
)

ADE20K_SPLIT_FOLDERS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}


def resolve_ade_root(root: Path) -> Path:
    """The folder holding ``images/`` and ``annotations/`` (``root`` or ``root/ADEChallengeData2016``)."""
    require_dir(root, "ADE20K root")
    for candidate in (root, root / "ADEChallengeData2016"):
        if (candidate / "images").is_dir() and (candidate / "annotations").is_dir():
            return candidate
    raise FileNotFoundError(
        f"ADE20K images/ and annotations/ not found in {root} nor in {root / 'ADEChallengeData2016'}"
    )


class ADE20KDataset(SegmentationDataset):
    """ADE20K; ``image_id`` is the file stem, e.g. ``ADE_val_00000001``."""

    def __init__(
        self, root: str | Path, split: str, transform: JointTransform | None = None, seed: int | None = None
    ) -> None:
        if split not in ADE20K_SPLIT_FOLDERS:
            raise ValueError(f"ADE20K split must be one of {tuple(ADE20K_SPLIT_FOLDERS)}, got {split!r}")
        base = resolve_ade_root(Path(root))
        folder = ADE20K_SPLIT_FOLDERS[split]
        image_dir = require_dir(base / "images" / folder, "ADE20K image folder")
        label_dir = require_dir(base / "annotations" / folder, "ADE20K annotation folder")
        super().__init__(pair_by_stem(image_dir, label_dir), ADE20K_INFO, ADE20K_LABEL_VALUES, transform, seed)
