"""Supervised InfoNCE and the multi-scale / cross-scale contrastive loss (method.md §2-4).

Pissas et al., "Multi-scale and Cross-scale Contrastive Learning for Semantic Segmentation",
ECCV 2022. For an anchor ``i`` with positives ``P(i)`` and negatives ``N(i)``::

    l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip) / (exp(s_ip) + sum_{n in N(i)} exp(s_in)) )

with ``s_ij = z_i . z_j / tau`` on L2-normalised embeddings; the loss is the mean of ``l_i`` over
anchors that have at least one positive.

Two implementations share this definition:

* :func:`supervised_infonce_reference` materialises the full similarity matrix (tests and the
  benchmark's "direct" baseline);
* :func:`supervised_infonce` (the default) never holds more than one block of rows of the
  similarity matrix: it sorts the samples by label so that each block's positives lie in one
  contiguous band of columns, and it computes the gradient block by block during the forward pass
  (the loss is a scalar, so its gradient is known there up to the incoming factor); the backward
  pass only scales the stored ``[N,d]`` gradients. Three matrix products per block, the same count
  as the forward and backward of a bare ``Z @ Z.T``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from mscl.distributed import gather_labels, gather_with_grad, is_distributed
from mscl.sampler import (
    ClassBalancedSampler,
    SamplerRecord,
    downsample_labels,
    map_positions,
)

# Largest spread of exponents (2 / tau) for which exp(s - 1/tau) cannot underflow to zero: beyond
# it the blocked loss shifts each row by its largest negative similarity instead.
_SAFE_EXPONENT_RANGE = {torch.float32: 80.0, torch.float64: 700.0}
# Elements of one block of the similarity matrix when `block_rows` is not given (8 MiB in fp32); a
# block also spans at most a quarter of the rows so that its band of positives stays narrow.
_BLOCK_ELEMENTS = 1 << 21
_MIN_BLOCK_ROWS = 64


def _compute_dtype(tensor: Tensor) -> torch.dtype:
    """Both implementations compute in float64 for float64 input and in float32 otherwise."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _check_inputs(z: Tensor, y: Tensor, z2: Tensor | None, y2: Tensor | None, temperature: float) -> None:
    if z.dim() != 2 or y.dim() != 1 or y.shape[0] != z.shape[0]:
        raise ValueError(f"z must be [N,d] and y [N]; got z {tuple(z.shape)} and y {tuple(y.shape)}")
    if (z2 is None) != (y2 is None):
        raise ValueError("z2 and y2 must be given together (cross-scale form) or both left out")
    if z2 is not None and y2 is not None:
        if z2.dim() != 2 or y2.dim() != 1 or y2.shape[0] != z2.shape[0] or z2.shape[1] != z.shape[1]:
            raise ValueError(
                f"z2 must be [M,{z.shape[1]}] and y2 [M]; got z2 {tuple(z2.shape)} and y2 {tuple(y2.shape)}"
            )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _zero_loss(z: Tensor, z2: Tensor | None) -> Tensor:
    """Finite zero that keeps the graph to the inputs (degenerate or empty samples)."""
    zero = 0.0 * z.sum()
    if z2 is not None:
        zero = zero + 0.0 * z2.sum()
    return zero


