"""The blocked supervised InfoNCE kernel (docs/method.md §2-3) behind :func:`mscl.losses.supervised_infonce`.

It never holds more than one block of rows of the similarity matrix: it sorts the samples by label so
that each block's positives lie in one contiguous band of columns, and it computes the gradient block by
block during the forward pass (the loss is a scalar, so its gradient is known there up to the incoming
factor); the backward pass only scales the stored ``[N,d]`` gradients. Three matrix products per block,
the same count as the forward and backward of a bare ``Z @ Z.T``. Inputs are already unit rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

# Largest spread of exponents (2 / tau) for which exp(s - 1/tau) cannot underflow to zero: beyond
# it the kernel shifts each row by its largest negative similarity instead.
_SAFE_EXPONENT_RANGE = {torch.float32: 80.0, torch.float64: 700.0}
# Elements of one block of the similarity matrix when `block_rows` is not given (8 MiB in fp32); a
# block also spans at most a quarter of the rows so that its band of positives stays narrow.
_BLOCK_ELEMENTS = 1 << 21
_MIN_BLOCK_ROWS = 64


def default_block_rows(num_anchors: int, num_candidates: int) -> int:
    """Rows per block: about 2M similarity elements, at most a quarter of the anchors, at least 64."""
    return max(_MIN_BLOCK_ROWS, min(_BLOCK_ELEMENTS // num_candidates, math.ceil(num_anchors / 4)))


@dataclass
class _Layout:
    """Samples sorted by label; anchor ``i``'s positives are the sorted candidates
    ``[band_start_i, band_end_i)`` (minus itself in the self form)."""

    anchors: Tensor
    anchor_labels: Tensor
    anchor_order: Tensor
    candidates: Tensor
    candidate_labels: Tensor
    candidate_order: Tensor | None
    positive_count: Tensor
    has_positive: Tensor
    block_starts: list[int]
    band_starts: list[int]
    band_ends: list[int]
    anchors_with_positive: int


def _layout(
    anchors: Tensor, anchor_labels: Tensor, candidates: Tensor | None, candidate_labels: Tensor | None, block_rows: int
) -> _Layout:
    """Sort by label and find each block's band of positive columns (one host transfer)."""
    sorted_anchor_labels, anchor_order = torch.sort(anchor_labels)
    sorted_anchors = anchors[anchor_order]
    candidate_order = None
    if candidates is None or candidate_labels is None:
        sorted_candidate_labels, sorted_candidates = sorted_anchor_labels, sorted_anchors
    else:
        sorted_candidate_labels, candidate_order = torch.sort(candidate_labels)
        sorted_candidates = candidates[candidate_order]
    band_start = torch.searchsorted(sorted_candidate_labels, sorted_anchor_labels)
    band_end = torch.searchsorted(sorted_candidate_labels, sorted_anchor_labels, right=True)
    positive_count = band_end - band_start - int(candidates is None)
    has_positive = positive_count > 0
    num_anchors = anchors.shape[0]
    row_starts = torch.arange(0, num_anchors, block_rows, device=anchors.device)
    row_ends = torch.clamp(row_starts + block_rows, max=num_anchors)
    host = torch.cat([band_start[row_starts], band_end[row_ends - 1], has_positive.sum()[None]]).tolist()
    num_blocks = len(row_starts)
    return _Layout(
        sorted_anchors, sorted_anchor_labels, anchor_order, sorted_candidates, sorted_candidate_labels, candidate_order,
        positive_count, has_positive, list(range(0, num_anchors, block_rows)),
        host[:num_blocks], host[num_blocks:-1], host[-1],
    )


