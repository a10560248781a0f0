"""Supervised InfoNCE (docs/method.md §2-3), the core loss of every contrastive term.

Pissas et al., "Multi-scale and Cross-scale Contrastive Learning for Semantic Segmentation", ECCV 2022.
For an anchor ``i`` with positives ``P(i)`` and negatives ``N(i)``::

    l_i = -1/|P(i)| * sum_{p in P(i)} log( exp(s_ip) / (exp(s_ip) + sum_{n in N(i)} exp(s_in)) )

with ``s_ij = z_i . z_j / tau`` on unit rows (:func:`mscl.losses.unit_rows`); the loss is the mean of
``l_i`` over anchors that have at least one positive. Self form (``z2`` omitted, §2): anchors and
candidates are ``z`` and the anchor itself is neither a positive nor a negative. Cross form (§3): anchors
``z``, positives and negatives from ``z2``.

Two implementations share this definition and are finite for every ``tau > 0``:

* :func:`supervised_infonce` (default): blocked, never holds the full similarity matrix
  (:mod:`mscl.losses.blocked`);
* :func:`supervised_infonce_reference`: the full ``[N,M]`` matrix (tests and the benchmark's baseline).

:class:`SupervisedInfoNCE` is the loss object the terms take, with the implementation injected.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from mscl.losses.blocked import BlockedSupervisedInfoNCE, blocked_loss_and_grad, default_block_rows
from mscl.losses.normalize import unit_rows


class InfoNCEImplementation(Protocol):
    """A function computing the supervised InfoNCE of docs/method.md §2-3."""

    def __call__(
        self, z: Tensor, y: Tensor, z2: Tensor | None = None, y2: Tensor | None = None, temperature: float = 0.1
    ) -> Tensor: ...


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
    """Supervised InfoNCE (docs/method.md §2-3) with the full ``[N,M]`` similarity matrix.

    The negative log-sum-exp of a row is shifted by its largest negative similarity and the positives
    are masked to ``-inf`` before ``exp``, so no ``exp`` overflows at any temperature.
    """
    _check_inputs(z, y, z2, y2, temperature)
    if z.shape[0] == 0 or (z2 is not None and z2.shape[0] == 0):
        return _zero_loss(z, z2)
    dtype = _compute_dtype(z)
    with torch.autocast(device_type=z.device.type, enabled=False):
        anchors = unit_rows(z.to(dtype))
        if z2 is None or y2 is None:
            candidates, candidate_labels = anchors, y
        else:
            candidates, candidate_labels = unit_rows(z2.to(dtype)), y2
        logits = anchors @ candidates.T / temperature
        negative = y[:, None] != candidate_labels[None, :]
        positive = ~negative
        if z2 is None:
            positive = positive & ~torch.eye(len(y), dtype=torch.bool, device=z.device)
        positive_count = positive.sum(1)
        has_positive = positive_count > 0
        if not bool(has_positive.any()):
            return _zero_loss(z, z2)
        has_negative = negative.any(1)
        negative_max = logits.detach().masked_fill(~negative, -torch.inf).amax(1)
        negative_max = torch.where(has_negative, negative_max, 0.0)
        negative_sum = torch.exp((logits - negative_max[:, None]).masked_fill(~negative, -torch.inf)).sum(1)
        negative_lse = torch.where(
            has_negative,
            negative_max + torch.log(torch.where(has_negative, negative_sum, 1.0)),
            -torch.inf,
        )
        log_prob = logits - torch.logaddexp(logits, negative_lse[:, None])
        per_anchor = -(log_prob * positive).sum(1)[has_positive] / positive_count[has_positive]
        return per_anchor.mean()


def supervised_infonce(
    z: Tensor,
    y: Tensor,
    z2: Tensor | None = None,
    y2: Tensor | None = None,
    temperature: float = 0.1,
    *,
    block_rows: int | None = None,
) -> Tensor:
    """Memory-efficient supervised InfoNCE (docs/method.md §2-3); same definition as the reference.

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
    rows = block_rows if block_rows is not None else default_block_rows(z.shape[0], num_candidates)
    with torch.autocast(device_type=z.device.type, enabled=False):
        anchors = unit_rows(z.to(dtype))
        candidates = None if z2 is None else unit_rows(z2.to(dtype))
        labels = y.to(z.device)
        candidate_labels = None if y2 is None else y2.to(z.device)
        inputs = (anchors, labels, candidates, candidate_labels, temperature, rows)
        wants_grad = anchors.requires_grad or (candidates is not None and candidates.requires_grad)
        if torch.is_grad_enabled() and wants_grad:
            return BlockedSupervisedInfoNCE.apply(*inputs)
        return blocked_loss_and_grad(*inputs, anchor_grad=False, candidate_grad=False)[0]


IMPLEMENTATIONS: dict[str, InfoNCEImplementation] = {
    "blocked": supervised_infonce,
    "reference": supervised_infonce_reference,
}


class SupervisedInfoNCE(nn.Module):
    """Supervised InfoNCE loss object (docs/method.md §2-3) with its implementation injected.

    ``loss(z, y)`` is the self form (multi-scale, §2); ``loss(z, y, z2, y2)`` the cross form
    (cross-scale, §3). Embeddings need not be normalised.

    Args:
        temperature: tau (paper: 0.1).
        implementation: ``"blocked"`` (default, :func:`supervised_infonce`), ``"reference"``
            (:func:`supervised_infonce_reference`) or any function with their signature.
    """

    def __init__(self, temperature: float = 0.1, implementation: str | InfoNCEImplementation = "blocked") -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"SupervisedInfoNCE: temperature must be > 0 (paper: 0.1), got {temperature}")
        if isinstance(implementation, str):
            if implementation not in IMPLEMENTATIONS:
                raise ValueError(
                    f"SupervisedInfoNCE: implementation must be one of {sorted(IMPLEMENTATIONS)} or a function, "
                    f"got {implementation!r}"
                )
            implementation = IMPLEMENTATIONS[implementation]
        self.temperature = float(temperature)
        self.implementation = implementation

    def forward(self, z: Tensor, y: Tensor, z2: Tensor | None = None, y2: Tensor | None = None) -> Tensor:
        """Loss of anchors ``z [N,d]`` (labels ``y [N]``) against themselves or against ``z2 [M,d]``."""
        return self.implementation(z, y, z2, y2, temperature=self.temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, implementation={getattr(self.implementation, '__name__', '?')}"