def supervised_infonce_reference(
    z: Tensor, y: Tensor, z2: Tensor | None = None, y2: Tensor | None = None, temperature: float = 0.1
) -> Tensor:
    """Supervised InfoNCE (method.md §2-3) with the full ``[N,M]`` similarity matrix.

    Self form (``z2`` omitted): anchors and candidates are ``z``; the anchor itself is neither a
    positive nor a negative. Cross form: anchors ``z`` with labels ``y``, positives and negatives
    from ``z2`` with labels ``y2``. Embeddings are L2-normalised here.
    """
    _check_inputs(z, y, z2, y2, temperature)
    if z.shape[0] == 0 or (z2 is not None and z2.shape[0] == 0):
        return _zero_loss(z, z2)
    dtype = _compute_dtype(z)
    with torch.autocast(device_type=z.device.type, enabled=False):
        anchors = F.normalize(z.to(dtype), dim=1)
        if z2 is None or y2 is None:
            candidates, candidate_labels = anchors, y
        else:
            candidates, candidate_labels = F.normalize(z2.to(dtype), dim=1), y2
        logits = anchors @ candidates.T / temperature
        same = y[:, None] == candidate_labels[None, :]
        negative = ~same
        positive = same
        if z2 is None:
            positive = same & ~torch.eye(len(y), dtype=torch.bool, device=z.device)
        positive_count = positive.sum(1)
        has_positive = positive_count > 0
        if not bool(has_positive.any()):
            return _zero_loss(z, z2)
        has_negative = negative.any(1)
        negative_max = logits.detach().masked_fill(~negative, -torch.inf).amax(1)
        negative_max = torch.where(has_negative, negative_max, 0.0)
        negative_sum = (torch.exp(logits - negative_max[:, None]) * negative).sum(1)
        negative_lse = torch.where(
            has_negative,
            negative_max + torch.log(torch.where(has_negative, negative_sum, 1.0)),
            -torch.inf,
        )
        log_prob = logits - torch.logaddexp(logits, negative_lse[:, None])
        per_anchor = -(log_prob * positive).sum(1)[has_positive] / positive_count[has_positive]
        return per_anchor.mean()


