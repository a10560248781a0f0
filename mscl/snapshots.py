"""Embedding snapshots during training: a hook the trainer calls at every validation (``export.snapshots``).

Each call writes ``snapshots/step-<n>/embeddings.npz``: the backbone and projected embeddings of every stage, in
float16, and the predicted class, at one fixed set of validation pixels (layout and size budget:
``runformat.snapshots``, docs/run-format.md "Snapshots"). The pixels are chosen once per run, at the first
snapshot, with the class-balanced sampling of the export (``mscl.export.PixelCollector``: a few random pixels per
class and image, then at most ``num_pixels // classes_present`` per class), from the run's seed and from at most
``runformat.snapshots.MAX_IMAGES`` evenly spaced validation images; a resumed run reads them back from
``snapshots/pixels.parquet``. The choice depends on the labels and the seed only, never on the model.

A snapshot runs the model in eval mode under ``torch.no_grad`` on its own images, restores the module's training
mode and forks the global RNG around the pass, so training gives the same weights with or without snapshots.
Separability numbers are not computed here: the workbench derives them from the stored arrays
(``workbench.timeline``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from mscl.evaluation import collate_by_size
from mscl.export import PixelCollector, fixed_indices, stage_cells
from mscl.run_writer import write_csv, write_json, write_npz, write_parquet
from runformat import snapshots as layout

__all__ = ["SnapshotRecorder"]


class SnapshotRecorder:
    """Writes one embedding snapshot per ``record`` call into ``run_dir/snapshots/``.

    Args:
        run_dir: the run directory.
        dataset: the validation dataset (with its evaluation transform); items are dicts with ``image``,
            ``label``, ``index``, ``image_id`` and the dataset has ``info`` (class names, ignore index).
        indices: the validation images the run evaluates (``data.max_val_images`` applied).
        split: the validation split's name (recorded in ``snapshots/meta.json``).
        seed: the run's seed; fixes the pixels.
        batch_size: images per forward pass.
        device: where the model lives.
        max_bytes, max_pixels, max_images: the limits of ``runformat.snapshots`` (defaults there).
    """

    def __init__(self, run_dir: str | Path, dataset, indices: Sequence[int], *, split: str, seed: int,
                 batch_size: int, device: torch.device | str, max_bytes: int = layout.MAX_BYTES,
                 max_pixels: int = layout.MAX_PIXELS, max_images: int = layout.MAX_IMAGES) -> None:
        self.run_dir = Path(run_dir)
        self.dataset = dataset
        self.split = split
        self.seed = int(seed)
        self.batch_size = max(1, int(batch_size))
        self.device = torch.device(device)
        self.max_bytes = int(max_bytes)
        self.max_pixels = int(max_pixels)
        indices = list(indices)
        self.image_indices = [int(indices[i]) for i in fixed_indices(len(indices), max_images)]
        if not self.image_indices:
            raise ValueError(f"the validation split '{split}' has no images to take embedding snapshots from; "
                             "set export.snapshots=false or give the run validation images")
        self.pixels: pd.DataFrame | None = None

    @torch.no_grad()
    def record(self, step: int, module: nn.Module, miou: float) -> Path:
        """Write the snapshot of training step ``step`` (validation mIoU ``miou``) and list it in ``snapshots/index.csv``.

        ``module`` has ``model`` (a segmentation model returning ``logits`` and per-stage ``features``) and
        ``projectors`` (None for a cross-entropy run). Rows of the index at or after ``step`` (left by an
        interrupted run that is being resumed) are replaced. Returns the snapshot file.
        """
        was_training = module.training
        module.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                arrays = self._arrays(module)
        finally:
            module.train(was_training)
        path = write_npz(self.run_dir / layout.snapshot_file(step), arrays)
        self._append_index(int(step), float(miou))
        return path

    # ------------------------------------------------------------------------------------------ passes
    def _batches(self, image_indices: Sequence[int]) -> Iterator[dict]:
        for start in range(0, len(image_indices), self.batch_size):
            samples = [self.dataset[i] for i in image_indices[start:start + self.batch_size]]
            yield from collate_by_size(samples)

    def _forward(self, module: nn.Module, batch: dict) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, torch.Tensor]:
        output = module.model(batch["image"].to(self.device))
        projected = module.projectors(output.features) if module.projectors is not None else None
        return list(output.features), projected, output.logits.argmax(1)

    def _arrays(self, module: nn.Module) -> dict[str, np.ndarray]:
        if self.pixels is None:
            self.pixels = self._read_pixels()
        if self.pixels is None:
            return self._choose_pixels(module)
        return self._gather(module, self.pixels)

    def _choose_pixels(self, module: nn.Module) -> dict[str, np.ndarray]:
        """First snapshot of a run: sample the pixels (export's class-balanced sampler) and keep their features."""
        info = self.dataset.info
        num_classes = len(info.class_names)
        per_class = max(1, math.ceil(4 * self.max_pixels / (len(self.image_indices) * num_classes)))
        collector = PixelCollector(num_classes, info.ignore_index, per_class, self.seed)
        for batch in self._batches(self.image_indices):
            features, projected, predictions = self._forward(module, batch)
            for i in range(predictions.shape[0]):
                collector.add(int(batch["index"][i]), str(batch["image_id"][i]), batch["label"][i], predictions[i],
                              [f[i] for f in features], [p[i] for p in projected] if projected is not None else None)
        if not collector.rows:
            raise ValueError(f"the snapshot images of split '{self.split}' have no labelled pixels (every label is the "
                             "ignore index); set export.snapshots=false")
        backbone_dims = [int(t.shape[1]) for t in collector.backbone[0]]
        projected_dims = [int(t.shape[1]) for t in collector.projected[0]] if collector.projected else []
        count = layout.pixel_budget(backbone_dims, projected_dims, self.max_bytes, self.max_pixels)
        table, backbone, projected_arrays = collector.balanced(count, self.seed)
        pixels = table[list(layout.PIXEL_COLUMNS)].copy()
        write_parquet(self.run_dir / layout.PIXELS, pixels)
        write_json(self.run_dir / layout.META, {
            "num_pixels": len(pixels),
            "stages": list(range(len(backbone_dims))),
            "backbone_dims": backbone_dims,
            "projected_dims": projected_dims,
            "has_projector": bool(projected_dims),
            "split": self.split,
            "seed": self.seed,
            "image_indices": self.image_indices,
            "max_bytes": self.max_bytes,
        })
        self.pixels = pixels
        arrays = {layout.array_key(s, "backbone"): a for s, a in enumerate(backbone)}
        arrays.update({layout.array_key(s, "projected"): a for s, a in enumerate(projected_arrays or [])})
        arrays[layout.PREDICTION_KEY] = table["prediction"].to_numpy().astype(np.int16)
        return arrays

    def _gather(self, module: nn.Module, pixels: pd.DataFrame) -> dict[str, np.ndarray]:
        """Features and predictions of every stage at the fixed ``pixels`` (each read from the stage cell holding it)."""
        rows_of = {int(index): group.index.to_numpy() for index, group in pixels.groupby("image_index", sort=True)}
        ys_all = torch.tensor(pixels["y"].to_numpy(), dtype=torch.long)
        xs_all = torch.tensor(pixels["x"].to_numpy(), dtype=torch.long)
        arrays: dict[str, np.ndarray] = {layout.PREDICTION_KEY: np.zeros(len(pixels), dtype=np.int16)}
        for batch in self._batches(sorted(rows_of)):
            features, projected, predictions = self._forward(module, batch)
            image_hw = tuple(batch["label"].shape[-2:])
            for i in range(predictions.shape[0]):
                rows = rows_of[int(batch["index"][i])]
                ys, xs = ys_all[torch.tensor(rows)], xs_all[torch.tensor(rows)]
                arrays[layout.PREDICTION_KEY][rows] = predictions[i][ys, xs].cpu().numpy()
                for kind, maps in (("backbone", features), ("projected", projected or [])):
                    for s, feature in enumerate(maps):
                        cy, cx = stage_cells(ys, xs, image_hw, tuple(feature.shape[-2:]))
                        key = layout.array_key(s, kind)
                        if key not in arrays:
                            arrays[key] = np.zeros((len(pixels), feature.shape[1]), dtype=np.float16)
                        arrays[key][rows] = feature[i][:, cy, cx].T.to(torch.float16).cpu().numpy()
        return arrays

    # ------------------------------------------------------------------------------------------- files
    def _read_pixels(self) -> pd.DataFrame | None:
        """The pixels of an earlier snapshot of this run (resume), or None when the run has none yet."""
        path = self.run_dir / layout.PIXELS
        if not path.is_file():
            return None
        pixels = pd.read_parquet(path)
        missing = [c for c in layout.PIXEL_COLUMNS if c not in pixels.columns]
        unknown = sorted(set(pixels["image_index"].astype(int)) - set(self.image_indices)) if not missing else []
        if missing or unknown:
            raise ValueError(f"{path} does not belong to this run's snapshots (missing columns {missing}, images "
                             f"{unknown[:5]} outside the snapshot images); move the snapshots/ folder away to start them afresh")
        return pixels.reset_index(drop=True)

    def _append_index(self, step: int, miou: float) -> None:
        path = self.run_dir / layout.INDEX
        rows = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=list(layout.INDEX_COLUMNS))
        rows = rows[rows["step"] < step]
        row = pd.DataFrame([{"step": step, "miou": miou, "file": layout.snapshot_file(step)}])
        write_csv(path, pd.concat([rows, row], ignore_index=True) if len(rows) else row)
