"""The paper's contrastive loss as one object (docs/method.md §1-4): :class:`MSCSLoss`."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from mscl.distributed import GatheredSampler
from mscl.losses.infonce import IMPLEMENTATIONS, SupervisedInfoNCE
from mscl.losses.terms import ContrastiveSum, ContrastiveTerm, CrossScaleTerm, MultiScaleTerm, resolve_pairs
from mscl.sampler import ClassBalancedSampler, PixelSampler, SharedPositionSampler, check_stage_inputs


class MSCSLoss(ContrastiveSum):
    """Multi-scale + cross-scale contrastive loss (docs/method.md §2-4), contrastive part only.

    ``total = sum_s ms_weights[s] * ms/<s> + sum_p cs_weights[p] * cs/<a>-<b>``; the trainer adds
    cross-entropy and the paper's factor 0.1. Stage 0 is the highest resolution. The paper-default
    composition of :class:`SupervisedInfoNCE`, a sampler, :class:`MultiScaleTerm` and
    :class:`CrossScaleTerm`; build a :class:`ContrastiveSum` directly for other combinations.

    Args:
        num_classes, ignore_index: label space of the sampler.
        temperature: InfoNCE temperature tau (paper: 0.1).
        ms_weights: one weight per stage, finest first (paper: 1.0, 0.7, 0.4, 0.1).
        cs_pairs: (anchor stage, candidate stage) pairs; negative indices count from the deepest
            stage (paper: (0, -1) and (0, -2)).
        cs_weights: weights of the pairs (paper: ``w_high_low = w_high_mid = 1.0``).
        min_views_per_class, max_views_per_class, max_features_total: sampler settings (§1).
        use_ms, use_cs: include the multi-scale / cross-scale term.
        cs_detach_deepest: stop gradients into the deepest stage through the cross-scale term.
        same_positions: use :class:`SharedPositionSampler` (positions drawn once at stage 0, read at
            every stage with the stage-0 labels) instead of :class:`ClassBalancedSampler`.
        gather_distributed: under DDP, wrap the sampler in :class:`GatheredSampler` (global batch).
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
        pairs = tuple((int(a), int(b)) for a, b in cs_pairs)
        _check_settings(temperature, implementation, pairs, cs_weights, ms_weights, use_ms, use_cs)
        sampler_class = SharedPositionSampler if same_positions else ClassBalancedSampler
        sampler: PixelSampler = sampler_class(
            num_classes, ignore_index, min_views_per_class, max_views_per_class, max_features_total
        )
        if gather_distributed:
            sampler = GatheredSampler(sampler)
        loss = SupervisedInfoNCE(temperature, implementation)
        terms: list[ContrastiveTerm] = []
        if use_ms:
            terms.append(MultiScaleTerm(loss, sampler, ms_weights))
        if use_cs and pairs:
            terms.append(CrossScaleTerm(loss, sampler, pairs, cs_weights, detach_stages=(-1,) if cs_detach_deepest else ()))
        super().__init__(sampler, terms)
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
        return resolve_pairs(self.cs_pairs, num_stages, "MSCSLoss: cs pair")

    def check_inputs(self, stage_embeddings: Sequence[Tensor], labels: Tensor) -> None:
        """ValueError, in the loss's own setting names, when the inputs do not fit the settings."""
        check_stage_inputs(stage_embeddings, labels, "MSCSLoss")
        if self.use_ms and len(stage_embeddings) != len(self.ms_weights):
            raise ValueError(
                f"MSCSLoss: got {len(stage_embeddings)} stage embeddings but ms_weights has "
                f"{len(self.ms_weights)} entries"
            )
        if self.use_cs:
            self.resolved_cs_pairs(len(stage_embeddings))
        super().check_inputs(stage_embeddings, labels)


def _check_settings(
    temperature: float,
    implementation: str,
    pairs: tuple[tuple[int, int], ...],
    cs_weights: Sequence[float],
    ms_weights: Sequence[float],
    use_ms: bool,
    use_cs: bool,
) -> None:
    """The constructor's ValueErrors, named after MSCSLoss's keywords."""
    if not temperature > 0:
        raise ValueError(f"MSCSLoss: temperature must be > 0, got {temperature}")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"MSCSLoss: implementation must be one of {sorted(IMPLEMENTATIONS)}, got {implementation!r}")
    if use_cs and len(pairs) != len(cs_weights):
        raise ValueError(f"MSCSLoss: cs_weights has {len(cs_weights)} entries but cs_pairs has {len(pairs)}")
    if use_ms and len(ms_weights) == 0:
        raise ValueError("MSCSLoss: use_ms needs at least one entry in ms_weights")
    if not (use_ms or (use_cs and pairs)):
        raise ValueError("MSCSLoss: enable use_ms, or use_cs with at least one cs pair")