def _default_block_rows(num_anchors: int, num_candidates: int) -> int:
    return max(_MIN_BLOCK_ROWS, min(_BLOCK_ELEMENTS // num_candidates, math.ceil(num_anchors / 4)))


def _blocked_loss_and_grad(
    anchors: Tensor,
    anchor_labels: Tensor,
    candidates: Tensor | None,
    candidate_labels: Tensor | None,
    temperature: float,
    block_rows: int,
    anchor_grad: bool,
    candidate_grad: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Loss and the requested gradients w.r.t. the (normalised) anchors and candidates (self form:
    ``anchor_grad`` covers both roles), computed one block of rows at a time.

    The negative log-sum-exp of a row is shifted by ``1/tau`` (an upper bound of every similarity
    of unit vectors) when ``exp`` cannot underflow over the range ``2/tau``, else by the row's
    largest negative similarity. Each positive term is ``s_ip - logaddexp(s_ip, LSE_neg_i)``,
    i.e. ``logsigmoid(s_ip - LSE_neg_i)``.
    """
    self_form = candidates is None
    dtype = anchors.dtype
    num_anchors_total, dim = anchors.shape
    sorted_anchor_labels, anchor_order = torch.sort(anchor_labels)
    sorted_anchors = anchors[anchor_order]
    if candidates is None or candidate_labels is None:
        sorted_candidate_labels, sorted_candidates = sorted_anchor_labels, sorted_anchors
    else:
        sorted_candidate_labels, candidate_order = torch.sort(candidate_labels)
        sorted_candidates = candidates[candidate_order]
    num_candidates = sorted_candidates.shape[0]

    # Positives of an anchor are the contiguous candidate range [band_start, band_end) of its label.
    band_start = torch.searchsorted(sorted_candidate_labels, sorted_anchor_labels)
    band_end = torch.searchsorted(sorted_candidate_labels, sorted_anchor_labels, right=True)
    positive_count = band_end - band_start - int(self_form)
    has_positive = positive_count > 0
    row_starts = torch.arange(0, num_anchors_total, block_rows, device=anchors.device)
    row_ends = torch.clamp(row_starts + block_rows, max=num_anchors_total)
    host = torch.cat([band_start[row_starts], band_end[row_ends - 1], has_positive.sum()[None]]).tolist()
    num_blocks = len(row_starts)
    band_starts, band_ends, anchors_with_positive = host[:num_blocks], host[num_blocks:-1], host[-1]

    candidate_grad = candidate_grad and not self_form
    if anchors_with_positive == 0:
        return (
            anchors.new_zeros(()),
            torch.zeros_like(anchors) if anchor_grad else None,
            torch.zeros_like(sorted_candidates) if candidate_grad else None,
        )

    # Each anchor's terms are averaged over |P(i)|, then over the anchors that have positives.
    anchor_weight = has_positive.to(dtype) / (positive_count.clamp_min(1).to(dtype) * anchors_with_positive)
    inverse_temperature = 1.0 / temperature
    exact_shift = 2.0 * inverse_temperature > _SAFE_EXPONENT_RANGE[dtype]
    constant_shift = 0.0 if exact_shift else inverse_temperature
    # One matrix product gives s_ij - shift: [z_i/tau, -shift] . [z_j, 1].
    shift_column = sorted_anchors.new_full((num_anchors_total, 1), -constant_shift)
    scaled_anchors_ext = torch.cat([sorted_anchors * inverse_temperature, shift_column], 1)
    candidates_ext = torch.cat([sorted_candidates, sorted_candidates.new_ones((num_candidates, 1))], 1)
    scaled_anchors = scaled_anchors_ext[:, :dim]
    scaled_candidates = scaled_anchors if self_form else sorted_candidates * inverse_temperature
    sorted_grad_anchors = torch.zeros_like(sorted_anchors) if anchor_grad else None
    # In the self form the column gradient belongs to the same (sorted) anchors.
    sorted_grad_candidates = sorted_grad_anchors if self_form else None
    if candidate_grad:
        sorted_grad_candidates = torch.zeros_like(sorted_candidates)

    loss = anchors.new_zeros(())
    tiny = torch.finfo(dtype).tiny
    for row_start, band_lo, band_hi in zip(range(0, num_anchors_total, block_rows), band_starts, band_ends):
        row_end = min(row_start + block_rows, num_anchors_total)
        rows = row_end - row_start
        block_labels = sorted_anchor_labels[row_start:row_end]
        same = block_labels[:, None] == sorted_candidate_labels[None, band_lo:band_hi]
        positive = same
        if self_form:
            positive = same.clone()
            local_rows = torch.arange(rows, device=anchors.device)
            positive[local_rows, local_rows + (row_start - band_lo)] = False

        shifted = torch.mm(scaled_anchors_ext[row_start:row_end], candidates_ext.T)
        if exact_shift:
            negatives_only = shifted.clone()
            negatives_only[:, band_lo:band_hi].masked_fill_(same, -torch.inf)
            row_shift = negatives_only.amax(1)
            del negatives_only
            shifted.sub_(torch.where(torch.isfinite(row_shift), row_shift, 0.0)[:, None])
        band_logits = shifted[:, band_lo:band_hi].clone()
        exp_negative = shifted.exp_()
        exp_negative[:, band_lo:band_hi].masked_fill_(same, 0.0)
        negative_sum = exp_negative.sum(1)
        margin = band_logits.sub_(negative_sum.log()[:, None])
        weight = anchor_weight[row_start:row_end]
        log_terms = torch.where(positive, F.logsigmoid(margin), 0.0).sum(1)
        loss = loss - torch.dot(weight, log_terms)
        if not (anchor_grad or candidate_grad):
            continue
        # dL/ds_ip = -w_i (1 - sigma_ip);  dL/ds_in = w_i sum_p(1 - sigma_ip) exp(s_in - LSE_neg_i).
        positive_miss = torch.where(positive, torch.sigmoid(margin.neg_()), 0.0)
        negative_coef = weight * positive_miss.sum(1) / negative_sum.clamp_min(tiny)
        grad_logits = exp_negative.mul_(negative_coef[:, None])
        grad_logits[:, band_lo:band_hi].sub_(positive_miss.mul_(weight[:, None]))
        if sorted_grad_anchors is not None:
            sorted_grad_anchors[row_start:row_end].addmm_(grad_logits, scaled_candidates)
        if sorted_grad_candidates is not None:
            sorted_grad_candidates.addmm_(grad_logits.T, scaled_anchors[row_start:row_end])

    grad_anchors = grad_candidates = None
    if sorted_grad_anchors is not None:
        grad_anchors = torch.empty_like(anchors).index_copy_(0, anchor_order, sorted_grad_anchors)
    if candidate_grad:
        grad_candidates = torch.empty_like(candidates).index_copy_(0, candidate_order, sorted_grad_candidates)
    return loss, grad_anchors, grad_candidates


class _BlockedSupervisedInfoNCE(torch.autograd.Function):
    """Autograd wrapper: the forward computes the loss and its input gradients block by block."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, anchors, anchor_labels, candidates, candidate_labels, temperature, block_rows
    ):
        loss, grad_anchors, grad_candidates = _blocked_loss_and_grad(
            anchors, anchor_labels, candidates, candidate_labels, temperature, block_rows,
            anchor_grad=ctx.needs_input_grad[0], candidate_grad=ctx.needs_input_grad[2],
        )
        ctx.grad_anchors = grad_anchors
        ctx.grad_candidates = grad_candidates
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):  # type: ignore[override]
        grad_anchors = ctx.grad_anchors * grad_loss if ctx.needs_input_grad[0] else None
        grad_candidates = None
        if ctx.grad_candidates is not None and ctx.needs_input_grad[2]:
            grad_candidates = ctx.grad_candidates * grad_loss
        return grad_anchors, None, grad_candidates, None, None, None


def supervised_infonce(
    z: Tensor,
    y: Tensor,
    z2: Tensor | None = None,
    y2: Tensor | None = None,
    temperature: float = 0.1,
    *,
    block_rows: int | None = None,
) -> Tensor:
    """Memory-efficient supervised InfoNCE (method.md §2-3); same definition as the reference.

    Holds one ``[block_rows, M]`` block of the similarity matrix at a time (``block_rows`` defaults
    to about 2M elements per block). Computes in float32 (float64 for float64 input) with autocast
    disabled, so bf16/fp16 embeddings are handled stably.
    """
    _check_inputs(z, y, z2, y2, temperature)
    if z.shape[0] == 0 or (z2 is not None and z2.shape[0] == 0):
        return _zero_loss(z, z2)
    if block_rows is not None and block_rows < 1:
        raise ValueError(f"block_rows must be >= 1, got {block_rows}")
    dtype = _compute_dtype(z)
    num_candidates = z.shape[0] if z2 is None else z2.shape[0]
    rows = block_rows if block_rows is not None else _default_block_rows(z.shape[0], num_candidates)
    with torch.autocast(device_type=z.device.type, enabled=False):
        anchors = F.normalize(z.to(dtype), dim=1)
        candidates = None if z2 is None else F.normalize(z2.to(dtype), dim=1)
        labels = y.to(z.device)
        candidate_labels = None if y2 is None else y2.to(z.device)
        inputs = (anchors, labels, candidates, candidate_labels, temperature, rows)
        wants_grad = anchors.requires_grad or (candidates is not None and candidates.requires_grad)
        if torch.is_grad_enabled() and wants_grad:
            return _BlockedSupervisedInfoNCE.apply(*inputs)
        return _blocked_loss_and_grad(*inputs, anchor_grad=False, candidate_grad=False)[0]


class LossOutput(NamedTuple):
    """Weighted contrastive total, its named parts and the sampler records per stage."""

    total: Tensor
    parts: dict[str, Tensor]
    records: dict[int, SamplerRecord]


_IMPLEMENTATIONS = {"blocked": supervised_infonce, "reference": supervised_infonce_reference}


class MSCSLoss(nn.Module):
    """Multi-scale + cross-scale contrastive loss (method.md §2-4), contrastive part only.

    ``total = sum_s ms_weights[s] * ms/<s> + sum_p cs_weights[p] * cs/<a>-<b>``; the trainer adds
    cross-entropy and the paper's factor 0.1. Stage 0 is the highest resolution.

    Args:
        num_classes, ignore_index: label space of the sampler.
        temperature: InfoNCE temperature tau (paper: 0.1).
        ms_weights: one weight per stage, finest first (paper: 1.0, 0.7, 0.4, 0.1).
        cs_pairs: (anchor stage, candidate stage) pairs; negative indices count from the deepest
            stage (paper: (0, -1) and (0, -2)).
        cs_weights: weights of the pairs (paper: ``w_high_low = w_high_mid = 1.0``).
        min_views_per_class, max_views_per_class, max_features_total: sampler settings (§1).
        use_ms, use_cs: enable the multi-scale / cross-scale terms.
        cs_detach_deepest: stop gradients into the deepest stage through the cross-scale terms.
        same_positions: sample positions once at stage 0 and reuse them (mapped to each stage's
            grid, keeping the stage-0 labels) at every other stage, instead of sampling each stage.
        gather_distributed: under DDP, gather every rank's samples before the loss.
        implementation: "blocked" (memory-efficient, default) or "reference" (direct).
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int,
        temperature: float = 0.1,
        ms_weights: Sequence[float] = (1.0, 0.7, 0.4, 0.1),
        cs_pairs: Sequence[tuple[int, int]] = ((0, -1), (0, -2)),
        cs_weights: Sequence[float] = (1.0, 1.0),
        min_views_per_class: int = 5,
        max_views_per_class: int = 2500,
        max_features_total: int = 10000,
        use_ms: bool = True,
        use_cs: bool = True,
        cs_detach_deepest: bool = False,
        same_positions: bool = False,
        gather_distributed: bool = True,
        implementation: str = "blocked",
    ) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"MSCSLoss: temperature must be > 0, got {temperature}")
        if implementation not in _IMPLEMENTATIONS:
            raise ValueError(
                f"MSCSLoss: implementation must be one of {sorted(_IMPLEMENTATIONS)}, got {implementation!r}"
            )
        pairs = tuple((int(a), int(b)) for a, b in cs_pairs)
        if use_cs and len(pairs) != len(cs_weights):
            raise ValueError(
                f"MSCSLoss: cs_weights has {len(cs_weights)} entries but cs_pairs has {len(pairs)}"
            )
        if use_ms and len(ms_weights) == 0:
            raise ValueError("MSCSLoss: use_ms needs at least one entry in ms_weights")
        if not (use_ms or (use_cs and pairs)):
            raise ValueError("MSCSLoss: enable use_ms, or use_cs with at least one cs pair")
        self.sampler = ClassBalancedSampler(
            num_classes, ignore_index, min_views_per_class, max_views_per_class, max_features_total
        )
        self.temperature = float(temperature)
        self.ms_weights = tuple(float(w) for w in ms_weights)
        self.cs_pairs = pairs
        self.cs_weights = tuple(float(w) for w in cs_weights)
        self.use_ms = use_ms
        self.use_cs = use_cs
        self.cs_detach_deepest = cs_detach_deepest
        self.same_positions = same_positions
        self.gather_distributed = gather_distributed
        self.implementation = implementation

    def resolved_cs_pairs(self, num_stages: int) -> list[tuple[int, int]]:
        """The cross-scale pairs as non-negative stage indices (ValueError when out of range)."""
        resolved = []
        for a, b in self.cs_pairs:
            if not (-num_stages <= a < num_stages and -num_stages <= b < num_stages):
                raise ValueError(f"MSCSLoss: cs pair ({a}, {b}) is out of range for {num_stages} stages")
            pair = (a % num_stages, b % num_stages)
            if pair[0] == pair[1]:
                raise ValueError(
                    f"MSCSLoss: cs pair ({a}, {b}) resolves to the same stage {pair[0]} with {num_stages} stages"
                )
            resolved.append(pair)
        return resolved

    def _check_inputs(self, stage_embeddings: Sequence[Tensor], labels: Tensor) -> None:
        if len(stage_embeddings) == 0:
            raise ValueError("MSCSLoss: stage_embeddings is empty")
        first = stage_embeddings[0]
        for s, embeddings in enumerate(stage_embeddings):
            if embeddings.dim() != 4 or embeddings.shape[:2] != first.shape[:2]:
                raise ValueError(
                    f"MSCSLoss: stage {s} embeddings must be [N,d,h,w] with N,d = {tuple(first.shape[:2])}, "
                    f"got {tuple(embeddings.shape)}"
                )
        if labels.dim() != 3 or labels.shape[0] != first.shape[0]:
            raise ValueError(f"MSCSLoss: labels must be [N,H,W] with N={first.shape[0]}, got {tuple(labels.shape)}")
        if self.use_ms and len(stage_embeddings) != len(self.ms_weights):
            raise ValueError(
                f"MSCSLoss: got {len(stage_embeddings)} stage embeddings but ms_weights has "
                f"{len(self.ms_weights)} entries"
            )

    def _sample(
        self, stage_embeddings: Sequence[Tensor], labels: Tensor, generator: torch.Generator | None
    ) -> tuple[list[tuple[Tensor, Tensor]], dict[int, SamplerRecord]]:
        """Sampled (embeddings, labels) per stage and the sampler records (stage 0 only with
        ``same_positions``, where every stage reuses the stage-0 sample)."""
        if not self.same_positions:
            samples, records = [], {}
            for s, embeddings in enumerate(stage_embeddings):
                sample = self.sampler(embeddings, labels, generator)
                samples.append((sample.embeddings, sample.labels))
                records[s] = sample.record
            return samples, records
        finest = stage_embeddings[0]
        finest_size = tuple(finest.shape[-2:])
        stage_labels = downsample_labels(labels.to(finest.device), finest_size)
        positions, sample_labels, record = self.sampler.sample_positions(stage_labels, generator)
        samples = []
        for embeddings in stage_embeddings:
            at_stage = map_positions(positions, finest_size, tuple(embeddings.shape[-2:]))
            samples.append((embeddings[at_stage[:, 0], :, at_stage[:, 1], at_stage[:, 2]], sample_labels))
        return samples, {0: record}

    def forward(
        self, stage_embeddings: Sequence[Tensor], labels: Tensor, generator: torch.Generator | None = None
    ) -> LossOutput:
        """Sample every stage, optionally gather across DDP ranks, and compute the ms/cs parts."""
        self._check_inputs(stage_embeddings, labels)
        num_stages = len(stage_embeddings)
        pairs = self.resolved_cs_pairs(num_stages) if self.use_cs else []
        samples, records = self._sample(stage_embeddings, labels, generator)
        if self.gather_distributed and is_distributed():
            samples = [(gather_with_grad(z), gather_labels(y)) for z, y in samples]

        infonce = _IMPLEMENTATIONS[self.implementation]
        parts: dict[str, Tensor] = {}
        weights: dict[str, float] = {}
        if self.use_ms:
            for s, (z, y) in enumerate(samples):
                parts[f"ms/{s}"] = infonce(z, y, temperature=self.temperature)
                weights[f"ms/{s}"] = self.ms_weights[s]
        deepest = num_stages - 1
        for (a, b), weight in zip(pairs, self.cs_weights):
            (z_a, y_a), (z_b, y_b) = samples[a], samples[b]
            if self.cs_detach_deepest:
                z_a = z_a.detach() if a == deepest else z_a
                z_b = z_b.detach() if b == deepest else z_b
            parts[f"cs/{a}-{b}"] = infonce(z_a, y_a, z_b, y_b, temperature=self.temperature)
            weights[f"cs/{a}-{b}"] = weight
        total = sum(weights[name] * value for name, value in parts.items())
        return LossOutput(total=total, parts=parts, records=records)
