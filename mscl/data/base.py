"""Common dataset machinery: class metadata, label id mapping, file reading, per-sample seeding.

A dataset is a list of (image_id, image path, label path) triples, a :class:`DatasetInfo` and its
:class:`LabelValues`: which raw label values are declared classes (raw id -> contiguous train id), which
are declared void (-> ignore index), where that is declared; every other raw value is UNKNOWN and also
reads as the ignore index, which :mod:`mscl.data.validation` reports before training. ``load_raw``
returns the untransformed image and mapped label; ``__getitem__`` applies the joint transform (see
:mod:`mscl.data.transforms`). Every read error names the file (:class:`DataError`).

Determinism of the random augmentation (see ``SegmentationDataset.__getitem__``):

* ``seed=None`` (default): the transform draws from the global torch RNG. In the main process that
  is whatever the trainer seeded with ``torch.manual_seed``; in a ``DataLoader`` worker it is the
  per-worker seed that the loader derives from its ``generator`` (or the global RNG). Same seed and
  same ``num_workers`` -> same batches.
* ``seed=<int>``: every sample runs under a private RNG seeded from ``(seed, epoch, index)``
  (call :meth:`SegmentationDataset.set_epoch` each epoch), so the augmentation of a sample does
  not depend on the number of workers nor on the order in which samples are loaded.
"""

from __future__ import annotations

import colorsys
import struct
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

JointTransform = Callable[[np.ndarray, np.ndarray], tuple[torch.Tensor, torch.Tensor]]

LABEL_MODES = ("L", "P", "I", "I;16", "I;16B", "I;16L")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# What PIL raises for empty, truncated or corrupt files (UnidentifiedImageError is an OSError).
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)


class DataError(ValueError):
    """A dataset file or its content is unusable; the message names the file (or the config key) and the fix."""


@dataclass(frozen=True)
class DatasetInfo:
    """Class metadata of a dataset: train-id order of ``class_names`` and ``palette``; one ignore id."""

    name: str
    class_names: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    ignore_index: int

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.palette):
            raise ValueError(
                f"DatasetInfo {self.name!r}: {len(self.class_names)} class names but "
                f"{len(self.palette)} palette colours"
            )
        if 0 <= self.ignore_index < len(self.class_names):
            raise ValueError(
                f"DatasetInfo {self.name!r}: ignore_index {self.ignore_index} collides with a train id "
                f"(0..{len(self.class_names) - 1})"
            )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass(frozen=True)
class SampleFiles:
    """One dataset item on disk."""

    image_id: str
    image_path: Path
    label_path: Path


