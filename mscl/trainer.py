"""The training loop: CE + ``contrastive_weight`` x (ms + cs) (paper Sec. 3.4), periodic validation,
atomic checkpoints, resume after an interruption, and DDP with the contrast spanning the global batch.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from mscl import __version__
from mscl.checkpoints import (
    CheckpointError,
    SegmentationWithProjectors,
    load_checkpoint_set,
    load_weights,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_checkpoint_set,
)
from mscl.config import Config, save_config
from mscl.data import build_dataset, build_transforms
from mscl.data.base import DataError
from mscl.data.validation import DataReport, check_data
from mscl.evaluation import EvalResult, collate_by_size, evaluate
from mscl.export import export_artifacts
from mscl.losses import MSCSLoss
from mscl.metrics import iou_per_class
from mscl.models import build_model
from mscl.projectors import ProjectorSet
from mscl.run_writer import RunWriter, write_csv, write_text
from mscl.snapshots import SnapshotRecorder
from mscl.tensorboard_logger import TENSORBOARD_DIR, TensorBoardLogger
from runformat import FORMAT_VERSION, RunStatus, layout
from runformat.lock import RunLock
from runformat.projection_cache import project_in_child_process
from runformat.rundir import prepare_run_dir


class EpochSampler(Sampler[int]):
    """Seeded per-epoch permutation, sharded over ranks, that can start mid-epoch (for resume)."""

    def __init__(self, indices: list[int], batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(indices)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0
        self.batches_per_epoch = len(self.indices) // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"the training split has {len(self.indices)} images, fewer than one global batch "
                f"(data.batch_size={batch_size} x {world_size} processes)"
            )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.indices), generator=generator).tolist()
        usable = self.batches_per_epoch * self.batch_size * self.world_size
        mine = order[:usable][self.rank :: self.world_size]
        return iter([self.indices[i] for i in mine[self.start_batch * self.batch_size :]])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


def build_split(config: Config, split: str, train: bool, root: str | None = None):
    """A dataset split with the config's joint transforms (crop padding uses the dataset's ignore index)."""
    data = config.data
    dataset = build_dataset(data.name, root or data.root, split, seed=config.seed if train else None)
    if train:
        dataset.transform = build_transforms(
            train=True,
            crop_size=data.crop_size,
            scale_range=tuple(data.scale_range),
            resize=data.resize,
            hflip=data.hflip,
            color_jitter=data.color_jitter,
            ignore_index=dataset.info.ignore_index,
            mean=data.mean,
            std=data.std,
        )
    else:
        dataset.transform = build_transforms(
            train=False, resize=data.resize, ignore_index=dataset.info.ignore_index, mean=data.mean, std=data.std
        )
    return dataset


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class DeviceError(ValueError):
    """The requested device does not exist on this machine (one line naming the option and the way out)."""


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available, else CPU) or a torch device name (``--device`` / ``train.device``).

    DeviceError when it is not a device name or names a CUDA device this machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:<index>") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"--device {name}: no CUDA GPU is available on this machine; use --device cpu (or auto)")
        if device.index is not None and device.index >= count:
            raise DeviceError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}; use one of them or --device cpu")
    return device


def poly_lr(base_lr: float, step: int, total: int, power: float, warmup: int) -> float:
    """Polynomial decay ``lr (1 - step/total)^power`` after an optional linear warm-up."""
    if warmup and step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * (1.0 - min(step, total - 1) / total) ** power


def build_optimizer(config: Config, module: nn.Module) -> torch.optim.Optimizer:
    optim = config.optim
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum)
    return torch.optim.AdamW(groups, lr=optim.lr)


class Trainer:
    """Trains one run and writes its directory (``docs/run-format.md``)."""

    def __init__(self, config: Config, resume: bool = False, overwrite: bool = False) -> None:
        if resume and overwrite:
            raise ValueError("--resume continues a run and --overwrite replaces it: give one of them")
        self.config = config
        self.resume = resume
        self.overwrite = overwrite
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.distributed = self.world_size > 1
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and config.train.device != "cpu" else "gloo"
            dist.init_process_group(backend=backend)
        self.device = resolve_device(config.train.device)
        if self.device.type == "cuda" and self.distributed:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        self.is_main = self.rank == 0
        self.run_dir = config.run_dir
        seed_everything(config.seed + self.rank)

        data = config.data
        self.train_set = build_split(config, data.train_split, train=True)
        self.val_set = build_split(config, data.val_split, train=False)
        self.info = self.train_set.info
        self.num_classes = len(self.info.class_names)
        train_indices = list(range(len(self.train_set)))[: data.max_train_images]
        self.sampler = EpochSampler(train_indices, data.batch_size, config.seed, self.rank, self.world_size)
        self.val_indices = list(range(len(self.val_set)))[: data.max_val_images]
        self.data_report = self._check_data()

        model = build_model(config.model.name, self.num_classes, encoder=config.model.encoder, pretrained=config.model.pretrained, **config.model.kwargs)
        contrastive = config.loss.preset != "ce"
        projectors = ProjectorSet(list(model.stage_channels), dim=config.loss.projector_dim) if contrastive else None
        self.module = SegmentationWithProjectors(model, projectors).to(self.device)
        if self.distributed and config.train.sync_bn:
            self.module = nn.SyncBatchNorm.convert_sync_batchnorm(self.module)
        self.network: nn.Module = self.module
        if self.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = nn.parallel.DistributedDataParallel(self.module, device_ids=ids)
        loss = config.loss
        self.contrastive_loss = (
            MSCSLoss(
                num_classes=self.num_classes,
                ignore_index=self.info.ignore_index,
                temperature=loss.temperature,
                ms_weights=tuple(loss.ms_weights),
                cs_pairs=tuple(tuple(p) for p in loss.cs_pairs),
                cs_weights=tuple(loss.cs_weights),
                min_views_per_class=loss.min_views_per_class,
                max_views_per_class=loss.max_views_per_class,
                max_features_total=loss.max_features_total,
                use_ms=True,
                use_cs=loss.preset == "ms+cs",
                cs_detach_deepest=loss.cs_detach_deepest,
                same_positions=loss.same_positions,
            )
            if contrastive
            else None
        )
        self.optimizer = build_optimizer(config, self.module)
        self.writer = RunWriter(self.run_dir) if self.is_main else None
        self.snapshots = SnapshotRecorder(
            self.run_dir, self.val_set, self.val_indices, split=data.val_split, seed=config.seed,
            batch_size=data.val_batch_size, device=self.device,
        ) if self.is_main and config.export.snapshots else None
        self.step = 0
        self.epoch = 0
        self.best_miou = float("-inf")
        self.train_seconds = 0.0
        self._saved_step: int | None = None
        self.tensorboard: TensorBoardLogger | None = None

    def _check_data(self) -> DataReport | None:
        """Rank 0 decodes every train and val file the run uses before step 1 (``mscl.data.validation``) and
        prints its warnings; every rank stops with the one-line error when it finds a problem."""
        report, message = None, None
        if self.is_main:
            data = self.config.data
            report = check_data(self.config, {data.train_split: self.train_set, data.val_split: self.val_set}, progress=self.config.train.progress)
            message = report.error_message()
            for warning in report.warnings:
                print(f"data warning: {warning}", file=sys.stderr)
        if self.distributed:
            shared = [message]
            dist.broadcast_object_list(shared, src=0)
            message = shared[0]
        if message:
            raise DataError(message)
        return report

    def _loader(self, dataset, sampler, batch_size: int, epoch: int, collate_fn=None) -> DataLoader:
        generator = torch.Generator().manual_seed(self.config.seed * 7919 + epoch * 104_729 + self.rank)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate_fn,
            num_workers=self.config.data.num_workers,
            worker_init_fn=_seed_worker,
            generator=generator,
            drop_last=False,
            persistent_workers=False,
        )

    def train_loader(self, epoch: int) -> DataLoader:
        return self._loader(self.train_set, self.sampler, self.config.data.batch_size, epoch)

    def val_loader(self) -> DataLoader:
        return self._loader(self.val_set, self.val_indices, self.config.data.val_batch_size, 0, collate_fn=collate_by_size)

    def _start_run(self) -> None:
        """Open the run directory (lock held): refuse or empty a used one, or load the newest checkpoint set to resume."""
        if self.is_main:
            prepare_run_dir(self.run_dir, resume=self.resume, overwrite=self.overwrite)
        if self.resume:
            self._check_resumed_loss()
            self._load_state()
        if not self.is_main:
            return
        write_text(self.run_dir / layout.CONFIG_YAML, save_config(self.config))
        model = self.module.model
        self.writer.write_meta(
            remove=("error",),
            format_version=FORMAT_VERSION,
            name=self.config.name,
            status=RunStatus.RUNNING,
            mscl_version=__version__,
            loss_preset=self.config.loss.preset,
            dataset={
                "name": self.config.data.name,
                "class_names": list(self.info.class_names),
                "palette": [list(map(int, c)) for c in self.info.palette],
                "ignore_index": int(self.info.ignore_index),
                "num_train": len(self.sampler.indices),
                "num_val": len(self.val_indices),
                "raw_label_histogram": self.data_report.raw_label_histogram(),
            },
            model={
                "name": self.config.model.name,
                "encoder": self.config.model.encoder,
                "stage_strides": [int(s) for s in model.stage_strides],
                "stage_channels": [int(c) for c in model.stage_channels],
                "projector_dim": self.config.loss.projector_dim if self.module.projectors is not None else None,
                "num_parameters": int(sum(p.numel() for p in model.parameters())),
            },
            world_size=self.world_size,
            device=str(self.device),
        )
        if self.config.train.tensorboard:
            purge_step = self.step + 1 if self.resume else None
            self.tensorboard = TensorBoardLogger(self.run_dir / TENSORBOARD_DIR, self.info.class_names, purge_step=purge_step)

    def _check_resumed_loss(self) -> None:
        """A resumed run keeps its loss preset: another ``--loss`` would change the method mid-run."""
        meta_path = self.run_dir / layout.RUN_JSON
        try:
            trained = json.loads(meta_path.read_text()).get("loss_preset")
        except (OSError, ValueError, AttributeError):
            trained = None
        asked = self.config.loss.preset
        if trained is not None and trained != asked:
            raise CheckpointError(
                f"{meta_path}: the run was trained with loss preset {trained}, not {asked}; resume it without --loss "
                f"(its config.yaml keeps {trained}), or train a new run with --loss {asked} and another --name"
            )

    def _load_state(self) -> None:
        """Restore weights, optimizer, RNG, loop scalars and tables from the newest complete checkpoint set."""
        found, weights, tensors, scalars = load_checkpoint_set(self.run_dir)
        way_out = "resume with the run's own model settings (drop --model/--encoder/--set overrides), or train a new run with another --name"
        load_weights(self.module, weights, found.weights, way_out)
        try:
            optimizer_from_tensors(self.optimizer, tensors, scalars)
            torch.set_rng_state(tensors["rng.torch"])
        except (KeyError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"{found.tensors} does not fit this run's optimizer ({err!r}); {way_out}") from None
        self.step, self.epoch = int(scalars["step"]), int(scalars["epoch"])
        self.best_miou, self.train_seconds = float(scalars["best_miou"]), float(scalars["train_seconds"])
        self._saved_step = self.step
        if self.writer is not None:
            self.writer.restore_tables(self.step)

    def save_checkpoint(self) -> None:
        """Write the checkpoint set of this step (docs/run-format.md, "Checkpoints") and flush the tables."""
        if not self.is_main:
            return
        tensors, scalars = optimizer_to_tensors(self.optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        optim = self.config.optim
        scalars.update(
            step=self.step,
            epoch=self.epoch,
            best_miou=self.best_miou,
            train_seconds=self.train_seconds,
            lr_schedule={"name": "poly", "base_lr": optim.lr, "total_steps": self.config.train.steps, "power": optim.poly_power,
                         "warmup_steps": optim.warmup_steps, "lr": self.optimizer.param_groups[0]["lr"]},
        )
        save_checkpoint_set(self.run_dir, self.step, self.module.state_dict(), tensors, scalars)
        self._saved_step = self.step
        self.writer.flush_tables()

    def train_step(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float], dict]:
        """One optimiser step; returns the total loss, the named parts and the sampler records."""
        images = batch["image"].to(self.device, non_blocking=True)
        labels = batch["label"].to(self.device, non_blocking=True)
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.train.amp)
        with amp:
            output, projected = self.network(images)
            ce = F.cross_entropy(output.logits.float(), labels, ignore_index=self.info.ignore_index)
            parts = {"loss/ce": ce.detach()}
            total = ce
            aux = self.module.model.last_aux_logits
            if aux is not None:
                aux_ce = F.cross_entropy(aux.float(), labels, ignore_index=self.info.ignore_index)
                parts["loss/aux_ce"] = aux_ce.detach()
                total = total + self.config.loss.aux_weight * aux_ce
            records: dict = {}
            if self.contrastive_loss is not None:
                contrast = self.contrastive_loss([p.float() for p in projected], labels, generator=generator)
                total = total + self.config.loss.contrastive_weight * contrast.total
                parts["loss/contrastive"] = contrast.total.detach()
                parts.update({f"loss/{name}": value.detach() for name, value in contrast.parts.items()})
                records = contrast.records
        if not torch.isfinite(total):
            raise FloatingPointError(f"non-finite loss at step {self.step}: {({k: float(v) for k, v in parts.items()})}")
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        parts["loss/total"] = total.detach()
        return total.detach(), {k: float(v) for k, v in parts.items()}, records

    def _reduce(self, values: dict[str, float]) -> dict[str, float]:
        if not self.distributed:
            return values
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return {k: float(v) / self.world_size for k, v in zip(keys, tensor.tolist())}

    def validate(self) -> EvalResult:
        result = evaluate(self.module.model, self.val_loader(), self.num_classes, self.info.ignore_index, self.device, progress=False)
        self.module.train()
        return result

    def _log(self, window: dict[str, list[float]], seconds: list[float], records: dict, rank_rows: list[dict]) -> None:
        means = self._reduce({k: float(np.mean(v)) for k, v in window.items()})
        if self.config.train.log_all_ranks:
            rank_rows.append({"step": self.step, **{k: float(np.mean(v)) for k, v in window.items()}})
            write_csv(self.run_dir / layout.rank_log(self.rank), pd.DataFrame(rank_rows))
        if not self.is_main:
            return
        lr = self.optimizer.param_groups[0]["lr"]
        row = {"step": self.step, "epoch": self.epoch, "lr": lr, **means, "sec_per_step": float(np.mean(seconds))}
        self.writer.log_train(row)
        if self.tensorboard is not None:
            self.tensorboard.log_train(self.step, row)
        if records:
            self.writer.log_sampler(self.step, records)
        self.writer.flush_tables()

    def _validate_and_keep_best(self) -> None:
        if self.is_main:
            result = self.validate()
            stats = result.summary()
            self.writer.log_val({"step": self.step, "epoch": self.epoch, **stats})
            if self.tensorboard is not None:
                self.tensorboard.log_val(self.step, stats, iou_per_class(result.confusion))
            if self.snapshots is not None:
                self.snapshots.record(self.step, self.module, stats["miou"])
            if stats["miou"] > self.best_miou:
                self.best_miou = stats["miou"]
                self.writer.save_weights("best", self.module.state_dict())
            self.writer.write_meta(best_miou=self.best_miou, last_val=stats)
        if self.distributed:
            dist.barrier()

    def fit(self) -> Path:
        """Train for ``train.steps`` steps (continuing from the newest checkpoint set when resuming), then export.

        The main process holds the run's lock until it returns (docs/run-format.md, "Lock"). Ctrl-C or SIGTERM,
        also during the final export, saves a checkpoint set (unless this step's is saved), stops the projection
        child process and leaves status ``interrupted``; an error leaves ``failed`` with the message under ``error``.
        """
        lock = RunLock(self.run_dir, command=f"mscl train {self.run_dir}") if self.is_main else None
        if lock is not None:
            lock.acquire()
        try:
            return self._fit()
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()
            if lock is not None:
                lock.release()

    def _fit(self) -> Path:
        self._start_run()
        cfg = self.config.train
        total_steps = cfg.steps
        bar = tqdm(total=total_steps, initial=self.step, desc=self.config.name, disable=not (self.is_main and cfg.progress), dynamic_ncols=True)
        window: dict[str, list[float]] = defaultdict(list)
        seconds: list[float] = []
        rank_rows: list[dict] = []
        previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt) if _in_main_thread() else None
        self.module.train()
        try:
            while self.step < total_steps:
                start_batch = self.step - self.epoch * self.sampler.batches_per_epoch
                if start_batch >= self.sampler.batches_per_epoch:
                    self.epoch += 1
                    continue
                self.sampler.set_epoch(self.epoch, start_batch)
                self.train_set.set_epoch(self.epoch)
                for batch in self.train_loader(self.epoch):
                    tic = time.perf_counter()
                    lr = poly_lr(self.config.optim.lr, self.step, total_steps, self.config.optim.poly_power, self.config.optim.warmup_steps)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    generator = torch.Generator().manual_seed(self.config.seed * 1_000_003 + self.step * 7919 + self.rank)
                    _, parts, records = self.train_step(batch, generator)
                    elapsed = time.perf_counter() - tic
                    self.train_seconds += elapsed
                    self.step += 1
                    seconds.append(elapsed)
                    for key, value in parts.items():
                        window[key].append(value)
                    bar.update(1)
                    bar.set_postfix({k.removeprefix("loss/"): f"{v:.3f}" for k, v in parts.items() if k.count("/") == 1})
                    if self.step % cfg.log_every == 0 or self.step == total_steps:
                        self._log(window, seconds, records, rank_rows)
                        window.clear()
                        seconds.clear()
                    if self.step % cfg.val_every == 0 or self.step == total_steps:
                        self._validate_and_keep_best()
                    if self.step % cfg.checkpoint_every == 0 or self.step == total_steps:
                        self.save_checkpoint()
                    if self.step >= total_steps:
                        break
            bar.close()
            if self.is_main:
                self.writer.write_meta(status=RunStatus.EXPORTING, timing=self._timing())
                self.export(checkpoint="last")
                self.writer.write_meta(status=RunStatus.FINISHED, timing=self._timing())
        except KeyboardInterrupt:
            bar.close()
            if self._saved_step != self.step:
                self.save_checkpoint()
            if self.is_main:
                self.writer.write_meta(status=RunStatus.INTERRUPTED, timing=self._timing())
                print(f"\ninterrupted at step {self.step}; continue with: mscl train --resume {self.run_dir}")
            raise
        except Exception as err:
            bar.close()
            if self.is_main:
                self.writer.write_meta(status=RunStatus.FAILED, error=f"{type(err).__name__}: {err}", timing=self._timing())
            raise
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
        if self.distributed:
            dist.barrier()
        return self.run_dir

    def _timing(self) -> dict[str, float]:
        return {"train_seconds": self.train_seconds, "steps": self.step, "sec_per_step": self.train_seconds / max(1, self.step)}

    def export(self, checkpoint: str = "last") -> dict:
        """Write eval/, predictions/, embeddings/ as one unit from the current weights, then the projection cache
        (``python -m workbench project`` in a child process, stopped if this process is interrupted)."""
        cfg = self.config.export
        summary = export_artifacts(
            self.run_dir,
            self.module.model,
            self.module.projectors,
            self.val_loader(),
            split=self.config.data.val_split,
            checkpoint=checkpoint,
            step=self.step,
            num_pixels=cfg.num_pixels,
            num_prediction_images=cfg.num_prediction_images,
            num_dense_images=cfg.num_dense_images,
            seed=self.config.seed,
            device=self.device,
            progress=self.config.train.progress,
        )
        if cfg.project:
            project_in_child_process(self.run_dir, self.config.seed)
        return summary


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
