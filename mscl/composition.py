"""The composition root of ``mscl train``: every part of a training run, built from its config.

:func:`build_training_parts` sets up the process (device, DDP), seeds it, builds the datasets and checks them,
then the network (model and, for contrastive presets, one projector per stage), the contrastive loss
(docs/method.md §1-4), the optimizer and its learning-rate schedule, the run writer and the hooks, and returns
them as one :class:`TrainingParts`. :class:`mscl.trainer.Trainer` receives them and only runs the loop, so a
test or a script can hand it other parts (another loss, optimizer or hook) without touching the loop.

The build order is fixed: the parts draw from the seeded global generator in this order (initialisation of
the model, then of the projectors), so the same config and seed give the same run.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader

from mscl.checkpoints import SegmentationWithProjectors
from mscl.config import Config
from mscl.data import DatasetInfo
from mscl.data.base import DataError, SegmentationDataset
from mscl.data.loading import EpochSampler, build_split, train_loader, validation_indices, validation_loader
from mscl.data.validation import DataReport, check_data
from mscl.evaluation import EvalResult
from mscl.export import ExportSettings
from mscl.losses import MSCSLoss
from mscl.metrics import iou_per_class
from mscl.models import build_model
from mscl.projectors import ProjectorSet
from mscl.run_writer import RunWriter
from mscl.seeding import seed_everything
from mscl.snapshots import SnapshotRecorder
from mscl.tensorboard_logger import TENSORBOARD_DIR, TensorBoardLogger

__all__ = [
    "DeviceError",
    "PolyWarmup",
    "Runtime",
    "SnapshotHook",
    "TensorBoardHook",
    "TrainingData",
    "TrainingHook",
    "TrainingParts",
    "build_contrastive_loss",
    "build_hooks",
    "build_network",
    "build_optimizer",
    "build_scheduler",
    "build_training_data",
    "build_training_parts",
    "resolve_device",
    "setup_runtime",
]


# ---------------------------------------------------------------------------------------------- process


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
            raise DeviceError(f"--device {name}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}; "
                              "use one of them or --device cpu")
    return device


@dataclass(frozen=True)
class Runtime:
    """Where this process trains: its device, its rank and the number of processes (``torchrun``, docs/method.md §7)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run directory."""
        return self.rank == 0


def setup_runtime(config: Config) -> Runtime:
    """Join the process group under ``torchrun`` (``WORLD_SIZE`` > 1: NCCL on GPUs, else Gloo) and pick the device
    (``train.device``; each process takes its ``LOCAL_RANK`` GPU under DDP)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() and config.train.device != "cpu" else "gloo")
    device = resolve_device(config.train.device)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return Runtime(device, rank, world_size)


# ---------------------------------------------------------------------------------------------- data


@dataclass
class TrainingData:
    """The run's splits, its training order and its loaders (:mod:`mscl.data.loading`)."""

    config: Config
    train_set: SegmentationDataset
    val_set: SegmentationDataset
    sampler: EpochSampler
    val_indices: list[int]
    report: DataReport | None
    rank: int = 0

    @property
    def info(self) -> DatasetInfo:
        return self.train_set.info

    @property
    def num_classes(self) -> int:
        return len(self.info.class_names)

    def train_loader(self, epoch: int) -> DataLoader:
        """The loader of ``epoch`` (set ``sampler``'s epoch and start batch first)."""
        return train_loader(self.train_set, self.sampler, self.config, epoch, self.rank)

    def val_loader(self) -> DataLoader:
        """The validation images of the run, in order."""
        return validation_loader(self.config, self.val_set, self.rank)


def check_training_data(config: Config, datasets: dict[str, SegmentationDataset], runtime: Runtime) -> DataReport | None:
    """Rank 0 decodes every train and val file the run uses before step 1 (``mscl.data.validation``) and prints its
    warnings; every rank stops with the one-line DataError when it finds a problem. The report (rank 0 only)."""
    report, message = None, None
    if runtime.is_main:
        report = check_data(config, datasets, progress=config.train.progress)
        message = report.error_message()
        for warning in report.warnings:
            print(f"data warning: {warning}", file=sys.stderr)
    if runtime.distributed:
        shared = [message]
        dist.broadcast_object_list(shared, src=0)
        message = shared[0]
    if message:
        raise DataError(message)
    return report


