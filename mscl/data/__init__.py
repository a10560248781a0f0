"""Datasets, joint transforms and synthetic scenes (contract: docs/architecture.md, mscl.data); the data
checks before training live in :mod:`mscl.data.validation` (scan and cache: :mod:`mscl.data.inspection`)."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mscl.data.constants import IMAGENET_MEAN, IMAGENET_STD
from mscl.registry import Registry

if TYPE_CHECKING:
    from mscl.data.ade20k import ADE20K_INFO, ADE20KDataset
    from mscl.data.base import DataError, DatasetInfo, JointTransform, LabelValues, SegmentationDataset
    from mscl.data.cadis import CaDISDataset
    from mscl.data.camvid import CAMVID_INFO, CamVidDataset
    from mscl.data.cityscapes import CITYSCAPES_INFO, CityscapesDataset
    from mscl.data.folder import FolderDataset
    from mscl.data.pascal_context import PASCAL_CONTEXT_INFO, PascalContextDataset
    from mscl.data.synthetic import CONTEXT_PAIRS, SyntheticScenes, generate_synthetic_dataset, render_scene
    from mscl.data.transforms import SegmentationTransform, build_transforms

# The submodules load on first use (PEP 562 ``__getattr__``), so that ``mscl.config`` and the ``mscl`` command line
# can read the dataset names without importing torch.
_LAZY: dict[str, str] = {
    "ADE20K_INFO": "ade20k", "ADE20KDataset": "ade20k",
    "DataError": "base", "DatasetInfo": "base", "JointTransform": "base", "LabelValues": "base", "SegmentationDataset": "base",
    "CaDISDataset": "cadis",
    "CAMVID_INFO": "camvid", "CamVidDataset": "camvid",
    "CITYSCAPES_INFO": "cityscapes", "CityscapesDataset": "cityscapes",
    "FolderDataset": "folder",
    "PASCAL_CONTEXT_INFO": "pascal_context", "PascalContextDataset": "pascal_context",
    "CONTEXT_PAIRS": "synthetic", "SyntheticScenes": "synthetic", "generate_synthetic_dataset": "synthetic",
    "render_scene": "synthetic",
    "SegmentationTransform": "transforms", "build_transforms": "transforms",
}

# "synthetic" reads a folder written by generate_synthetic_dataset (same format as "folder").
DATASETS: Registry[type[SegmentationDataset]] = Registry("dataset", {
    "camvid": "mscl.data.camvid:CamVidDataset",
    "cityscapes": "mscl.data.cityscapes:CityscapesDataset",
    "ade20k": "mscl.data.ade20k:ADE20KDataset",
    "pascal_context": "mscl.data.pascal_context:PascalContextDataset",
    "cadis": "mscl.data.cadis:CaDISDataset",
    "folder": "mscl.data.folder:FolderDataset",
    "synthetic": "mscl.data.folder:FolderDataset",
})


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"mscl.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mscl.data' has no attribute {name!r}")


def available_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset`."""
    return sorted(DATASETS)


def build_dataset(
    name: str, root: str | Path, split: str, transform: JointTransform | None = None, **kwargs: Any
) -> SegmentationDataset:
    """Dataset ``name`` at ``root``; ``kwargs`` go to its class (all accept ``seed``, see base.py;
    ``cadis`` also ``experiment`` and ``videos``)."""
    return DATASETS.lookup(name)(root, split, transform=transform, **kwargs)


__all__ = [
    "ADE20K_INFO",
    "CAMVID_INFO",
    "CITYSCAPES_INFO",
    "CONTEXT_PAIRS",
    "DATASETS",
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
