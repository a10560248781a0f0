"""Pixel samplers (Pissas et al., ECCV 2022; docs/method.md §1).

A sampler is the "miner" of the contrastive loss: given the per-stage embeddings and the label map it
returns, for every stage, the sampled embeddings ``[M_s, d]`` and their labels (:class:`StageSamples`);
any object with a ``sample_stages`` method of that signature (:class:`PixelSampler`) can be passed to
the loss terms of :mod:`mscl.losses`. Two samplers ship:

* :class:`ClassBalancedSampler` (default) draws every stage independently. For every (image, class)
  pair present at a stage with at least ``min_views_per_class`` labelled pixels, it draws the same
  number of random pixels ("views"): ``views = min(smallest kept pair count, max_views_per_class)``,
  shrunk to ``max_features_total // pairs`` when ``views * pairs`` would exceed ``max_features_total``.
  The ignore index is never sampled. Sampling is fully vectorised (one sort over all pixels) and
  reproducible through a ``torch.Generator``.
* :class:`SharedPositionSampler` draws once at stage 0 by the same rule and reads every other stage at
  the cells that contain those pixels, keeping the stage-0 labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from runformat.geometry import cell_index


def downsample_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize integer labels ``[N,H,W]`` to ``size`` with nearest interpolation (docs/method.md §1).

    Output pixel ``(i, j)`` takes the label at ``(floor(i*H/h), floor(j*W/w))``
    (:func:`runformat.geometry.cell_index`): the rule of ``F.interpolate(mode="nearest")``, evaluated
    in integers (exact for any label value; torch's float evaluation agrees for integer factors such
    as the encoder strides and can pick the neighbouring pixel for some non-integer ratios). Labels
    that already have the requested size are returned unchanged.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must have shape [N,H,W], got {tuple(labels.shape)}")
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size}")
    source_height, source_width = labels.shape[-2:]
    if (source_height, source_width) == (height, width):
        return labels
    rows = cell_index(torch.arange(height, device=labels.device), height, source_height)
    cols = cell_index(torch.arange(width, device=labels.device), width, source_width)
    return labels[:, rows[:, None], cols[None, :]]


@dataclass
class SamplerRecord:
    """What the sampler did at one stage for one step (logged by the trainer)."""

    groups: int
    views: int
    filtered_groups: int
    cap_max_views: bool
    cap_total: bool
    labelled_per_class: list[int]
    sampled_per_class: list[int]


@dataclass
class PixelSample:
    """Sampled embeddings ``[M,d]``, their labels ``[M]`` and positions ``[M,3]`` as (n, y, x)."""

    embeddings: Tensor
    labels: Tensor
    positions: Tensor
    record: SamplerRecord


@dataclass
class StageSamples:
    """What a sampler returns for one step: per stage (finest first) the sampled embeddings ``[M_s,d]``
    and labels ``[M_s]``, and the :class:`SamplerRecord` of each stage it drew at."""

    embeddings: list[Tensor]
    labels: list[Tensor]
    records: dict[int, SamplerRecord]


@runtime_checkable
class PixelSampler(Protocol):
    """A pixel sampler for the contrastive terms (docs/method.md §1): one call per training step."""

    def sample_stages(
        self, stage_embeddings: Sequence[Tensor], labels: Tensor, generator: torch.Generator | None = None
    ) -> StageSamples:
        """Sample ``stage_embeddings[s] [N,d,h_s,w_s]`` under ``labels [N,H,W]`` (nearest-resized)."""
        ...


def check_stage_inputs(stage_embeddings: Sequence[Tensor], labels: Tensor, owner: str) -> None:
    """ValueError (prefixed with ``owner``) unless every stage is ``[N,d,h,w]`` with one ``N,d`` and
    ``labels`` is ``[N,H,W]``."""
    if len(stage_embeddings) == 0:
        raise ValueError(f"{owner}: stage_embeddings is empty")
    first = stage_embeddings[0]
    for s, embeddings in enumerate(stage_embeddings):
        if embeddings.dim() != 4 or embeddings.shape[:2] != first.shape[:2]:
            raise ValueError(
                f"{owner}: stage {s} embeddings must be [N,d,h,w] with N,d = {tuple(first.shape[:2])}, "
                f"got {tuple(embeddings.shape)}"
            )
    if labels.dim() != 3 or labels.shape[0] != first.shape[0]:
        raise ValueError(f"{owner}: labels must be [N,H,W] with N={first.shape[0]}, got {tuple(labels.shape)}")


class ClassBalancedSampler:
    """Draws an equal number of pixels from every (image, class) pair, each stage on its own
    (docs/method.md §1); the default :class:`PixelSampler`.

    Args:
        num_classes: number of real classes; labels must lie in ``[0, num_classes)`` or equal
            ``ignore_index``.
        ignore_index: label that is never sampled.
        min_views_per_class: pairs with fewer labelled pixels are dropped (paper: 5).
        max_views_per_class: upper bound of views per pair (paper: 2500).
        max_features_total: upper bound of sampled pixels per stage (paper: 10000).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int,
        min_views_per_class: int = 5,
        max_views_per_class: int = 2500,
        max_features_total: int = 10000,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if min_views_per_class < 1:
            raise ValueError(f"min_views_per_class must be >= 1, got {min_views_per_class}")
        if max_views_per_class < 1:
            raise ValueError(f"max_views_per_class must be >= 1, got {max_views_per_class}")
        if max_features_total < 1:
            raise ValueError(f"max_features_total must be >= 1, got {max_features_total}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.min_views_per_class = int(min_views_per_class)
        self.max_views_per_class = int(max_views_per_class)
        self.max_features_total = int(max_features_total)

    def __call__(
        self, features: Tensor, labels: Tensor, generator: torch.Generator | None = None
    ) -> PixelSample:
        """Sample embeddings from ``features [N,d,h,w]`` with ``labels [N,H,W]`` (any resolution;
        resized to ``(h, w)`` with nearest interpolation)."""
        if features.dim() != 4:
            raise ValueError(f"features must have shape [N,d,h,w], got {tuple(features.shape)}")
        if labels.dim() != 3 or labels.shape[0] != features.shape[0]:
            raise ValueError(
                f"labels must have shape [N,H,W] with N={features.shape[0]}, got {tuple(labels.shape)}"
            )
        stage_labels = downsample_labels(labels.to(features.device), tuple(features.shape[-2:]))
        positions, sample_labels, record = self.sample_positions(stage_labels, generator)
        embeddings = features[positions[:, 0], :, positions[:, 1], positions[:, 2]]
        return PixelSample(embeddings, sample_labels, positions, record)

    def sample_stages(
        self, stage_embeddings: Sequence[Tensor], labels: Tensor, generator: torch.Generator | None = None
    ) -> StageSamples:
        """Sample every stage independently, finest first (docs/method.md §1); one record per stage."""
        check_stage_inputs(stage_embeddings, labels, type(self).__name__)
        samples = [self(embeddings, labels, generator) for embeddings in stage_embeddings]
        return StageSamples(
            embeddings=[sample.embeddings for sample in samples],
            labels=[sample.labels for sample in samples],
            records={s: sample.record for s, sample in enumerate(samples)},
        )

    def sample_positions(
        self, labels_at_stage: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, SamplerRecord]:
        """Choose pixel positions from stage-resolution labels ``[N,h,w]`` (docs/method.md §1).

        Returns positions ``[M,3]`` (n, y, x), their labels ``[M]`` and the :class:`SamplerRecord`.
        Samples are ordered by (image, class) pair; inside a pair the order is random. The only
        host-device synchronisation is the transfer of the counts that fix ``views``.
        """
        if labels_at_stage.dim() != 3:
            raise ValueError(f"labels_at_stage must have shape [N,h,w], got {tuple(labels_at_stage.shape)}")
        flat = labels_at_stage.reshape(-1).long()
        batch, height, width = labels_at_stage.shape
        pair_id, pair_counts, kept, record = self._count_pairs(flat, batch, height * width)
        if record.views == 0:
            return torch.zeros(0, 3, dtype=torch.long, device=flat.device), flat.new_zeros(0), record
        chosen = _draw(pair_id, pair_counts, kept, record.views, record.groups, generator)
        pixel = chosen % (height * width)
        positions = torch.stack([chosen // (height * width), pixel // width, pixel % width], dim=1)
        return positions, flat[chosen], record

    def _count_pairs(self, flat: Tensor, batch: int, pixels_per_image: int) -> tuple[Tensor, Tensor, Tensor, SamplerRecord]:
        """Pair id of every pixel (unlabelled pixels in a trailing sentinel bin), pixel count per pair,
        the kept pairs (``>= min_views_per_class``) and the record with the views rule of §1 applied."""
        classes = self.num_classes
        labelled = flat != self.ignore_index
        out_of_range = labelled & ((flat < 0) | (flat >= classes))
        image_index = torch.arange(flat.numel(), device=flat.device) // pixels_per_image
        sentinel = batch * classes
        pair_id = torch.where(labelled & ~out_of_range, image_index * classes + flat, sentinel)
        pair_counts = torch.bincount(pair_id, minlength=sentinel + 1)
        counts = pair_counts[:sentinel]
        kept = counts >= self.min_views_per_class
        filtered = (counts > 0) & ~kept
        smallest_kept = torch.where(kept, counts, counts.new_full((), torch.iinfo(counts.dtype).max)).min()
        stats = torch.cat(
            [
                torch.stack([kept.sum(), filtered.sum(), smallest_kept, out_of_range.sum()]),
                counts.view(batch, classes).sum(0),
                kept.view(batch, classes).sum(0),
            ]
        ).tolist()
        groups, filtered_groups, smallest, invalid = stats[:4]
        if invalid:
            bad = flat[out_of_range][:5].tolist()
            raise ValueError(
                f"labels must be in [0, {classes}) or equal ignore_index={self.ignore_index}; "
                f"found {invalid} other values, e.g. {bad}"
            )
        views, cap_max_views, cap_total = 0, False, False
        if groups > 0:
            views = min(smallest, self.max_views_per_class)
            cap_max_views = smallest > self.max_views_per_class
            if views * groups > self.max_features_total:
                views = self.max_features_total // groups
                cap_total = True
        record = SamplerRecord(
            groups=groups,
            views=views,
            filtered_groups=filtered_groups,
            cap_max_views=cap_max_views,
            cap_total=cap_total,
            labelled_per_class=stats[4 : 4 + classes],
            sampled_per_class=[views * k for k in stats[4 + classes :]],
        )
        return pair_id, pair_counts, kept, record


def _draw(
    pair_id: Tensor, pair_counts: Tensor, kept: Tensor, views: int, groups: int, generator: torch.Generator | None
) -> Tensor:
    """Flat pixel indices of ``views`` uniformly drawn pixels of every kept pair, ordered by pair.

    Sorts by (pair, random key): the first ``views`` pixels of each kept pair are a uniform draw.
    """
    device = pair_id.device
    rand_device = generator.device if generator is not None else device
    random_bits = torch.randint(0, 2**40, (pair_id.numel(),), generator=generator, device=rand_device)
    order = torch.argsort((pair_id << 40) | random_bits.to(device), stable=True)
    sorted_pair = pair_id[order]
    pair_start = torch.cumsum(pair_counts, 0) - pair_counts
    rank_in_pair = torch.arange(pair_id.numel(), device=device) - pair_start[sorted_pair]
    kept_with_sentinel = torch.cat([kept, kept.new_zeros(1)])
    selected = kept_with_sentinel[sorted_pair] & (rank_in_pair < views)
    # Output slot of each selected pixel (kept-pair ordinal * views + rank); the others are
    # scattered to a dump slot, which keeps the shapes static (no boolean indexing, no sync).
    kept_ordinal = torch.cumsum(kept_with_sentinel, 0) - 1
    total = views * groups
    slot = torch.where(selected, kept_ordinal[sorted_pair] * views + rank_in_pair, total)
    return torch.empty(total + 1, dtype=torch.long, device=device).scatter_(0, slot, order)[:total]


class SharedPositionSampler(ClassBalancedSampler):
    """Samples pixel positions once at stage 0 and reuses them at every stage (docs/method.md §1).

    Stage 0 (the finest) is drawn with the class-balanced rule of :class:`ClassBalancedSampler`
    (same arguments); every other stage reads the cells that contain those pixels
    (:func:`map_positions`) and keeps the stage-0 labels, so the sample at every stage describes the
    same pixels. Only stage 0 has a record.
    """

    def sample_stages(
        self, stage_embeddings: Sequence[Tensor], labels: Tensor, generator: torch.Generator | None = None
    ) -> StageSamples:
        """One draw at stage 0, read at every stage."""
        check_stage_inputs(stage_embeddings, labels, type(self).__name__)
        finest = stage_embeddings[0]
        finest_size = (int(finest.shape[-2]), int(finest.shape[-1]))
        stage_labels = downsample_labels(labels.to(finest.device), finest_size)
        positions, sample_labels, record = self.sample_positions(stage_labels, generator)
        embeddings = []
        for stage in stage_embeddings:
            at_stage = map_positions(positions, finest_size, (int(stage.shape[-2]), int(stage.shape[-1])))
            embeddings.append(stage[at_stage[:, 0], :, at_stage[:, 1], at_stage[:, 2]])
        return StageSamples(embeddings=embeddings, labels=[sample_labels] * len(embeddings), records={0: record})


def map_positions(positions: Tensor, source_size: tuple[int, int], target_size: tuple[int, int]) -> Tensor:
    """Map (n, y, x) positions of a ``source_size`` stage to the cells of a ``target_size`` stage that
    contain them: ``(n, floor(y*h_t/h_s), floor(x*w_t/w_s))`` (docs/method.md §1; the rule of
    :func:`runformat.geometry.cell_index`, used by :class:`SharedPositionSampler`)."""
    return torch.stack(
        [
            positions[:, 0],
            cell_index(positions[:, 1], source_size[0], target_size[0]),
            cell_index(positions[:, 2], source_size[1], target_size[1]),
        ],
        dim=1,
    )