def build_training_data(config: Config, runtime: Runtime) -> TrainingData:
    """The train split (training transform, first ``data.max_train_images``) in this process's shard of the seeded
    order, and the val split (first ``data.max_val_images``), checked before training."""
    data = config.data
    train_set = build_split(config, data.train_split, train=True)
    val_set = build_split(config, data.val_split, train=False)
    train_indices = list(range(len(train_set)))[: data.max_train_images]
    sampler = EpochSampler(train_indices, data.batch_size, config.seed, runtime.rank, runtime.world_size)
    val_indices = validation_indices(config, val_set)
    report = check_training_data(config, {data.train_split: train_set, data.val_split: val_set}, runtime)
    return TrainingData(config, train_set, val_set, sampler, val_indices, report, runtime.rank)


# ---------------------------------------------------------------------------------------------- network and loss


def build_network(config: Config, num_classes: int, runtime: Runtime) -> tuple[SegmentationWithProjectors, nn.Module]:
    """The model of ``model.*`` with, for the ``ms`` and ``ms+cs`` presets, a ``loss.projector_dim`` projector per stage
    (docs/method.md §2), on the device; returns it and the module the loop runs (DDP-wrapped, with ``train.sync_bn``
    batch norm synchronised across processes, when distributed)."""
    model = build_model(config.model.name, num_classes, encoder=config.model.encoder, pretrained=config.model.pretrained,
                        **config.model.kwargs)
    contrastive = config.loss.preset != "ce"
    projectors = ProjectorSet(list(model.stage_channels), dim=config.loss.projector_dim) if contrastive else None
    module = SegmentationWithProjectors(model, projectors).to(runtime.device)
    if runtime.distributed and config.train.sync_bn:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if not runtime.distributed:
        return module, module
    ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return module, nn.parallel.DistributedDataParallel(module, device_ids=ids)


def build_contrastive_loss(config: Config, info: DatasetInfo) -> MSCSLoss | None:
    """The contrastive part of the loss of ``loss.preset`` (docs/method.md §1-4): ms for ``ms``, ms and cs for
    ``ms+cs``, None for ``ce``; the trainer adds cross-entropy and the ``loss.contrastive_weight`` factor."""
    loss = config.loss
    if loss.preset == "ce":
        return None
    return MSCSLoss(
        num_classes=len(info.class_names),
        ignore_index=info.ignore_index,
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


# ---------------------------------------------------------------------------------------------- optimisation


def build_optimizer(config: Config, module: nn.Module) -> torch.optim.Optimizer:
    """``optim.name`` (SGD with ``optim.momentum``, or AdamW) at ``optim.lr``; weight decay ``optim.weight_decay`` on
    weight matrices and kernels only (biases and normalisation parameters have none)."""
    optim = config.optim
    decay, no_decay = [], []
    for param in module.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if optim.name == "sgd":
        return torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum)
    return torch.optim.AdamW(groups, lr=optim.lr)


class PolyWarmup:
    """The learning-rate factor at loop step ``step`` (0-based): ``(step + 1) / warmup_steps`` during an optional linear
    warm-up, then the polynomial decay ``(1 - min(step, total_steps - 1) / total_steps) ^ power``.

    A callable object rather than a function, so ``LambdaLR.state_dict`` keeps its parameters.
    """

    def __init__(self, total_steps: int, power: float, warmup_steps: int = 0) -> None:
        self.total_steps = total_steps
        self.power = power
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return (1.0 - min(step, self.total_steps - 1) / self.total_steps) ** self.power


def build_scheduler(config: Config, optimizer: torch.optim.Optimizer) -> LambdaLR:
    """``LambdaLR`` with the :class:`PolyWarmup` factor of ``train.steps``, ``optim.poly_power`` and
    ``optim.warmup_steps``: step ``s`` runs at ``optim.lr x factor(s)`` (the loop calls ``step()`` after each
    optimiser step)."""
    factor = PolyWarmup(config.train.steps, config.optim.poly_power, config.optim.warmup_steps)
    return LambdaLR(optimizer, factor)


# ---------------------------------------------------------------------------------------------- hooks