def _block_terms(
    shifted: Tensor, positive: Tensor, same: Tensor, band: slice, exact_shift: bool, weight: Tensor, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Weighted sum of one block's ``log`` terms and, if asked, ``dL/ds`` of the block (the shifted
    similarities ``shifted`` are consumed).

    The negative log-sum-exp of a row is shifted by ``1/tau`` (an upper bound of every similarity of
    unit vectors) when ``exp`` cannot underflow over the range ``2/tau``, else by the row's largest
    negative similarity. Each positive term is ``s_ip - logaddexp(s_ip, LSE_neg_i)``, i.e.
    ``logsigmoid(s_ip - LSE_neg_i)``.
    """
    if exact_shift:
        negatives_only = shifted.clone()
        negatives_only[:, band].masked_fill_(same, -torch.inf)
        row_shift = negatives_only.amax(1)
        del negatives_only
        shifted.sub_(torch.where(torch.isfinite(row_shift), row_shift, 0.0)[:, None])
    band_logits = shifted[:, band].clone()
    exp_negative = shifted.exp_()
    exp_negative[:, band].masked_fill_(same, 0.0)
    negative_sum = exp_negative.sum(1)
    margin = band_logits.sub_(negative_sum.log()[:, None])
    log_terms = torch.where(positive, F.logsigmoid(margin), 0.0).sum(1)
    weighted = torch.dot(weight, log_terms)
    if not need_grad:
        return weighted, None
    # dL/ds_ip = -w_i (1 - sigma_ip);  dL/ds_in = w_i sum_p(1 - sigma_ip) exp(s_in - LSE_neg_i).
    positive_miss = torch.where(positive, torch.sigmoid(margin.neg_()), 0.0)
    negative_coef = weight * positive_miss.sum(1) / negative_sum.clamp_min(torch.finfo(shifted.dtype).tiny)
    grad_logits = exp_negative.mul_(negative_coef[:, None])
    grad_logits[:, band].sub_(positive_miss.mul_(weight[:, None]))
    return weighted, grad_logits


def blocked_loss_and_grad(
    anchors: Tensor,
    anchor_labels: Tensor,
    candidates: Tensor | None,
    candidate_labels: Tensor | None,
    temperature: float,
    block_rows: int,
    anchor_grad: bool,
    candidate_grad: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Loss (docs/method.md §2-3) and the requested gradients w.r.t. the unit-row anchors and candidates
    (self form, ``candidates=None``: ``anchor_grad`` covers both roles), one block of rows at a time."""
    self_form = candidates is None
    layout = _layout(anchors, anchor_labels, candidates, candidate_labels, block_rows)
    candidate_grad = candidate_grad and not self_form
    if layout.anchors_with_positive == 0:
        return (
            anchors.new_zeros(()),
            torch.zeros_like(anchors) if anchor_grad else None,
            torch.zeros_like(layout.candidates) if candidate_grad else None,
        )
    dtype, (num_anchors, dim) = anchors.dtype, anchors.shape
    # Each anchor's terms are averaged over |P(i)|, then over the anchors that have positives.
    anchor_weight = layout.has_positive.to(dtype) / (
        layout.positive_count.clamp_min(1).to(dtype) * layout.anchors_with_positive
    )
    inverse_temperature = 1.0 / temperature
    exact_shift = 2.0 * inverse_temperature > _SAFE_EXPONENT_RANGE[dtype]
    # One matrix product gives s_ij - shift: [z_i/tau, -shift] . [z_j, 1].
    shift_column = layout.anchors.new_full((num_anchors, 1), -(0.0 if exact_shift else inverse_temperature))
    scaled_anchors_ext = torch.cat([layout.anchors * inverse_temperature, shift_column], 1)
    candidates_ext = torch.cat([layout.candidates, layout.candidates.new_ones((layout.candidates.shape[0], 1))], 1)
    scaled_anchors = scaled_anchors_ext[:, :dim]
    scaled_candidates = scaled_anchors if self_form else layout.candidates * inverse_temperature
    grad_anchors = torch.zeros_like(layout.anchors) if anchor_grad else None
    # In the self form the column gradient belongs to the same (sorted) anchors.
    grad_candidates = torch.zeros_like(layout.candidates) if candidate_grad else (grad_anchors if self_form else None)

    loss = anchors.new_zeros(())
    for row_start, band_lo, band_hi in zip(layout.block_starts, layout.band_starts, layout.band_ends):
        rows = slice(row_start, min(row_start + block_rows, num_anchors))
        same = layout.anchor_labels[rows, None] == layout.candidate_labels[None, band_lo:band_hi]
        positive = same
        if self_form:
            positive = same.clone()
            local_rows = torch.arange(rows.stop - row_start, device=anchors.device)
            positive[local_rows, local_rows + (row_start - band_lo)] = False
        shifted = torch.mm(scaled_anchors_ext[rows], candidates_ext.T)
        weighted, grad_logits = _block_terms(
            shifted, positive, same, slice(band_lo, band_hi), exact_shift, anchor_weight[rows],
            anchor_grad or candidate_grad,
        )
        loss = loss - weighted
        if grad_logits is not None and grad_anchors is not None:
            grad_anchors[rows].addmm_(grad_logits, scaled_candidates)
        if grad_logits is not None and grad_candidates is not None:
            grad_candidates.addmm_(grad_logits.T, scaled_anchors[rows])
    own_candidate_grad = grad_candidates if candidate_grad else None
    return loss, _unsort(grad_anchors, layout.anchor_order), _unsort(own_candidate_grad, layout.candidate_order)


def _unsort(sorted_rows: Tensor | None, order: Tensor | None) -> Tensor | None:
    """Rows back in input order (``sorted_rows[k]`` belongs to input row ``order[k]``)."""
    if sorted_rows is None or order is None:
        return None
    return torch.empty_like(sorted_rows).index_copy_(0, order, sorted_rows)


class BlockedSupervisedInfoNCE(torch.autograd.Function):
    """Autograd wrapper: the forward computes the loss and its input gradients block by block."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, anchors, anchor_labels, candidates, candidate_labels, temperature, block_rows
    ):
        loss, grad_anchors, grad_candidates = blocked_loss_and_grad(
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
