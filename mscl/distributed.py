"""DDP helpers: rank / world size, gathering of variable-size samples across ranks, and
:class:`GatheredSampler`, the wrapper that lets any contrastive loss span the global batch.

Gradient of :func:`gather_with_grad` under DDP: every rank gathers the samples of all ranks and
computes the same global loss ``L``. The autograd-aware ``all_gather`` sends, in backward, the
gradient of each gathered slice back to the rank that owns it and sums it over the ``W`` ranks;
since the ``W`` ranks hold identical losses, the owner receives ``W * dL/dz_local``. DDP then
averages parameter gradients over ranks (divides by ``W``), so each parameter ends up with exactly
``dL/dtheta`` of the global loss, the same as a single process holding the whole batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from torch import Tensor

from mscl.sampler import PixelSampler, StageSamples


def is_distributed() -> bool:
    """True when torch.distributed is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather_sizes(x: Tensor) -> list[int]:
    local = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    sizes = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(sizes, local)
    return [int(size.item()) for size in sizes]


def _pad_rows(x: Tensor, rows: int) -> Tensor:
    if x.shape[0] == rows:
        return x
    return torch.cat([x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))], 0)


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x [M_r, ...]`` of every rank in rank order, keeping the autograd graph.

    Ranks may hold different ``M_r`` (sizes are gathered first, rows padded to the largest, and
    the padding trimmed). Identity when not distributed. See the module docstring for why the
    resulting gradients are correct under DDP gradient averaging.
    """
    if not is_distributed():
        return x
    sizes = _gather_sizes(x)
    with warnings.catch_warnings():
        # Deprecated in recent torch in favour of a private module; still the public,
        # autograd-aware all_gather across the supported torch range (>= 2.4).
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated", category=FutureWarning)
        gathered = dist_nn.all_gather(_pad_rows(x, max(sizes)))
    return torch.cat([part[:size] for part, size in zip(gathered, sizes)], 0)


def gather_labels(y: Tensor) -> Tensor:
    """Concatenate ``y [M_r, ...]`` of every rank in rank order, without gradient."""
    if not is_distributed():
        return y
    sizes = _gather_sizes(y)
    padded = _pad_rows(y, max(sizes)).contiguous()
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([part[:size] for part, size in zip(gathered, sizes)], 0)


class GatheredSampler:
    """Wraps any :class:`mscl.sampler.PixelSampler` so that the loss sees the samples of every rank.

    Each rank draws from its own images with the wrapped sampler, then every stage's embeddings
    (:func:`gather_with_grad`) and labels (:func:`gather_labels`) are concatenated in rank order, so
    every rank computes the contrastive loss of the global batch (docs/method.md §1: diversity comes
    from the batch). Wrapping the sampler rather than the loss gathers each stage once per step, however
    many terms read it. The records stay those of this rank. Identity when not distributed.
    """

    def __init__(self, sampler: PixelSampler) -> None:
        self.sampler = sampler

    def sample_stages(
        self, stage_embeddings: Sequence[Tensor], labels: Tensor, generator: torch.Generator | None = None
    ) -> StageSamples:
        """Draw locally, then gather every stage across ranks."""
        local = self.sampler.sample_stages(stage_embeddings, labels, generator)
        if not is_distributed():
            return local
        embeddings, gathered_labels = [], []
        for z, y in zip(local.embeddings, local.labels):
            embeddings.append(gather_with_grad(z))
            gathered_labels.append(gather_labels(y))
        return StageSamples(embeddings=embeddings, labels=gathered_labels, records=local.records)
