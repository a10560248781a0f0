"""Distributed training on CPU (gloo): the contrast spans the global batch and both ranks agree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mscl.data import generate_synthetic_dataset
from mscl.distributed import gather_with_grad
from mscl.losses import MSCSLoss, supervised_infonce
from mscl.sampler import StageSamples

REPO = Path(__file__).resolve().parents[1]


def _stage_inputs(rank: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Rank ``rank``'s own images: 4 stages of float64 embeddings and a label map (2 images on rank 0, 1 on rank 1)."""
    generator = torch.Generator().manual_seed(100 + rank)
    batch = 2 - rank
    labels = torch.randint(0, 3, (batch, 4, 4), generator=generator).repeat_interleave(8, 1).repeat_interleave(8, 2)
    embeddings = [
        torch.randn(batch, 5, 32 // s, 32 // s, generator=generator, dtype=torch.float64, requires_grad=True)
        for s in (2, 4, 8, 16)
    ]
    return embeddings, labels


def _contrastive(gather: bool) -> MSCSLoss:
    return MSCSLoss(num_classes=3, ignore_index=255, min_views_per_class=1, max_features_total=40, gather_distributed=gather)


def _gather_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    generator = torch.Generator().manual_seed(0)
    sizes = [5, 8]
    z_all = torch.randn(sum(sizes), 6, generator=generator, dtype=torch.float64)
    y_all = torch.randint(0, 3, (sum(sizes),), generator=generator)
    start = sum(sizes[:rank])
    local = z_all[start : start + sizes[rank]].clone().requires_grad_(True)
    gathered = gather_with_grad(local)
    loss = supervised_infonce(gathered, y_all)
    loss.backward()
    # GatheredSampler inside MSCSLoss: every rank's samples, per stage, in rank order.
    embeddings, labels = _stage_inputs(rank)
    contrast = _contrastive(gather=True)
    output = contrast(embeddings, labels, torch.Generator().manual_seed(rank))
    output.total.backward()
    samples = contrast.sampler.sample_stages(embeddings, labels, torch.Generator().manual_seed(rank))
    torch.save(
        {
            "loss": loss.detach(), "grad": local.grad, "gathered": gathered.detach(),
            "mscs_parts": {name: value.detach() for name, value in output.parts.items()},
            "mscs_grads": [e.grad for e in embeddings], "mscs_records": {s: vars(r) for s, r in output.records.items()},
            "samples": [z.detach() for z in samples.embeddings], "sample_labels": samples.labels,
        },
        f"{out_dir}/rank{rank}.pt",
    )
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Results of :func:`_gather_worker` on two gloo ranks (spawned once for the tests below)."""
    out = tmp_path_factory.mktemp("gather")
    world = 2
    mp.spawn(_gather_worker, args=(world, str(out / "init"), str(out)), nprocs=world, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(world)]


def test_gather_with_grad_spans_global_batch(two_ranks: list[dict]) -> None:
    """Each rank computes the global loss; the gradient reaching a rank's rows is W x the global gradient,
    so DDP's averaging over W ranks recovers exactly the single-process gradient."""
    world = 2
    results = two_ranks
    generator = torch.Generator().manual_seed(0)
    z_all = torch.randn(13, 6, generator=generator, dtype=torch.float64).requires_grad_(True)
    y_all = torch.randint(0, 3, (13,), generator=generator)
    reference = supervised_infonce(z_all, y_all)
    reference.backward()
    for rank, result in enumerate(results):
        torch.testing.assert_close(result["gathered"], z_all.detach())
        torch.testing.assert_close(result["loss"], reference.detach())
    grads = torch.cat([results[0]["grad"], results[1]["grad"]])
    torch.testing.assert_close(grads / world, z_all.grad)


def test_gathered_sampler_gives_the_global_batch_loss(two_ranks: list[dict]) -> None:
    """MSCSLoss wraps its sampler in GatheredSampler: both ranks see the rank-ordered concatenation of the
    local samples, compute the same parts as one process holding both draws, and each rank's embeddings
    receive W x that process's gradient (which DDP's averaging turns into the exact gradient)."""
    world = 2
    inputs = [_stage_inputs(rank) for rank in range(world)]
    local = [_contrastive(gather=False).sampler.sample_stages(e, y, torch.Generator().manual_seed(r))
             for r, (e, y) in enumerate(inputs)]
    for result in two_ranks:
        for s in range(4):
            torch.testing.assert_close(result["samples"][s], torch.cat([draw.embeddings[s] for draw in local]).detach())
            assert torch.equal(result["sample_labels"][s], torch.cat([draw.labels[s] for draw in local]))
    global_samples = StageSamples(
        embeddings=[torch.cat([draw.embeddings[s] for draw in local]) for s in range(4)],
        labels=[torch.cat([draw.labels[s] for draw in local]) for s in range(4)],
        records={},
    )
    single = _contrastive(gather=False)
    parts = [part for term in single.terms for part in term.weighted_parts(global_samples)]
    sum(part.weight * part.value for part in parts).backward()
    for rank, result in enumerate(two_ranks):
        assert list(result["mscs_parts"]) == ["ms/0", "ms/1", "ms/2", "ms/3", "cs/0-3", "cs/0-2"]
        for part in parts:
            torch.testing.assert_close(result["mscs_parts"][part.name], part.value.detach(), rtol=1e-12, atol=1e-12)
        assert result["mscs_records"] == {s: vars(r) for s, r in local[rank].records.items()}  # records stay local
        for grad, embedding in zip(result["mscs_grads"], inputs[rank][0], strict=True):
            torch.testing.assert_close(grad / world, embedding.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.timeout(600)
def test_torchrun_two_cpu_processes_agree(tmp_path: Path) -> None:
    root = generate_synthetic_dataset(tmp_path / "synthetic", n_train=16, n_val=4, size=(48, 64), seed=0)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "mscl.cli", "train", "--config", "synthetic-tiny", "--name", "ddp", "--out", str(tmp_path / "runs"),
        "--root", str(root), "--loss", "ms+cs", "--steps", "4", "--batch-size", "2", "--device", "cpu",
        "--set", "train.log_every=2", "--set", "train.val_every=4", "--set", "train.log_all_ranks=true",
        "--set", "train.progress=false", "--set", "export.project=false", "--set", "export.num_pixels=100",
        "--set", "loss.projector_dim=16", "--set", "data.color_jitter=0.0",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540)
    assert result.returncode == 0, result.stderr[-4000:]
    run = tmp_path / "runs/ddp"
    ranks = [pd.read_csv(run / f"logs/rank{r}.csv") for r in range(2)]
    contrastive = [c for c in ranks[0].columns if c.startswith("loss/ms/") or c.startswith("loss/cs/")]
    assert {"loss/ms/0", "loss/cs/0-3", "loss/cs/0-2"} <= set(contrastive)
    for column in contrastive + ["loss/contrastive"]:
        np.testing.assert_allclose(ranks[0][column], ranks[1][column], rtol=1e-6, err_msg=column)
    assert not np.allclose(ranks[0]["loss/ce"], ranks[1]["loss/ce"]), "each rank should see its own images"
    logged = pd.read_csv(run / "metrics/train.csv")
    np.testing.assert_allclose(logged["loss/ce"], (ranks[0]["loss/ce"] + ranks[1]["loss/ce"]) / 2, rtol=1e-6)
    np.testing.assert_allclose(logged["loss/contrastive"], ranks[0]["loss/contrastive"], rtol=1e-6)
    assert (run / "eval/summary.json").is_file()