def deterministic_palette(num_colours: int, seed: int = 0) -> tuple[tuple[int, int, int], ...]:
    """Well-separated RGB colours: hues along the golden-ratio sequence, alternating lightness.

    Used where no official palette is recalled (ADE20K, PASCAL-Context, CaDIS); the same
    ``(num_colours, seed)`` always gives the same colours.
    """
    golden = 0.618033988749895
    colours = []
    for k in range(num_colours):
        hue = (seed * 0.137 + k * golden) % 1.0
        lightness = (0.45, 0.6, 0.35)[k % 3]
        saturation = (0.75, 0.55, 0.9)[(k // 3) % 3]
        r, g, b = colorsys.hls_to_rgb(hue, lightness, saturation)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return tuple(colours)


def format_values(values: Iterable[int]) -> str:
    """Sorted integers with runs shortened: ``[0, 1, 2, 3, 7]`` -> ``"0..3, 7"``."""
    ordered = sorted(set(values))
    runs: list[list[int]] = []
    for value in ordered:
        if runs and value == runs[-1][-1] + 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    return ", ".join(f"{run[0]}..{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)) for run in runs)


@dataclass(frozen=True)
class LabelValues:
    """What the raw values of a dataset's label files mean.

    ``classes`` maps each declared class value to its train id, ``void`` lists the declared void values
    (read as the ignore index on purpose, e.g. CamVid 11). Any other raw value is UNKNOWN: it also reads
    as the ignore index, but :mod:`mscl.data.validation` stops training on it unless
    ``data.unknown_labels: ignore``. ``source`` says where the meaning is declared (for messages) and
    ``fix`` how a user declares more values.
    """

    classes: Mapping[int, int]
    void: frozenset[int]
    source: str
    fix: str

    def __post_init__(self) -> None:
        both = self.void.intersection(self.classes)
        if both:
            raise ValueError(f"{self.source}: raw values {format_values(both)} are declared both class and void")

    def kind(self, raw_value: int) -> str:
        """``"class"``, ``"void"`` or ``"unknown"``."""
        if raw_value in self.classes:
            return "class"
        return "void" if raw_value in self.void else "unknown"

    def describe(self) -> str:
        """E.g. ``"classes 0..10, void 11 (the camvid format)"``."""
        void = f", void {format_values(self.void)}" if self.void else ", no void value"
        return f"classes {format_values(self.classes)}{void} ({self.source})"

    def lut(self, ignore_index: int) -> np.ndarray:
        """The raw id -> train id table of :func:`build_label_lut` (void and unknown -> ``ignore_index``)."""
        return build_label_lut(self.classes, ignore_index)


def format_label_values(format_name: str, classes: Mapping[int, int], void: Iterable[int]) -> LabelValues:
    """The label values of a built-in dataset format, whose docstring declares its classes and void values."""
    return LabelValues(
        classes=dict(classes),
        void=frozenset(void),
        source=f"the {format_name} format",
        fix=f"check that these are {format_name} label-id images (not colour or train-id images) and correct them",
    )


def build_label_lut(mapping: Mapping[int, int], ignore_index: int, size: int = 256) -> np.ndarray:
    """Lookup table raw id -> train id; every raw id not in ``mapping`` maps to ``ignore_index``."""
    table_size = max(size, max(mapping, default=-1) + 1)
    lut = np.full(table_size, ignore_index, dtype=np.int64)
    for raw_id, train_id in mapping.items():
        if raw_id < 0:
            raise ValueError(f"raw label id must be non-negative, got {raw_id}")
        lut[raw_id] = train_id
    return lut


def apply_label_lut(raw: np.ndarray, lut: np.ndarray, ignore_index: int) -> np.ndarray:
    """Map raw ids through ``lut``; ids outside the table (large 16-bit or negative 32-bit values) become ignore."""
    raw = raw.astype(np.int64, copy=False)
    inside = (raw >= 0) & (raw < len(lut))
    return np.where(inside, lut[np.where(inside, raw, 0)], ignore_index)


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def unreadable(path: Path, what: str, error: BaseException) -> DataError:
    """The one-line error for a file PIL cannot decode (empty, truncated, corrupt)."""
    reason = str(error) or type(error).__name__
    return DataError(f"{what} {path} cannot be read ({reason}); replace it with a complete file or remove it from the split")


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 array [H, W, 3] (grey / RGBA / palette images are converted); read errors name the file."""
    require_file(path, "image file")
    try:
        with Image.open(path) as image:
            image.load()
            return np.array(image.convert("RGB"), dtype=np.uint8)
    except _READ_ERRORS as error:
        raise unreadable(path, "image file", error) from error


def read_label(path: Path) -> np.ndarray:
    """Raw label ids [H, W] from a single-channel 8-bit, 16-bit or palette PNG; read errors name the file."""
    require_file(path, "label file")
    try:
        with Image.open(path) as label:
            mode = label.mode
            if mode in LABEL_MODES:
                label.load()
                return np.array(label)
    except _READ_ERRORS as error:
        raise unreadable(path, "label file", error) from error
    raise DataError(
        f"label file {path} has PIL mode {mode!r}; expected a single-channel id image (one of {', '.join(LABEL_MODES)})"
    )


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample at one epoch, well mixed (numpy SeedSequence)."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def list_images(folder: Path) -> list[Path]:
    """Image files (png/jpg/jpeg, any case) directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class SegmentationDataset(Dataset):
    """Image/label pairs with their :class:`LabelValues` and an optional joint transform.

    ``__getitem__(i)`` -> ``{"image": FloatTensor[3,H,W] (normalised), "label": LongTensor[H,W],
    "image_id": str, "index": int}``. Without a transform the evaluation transform of
    :func:`mscl.data.transforms.build_transforms` (to-tensor + ImageNet normalisation) is used.
    """

    def __init__(
        self,
        samples: Sequence[SampleFiles],
        info: DatasetInfo,
        label_values: LabelValues,
        transform: JointTransform | None = None,
        seed: int | None = None,
    ) -> None:
        if not samples:
            raise ValueError(f"dataset {info.name!r} has no samples")
        if transform is None:
            from mscl.data.transforms import build_transforms

            transform = build_transforms(train=False, ignore_index=info.ignore_index)
        self.samples = list(samples)
        self.info = info
        self.label_values = label_values
        self.label_lut = label_values.lut(info.ignore_index)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation ``seed``-ed sampling reproduces."""
        self.epoch = epoch

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Untransformed image uint8 [H,W,3] and train-id label int64 [H,W]."""
        files = self.samples[index]
        image = read_image(files.image_path)
        raw_label = read_label(files.label_path)
        if image.shape[:2] != raw_label.shape[:2]:
            raise DataError(
                f"image {files.image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but label "
                f"{files.label_path} is {raw_label.shape[1]}x{raw_label.shape[0]}"
            )
        return image, apply_label_lut(raw_label, self.label_lut, self.info.ignore_index)

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for dataset of {len(self.samples)} items")
        image, label = self.load_raw(index)
        if self.seed is None:
            image_tensor, label_tensor = self.transform(image, label)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.seed, self.epoch, index))
                image_tensor, label_tensor = self.transform(image, label)
        return {
            "image": image_tensor,
            "label": label_tensor,
            "image_id": self.samples[index].image_id,
            "index": index,
        }
