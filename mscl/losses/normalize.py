"""Unit-row normalisation with bounded gradients (docs/method.md §2: "L2-normalised embeddings").

``F.normalize`` divides by ``max(||z||, 1e-12)``: an all-zero row (a dead projector output, padding)
keeps the value 0 but receives the gradient ``g / 1e-12``, which reached 1e10-1e12 in practice and
wrecks the step. :func:`unit_rows` gives the same values for every row of norm ``>= eps`` and maps
shorter rows, which carry no reliable direction, to the zero vector as a constant: their gradient is
exactly zero, and every other row's gradient ``(I - u u^T) g / ||z||`` is at most ``||g|| / eps``.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Rows shorter than this are treated as having no direction (float32 keeps about 7 significant digits).
ZERO_ROW_NORM = 1e-6


def unit_rows(z: Tensor, eps: float = ZERO_ROW_NORM) -> Tensor:
    """``z_i / ||z_i||`` for rows with ``||z_i|| >= eps``, the zero vector for shorter rows (docs/method.md §2).

    Values equal ``F.normalize(z, dim=1)`` bit for bit on rows of norm ``>= eps``. Gradients are the exact
    derivative of this piecewise map: zero for the short rows, bounded by ``||g_i|| / eps`` for the others.
    """
    if not eps > 0:
        raise ValueError(f"unit_rows: eps must be > 0, got {eps}")
    norm = z.norm(2, 1, keepdim=True)
    return torch.where(norm >= eps, z / norm.clamp_min(eps), 0.0)
