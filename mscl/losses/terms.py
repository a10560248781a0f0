"""Contrastive terms (docs/method.md §2-4): each takes a loss and a pixel sampler.

A term turns one draw of the sampler (:class:`mscl.sampler.StageSamples`) into named, weighted parts;
the loss only sees sampled ``[M,d]`` embeddings and labels, the sampler only sees the stage maps, so
either can be swapped (another InfoNCE implementation, a memory bank, another miner) without touching
the term. Called on its own, a term draws with its sampler; :class:`ContrastiveSum` draws once and
lets every term read the same draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch
from torch import Tensor, nn

from mscl.sampler import PixelSampler, SamplerRecord, StageSamples, check_stage_inputs


class PairLoss(Protocol):
    """A loss over sampled embeddings: self form ``loss(z, y)`` or cross form ``loss(z, y, z2, y2)``."""

    def __call__(self, z: Tensor, y: Tensor, z2: Tensor | None = None, y2: Tensor | None = None) -> Tensor: ...


class WeightedPart(NamedTuple):
    """One named loss value and its weight in the total."""

    name: str
    weight: float
    value: Tensor


class LossOutput(NamedTuple):
    """Weighted contrastive total, its named parts and the sampler records per stage."""

    total: Tensor
    parts: dict[str, Tensor]
    records: dict[int, SamplerRecord]


def combine(parts: Sequence[WeightedPart], records: dict[int, SamplerRecord], owner: str) -> LossOutput:
    """``total = sum_k weight_k * value_k`` in the order given (docs/method.md §4, contrastive part)."""
    named: dict[str, Tensor] = {}
    for part in parts:
        if part.name in named:
            raise ValueError(f"{owner}: two terms produce the part {part.name!r}; each part name must be unique")
        named[part.name] = part.value
    return LossOutput(total=sum(part.weight * part.value for part in parts), parts=named, records=records)


def resolve_stage(index: int, num_stages: int, what: str) -> int:
    """Non-negative stage index (negative ones count from the deepest stage); ValueError naming ``what``."""
    if not -num_stages <= index < num_stages:
        raise ValueError(f"{what} is out of range for {num_stages} stages")
    return index % num_stages


def resolve_pairs(pairs: Sequence[tuple[int, int]], num_stages: int, what: str) -> list[tuple[int, int]]:
    """Stage pairs as non-negative indices; ``what`` names the setting in the messages (e.g. ``"MSCSLoss: cs pair"``)."""
    resolved = []
    for a, b in pairs:
        if not (-num_stages <= a < num_stages and -num_stages <= b < num_stages):
            raise ValueError(f"{what} ({a}, {b}) is out of range for {num_stages} stages")
        pair = (a % num_stages, b % num_stages)
        if pair[0] == pair[1]:
            raise ValueError(f"{what} ({a}, {b}) resolves to the same stage {pair[0]} with {num_stages} stages")
        resolved.append(pair)
    return resolved


def _weights(weights: Sequence[float], owner: str, key: str) -> tuple[float, ...]:
    values = tuple(float(w) for w in weights)
    if len(values) == 0:
        raise ValueError(f"{owner}: {key} is empty; give at least one weight")
    return values


class ContrastiveTerm(nn.Module):
    """A loss and a sampler; subclasses implement :meth:`check_stages` and :meth:`weighted_parts`."""

    def __init__(self, loss: PairLoss, sampler: PixelSampler) -> None:
        super().__init__()
        self.loss = loss
        self.sampler = sampler

    def check_stages(self, num_stages: int) -> None:
        """ValueError when the term's settings do not fit ``num_stages`` stages."""

    def weighted_parts(self, samples: StageSamples) -> list[WeightedPart]:
        """The term's named, weighted parts on one draw of the sampler."""
        raise NotImplementedError

    def forward(self, stage_embeddings: Sequence[Tensor], labels: Tensor, generator: torch.Generator | None = None) -> LossOutput:
        """Draw with the term's sampler and return its weighted total, parts and the sampler records."""
        owner = type(self).__name__
        check_stage_inputs(stage_embeddings, labels, owner)
        self.check_stages(len(stage_embeddings))
        samples = self.sampler.sample_stages(stage_embeddings, labels, generator)
        return combine(self.weighted_parts(samples), samples.records, owner)


class MultiScaleTerm(ContrastiveTerm):
    """Multi-scale term (docs/method.md §2): ``sum_s weights[s] * loss(z_s, y_s)`` over the stages,
    finest first; parts ``ms/<s>``.

    Args:
        loss: self-form loss, e.g. :class:`mscl.losses.SupervisedInfoNCE`.
        sampler: pixel sampler (:class:`mscl.sampler.PixelSampler`).
        weights: one weight per stage (paper: 1.0, 0.7, 0.4, 0.1).
    """

    def __init__(self, loss: PairLoss, sampler: PixelSampler, weights: Sequence[float] = (1.0, 0.7, 0.4, 0.1)) -> None:
        super().__init__(loss, sampler)
        self.weights = _weights(weights, "MultiScaleTerm", "weights")

    def check_stages(self, num_stages: int) -> None:
        if num_stages != len(self.weights):
            raise ValueError(
                f"MultiScaleTerm: got {num_stages} stage embeddings but weights has {len(self.weights)} entries "
                "(one per stage, finest first)"
            )

    def weighted_parts(self, samples: StageSamples) -> list[WeightedPart]:
        self.check_stages(len(samples.embeddings))
        return [
            WeightedPart(f"ms/{s}", weight, self.loss(z, y))
            for s, (z, y, weight) in enumerate(zip(samples.embeddings, samples.labels, self.weights))
        ]


