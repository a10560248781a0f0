"""Evaluation and the workbench artifacts of a run: per-class IoU, confusion, per-image mIoU,
predictions, per-stage embeddings of a class-balanced pixel sample, and dense per-stage maps.

Embeddings are read at the same pixels for every stage (each input pixel maps to the stage cell that
contains it), so the workbench can align stage panels pixel by pixel. One export writes ``eval/``,
``predictions/`` and ``embeddings/`` together: into a temporary folder of the run, swapped in as one unit
(docs/run-format.md, "Export").
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from mscl.evaluation import EvalResult, evaluate
from mscl.metrics import accuracy_per_class, iou_per_class
from mscl.run_writer import write_csv, write_json, write_npy, write_npz, write_parquet
from runformat import layout
from runformat.atomic import swap_folders, temporary_name
from runformat.columns import PER_CLASS_COLUMNS, PER_IMAGE_COLUMNS, PIXEL_COLUMNS, PREDICTION_INDEX_COLUMNS


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
        self.generator = torch.Generator().manual_seed(seed)
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


def export_artifacts(
    run_dir: str | Path,
    model: nn.Module,
    projectors: nn.Module | None,
    loader: DataLoader,
    *,
    split: str,
    checkpoint: str,
    step: int,
    num_pixels: int = 4000,
    num_prediction_images: int = 8,
    num_dense_images: int = 3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict:
    """Evaluate on ``loader`` and write ``eval/``, ``predictions/`` and ``embeddings/`` (docs/run-format.md, "Export").

    The three folders are written into a temporary folder of the run and swapped in as one unit
    (``runformat.atomic.swap_folders``), so an interrupted export leaves the previous export whole. Hold
    the run's lock while calling it. Returns ``eval/summary.json``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    staging = temporary_name(run_dir / "export")
    staging.mkdir()
    try:
        summary = _write_export(
            staging, model, projectors, loader, split=split, checkpoint=checkpoint, step=step, num_pixels=num_pixels,
            num_prediction_images=num_prediction_images, num_dense_images=num_dense_images, seed=seed, device=device, progress=progress,
        )
        swap_folders(run_dir, staging, layout.EXPORT_FOLDERS)
    finally:
        if staging.exists() and not (run_dir / layout.SWAP_JOURNAL).exists():
            shutil.rmtree(staging, ignore_errors=True)
    return summary


@torch.no_grad()
def _write_export(
    run_dir: Path,
    model: nn.Module,
    projectors: nn.Module | None,
    loader: DataLoader,
    *,
    split: str,
    checkpoint: str,
    step: int,
    num_pixels: int,
    num_prediction_images: int,
    num_dense_images: int,
    seed: int,
    device: torch.device | str,
    progress: bool,
) -> dict:
    """Write the export of ``export_artifacts`` into ``run_dir`` (its staging folder)."""
    device = torch.device(device)
    if projectors is not None:
        projectors.eval()
    dataset = loader.dataset
    info = dataset.info
    num_classes = len(info.class_names)
    prediction_set = set(fixed_indices(len(dataset), num_prediction_images))
    dense_set = set(sorted(prediction_set)[:num_dense_images])
    per_class = max(1, math.ceil(4 * num_pixels / max(1, len(dataset) * num_classes)))
    collector = PixelCollector(num_classes, info.ignore_index, per_class, seed)
    prediction_rows: list[dict] = []
    geometry: dict[str, list] = {}

    def visit(batch: dict, output, predictions: torch.Tensor) -> None:
        projected = projectors(output.features) if projectors is not None else None
        geometry["image"] = list(batch["label"].shape[-2:])
        geometry["stages"] = [list(f.shape[-2:]) for f in output.features]
        for i in range(predictions.shape[0]):
            index, image_id = int(batch["index"][i]), str(batch["image_id"][i])
            label = batch["label"][i].to(predictions.device)
            features_i = [f[i] for f in output.features]
            projected_i = [p[i] for p in projected] if projected is not None else None
            collector.add(index, image_id, label, predictions[i], features_i, projected_i)
            if index not in prediction_set:
                continue
            label_np = label.cpu().numpy().astype(np.int16)
            image_np = display_image(dataset, index, label_np.shape)
            arrays = {"image": image_np, "label": label_np, "prediction": predictions[i].cpu().numpy().astype(np.int16)}
            write_npz(run_dir / layout.prediction_file(f"{image_id}.npz"), arrays)
            prediction_rows.append({"image_index": index, "image_id": image_id, "file": f"{image_id}.npz"})
            if index in dense_set:
                dense = {"image": image_np, "label": label_np}
                for s, feature in enumerate(features_i):
                    dense[f"stage{s}_backbone"] = feature.cpu().numpy().astype(np.float16)
                for s, feature in enumerate(projected_i or []):
                    dense[f"stage{s}_projected"] = feature.cpu().numpy().astype(np.float16)
                write_npz(run_dir / layout.dense_file(image_id), dense)

    result = evaluate(model, loader, num_classes, info.ignore_index, device, progress=progress, visitor=visit)
    summary = write_eval(run_dir / layout.EVAL_DIR, result, list(info.class_names), split, checkpoint, step)
    write_csv(run_dir / layout.PREDICTION_INDEX, pd.DataFrame(prediction_rows, columns=list(PREDICTION_INDEX_COLUMNS)))

    table, backbone, projected_sample = collector.balanced(num_pixels, seed)
    write_parquet(run_dir / layout.PIXELS, table[list(PIXEL_COLUMNS)])
    for s, array in enumerate(backbone):
        write_npy(run_dir / layout.embedding_file(s, "backbone"), array)
    for s, array in enumerate(projected_sample or []):
        write_npy(run_dir / layout.embedding_file(s, "projected"), array)
    image_h = geometry["image"][0]
    write_json(
        run_dir / layout.EMBEDDING_META,
        {
            "num_pixels": len(table),
            "stages": list(range(len(backbone))),
            "strides": [round(image_h / hw[0]) for hw in geometry["stages"]],
            "backbone_dims": [int(a.shape[1]) for a in backbone],
            "projected_dims": [int(a.shape[1]) for a in projected_sample] if projected_sample else [],
            "has_projector": projected_sample is not None,
            "split": split,
            "checkpoint": checkpoint,
            "step": step,
            "seed": seed,
            "image_size": geometry["image"],
        },
    )
    return summary

