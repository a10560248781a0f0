"""Synthetic "scenes" whose hardest classes can only be told apart with coarse context.

Purpose: a small, fast dataset on which multi-scale / cross-scale contrastive learning
(method.md §2-3: linking high-resolution features to low-resolution, large-receptive-field ones)
has something to show. Every image is drawn with numpy/PIL only and written in the folder format
of :mod:`mscl.data.folder`.

Scene layout (``H x W``, default 96 x 128; every length below is for that size and scales with
``min(H / 96, W / 128)``, so larger scenes keep the same layout relative to the encoder strides):

* **Regions** — a wavy vertical boundary splits the image into a left and a right region; each is
  independently ``grass`` (0) or ``sand`` (1). These two are locally distinct (different colour and
  texture).
* **Band** — a wavy horizontal band 18-26 px tall crosses the whole image. Its pixels are ``road``
  (2) where the region at that column is grass and ``parking`` (3) where it is sand. Road and
  parking are painted from ONE shared "pavement" texture layer: locally identical, only the
  surrounding region (>= 9 px away from the band's centre line) tells them apart.
* **Blobs** — 2-4 ellipses (radii 5-9 px) off the band, painted from one shared "fur" texture:
  ``sheep`` (4) when the ellipse centre lies in grass, ``camel`` (5) when it lies in sand.
* **Flag** (6), rare — with probability 0.3 a small red rectangle (about 0.1% of all pixels).
* **Ignore** — a 2-px frame around the image is labelled 255 (the image shows the scene there).

Context pairs: ``CONTEXT_PAIRS = ((2, 3), (4, 5))``. Nuisances keep colour alone from solving the
locally distinct classes perfectly and do not depend on the class: per-pixel Gaussian noise, a
smooth multiplicative illumination field (0.75-1.25) and a per-image colour cast (+-12 per
channel).

Deterministic: image ``i`` of split ``s`` is drawn from ``numpy.random.default_rng([seed, s, i])``,
so it does not depend on how many images are generated.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from mscl.data.base import DatasetInfo
from mscl.data.folder import write_classes_file

SyntheticScenes = DatasetInfo(
    name="synthetic_scenes",
    class_names=("grass", "sand", "road", "parking", "sheep", "camel", "flag"),
    palette=(
        (60, 160, 60), (220, 190, 120), (128, 64, 128), (90, 90, 200), (240, 240, 240), (150, 90, 40),
        (230, 30, 30),
    ),
    ignore_index=255,
)

GRASS, SAND, ROAD, PARKING, SHEEP, CAMEL, FLAG = range(7)
CONTEXT_PAIRS = ((ROAD, PARKING), (SHEEP, CAMEL))
GENERATOR_VERSION = 2
BORDER_PX = 2
FLAG_PROBABILITY = 0.3
SPLIT_CODES = {"train": 0, "val": 1}

# material: (base RGB, per-pixel noise sigma, amplitude of low-frequency blotches)
_MATERIALS = {
    "grass": ((70, 125, 55), 22.0, 8.0),
    "sand": ((175, 155, 105), 14.0, 18.0),
    "pavement": ((115, 115, 120), 18.0, 10.0),
    "fur": ((185, 180, 210), 16.0, 14.0),
    "flag": ((205, 40, 45), 15.0, 0.0),
}
_CLASS_MATERIAL = ("grass", "sand", "pavement", "pavement", "fur", "fur", "flag")


def _smooth_field(rng: np.random.Generator, size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """Zero-mean, unit-range smooth random field [H, W]: a coarse random grid upsampled bicubically."""
    coarse = rng.uniform(-1.0, 1.0, size=grid).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((size[1], size[0]), Image.Resampling.BICUBIC))


def _material_layer(rng: np.random.Generator, size: tuple[int, int], material: str) -> np.ndarray:
    base, noise_sigma, blotch = _MATERIALS[material]
    layer = np.empty((*size, 3), dtype=np.float32)
    layer[:] = base
    layer += rng.normal(0.0, noise_sigma, size=(*size, 3)).astype(np.float32)
    if blotch:
        layer += blotch * _smooth_field(rng, size, (size[0] // 8, size[1] // 8))[..., None]
    return layer


def render_scene(rng: np.random.Generator, size: tuple[int, int] = (96, 128)) -> tuple[np.ndarray, np.ndarray]:
    """One scene: image uint8 [H,W,3] and label uint8 [H,W] (train ids, 255 on the border)."""
    height, width = size
    if height < 32 or width < 32:
        raise ValueError(f"synthetic scenes need at least 32x32 pixels, got {size}")
    ys, xs = np.mgrid[0:height, 0:width]
    scale = min(height / 96, width / 128)

    boundary = width * rng.uniform(0.3, 0.7) + scale * rng.uniform(2, 8) * np.sin(
        2 * np.pi * ys / (scale * rng.uniform(40, 90)) + rng.uniform(0, 2 * np.pi)
    )
    left_type, right_type = rng.integers(0, 2, size=2)
    region = np.where(xs < boundary, left_type, right_type).astype(np.uint8)
    label = region.copy()

    band_centre = height * rng.uniform(0.3, 0.7) + scale * rng.uniform(2, 6) * np.sin(
        2 * np.pi * xs / (scale * rng.uniform(60, 160)) + rng.uniform(0, 2 * np.pi)
    )
    band_half = scale * rng.uniform(9, 13)
    band = np.abs(ys - band_centre) < band_half
    label[band] = np.where(region[band] == GRASS, ROAD, PARKING)

    for _ in range(rng.integers(2, 5)):
        radius_y, radius_x = scale * rng.uniform(5, 9, size=2)
        for _attempt in range(20):
            cy, cx = rng.uniform(radius_y, height - radius_y), rng.uniform(radius_x, width - radius_x)
            centre_band = band_centre[0, min(int(cx), width - 1)]
            if abs(cy - centre_band) > band_half + radius_y + scale:
                break
        else:
            continue
        blob = ((ys - cy) / radius_y) ** 2 + ((xs - cx) / radius_x) ** 2 <= 1.0
        blob &= ~band
        centre_region = region[min(int(cy), height - 1), min(int(cx), width - 1)]
        label[blob] = SHEEP if centre_region == GRASS else CAMEL

    if rng.random() < FLAG_PROBABILITY:
        flag_h, flag_w = round(scale * rng.integers(4, 7)), round(scale * rng.integers(5, 9))
        top = rng.integers(BORDER_PX, height - BORDER_PX - flag_h)
        left = rng.integers(BORDER_PX, width - BORDER_PX - flag_w)
        label[top : top + flag_h, left : left + flag_w] = FLAG

    image = np.zeros((height, width, 3), dtype=np.float32)
    for material in _MATERIALS:
        layer = _material_layer(rng, size, material)
        where = np.isin(label, [k for k, m in enumerate(_CLASS_MATERIAL) if m == material])
        image[where] = layer[where]
    illumination = 1.0 + 0.25 * _smooth_field(rng, size, (3, 4))
    image = image * illumination[..., None] + rng.uniform(-12, 12, size=3).astype(np.float32)

    label[:BORDER_PX, :] = label[-BORDER_PX:, :] = SyntheticScenes.ignore_index
    label[:, :BORDER_PX] = label[:, -BORDER_PX:] = SyntheticScenes.ignore_index
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def _generator_record(n_train: int, n_val: int, size: tuple[int, int], seed: int) -> dict:
    return {"version": GENERATOR_VERSION, "n_train": n_train, "n_val": n_val, "size": list(size), "seed": seed}


def generate_synthetic_dataset(
    out_dir: str | Path,
    n_train: int = 160,
    n_val: int = 40,
    size: tuple[int, int] = (96, 128),
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write train/val synthetic scenes in the folder format; returns ``out_dir``.

    If ``out_dir`` already holds a dataset generated with the same parameters it is reused as is.
    A non-empty ``out_dir`` holding anything else is an error unless ``overwrite=True``, which
    deletes its ``images/``, ``masks/`` and ``classes.json`` first. ``classes.json`` is written
    last, so an interrupted generation is never mistaken for a finished one.
    """
    out_dir = Path(out_dir)
    if n_train < 1 or n_val < 0:
        raise ValueError(f"need n_train >= 1 and n_val >= 0, got n_train={n_train}, n_val={n_val}")
    size = (int(size[0]), int(size[1]))
    record = _generator_record(n_train, n_val, size, seed)
    classes_file = out_dir / "classes.json"
    if classes_file.is_file():
        try:
            existing = json.loads(classes_file.read_text()).get("generator")
        except json.JSONDecodeError:
            existing = None
        if existing == record:
            return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} is not empty and does not hold synthetic scenes generated with {record}; "
                "pass overwrite=True to replace it"
            )
        classes_file.unlink(missing_ok=True)
        for sub in ("images", "masks"):
            shutil.rmtree(out_dir / sub, ignore_errors=True)

    for split, count in (("train", n_train), ("val", n_val)):
        image_dir = out_dir / "images" / split
        mask_dir = out_dir / "masks" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
            image, label = render_scene(rng, size)
            name = f"scene_{index:05d}.png"
            Image.fromarray(image).save(image_dir / name)
            Image.fromarray(label).save(mask_dir / name)
    write_classes_file(
        classes_file,
        SyntheticScenes,
        extra={"generator": record, "context_pairs": [list(pair) for pair in CONTEXT_PAIRS]},
    )
    return out_dir
