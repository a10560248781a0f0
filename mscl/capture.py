"""Capture a run directory from any segmentation model, so every workbench view can analyse it.

A captured run (``run.json`` ``kind: captured``, ``docs/run-format.md``) holds what ``mscl export``
writes for a trained run: the evaluation tables (``eval/``), the fixed prediction images
(``predictions/``), the class-balanced embedding sample and the dense maps (``embeddings/``), read at
the modules named as stages (:mod:`mscl.feature_taps`). It has no training metrics, sampler tables or
checkpoints. Python (README, "Open your own model")::

    from torch.utils.data import DataLoader
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large
    from mscl.capture import capture_run, capture_split

    val = capture_split("camvid", "../shared/datasets/camvid", "val", max_images=8)
    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=len(val.info.class_names))
    capture_run(model, DataLoader(val, batch_size=4), ["backbone.4", "backbone.7", "backbone.13", "backbone.16"],
                val.info.class_names, val.info.ignore_index, "runs/tv")

Command line: ``mscl capture --factory MODULE:FUNCTION --stages NAME ... --data FORMAT --root DIR
--split SPLIT --out DIR --name NAME`` (``--list-modules`` prints the candidate stages).
"""

from __future__ import annotations

import difflib
import importlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mscl import __version__
from mscl.data import DatasetInfo
from mscl.data.base import deterministic_palette
from mscl.data.loading import evaluation_loader, evaluation_split
from mscl.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mscl.export import ExportSettings, export_artifacts
from mscl.feature_taps import CaptureError, TappedModel, format_module_table, list_modules, stride_of
from mscl.run_writer import RunWriter
from mscl.seeding import seed_everything
from runformat import RunExistsError, RunStatus, layout
from runformat.lock import RunLock
from runformat.names import check_run_name
from runformat.projection_cache import project_in_child_process
from runformat.rundir import empty_run_dir, run_entries, tidy_run_dir

KIND = "captured"
FACTORY_EXAMPLE = "torchvision.models.segmentation:deeplabv3_mobilenet_v3_large"
BATCH_KEYS = ("image", "label", "index", "image_id")


# --------------------------------------------------------------------------------------------------
# Model: factory, keyword arguments, checkpoint


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """The ``--kwargs`` JSON object (``None`` -> no arguments)."""
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise CaptureError("--kwargs", f"not valid JSON ({err.msg} at column {err.colno}); write an object such as "
                                       "'{\"num_classes\": 11, \"weights\": null}'") from err
    if not isinstance(value, dict):
        raise CaptureError("--kwargs", f"must be a JSON object of keyword arguments, got {type(value).__name__} {text!r}")
    return value


def load_factory(spec: str) -> Callable[..., Any]:
    """The function named by ``MODULE:FUNCTION`` (e.g. ``torchvision.models.segmentation:deeplabv3_resnet50``)."""
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise CaptureError("--factory", f"expected MODULE:FUNCTION (e.g. {FACTORY_EXAMPLE}), got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise CaptureError("--factory", f"cannot import module {module_name!r} ({err}); check the name and that its "
                                        "package is installed in this environment") from err
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            names = [name for name in dir(target) if not name.startswith("_")]
            close = difflib.get_close_matches(part, names, n=5, cutoff=0.5)
            suggestion = f"; close matches: {', '.join(close)}" if close else ""
            raise CaptureError("--factory", f"{module_name!r} has no attribute {attribute!r}{suggestion}")
        target = getattr(target, part)
    if not callable(target):
        raise CaptureError("--factory", f"{spec} is a {type(target).__name__}, not a function or class that builds a model")
    return target