class CrossScaleTerm(ContrastiveTerm):
    """Cross-scale term (docs/method.md §3): anchors from stage ``a``, positives and negatives from stage
    ``b``, ``sum_p weights[p] * loss(z_a, y_a, z_b, y_b)``; parts ``cs/<a>-<b>`` (resolved indices).

    Args:
        loss: cross-form loss, e.g. :class:`mscl.losses.SupervisedInfoNCE`.
        sampler: pixel sampler (:class:`mscl.sampler.PixelSampler`).
        pairs: (anchor stage, candidate stage); negative indices count from the deepest stage (paper:
            (0, -1) and (0, -2)).
        weights: one weight per pair (paper: ``w_high_low = w_high_mid = 1.0``).
        detach_stages: stages whose samples enter this term without gradient (e.g. ``(-1,)``: the
            deepest stage, the method's detach option).
    """

    def __init__(
        self,
        loss: PairLoss,
        sampler: PixelSampler,
        pairs: Sequence[tuple[int, int]] = ((0, -1), (0, -2)),
        weights: Sequence[float] = (1.0, 1.0),
        detach_stages: Sequence[int] = (),
    ) -> None:
        super().__init__(loss, sampler)
        self.pairs = tuple((int(a), int(b)) for a, b in pairs)
        self.weights = _weights(weights, "CrossScaleTerm", "weights")
        if len(self.pairs) != len(self.weights):
            raise ValueError(f"CrossScaleTerm: weights has {len(self.weights)} entries but pairs has {len(self.pairs)}")
        self.detach_stages = tuple(int(s) for s in detach_stages)

    def resolved_pairs(self, num_stages: int) -> list[tuple[int, int]]:
        """The pairs as non-negative stage indices (ValueError when out of range)."""
        return resolve_pairs(self.pairs, num_stages, "CrossScaleTerm: pair")

    def check_stages(self, num_stages: int) -> None:
        self.resolved_pairs(num_stages)
        for stage in self.detach_stages:
            resolve_stage(stage, num_stages, f"CrossScaleTerm: detach_stages entry {stage}")

    def weighted_parts(self, samples: StageSamples) -> list[WeightedPart]:
        num_stages = len(samples.embeddings)
        self.check_stages(num_stages)
        detached = {resolve_stage(s, num_stages, "detach_stages") for s in self.detach_stages}
        parts = []
        for (a, b), weight in zip(self.resolved_pairs(num_stages), self.weights):
            z_a, z_b = samples.embeddings[a], samples.embeddings[b]
            z_a = z_a.detach() if a in detached else z_a
            z_b = z_b.detach() if b in detached else z_b
            parts.append(WeightedPart(f"cs/{a}-{b}", weight, self.loss(z_a, samples.labels[a], z_b, samples.labels[b])))
        return parts


class ContrastiveSum(nn.Module):
    """Sum of contrastive terms over one shared draw of ``sampler`` (docs/method.md §4, contrastive part).

    Every term must be built on ``sampler`` (the same object), so that all of them read the same sampled
    pixels, as in the method; ``total`` is the sum of the terms' weighted parts in term order.
    """

    def __init__(self, sampler: PixelSampler, terms: Sequence[ContrastiveTerm]) -> None:
        super().__init__()
        owner = type(self).__name__
        if len(terms) == 0:
            raise ValueError(f"{owner}: no terms; give at least one contrastive term")
        for index, term in enumerate(terms):
            if term.sampler is not sampler:
                raise ValueError(
                    f"{owner}: term {index} ({type(term).__name__}) has its own sampler; build every term on the "
                    "sampler given here so that all terms read one draw"
                )
        self.sampler = sampler
        self.terms = nn.ModuleList(terms)

    def check_inputs(self, stage_embeddings: Sequence[Tensor], labels: Tensor) -> None:
        """ValueError when the inputs or any term's settings do not fit the stages given."""
        check_stage_inputs(stage_embeddings, labels, type(self).__name__)
        for term in self.terms:
            term.check_stages(len(stage_embeddings))

    def forward(self, stage_embeddings: Sequence[Tensor], labels: Tensor, generator: torch.Generator | None = None) -> LossOutput:
        """Draw once (``stage_embeddings[s] [N,d,h_s,w_s]``, finest first; ``labels [N,H,W]``) and sum the terms."""
        self.check_inputs(stage_embeddings, labels)
        samples = self.sampler.sample_stages(stage_embeddings, labels, generator)
        parts = [part for term in self.terms for part in term.weighted_parts(samples)]
        return combine(parts, samples.records, type(self).__name__)
