"""Datasets, joint transforms and synthetic scenes (contract: docs/architecture.md, mscl.data); the data
checks before training live in :mod:`mscl.data.validation` (scan and cache: :mod:`mscl.data.inspection`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mscl.data.ade20k import ADE20K_INFO, ADE20KDataset
from mscl.data.base import DataError, DatasetInfo, JointTransform, LabelValues, SegmentationDataset
from mscl.data.cadis import CaDISDataset
from mscl.data.camvid import CAMVID_INFO, CamVidDataset
from mscl.data.cityscapes import CITYSCAPES_INFO, CityscapesDataset
from mscl.data.folder import FolderDataset
from mscl.data.pascal_context import PASCAL_CONTEXT_INFO, PascalContextDataset
from mscl.data.synthetic import CONTEXT_PAIRS, SyntheticScenes, generate_synthetic_dataset, render_scene
from mscl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, SegmentationTransform, build_transforms

# "synthetic" reads a folder written by generate_synthetic_dataset (same format as "folder").
_DATASETS: dict[str, type[SegmentationDataset]] = {
    "camvid": CamVidDataset,
    "cityscapes": CityscapesDataset,
    "ade20k": ADE20KDataset,
    "pascal_context": PascalContextDataset,
    "cadis": CaDISDataset,
    "folder": FolderDataset,
    "synthetic": FolderDataset,
}


def available_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset`."""
    return sorted(_DATASETS)


def build_dataset(
    name: str, root: str | Path, split: str, transform: JointTransform | None = None, **kwargs: Any
) -> SegmentationDataset:
    """Dataset ``name`` at ``root``; ``kwargs`` go to its class (all accept ``seed``, see base.py;
    ``cadis`` also ``experiment`` and ``videos``)."""
    if name not in _DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available_datasets())}")
    return _DATASETS[name](root, split, transform=transform, **kwargs)


__all__ = [
    "ADE20K_INFO",
    "CAMVID_INFO",
    "CITYSCAPES_INFO",
    "CONTEXT_PAIRS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PASCAL_CONTEXT_INFO",
    "ADE20KDataset",
    "CaDISDataset",
    "CamVidDataset",
    "CityscapesDataset",
    "DataError",
    "DatasetInfo",
    "FolderDataset",
    "LabelValues",
    "PascalContextDataset",
    "SegmentationDataset",
    "SegmentationTransform",
    "SyntheticScenes",
    "available_datasets",
    "build_dataset",
    "build_transforms",
    "generate_synthetic_dataset",
    "render_scene",
]