def build_from_factory(spec: str, kwargs: Mapping[str, Any]) -> nn.Module:
    """``FUNCTION(**kwargs)`` of ``spec``; must return a ``torch.nn.Module``."""
    factory = load_factory(spec)
    call = f"{spec}(**{json.dumps(dict(kwargs))})"
    try:
        model = factory(**kwargs)
    except TypeError as err:
        raise CaptureError("--kwargs", f"{call} failed: {err}") from err
    except Exception as err:  # the user's factory may fail in any way (a download, a missing file): one line, not a traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CaptureError("--factory", f"{call} failed with {type(err).__name__}: {first}") from err
    if not isinstance(model, nn.Module):
        raise CaptureError("--factory", f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load weights into ``model`` from a safetensors file or a torch file read with ``weights_only=True``.

    A torch checkpoint nesting its weights under ``state_dict`` / ``model`` is unwrapped
    (``mscl.models.encoders.read_state_dict``); when the keys do not fit as they are, a ``module.`` (DDP)
    or ``model.`` (mscl run checkpoints) prefix shared by every model key is removed. Every model weight
    must be found and no file weight may be left over.
    """
    from mscl.models.encoders import read_state_dict

    path = Path(path)
    if not path.is_file():
        raise CaptureError("--checkpoint", f"file {path} not found")
    try:
        state = read_state_dict(path)
    except (SafetensorError, RuntimeError, EOFError) as err:
        raise CaptureError("--checkpoint", f"{path} is neither a safetensors nor a torch weights file ({err})") from err
    except ValueError as err:
        raise CaptureError("--checkpoint", str(err)) from err
    expected = set(model.state_dict())
    for prefix in ("module.", "model."):
        if not expected <= set(state) and all(prefix + key in state for key in expected):
            state = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise CaptureError(
            "--checkpoint",
            f"{path} does not fit the model: {len(missing)} weights missing (e.g. {missing[:3]}), {len(unexpected)} "
            f"unexpected (e.g. {unexpected[:3]}); check --factory and --kwargs",
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise CaptureError("--checkpoint", f"{path} does not fit the model ({first}); check --factory and --kwargs") from err


# --------------------------------------------------------------------------------------------------
# Data


class FirstImages(Dataset):
    """The first ``count`` items of an mscl dataset (``info`` and ``load_raw`` passed through)."""

    def __init__(self, dataset: Any, count: int | None) -> None:
        self.dataset = dataset
        self.count = len(dataset) if count is None else min(count, len(dataset))
        self.info = dataset.info

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.count:
            raise IndexError(f"index {index} out of range for the first {self.count} images")
        return self.dataset[index]

    def load_raw(self, index: int) -> Any:
        return self.dataset.load_raw(index)


def capture_split(data: str, root: str | Path, split: str, max_images: int | None = None,
                  resize: float | Sequence[int] | None = None, mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD) -> FirstImages:
    """The first ``max_images`` images of a dataset split with the evaluation transform (optional
    ``resize``, then normalisation with ``mean``/``std``, ImageNet by default)."""
    if max_images is not None and max_images < 1:
        raise CaptureError("--max-images", f"must be at least 1, got {max_images}")
    return FirstImages(evaluation_split(data, root, split, resize=resize, mean=mean, std=std), max_images)


class _SplitView:
    """What ``export_artifacts`` reads from a dataset: ``info``, ``len`` and ``load_raw``."""

    def __init__(self, dataset: Any, info: DatasetInfo) -> None:
        self.dataset = dataset
        self.info = info

    def __len__(self) -> int:
        return len(self.dataset)

    def load_raw(self, index: int) -> Any:
        return self.dataset.load_raw(index)


class _LabelSizedLoader:
    """Iterates ``loader`` and, before each batch, sets the model's logits size to the batch's label size."""

    def __init__(self, loader: DataLoader, dataset: _SplitView, model: TappedModel) -> None:
        self.loader = loader
        self.dataset = dataset
        self.model = model

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict]:
        for loaded in self.loader:
            for batch in loaded if isinstance(loaded, list) else [loaded]:  # a list: one sub-batch per image size
                missing = [key for key in BATCH_KEYS if not isinstance(batch, Mapping) or key not in batch]
                if missing:
                    raise CaptureError("loader", f"batches must be dicts with keys {list(BATCH_KEYS)} (the mscl dataset "
                                                 f"format, mscl.data.build_dataset); missing {missing}")
                self.model.output_size = (int(batch["label"].shape[-2]), int(batch["label"].shape[-1]))
                yield batch


def _dataset_info(dataset: Any, class_names: Sequence[str], ignore_index: int,
                  palette: Sequence[Sequence[int]] | None, dataset_name: str | None) -> DatasetInfo:
    own: DatasetInfo | None = getattr(dataset, "info", None)
    if own is not None and len(own.class_names) != len(class_names):
        raise CaptureError("class_names", f"{len(class_names)} names but dataset {own.name!r} has "
                                          f"{len(own.class_names)} classes")
    if own is not None and own.ignore_index != ignore_index:
        raise CaptureError("ignore_index", f"{ignore_index} but dataset {own.name!r} ignores label {own.ignore_index}")
    if palette is None:
        palette = own.palette if own is not None else deterministic_palette(len(class_names))
    name = dataset_name or (own.name if own is not None else "custom")
    try:
        return DatasetInfo(name, tuple(str(c) for c in class_names), tuple(tuple(int(v) for v in c) for c in palette),
                           int(ignore_index))
    except ValueError as err:
        raise CaptureError("class_names", str(err)) from err


# --------------------------------------------------------------------------------------------------
# Capture


def _prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Make ``run_dir`` ready for a capture (call with the run's lock held): a trained run is never replaced,
    an earlier capture only with ``overwrite``, any other non-empty folder not at all."""
    tidy_run_dir(run_dir)
    entries = run_entries(run_dir)
    if not entries:
        return
    run_json = run_dir / layout.RUN_JSON
    kind = json.loads(run_json.read_text()).get("kind", "trained") if run_json.is_file() else None
    if kind is None:
        raise RunExistsError(f"{run_dir} is not empty and holds no run ({', '.join(entries[:3])}); choose another --name")
    if kind != KIND:
        raise RunExistsError(f"{run_dir} holds a trained run; capture into another folder (--out / --name)")
    if not overwrite:
        raise RunExistsError(f"{run_dir} already holds a captured run; pass --overwrite to replace it or choose another --name")
    empty_run_dir(run_dir)


@torch.no_grad()
def capture_run(
    model: nn.Module,
    loader: DataLoader,
    stages: Sequence[str],
    class_names: Sequence[str],
    ignore_index: int,
    out_dir: str | Path,
    *,
    name: str | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    dataset_name: str | None = None,
    split: str = "val",
    model_name: str | None = None,
    details: Mapping[str, Any] | None = None,
    num_pixels: int = 4000,
    num_prediction_images: int | None = None,
    num_dense_images: int = 3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    overwrite: bool = False,
    project: bool = False,
    progress: bool = True,
) -> Path:
    """Run ``model`` over ``loader`` and write the run directory ``out_dir`` (``kind: captured``).

    ``stages`` name the modules whose outputs are the stage features, finest first (method.md §2);
    the model's output may be a logits tensor, a dict with ``"out"`` or an object with ``.logits``,
    and the logits are resized bilinearly to each batch's label size. Batches are mscl dataset items
    (``image``, ``label``, ``index``, ``image_id``) and the dataset provides ``load_raw(index)``. The
    artifacts are those of ``mscl export`` (``mscl.export.export_artifacts``: ``num_pixels`` pixel
    embeddings sampled class-balanced with ``seed``, ``num_prediction_images`` predictions (None: every image), dense maps of
    ``num_dense_images``). ``details`` are stored under ``run.json`` ``capture``; ``project`` fills the
    2-D projection cache (``python -m workbench project`` in a child process). Returns the run directory.
    """
    run_dir = Path(out_dir)
    info = _dataset_info(loader.dataset, class_names, ignore_index, palette, dataset_name)
    if not hasattr(loader.dataset, "load_raw"):
        raise CaptureError("loader", "its dataset has no load_raw(index) returning the untransformed image and label "
                                     "(use an mscl dataset, mscl.data.build_dataset)")
    tapped = TappedModel(model, stages, len(info.class_names))
    settings = ExportSettings(split=split, num_pixels=num_pixels, num_prediction_images=num_prediction_images,
                              num_dense_images=num_dense_images, seed=seed, progress=progress, project=project)
    with RunLock(run_dir, command="mscl capture"):
        _prepare_run_dir(run_dir, overwrite)
        _capture_locked(tapped, loader, info, run_dir, settings, name=name, model_name=model_name, details=details,
                        device=torch.device(device))
    if settings.project:
        project_in_child_process(run_dir, settings.seed)
    return run_dir


def _capture_locked(tapped: TappedModel, loader: DataLoader, info: DatasetInfo, run_dir: Path, settings: ExportSettings, *,
                    name: str | None, model_name: str | None, details: Mapping[str, Any] | None, device: torch.device) -> None:
    """The export and ``run.json`` of :func:`capture_run`, with the run's lock held."""
    model = tapped.model
    tapped.to(device)
    start = time.perf_counter()
    summary = export_artifacts(run_dir, tapped, None, _LabelSizedLoader(loader, _SplitView(loader.dataset, info), tapped), settings,
                               checkpoint=str((details or {}).get("checkpoint") or "none"), step=0, device=device)
    seconds = time.perf_counter() - start
    height = tapped.output_size[0] if tapped.output_size else tapped.input_size[0]
    RunWriter(run_dir).write_meta(
        name=name or run_dir.name,
        kind=KIND,
        status=RunStatus.FINISHED.value,
        mscl_version=__version__,
        loss_preset="unknown",
        dataset={
            "name": info.name,
            "class_names": list(info.class_names),
            "palette": [list(c) for c in info.palette],
            "ignore_index": info.ignore_index,
            "split": settings.split,
            "num_val": len(loader.dataset),
        },
        model={
            "name": model_name or type(model).__name__,
            "encoder": None,
            "stage_modules": list(tapped.stage_names),
            "stage_strides": [stride_of(height, h) for _, h, _ in tapped.stage_shapes],
            "stage_channels": [c for c, _, _ in tapped.stage_shapes],
            "projector_dim": None,
            "num_parameters": int(sum(p.numel() for p in model.parameters())),
        },
        capture={**dict(details or {}), "stages": list(tapped.stage_names), "split": settings.split, "seconds": round(seconds, 2),
                 "miou": summary["miou"]},
        world_size=1,
        device=str(device),
    )


# --------------------------------------------------------------------------------------------------
# Command line (``mscl capture``)


def _model_for_cli(factory: str, kwargs_text: str | None, checkpoint: str | None, seed: int) -> tuple[nn.Module, dict]:
    kwargs = parse_kwargs(kwargs_text)
    seed_everything(seed)
    model = build_from_factory(factory, kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model, kwargs


def parse_resize(values: Sequence[float] | None) -> float | tuple[int, int] | None:
    """``--resize``: one scale factor, or a fixed ``H W`` size (the ``data.resize`` setting of training)."""
    if not values:
        return None
    if len(values) == 1 and values[0] > 0:
        return float(values[0])
    if len(values) == 2 and all(v >= 1 and float(v).is_integer() for v in values):
        return int(values[0]), int(values[1])
    raise CaptureError("--resize", f"give one scale factor (e.g. 0.5) or a size H W (e.g. 360 480), got {list(values)}")


def _first_batch(loader: DataLoader) -> dict:
    """The first images of ``loader`` that share one size (its first sub-batch)."""
    return next(iter(loader))[0]


def capture_command(
    *,
    factory: str,
    kwargs: str | None,
    checkpoint: str | None,
    stages: Sequence[str] | None,
    data: str,
    root: str,
    split: str,
    max_images: int | None,
    out: str,
    name: str | None,
    list_only: bool,
    resize: Sequence[float] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    batch_size: int = 4,
    num_pixels: int = 4000,
    seed: int = 0,
    device: str = "auto",
    overwrite: bool = False,
    project: bool = False,
) -> str:
    """``mscl capture``: the ``--list-modules`` table, or capture the run and describe what was written."""
    from mscl.composition import resolve_device

    if batch_size < 1:
        raise CaptureError("--batch-size", f"must be at least 1, got {batch_size}")
    if min(std) <= 0:
        raise CaptureError("--std", f"must be positive per channel, got {list(std)}")
    if not list_only and not stages:
        raise CaptureError("--stages", "name the modules to read, finest first (list them with --list-modules)")
    if not list_only:
        check_run_name(name, "--name")
    size = parse_resize(resize)
    model, parsed_kwargs = _model_for_cli(factory, kwargs, checkpoint, seed)
    dataset = capture_split(data, root, split, max_images, size, mean, std)
    target = resolve_device(device)
    loader = evaluation_loader(dataset, None, batch_size=batch_size, num_workers=0, seed=seed)
    if list_only:
        images = _first_batch(loader)["image"].to(target)
        rows = list_modules(model.to(target), images)
        return format_module_table(rows, (int(images.shape[-2]), int(images.shape[-1])))
    details = {"factory": factory, "kwargs": parsed_kwargs, "checkpoint": checkpoint, "data": data, "root": str(root),
               "max_images": max_images, "resize": size, "mean": list(mean), "std": list(std)}
    run_dir = capture_run(model, loader, list(stages or ()), dataset.info.class_names, dataset.info.ignore_index,
                          Path(out) / str(name), name=name, dataset_name=data, split=split,
                          model_name=factory.partition(":")[2], details=details, num_pixels=num_pixels, seed=seed,
                          device=target, overwrite=overwrite, project=project)
    meta = json.loads((run_dir / "run.json").read_text())
    return (f"captured {len(dataset)} {split} images of {data} into {run_dir} in {meta['capture']['seconds']:.1f} s "
            f"(mIoU {meta['capture']['miou']:.4f}; stage strides {meta['model']['stage_strides']}); "
            f"open it with `streamlit run app.py -- --runs {run_dir.parent}`")
