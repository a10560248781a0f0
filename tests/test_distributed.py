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
from mscl.losses import supervised_infonce

REPO = Path(__file__).resolve().parents[1]


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
    torch.save({"loss": loss.detach(), "grad": local.grad, "gathered": gathered.detach()}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_gather_with_grad_spans_global_batch(tmp_path: Path) -> None:
    """Each rank computes the global loss; the gradient reaching a rank's rows is W x the global gradient,
    so DDP's averaging over W ranks recovers exactly the single-process gradient."""
    world = 2
    mp.spawn(_gather_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
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
