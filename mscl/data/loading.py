"""Datasets and loaders of a run: the splits with their transforms, the training order and the evaluation loader.

One builder per need, shared by ``mscl train``, ``mscl eval``, ``mscl export`` and ``mscl capture``:

* :func:`build_split`: a split of ``config.data`` with the training or the evaluation transform;
  :func:`evaluation_split` is the evaluation half without a config (``mscl capture``);
* :class:`EpochSampler` and :func:`train_loader`: the seeded, sharded training order that can start mid-epoch;
* :func:`evaluation_loader` (any split, any images) and :func:`validation_loader` (the config's validation
  images): in order, mixed image sizes allowed (``mscl.evaluation.collate_by_size``).

Every loader is seeded through :mod:`mscl.seeding` (its generator and its workers' ``random``/``numpy``), so
iterating one never draws from the process's global generators.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from mscl.config import Config
from mscl.data import build_dataset, build_transforms
from mscl.data.base import SegmentationDataset
from mscl.evaluation import eval_loader
from mscl.seeding import epoch_order_generator, loader_generator, seed_worker

__all__ = [
    "EpochSampler",
    "build_split",
    "evaluation_loader",
    "evaluation_split",
    "train_loader",
    "validation_indices",
    "validation_loader",
]


class EpochSampler(Sampler[int]):
    """Seeded per-epoch permutation, sharded over ranks, that can start mid-epoch (for resume).

    Every process draws the same permutation of ``indices`` for an epoch (:func:`mscl.seeding.epoch_order_generator`),
    keeps the first ``batches_per_epoch`` global batches of it and takes every ``world_size``-th image from
    position ``rank``; ``set_epoch(epoch, start_batch)`` skips the batches a resumed run has already trained on.
    """

    def __init__(self, indices: Sequence[int], batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(indices)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0
        self.batches_per_epoch = len(self.indices) // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the training split has {len(self.indices)} images, fewer than one global batch "
                f"(data.batch_size={batch_size} x {world_size} processes)"
            )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(len(self.indices), generator=epoch_order_generator(self.seed, self.epoch)).tolist()
        usable = self.batches_per_epoch * self.batch_size * self.world_size
        mine = order[:usable][self.rank :: self.world_size]
        return iter([self.indices[i] for i in mine[self.start_batch * self.batch_size :]])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


def evaluation_split(
    name: str, root: str | Path, split: str, *, resize: float | Sequence[int] | None, mean: Sequence[float], std: Sequence[float]
) -> SegmentationDataset:
    """Dataset ``name`` at ``root`` with the evaluation transform: ``resize`` (a factor or ``[height, width]``), then
    normalisation with ``mean``/``std``; labels keep the dataset's ignore index."""
    dataset = build_dataset(name, root, split)
    dataset.transform = build_transforms(train=False, resize=resize, ignore_index=dataset.info.ignore_index, mean=mean, std=std)
    return dataset


def build_split(config: Config, split: str, train: bool, root: str | Path | None = None) -> SegmentationDataset:
    """Split ``split`` of ``config.data`` (at ``root`` when given, e.g. ``--data-root``) with the training transform
    (``train``: resize, rescale in ``data.scale_range``, crop padded with the dataset's ignore index, flip, colour
    jitter; per-sample seeds from ``seed``) or the evaluation one (resize and normalisation only)."""
    data = config.data
    if not train:
        return evaluation_split(data.name, root or data.root, split, resize=data.resize, mean=data.mean, std=data.std)
    dataset = build_dataset(data.name, root or data.root, split, seed=config.seed)
    dataset.transform = build_transforms(
        train=True,
        crop_size=data.crop_size,
        scale_range=tuple(data.scale_range),
        resize=data.resize,
        hflip=data.hflip,
        color_jitter=data.color_jitter,
        ignore_index=dataset.info.ignore_index,
        mean=data.mean,
        std=data.std,
    )
    return dataset


def train_loader(dataset: Any, sampler: EpochSampler, config: Config, epoch: int, rank: int = 0) -> DataLoader:
    """The training loader of ``epoch`` on process ``rank``: ``data.batch_size`` images in ``sampler``'s order,
    ``data.num_workers`` workers seeded by :func:`mscl.seeding.loader_generator`."""
    return DataLoader(
        dataset,
        batch_size=config.data.batch_size,
        sampler=sampler,
        num_workers=config.data.num_workers,
        worker_init_fn=seed_worker,
        generator=loader_generator(config.seed, epoch, rank),
        drop_last=False,
        persistent_workers=False,
    )


def evaluation_loader(
    dataset: Any, indices: Sequence[int] | None, *, batch_size: int, num_workers: int, seed: int, rank: int = 0
) -> DataLoader:
    """A loader over ``indices`` of ``dataset`` (all images when None), in order; each batch is a list of sub-batches,
    one per image size (``mscl.evaluation.collate_by_size``). Seeded like the loader of epoch 0
    (:func:`mscl.seeding.loader_generator`), so iterating it leaves the global generators alone."""
    return eval_loader(dataset, indices, batch_size, num_workers, worker_init_fn=seed_worker, generator=loader_generator(seed, 0, rank))


def validation_indices(config: Config, dataset: Any) -> list[int]:
    """The validation images a run uses: the first ``data.max_val_images`` (all when unset)."""
    return list(range(len(dataset)))[: config.data.max_val_images]


def validation_loader(config: Config, dataset: Any, rank: int = 0) -> DataLoader:
    """The loader of the run's validation images (:func:`validation_indices`), ``data.val_batch_size`` at a time."""
    return evaluation_loader(
        dataset, validation_indices(config, dataset), batch_size=config.data.val_batch_size,
        num_workers=config.data.num_workers, seed=config.seed, rank=rank,
    )
