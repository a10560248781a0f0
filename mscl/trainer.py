"""The training loop: CE + ``contrastive_weight`` x (ms + cs) (docs/method.md §4), periodic validation,
atomic checkpoint sets, resume after an interruption, and DDP with the contrast spanning the global batch (§7).

The loop is handed its parts (:class:`mscl.composition.TrainingParts`: data, network, loss, optimizer,
learning-rate schedule, run writer, hooks, export settings); ``Trainer(config)`` builds them with
:func:`mscl.composition.build_training_parts`.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from mscl import __version__
from mscl.checkpoints import (
    CheckpointError,
    load_checkpoint_set,
    load_weights,
    lr_schedule_to_scalars,
    optimizer_from_tensors,
    optimizer_to_tensors,
    restore_lr_schedule,
    save_checkpoint_set,
)
from mscl.composition import TrainingParts, build_training_parts
from mscl.config import Config, save_config
from mscl.evaluation import EvalResult, evaluate
from mscl.export import export_artifacts, project_after_export
from mscl.run_writer import write_csv, write_text
from mscl.seeding import step_generator
from runformat import FORMAT_VERSION, RunStatus, layout
from runformat.lock import RunLock
from runformat.rundir import prepare_run_dir


class Trainer:
    """Trains one run and writes its directory (``docs/run-format.md``).

    ``parts`` are the collaborators the loop runs (:class:`mscl.composition.TrainingParts`); without them they are
    built from ``config`` (:func:`mscl.composition.build_training_parts`, which checks the data first). ``resume``
    continues the run from its newest checkpoint set, ``overwrite`` empties a used run directory first.
    """

    def __init__(self, config: Config, resume: bool = False, overwrite: bool = False, *, parts: TrainingParts | None = None) -> None:
        if resume and overwrite:
            raise ValueError("--resume continues a run and --overwrite replaces it: give one of them")
        self.config = config
        self.resume = resume
        self.overwrite = overwrite
        self.run_dir = config.run_dir
        self.parts = parts if parts is not None else build_training_parts(config)
        runtime = self.parts.runtime
        self.device, self.rank, self.world_size = runtime.device, runtime.rank, runtime.world_size
        self.distributed, self.is_main = runtime.distributed, runtime.is_main
        self.data = self.parts.data
        self.info = self.data.info
        self.module = self.parts.module
        self.network = self.parts.network
        self.contrastive_loss = self.parts.contrastive_loss
        self.optimizer = self.parts.optimizer
        self.scheduler = self.parts.scheduler
        self.writer = self.parts.writer
        self.hooks = self.parts.hooks
        self.step = 0
        self.epoch = 0
        self.best_miou = float("-inf")
        self.train_seconds = 0.0
        self._saved_step: int | None = None
        self._lr = self.scheduler.get_last_lr()[0]
        self._window: dict[str, list[float]] = defaultdict(list)
        self._seconds: list[float] = []
        self._rank_rows: list[dict] = []

    # ------------------------------------------------------------------------------------------ run directory
    def _start_run(self) -> None:
        """Open the run directory (lock held): refuse or empty a used one, or load the newest checkpoint set to resume;
        then write ``config.yaml`` and ``run.json`` and start the hooks."""
        if self.is_main:
            prepare_run_dir(self.run_dir, resume=self.resume, overwrite=self.overwrite)
        if self.resume:
            self._check_resumed_loss()
            self._load_state()
        if not self.is_main:
            return
        write_text(self.run_dir / layout.CONFIG_YAML, save_config(self.config))
        self.writer.write_meta(
            remove=("error",),
            format_version=FORMAT_VERSION,
            name=self.config.name,
            status=RunStatus.RUNNING,
            mscl_version=__version__,
            loss_preset=self.config.loss.preset,
            dataset=self._dataset_meta(),
            model=self._model_meta(),
            world_size=self.world_size,
            device=str(self.device),
        )
        for hook in self.hooks:
            hook.on_start(self.step, self.resume)

    def _dataset_meta(self) -> dict[str, Any]:
        """``run.json`` ``dataset`` (docs/run-format.md)."""
        return {
            "name": self.config.data.name,
            "class_names": list(self.info.class_names),
            "palette": [list(map(int, c)) for c in self.info.palette],
            "ignore_index": int(self.info.ignore_index),
            "num_train": len(self.data.sampler.indices),
            "num_val": len(self.data.val_indices),
            "raw_label_histogram": self.data.report.raw_label_histogram(),
        }

    def _model_meta(self) -> dict[str, Any]:
        """``run.json`` ``model`` (docs/run-format.md)."""
        model = self.module.model
        return {
            "name": self.config.model.name,
            "encoder": self.config.model.encoder,
            "stage_strides": [int(s) for s in model.stage_strides],
            "stage_channels": [int(c) for c in model.stage_channels],
            "projector_dim": self.config.loss.projector_dim if self.module.projectors is not None else None,
            "num_parameters": int(sum(p.numel() for p in model.parameters())),
        }

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

    # ------------------------------------------------------------------------------------------ checkpoints
    def _load_state(self) -> None:
        """Restore weights, optimizer, learning-rate schedule, RNG, loop scalars and tables from the newest complete
        checkpoint set."""
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
        restore_lr_schedule(self.scheduler, scalars, self.step, found.scalars, way_out)
        self._saved_step = self.step
        if self.writer is not None:
            self.writer.restore_tables(self.step)

    def save_checkpoint(self) -> None:
        """Write the checkpoint set of this step (docs/run-format.md, "Checkpoints") and flush the tables."""
        if not self.is_main:
            return
        tensors, scalars = optimizer_to_tensors(self.optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        scalars.update(
            step=self.step,
            epoch=self.epoch,
            best_miou=self.best_miou,
            train_seconds=self.train_seconds,
            lr_schedule=lr_schedule_to_scalars("poly", self.scheduler),
        )
        save_checkpoint_set(self.run_dir, self.step, self.module.state_dict(), tensors, scalars)
        self._saved_step = self.step
        self.writer.flush_tables()

    # ------------------------------------------------------------------------------------------ one step
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

    # ------------------------------------------------------------------------------------------ logging, validation
    def validate(self) -> EvalResult:
        result = evaluate(self.module.model, self.data.val_loader(), self.data.num_classes, self.info.ignore_index, self.device, progress=False)
        self.module.train()
        return result

    def _log(self, records: dict) -> None:
        """Write the mean of each loss part since the last log (averaged over processes), the learning rate of the last
        step and the sampler records of this step; then start a new window."""
        means = {k: float(np.mean(v)) for k, v in self._window.items()}
        if self.config.train.log_all_ranks:
            self._rank_rows.append({"step": self.step, **means})
            write_csv(self.run_dir / layout.rank_log(self.rank), pd.DataFrame(self._rank_rows))
        means = self._reduce(means)
        if self.is_main:
            row = {"step": self.step, "epoch": self.epoch, "lr": self._lr, **means, "sec_per_step": float(np.mean(self._seconds))}
            self.writer.log_train(row)
            for hook in self.hooks:
                hook.on_log(self.step, row)
            if records:
                self.writer.log_sampler(self.step, records)
            self.writer.flush_tables()
        self._window.clear()
        self._seconds.clear()

    def _validate_and_keep_best(self) -> None:
        if self.is_main:
            result = self.validate()
            stats = result.summary()
            self.writer.log_val({"step": self.step, "epoch": self.epoch, **stats})
            for hook in self.hooks:
                hook.on_validation(self.step, result, self.module)
            if stats["miou"] > self.best_miou:
                self.best_miou = stats["miou"]
                self.writer.save_weights("best", self.module.state_dict())
            self.writer.write_meta(best_miou=self.best_miou, last_val=stats)
        if self.distributed:
            dist.barrier()

    # ------------------------------------------------------------------------------------------ the loop
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
            for hook in self.hooks:
                hook.close()
            if lock is not None:
                lock.release()

    def _fit(self) -> Path:
        started = time.perf_counter()
        self._start_run()
        cfg = self.config.train
        bar = tqdm(total=cfg.steps, initial=self.step, desc=self.config.name, disable=not (self.is_main and cfg.progress), dynamic_ncols=True)
        previous_handler = signal.signal(signal.SIGTERM, _raise_interrupt) if _in_main_thread() else None
        self.module.train()
        try:
            self._train_epochs(bar)
            bar.close()
            if self.is_main:
                self.writer.write_meta(status=RunStatus.EXPORTING, timing=self._timing())
                final = self.export(checkpoint="last")
                self.writer.write_meta(status=RunStatus.FINISHED, timing=self._timing())
                print(format_summary(self.config.name, self.run_dir, self.step, final, self.best_miou, time.perf_counter() - started))
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

    def _train_epochs(self, bar: tqdm) -> None:
        """Run the steps from ``self.step`` to ``train.steps``, epoch by epoch (a resumed epoch starts at its next batch)."""
        sampler = self.data.sampler
        while self.step < self.config.train.steps:
            start_batch = self.step - self.epoch * sampler.batches_per_epoch
            if start_batch >= sampler.batches_per_epoch:
                self.epoch += 1
                continue
            sampler.set_epoch(self.epoch, start_batch)
            self.data.train_set.set_epoch(self.epoch)
            for batch in self.data.train_loader(self.epoch):
                self._run_step(batch, bar)
                if self.step >= self.config.train.steps:
                    break

    def _run_step(self, batch: dict, bar: tqdm) -> None:
        """One step at the schedule's learning rate, with the step's sampler generator (mscl.seeding), then the log,
        validation and checkpoint that fall on it."""
        tic = time.perf_counter()
        self._lr = self.scheduler.get_last_lr()[0]
        _, parts, records = self.train_step(batch, step_generator(self.config.seed, self.step, self.rank))
        self.scheduler.step()
        elapsed = time.perf_counter() - tic
        self.train_seconds += elapsed
        self.step += 1
        self._seconds.append(elapsed)
        for key, value in parts.items():
            self._window[key].append(value)
        bar.update(1)
        bar.set_postfix({k.removeprefix("loss/"): f"{v:.3f}" for k, v in parts.items() if k.count("/") == 1})
        cfg = self.config.train
        last = self.step == cfg.steps
        if self.step % cfg.log_every == 0 or last:
            self._log(records)
        if self.step % cfg.val_every == 0 or last:
            self._validate_and_keep_best()
        if self.step % cfg.checkpoint_every == 0 or last:
            self.save_checkpoint()

    def _timing(self) -> dict[str, float]:
        return {"train_seconds": self.train_seconds, "steps": self.step, "sec_per_step": self.train_seconds / max(1, self.step)}

    def export(self, checkpoint: str = "last") -> dict:
        """Write eval/, predictions/, embeddings/ as one unit from the current weights (the run's export settings),
        then the projection cache (``python -m workbench project`` in a child process, stopped if this process is
        interrupted). Returns ``eval/summary.json``."""
        settings = self.parts.export
        summary = export_artifacts(self.run_dir, self.module.model, self.module.projectors, self.data.val_loader(), settings,
                                   checkpoint=checkpoint, step=self.step, device=self.device)
        project_after_export(self.run_dir, settings)
        return summary


def format_summary(name: str, run_dir: Path, steps: int, final: dict[str, Any], best_miou: float, seconds: float) -> str:
    """The lines ``mscl train`` ends with: the final weights' mIoU and pixel accuracy in percent on the validation
    split (``final``: ``eval/summary.json``, docs/workbench.md "Numbers"), the best validation mIoU, the wall time
    of the command and the run directory."""
    minutes, rest = divmod(round(seconds), 60)
    return (f"{name}: {steps} steps done in {minutes // 60:d}:{minutes % 60:02d}:{rest:02d}\n"
            f"  final weights on {final['split']}: mIoU {final['miou'] * 100:.2f} %, pixel accuracy {final['pixel_acc'] * 100:.2f} % "
            f"(best validation mIoU {best_miou * 100:.2f} %)\n"
            f"  run directory: {run_dir}")


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
