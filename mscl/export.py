"""Evaluation and the workbench artifacts of a run: per-class IoU, confusion, per-image mIoU,
predictions, per-stage embeddings of a class-balanced pixel sample, and dense per-stage maps.

Embeddings are read at the same pixels for every stage (each input pixel maps to the stage cell that
contains it), so the workbench can align stage panels pixel by pixel. One export writes ``eval/``,
``predictions/`` and ``embeddings/`` together: into a temporary folder of the run, swapped in as one unit
(docs/run-format.md, "Export").
"""

from __future__ import annotations

import io
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from mscl.config import Config
from mscl.evaluation import EvalResult, evaluate
from mscl.metrics import accuracy_per_class, iou_per_class
from mscl.run_writer import write_csv, write_json, write_npy, write_npz, write_parquet
from mscl.seeding import sample_generator
from runformat import layout
from runformat.atomic import swap_folders, temporary_name
from runformat.columns import PER_CLASS_COLUMNS, PER_IMAGE_COLUMNS, PIXEL_COLUMNS, PREDICTION_INDEX_COLUMNS
from runformat.projection_cache import project_in_child_process

IMAGE_QUALITY = 90  # JPEG quality of the image in a prediction archive (predictions/<image_id>.npz)


def stage_cells(ys: torch.Tensor, xs: torch.Tensor, image_hw: tuple[int, int], stage_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Map input-resolution pixel coordinates to the stage cell that contains them."""
    (height, width), (h, w) = image_hw, stage_hw
    return (ys * h) // height, (xs * w) // width


def write_eval(eval_dir: Path, result: EvalResult, class_names: list[str], split: str, checkpoint: str, step: int) -> dict:
    """Write ``summary.json``, ``per_class.csv``, ``confusion.npy`` and ``per_image.csv`` into ``eval_dir``."""
    summary = {"split": split, "checkpoint": checkpoint, "step": step, **result.summary(), "num_images": len(result.per_image)}
    confusion = result.confusion
    columns = (np.arange(len(class_names)), class_names, iou_per_class(confusion), accuracy_per_class(confusion), confusion.sum(1), confusion.sum(0))
    per_class = pd.DataFrame(dict(zip(PER_CLASS_COLUMNS, columns)))
    write_csv(eval_dir / "per_class.csv", per_class)
    write_npy(eval_dir / "confusion.npy", confusion.astype(np.int64))
    write_csv(eval_dir / "per_image.csv", pd.DataFrame(result.per_image, columns=list(PER_IMAGE_COLUMNS)))
    write_json(eval_dir / "summary.json", summary)
    return summary


def fixed_indices(n_items: int, count: int) -> list[int]:
    """``count`` evenly spaced indices in ``range(n_items)``: the same images for every run."""
    if n_items == 0 or count <= 0:
        return []
    return sorted(set(np.linspace(0, n_items - 1, min(count, n_items)).round().astype(int).tolist()))


def label_dtype(num_classes: int, ignore_index: int) -> np.dtype:
    """The smallest integer dtype holding every class id and the ignore index: uint8 for up to 256 classes with an
    ignore index in 0..255 (CamVid: 11 classes, 255), else a wider one (labels and predictions of predictions/)."""
    low, high = min(0, ignore_index), max(num_classes - 1, ignore_index)
    return np.promote_types(np.min_scalar_type(low), np.min_scalar_type(high))


def encode_image(image: np.ndarray) -> np.ndarray:
    """A uint8 [H, W, 3] image as JPEG bytes (quality :data:`IMAGE_QUALITY`, full-resolution colour so colours stay
    on their objects' boundaries) in a 1-D uint8 array, the ``image_jpeg`` of a prediction archive (docs/run-format.md):
    the picture behind the labels in a fifth of the bytes of the deflated pixels (CamVid)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=IMAGE_QUALITY, subsampling=0)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def display_image(dataset, index: int, size: tuple[int, int]) -> np.ndarray:
    """The untransformed image resized (bilinear) to the evaluated label size, as uint8 [H, W, 3]."""
    image, _ = dataset.load_raw(index)
    if image.shape[:2] != size:
        image = np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
    return image


class PixelCollector:
    """Collects a class-balanced sample of pixels with their per-stage features across a split."""

    def __init__(self, num_classes: int, ignore_index: int, per_image_per_class: int, seed: int) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.per_image_per_class = per_image_per_class
        self.generator = sample_generator(seed)
        self.rows: list[pd.DataFrame] = []
        self.backbone: list[list[torch.Tensor]] = []
        self.projected: list[list[torch.Tensor]] = []

    def add(
        self,
        image_index: int,
        image_id: str,
        label: torch.Tensor,
        prediction: torch.Tensor,
        features: list[torch.Tensor],
        projected: list[torch.Tensor] | None,
    ) -> None:
        """Take up to ``per_image_per_class`` random pixels of each class present in one image."""
        flat = label.flatten().cpu()
        valid = torch.nonzero(flat != self.ignore_index).squeeze(1)
        if valid.numel() == 0:
            return
        keys = torch.rand(valid.numel(), generator=self.generator)
        classes = flat[valid]
        order = torch.argsort(classes * 2.0 + keys)
        sorted_classes = classes[order]
        starts = torch.searchsorted(sorted_classes, sorted_classes, right=False)
        rank = torch.arange(order.numel()) - starts
        chosen = valid[order[rank < self.per_image_per_class]]
        width = label.shape[1]
        ys, xs = chosen // width, chosen % width
        self.rows.append(
            pd.DataFrame(
                {
                    "image_index": image_index,
                    "image_id": image_id,
                    "y": ys.numpy(),
                    "x": xs.numpy(),
                    "label": flat[chosen].numpy(),
                    "prediction": prediction.flatten().cpu()[chosen].numpy(),
                }
            )
        )
        self.backbone.append(self._gather(features, ys, xs, label.shape))
        if projected is not None:
            self.projected.append(self._gather(projected, ys, xs, label.shape))

    @staticmethod
    def _gather(maps: list[torch.Tensor], ys: torch.Tensor, xs: torch.Tensor, image_hw: tuple[int, int]) -> list[torch.Tensor]:
        out = []
        for feature in maps:
            cy, cx = stage_cells(ys, xs, tuple(image_hw), tuple(feature.shape[-2:]))
            out.append(feature[:, cy, cx].T.to(torch.float16).cpu())
        return out

    def balanced(self, num_pixels: int, seed: int) -> tuple[pd.DataFrame, list[np.ndarray], list[np.ndarray] | None]:
        """Keep at most ``num_pixels // classes_present`` pixels per class (all of a rarer class)."""
        if not self.rows:
            raise ValueError("no labelled pixels found in the export split: every label is the ignore index")
        table = pd.concat(self.rows, ignore_index=True)
        quota = max(1, num_pixels // table["label"].nunique())
        keep = (
            table.sample(frac=1.0, random_state=seed)
            .groupby("label", sort=True)
            .head(quota)
            .index.sort_values()
            .to_numpy(copy=True)
        )
        table = table.loc[keep].reset_index(drop=True)
        table.insert(0, "pixel", np.arange(len(table)))
        backbone = [torch.cat(stage)[keep].float().numpy().astype(np.float16) for stage in zip(*self.backbone)]
        projected = [torch.cat(stage)[keep].float().numpy().astype(np.float16) for stage in zip(*self.projected)] if self.projected else None
        return table, backbone, projected


@dataclass(frozen=True)
class ExportSettings:
    """What an export writes (docs/run-format.md, "Export"), from the config's ``export`` section.

    ``split`` is the evaluated split; ``num_pixels`` the size of the class-balanced embedding sample (drawn with
    ``seed``); ``num_prediction_images`` the evenly spaced images whose predictions are kept (None: every evaluated
    image), ``num_dense_images`` of them, evenly spaced, also with dense per-stage maps; ``progress`` shows a progress bar; ``project``
    fills the projection cache afterwards (:func:`project_after_export`).
    """

    split: str
    num_pixels: int = 4000
    num_prediction_images: int | None = None
    num_dense_images: int = 3
    seed: int = 0
    progress: bool = True
    project: bool = False

    @classmethod
    def from_config(cls, config: Config, *, progress: bool | None = None, project: bool | None = None) -> ExportSettings:
        """The settings of ``config``: ``export.num_pixels``, ``export.num_prediction_images``, ``export.num_dense_images``
        and ``export.project`` on ``data.val_split`` with the run's ``seed``; ``progress`` defaults to ``train.progress``,
        ``project`` (when given) overrides ``export.project`` (``mscl export --no-project``)."""
        export = config.export
        return cls(
            split=config.data.val_split,
            num_pixels=export.num_pixels,
            num_prediction_images=export.num_prediction_images,
            num_dense_images=export.num_dense_images,
            seed=config.seed,
            progress=config.train.progress if progress is None else progress,
            project=export.project if project is None else project,
        )


def export_artifacts(
    run_dir: str | Path,
    model: nn.Module,
    projectors: nn.Module | None,
    loader: DataLoader,
    settings: ExportSettings,
    *,
    checkpoint: str,
    step: int,
    device: torch.device | str = "cpu",
) -> dict:
    """Evaluate on ``loader`` and write ``eval/``, ``predictions/`` and ``embeddings/`` (docs/run-format.md, "Export").

    The three folders are written into a temporary folder of the run and swapped in as one unit
    (``runformat.atomic.swap_folders``), so an interrupted export leaves the previous export whole. Hold
    the run's lock while calling it. ``checkpoint`` and ``step`` name the weights in the tables. Returns
    ``eval/summary.json``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    staging = temporary_name(run_dir / "export")
    staging.mkdir()
    try:
        summary = _write_export(staging, model, projectors, loader, settings, checkpoint=checkpoint, step=step, device=torch.device(device))
        swap_folders(run_dir, staging, layout.EXPORT_FOLDERS)
    finally:
        if staging.exists() and not (run_dir / layout.SWAP_JOURNAL).exists():
            shutil.rmtree(staging, ignore_errors=True)
    return summary


def project_after_export(run_dir: str | Path, settings: ExportSettings) -> None:
    """With ``settings.project``: fill the run's projection cache (``python -m workbench project`` in a child process,
    stopped if this process is interrupted)."""
    if settings.project:
        project_in_child_process(run_dir, settings.seed)


class _ExportVisitor:
    """The ``evaluate`` visitor of an export: feeds the pixel sample and writes the prediction and dense files."""

    def __init__(self, run_dir: Path, dataset: Any, projectors: nn.Module | None, settings: ExportSettings) -> None:
        info = dataset.info
        num_classes = len(info.class_names)
        self.run_dir = run_dir
        self.dataset = dataset
        self.projectors = projectors
        count = settings.num_prediction_images
        kept = fixed_indices(len(dataset), len(dataset) if count is None else count)
        self.prediction_set = set(kept)
        self.dense_set = {kept[i] for i in fixed_indices(len(kept), settings.num_dense_images)}
        self.label_dtype = label_dtype(num_classes, info.ignore_index)
        per_class = max(1, math.ceil(4 * settings.num_pixels / max(1, len(dataset) * num_classes)))
        self.collector = PixelCollector(num_classes, info.ignore_index, per_class, settings.seed)
        self.prediction_rows: list[dict] = []
        self.image_size: list[int] = []
        self.stage_sizes: list[list[int]] = []

    def __call__(self, batch: dict, output: Any, predictions: torch.Tensor) -> None:
        projected = self.projectors(output.features) if self.projectors is not None else None
        self.image_size = list(batch["label"].shape[-2:])
        self.stage_sizes = [list(f.shape[-2:]) for f in output.features]
        for i in range(predictions.shape[0]):
            index, image_id = int(batch["index"][i]), str(batch["image_id"][i])
            label = batch["label"][i].to(predictions.device)
            features_i = [f[i] for f in output.features]
            projected_i = [p[i] for p in projected] if projected is not None else None
            self.collector.add(index, image_id, label, predictions[i], features_i, projected_i)
            if index in self.prediction_set:
                self._write_prediction(index, image_id, label, predictions[i], features_i, projected_i)

    def _write_prediction(self, index: int, image_id: str, label: torch.Tensor, prediction: torch.Tensor,
                          features: list[torch.Tensor], projected: list[torch.Tensor] | None) -> None:
        label_np = label.cpu().numpy().astype(self.label_dtype)
        image_np = display_image(self.dataset, index, label_np.shape)
        arrays = {"image_jpeg": encode_image(image_np), "label": label_np,
                  "prediction": prediction.cpu().numpy().astype(self.label_dtype)}
        write_npz(self.run_dir / layout.prediction_file(f"{image_id}.npz"), arrays)
        self.prediction_rows.append({"image_index": index, "image_id": image_id, "file": f"{image_id}.npz"})
        if index in self.dense_set:
            dense = {"image": image_np, "label": label_np}
            for s, feature in enumerate(features):
                dense[f"stage{s}_backbone"] = feature.cpu().numpy().astype(np.float16)
            for s, feature in enumerate(projected or []):
                dense[f"stage{s}_projected"] = feature.cpu().numpy().astype(np.float16)
            write_npz(self.run_dir / layout.dense_file(image_id), dense)


@torch.no_grad()
def _write_export(
    run_dir: Path, model: nn.Module, projectors: nn.Module | None, loader: DataLoader, settings: ExportSettings, *,
    checkpoint: str, step: int, device: torch.device,
) -> dict:
    """Write the export of ``export_artifacts`` into ``run_dir`` (its staging folder)."""
    if projectors is not None:
        projectors.eval()
    info = loader.dataset.info
    visitor = _ExportVisitor(run_dir, loader.dataset, projectors, settings)
    result = evaluate(model, loader, len(info.class_names), info.ignore_index, device, progress=settings.progress, visitor=visitor)
    summary = write_eval(run_dir / layout.EVAL_DIR, result, list(info.class_names), settings.split, checkpoint, step)
    write_csv(run_dir / layout.PREDICTION_INDEX, pd.DataFrame(visitor.prediction_rows, columns=list(PREDICTION_INDEX_COLUMNS)))

    table, backbone, projected_sample = visitor.collector.balanced(settings.num_pixels, settings.seed)
    write_parquet(run_dir / layout.PIXELS, table[list(PIXEL_COLUMNS)])
    for s, array in enumerate(backbone):
        write_npy(run_dir / layout.embedding_file(s, "backbone"), array)
    for s, array in enumerate(projected_sample or []):
        write_npy(run_dir / layout.embedding_file(s, "projected"), array)
    image_h = visitor.image_size[0]
    write_json(
        run_dir / layout.EMBEDDING_META,
        {
            "num_pixels": len(table),
            "stages": list(range(len(backbone))),
            "strides": [round(image_h / hw[0]) for hw in visitor.stage_sizes],
            "backbone_dims": [int(a.shape[1]) for a in backbone],
            "projected_dims": [int(a.shape[1]) for a in projected_sample] if projected_sample else [],
            "has_projector": projected_sample is not None,
            "split": settings.split,
            "checkpoint": checkpoint,
            "step": step,
            "seed": settings.seed,
            "image_size": visitor.image_size,
        },
    )
    return summary
