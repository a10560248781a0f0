"""Class-balanced pixel sampler (Pissas et al., ECCV 2022; method.md §1).

For every (image, class) pair present at a stage with at least ``min_views_per_class`` labelled
pixels, the sampler draws the same number of random pixels ("views"):
``views = min(smallest kept pair count, max_views_per_class)``, shrunk to
``max_features_total // pairs`` when ``views * pairs`` would exceed ``max_features_total``.
The ignore index is never sampled. Sampling is fully vectorised (one sort over all pixels) and
reproducible through a ``torch.Generator``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def downsample_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize integer labels ``[N,H,W]`` to ``size`` with nearest interpolation (method.md §1).

    Output pixel ``(i, j)`` takes the label at ``(floor(i*H/h), floor(j*W/w))``: the rule of
    ``F.interpolate(mode="nearest")``, evaluated in integers (exact for any label value; torch's
    float evaluation agrees for integer factors such as the encoder strides and can pick the
    neighbouring pixel for some non-integer ratios). Labels that already have the requested size
    are returned unchanged.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must have shape [N,H,W], got {tuple(labels.shape)}")
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"size must be positive, got {size}")
    source_height, source_width = labels.shape[-2:]
    if (source_height, source_width) == (height, width):
        return labels
    rows = torch.arange(height, device=labels.device) * source_height // height
    cols = torch.arange(width, device=labels.device) * source_width // width
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


class ClassBalancedSampler:
    """Draws an equal number of pixels from every (image, class) pair (method.md §1).

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

    def sample_positions(
        self, labels_at_stage: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, SamplerRecord]:
        """Choose pixel positions from stage-resolution labels ``[N,h,w]``.

        Returns positions ``[M,3]`` (n, y, x), their labels ``[M]`` and the :class:`SamplerRecord`.
        Samples are ordered by (image, class) pair; inside a pair the order is random. The only
        host-device synchronisation is the transfer of the counts that fix ``views``.
        """
        if labels_at_stage.dim() != 3:
            raise ValueError(f"labels_at_stage must have shape [N,h,w], got {tuple(labels_at_stage.shape)}")
        device = labels_at_stage.device
        batch, height, width = labels_at_stage.shape
        classes = self.num_classes
        flat = labels_at_stage.reshape(-1).long()
        labelled = flat != self.ignore_index
        out_of_range = labelled & ((flat < 0) | (flat >= classes))
        image_index = torch.arange(flat.numel(), device=device) // (height * width)
        # (image, class) pair id of every pixel; unlabelled pixels go to a trailing sentinel bin.
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
        labelled_per_class = stats[4 : 4 + classes]
        kept_per_class = stats[4 + classes :]
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
            labelled_per_class=labelled_per_class,
            sampled_per_class=[views * k for k in kept_per_class],
        )
        if views == 0:
            return torch.zeros(0, 3, dtype=torch.long, device=device), flat.new_zeros(0), record

        # Sort by (pair, random key): the first `views` pixels of each kept pair are a uniform draw.
        rand_device = generator.device if generator is not None else device
        random_bits = torch.randint(0, 2**40, (flat.numel(),), generator=generator, device=rand_device)
        order = torch.argsort((pair_id << 40) | random_bits.to(device), stable=True)
        sorted_pair = pair_id[order]
        pair_start = torch.cumsum(pair_counts, 0) - pair_counts
        rank_in_pair = torch.arange(flat.numel(), device=device) - pair_start[sorted_pair]
        kept_with_sentinel = torch.cat([kept, kept.new_zeros(1)])
        selected = kept_with_sentinel[sorted_pair] & (rank_in_pair < views)
        # Output slot of each selected pixel (kept-pair ordinal * views + rank); the others are
        # scattered to a dump slot, which keeps the shapes static (no boolean indexing, no sync).
        kept_ordinal = torch.cumsum(kept_with_sentinel, 0) - 1
        total = views * groups
        slot = torch.where(selected, kept_ordinal[sorted_pair] * views + rank_in_pair, total)
        chosen = torch.empty(total + 1, dtype=torch.long, device=device).scatter_(0, slot, order)[:total]
        pixel = chosen % (height * width)
        positions = torch.stack([chosen // (height * width), pixel // width, pixel % width], dim=1)
        return positions, flat[chosen], record


def map_positions(positions: Tensor, source_size: tuple[int, int], target_size: tuple[int, int]) -> Tensor:
    """Map (n, y, x) positions from a finer stage to a coarser one: ``floor(y*h_t/h_s)``,
    ``floor(x*w_t/w_s)`` (used by the ``same_positions`` option of the loss)."""
    source_h, source_w = int(source_size[0]), int(source_size[1])
    target_h, target_w = int(target_size[0]), int(target_size[1])
    return torch.stack(
        [
            positions[:, 0],
            torch.div(positions[:, 1] * target_h, source_h, rounding_mode="floor"),
            torch.div(positions[:, 2] * target_w, source_w, rounding_mode="floor"),
        ],
        dim=1,
    )