class TrainingHook:
    """Something the trainer calls at fixed points of the loop (main process only); every method is a no-op here.

    ``on_start`` once the run directory is open (``step`` is the resumed step, 0 for a new run), ``on_log`` with each
    ``metrics/train.csv`` row, ``on_validation`` after each validation (``module`` is in training mode and must be
    left so), ``close`` when ``fit`` returns or raises.
    """

    def on_start(self, step: int, resumed: bool) -> None:
        """The run directory is open and, on resume, the checkpoint set loaded."""

    def on_log(self, step: int, row: dict[str, float]) -> None:
        """A training row was logged."""

    def on_validation(self, step: int, result: EvalResult, module: SegmentationWithProjectors) -> None:
        """A validation finished."""

    def close(self) -> None:
        """Training ended (finished, interrupted or failed)."""


class TensorBoardHook(TrainingHook):
    """``train.tensorboard``: the logged scalars as TensorBoard events in ``RUN/tensorboard/`` (mscl.tensorboard_logger)."""

    def __init__(self, run_dir: Path, class_names: list[str]) -> None:
        self.run_dir = run_dir
        self.class_names = class_names
        self.logger: TensorBoardLogger | None = None

    def on_start(self, step: int, resumed: bool) -> None:
        purge_step = step + 1 if resumed else None
        self.logger = TensorBoardLogger(self.run_dir / TENSORBOARD_DIR, self.class_names, purge_step=purge_step)

    def on_log(self, step: int, row: dict[str, float]) -> None:
        self.logger.log_train(step, row)

    def on_validation(self, step: int, result: EvalResult, module: SegmentationWithProjectors) -> None:
        self.logger.log_val(step, result.summary(), iou_per_class(result.confusion))

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()


class SnapshotHook(TrainingHook):
    """``export.snapshots``: the embeddings of fixed validation pixels at every validation (mscl.snapshots)."""

    def __init__(self, recorder: SnapshotRecorder) -> None:
        self.recorder = recorder

    def on_validation(self, step: int, result: EvalResult, module: SegmentationWithProjectors) -> None:
        self.recorder.record(step, module, result.summary()["miou"])


def build_hooks(config: Config, runtime: Runtime, data: TrainingData) -> list[TrainingHook]:
    """The hooks the config asks for, on the main process: ``train.tensorboard``, then ``export.snapshots``."""
    if not runtime.is_main:
        return []
    hooks: list[TrainingHook] = []
    if config.train.tensorboard:
        hooks.append(TensorBoardHook(config.run_dir, list(data.info.class_names)))
    if config.export.snapshots:
        recorder = SnapshotRecorder(config.run_dir, data.val_set, data.val_indices, split=config.data.val_split, seed=config.seed,
                                    batch_size=config.data.val_batch_size, device=runtime.device)
        hooks.append(SnapshotHook(recorder))
    return hooks


# ---------------------------------------------------------------------------------------------- the root


@dataclass
class TrainingParts:
    """Everything :class:`mscl.trainer.Trainer` runs: built by :func:`build_training_parts`, or by hand."""

    runtime: Runtime
    data: TrainingData
    module: SegmentationWithProjectors
    network: nn.Module
    contrastive_loss: MSCSLoss | None
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    writer: RunWriter | None
    export: ExportSettings
    hooks: list[TrainingHook] = field(default_factory=list)


def build_training_parts(config: Config) -> TrainingParts:
    """Build every part of a run from ``config``: process setup, ``seed + rank`` seeding (mscl.seeding), data (checked;
    DataError before anything else is built), network, contrastive loss, optimizer, schedule, the run writer and the
    hooks (main process), and the export settings."""
    runtime = setup_runtime(config)
    seed_everything(config.seed + runtime.rank)
    data = build_training_data(config, runtime)
    module, network = build_network(config, data.num_classes, runtime)
    contrastive_loss = build_contrastive_loss(config, data.info)
    optimizer = build_optimizer(config, module)
    scheduler = build_scheduler(config, optimizer)
    writer = RunWriter(config.run_dir) if runtime.is_main else None
    hooks = build_hooks(config, runtime, data)
    return TrainingParts(runtime, data, module, network, contrastive_loss, optimizer, scheduler, writer,
                         ExportSettings.from_config(config), hooks)
