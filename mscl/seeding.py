"""Every seed ``mscl`` derives from the config's ``seed``: same config and seed on the same machine, same run, bit for bit.

One place for the derivations, so training, its loaders, the export and ``mscl capture`` agree:

* :func:`seed_everything`: Python's, NumPy's and torch's global generators of one process (``seed + rank``
  under DDP: each process draws its own augmentation, docs/method.md §7);
* :func:`seed_worker`: the ``worker_init_fn`` of every ``DataLoader``: each worker's ``random`` and
  ``numpy`` follow the per-worker torch seed that the loader derives from its generator;
* :func:`loader_generator`: the generator of one loader (one epoch of one process);
* :func:`epoch_order_generator`: the shuffle of one epoch (the same on every process, each takes its shard);
* :func:`step_generator`: the pixel sampler's draw at one training step of one process (``docs/method.md §1``);
* :func:`sample_generator`: a private generator for samplings that depend on the seed alone (the export's and
  the snapshots' class-balanced pixel choice).

The multipliers are fixed primes: changing any of them changes every seeded run.
"""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = [
    "epoch_order_generator",
    "loader_generator",
    "sample_generator",
    "seed_everything",
    "seed_worker",
    "step_generator",
]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator (``seed mod 2^32``) and torch's global generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """``DataLoader`` ``worker_init_fn``: seed ``random`` and ``numpy`` from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def sample_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` itself."""
    return torch.Generator().manual_seed(int(seed))


def loader_generator(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """The generator of the loader of ``epoch`` on process ``rank`` (worker seeds derive from it)."""
    return sample_generator(seed * 7919 + epoch * 104_729 + rank)


def epoch_order_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator of the training images' order in ``epoch``: identical on every process."""
    return sample_generator(seed * 100_003 + epoch)


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The pixel sampler's generator at training ``step`` on process ``rank``."""
    return sample_generator(seed * 1_000_003 + step * 7919 + rank)
