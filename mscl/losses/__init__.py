"""Contrastive losses as composable parts (docs/method.md §1-4).

* :class:`SupervisedInfoNCE` - the core loss, implementation injected: :func:`supervised_infonce`
  (blocked, default) or :func:`supervised_infonce_reference` (full matrix); rows are normalised by
  :func:`unit_rows` (bounded gradients).
* :class:`MultiScaleTerm` (§2) and :class:`CrossScaleTerm` (§3) - each takes a loss and a pixel sampler
  (:mod:`mscl.sampler`); :class:`ContrastiveSum` sums terms over one shared draw of the sampler.
* :class:`MSCSLoss` - the paper's composition with its default settings (§4, contrastive part).
* DDP: wrap the sampler in :class:`mscl.distributed.GatheredSampler`.
"""

from mscl.losses.infonce import (
    IMPLEMENTATIONS,
    InfoNCEImplementation,
    SupervisedInfoNCE,
    supervised_infonce,
    supervised_infonce_reference,
)
from mscl.losses.mscs import MSCSLoss
from mscl.losses.normalize import ZERO_ROW_NORM, unit_rows
from mscl.losses.terms import (
    ContrastiveSum,
    ContrastiveTerm,
    CrossScaleTerm,
    LossOutput,
    MultiScaleTerm,
    PairLoss,
    WeightedPart,
)

__all__ = [
    "IMPLEMENTATIONS",
    "ZERO_ROW_NORM",
    "ContrastiveSum",
    "ContrastiveTerm",
    "CrossScaleTerm",
    "InfoNCEImplementation",
    "LossOutput",
    "MSCSLoss",
    "MultiScaleTerm",
    "PairLoss",
    "SupervisedInfoNCE",
    "WeightedPart",
    "supervised_infonce",
    "supervised_infonce_reference",
    "unit_rows",
]
