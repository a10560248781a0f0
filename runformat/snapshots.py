"""Embedding snapshots (docs/run-format.md, "Snapshots"): at every validation ``mscl train`` keeps the
per-stage embeddings of one fixed, class-balanced set of validation pixels, so the workbench can follow the
feature spaces through training (docs/workbench.md, "Training dynamics").

Layout, relative to the run directory::

    snapshots/meta.json              pixel count, stages, widths, split, seed, images the pixels come from
    snapshots/pixels.parquet         the fixed pixels (PIXEL_COLUMNS), chosen once per run from the seed
    snapshots/index.csv              one row per complete snapshot (INDEX_COLUMNS), written after its file
    snapshots/step-<n>/embeddings.npz
                                     stage<s>_backbone, stage<s>_projected float16 [M, C_s]; prediction int16 [M]

The pixel count is bounded so that one snapshot file stays within ``MAX_BYTES`` for any model
(``pixel_budget``). Paths and limits live here, torch-free, for the ``mscl`` writer and the ``workbench`` reader.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "SNAPSHOTS_DIR",
    "META",
    "PIXELS",
    "INDEX",
    "INDEX_COLUMNS",
    "PIXEL_COLUMNS",
    "META_KEYS",
    "PREDICTION_KEY",
    "MAX_BYTES",
    "MAX_PIXELS",
    "MAX_IMAGES",
    "ARCHIVE_SLACK_BYTES",
    "snapshot_folder",
    "snapshot_file",
    "array_key",
    "pixel_budget",
]

SNAPSHOTS_DIR = "snapshots"
META = "snapshots/meta.json"
PIXELS = "snapshots/pixels.parquet"
INDEX = "snapshots/index.csv"
INDEX_COLUMNS = ("step", "miou", "file")
"""snapshots/index.csv: the training step, the validation mIoU at that step and the run-relative snapshot file."""
PIXEL_COLUMNS = ("pixel", "image_index", "image_id", "y", "x", "label")
"""snapshots/pixels.parquet: row ``pixel`` of every snapshot array; ``y, x`` at the validation resolution."""
META_KEYS = ("num_pixels", "stages", "backbone_dims", "projected_dims", "has_projector", "split", "seed", "image_indices")
PREDICTION_KEY = "prediction"

MAX_BYTES = 1_000_000
"""Upper bound on the size of one snapshot file (``snapshots/step-<n>/embeddings.npz``)."""
MAX_PIXELS = 1000
"""Pixels per snapshot when the model's widths allow it within ``MAX_BYTES``."""
MAX_IMAGES = 16
"""Validation images the pixels are drawn from (evenly spaced over the split), so a snapshot costs a fraction of
a validation pass."""
ARCHIVE_SLACK_BYTES = 16_384
"""Room left in ``MAX_BYTES`` for the .npz container (member headers, deflate block overhead)."""


def snapshot_folder(step: int) -> str:
    """``snapshots/step-<step>``: the folder of the snapshot taken at validation step ``step``."""
    return f"{SNAPSHOTS_DIR}/step-{int(step)}"


def snapshot_file(step: int) -> str:
    """``snapshots/step-<step>/embeddings.npz``: the arrays of one snapshot."""
    return f"{snapshot_folder(step)}/embeddings.npz"


def array_key(stage: int, kind: str) -> str:
    """Name of a stage's array in a snapshot file: ``stage<s>_backbone`` or ``stage<s>_projected``."""
    if kind not in ("backbone", "projected"):
        raise ValueError(f"snapshot kind must be 'backbone' or 'projected', got {kind!r}")
    return f"stage{int(stage)}_{kind}"


def pixel_budget(backbone_dims: Sequence[int], projected_dims: Sequence[int], max_bytes: int = MAX_BYTES,
                 max_pixels: int = MAX_PIXELS) -> int:
    """Pixels per snapshot: ``min(max_pixels, (max_bytes - ARCHIVE_SLACK_BYTES) // bytes_per_pixel)``.

    ``bytes_per_pixel = 2 * (sum(backbone_dims) + sum(projected_dims)) + 2``: float16 features of every stage and
    kind plus the int16 prediction. Raises ValueError when not even one pixel fits.
    """
    bytes_per_pixel = 2 * (sum(int(d) for d in backbone_dims) + sum(int(d) for d in projected_dims)) + 2
    count = min(int(max_pixels), (int(max_bytes) - ARCHIVE_SLACK_BYTES) // bytes_per_pixel)
    if count < 1:
        raise ValueError(f"a snapshot pixel takes {bytes_per_pixel} bytes, more than the snapshot budget of {max_bytes} "
                         "bytes; set export.snapshots=false")
    return count
