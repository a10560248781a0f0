"""Evaluation over a split: the confusion matrix and per-image mIoU (IoU as in docs/workbench.md,
"Numbers worth defining once"), for images of one size or of several.

A ``DataLoader`` stacks a batch into one tensor, which fails when a split holds images of different
sizes. Evaluation loaders use :func:`collate_by_size` instead: each loader batch becomes a list of
sub-batches, one per image size, so every image is evaluated at its own size, without padding
(``evaluate`` also takes plain stacked batches).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate
from tqdm.auto import tqdm

from mscl.metrics import confusion_matrix, summarize


@dataclass
class EvalResult:
    """Confusion matrix over a split and one row per image."""

    confusion: np.ndarray
    per_image: list[dict] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        return summarize(self.confusion)


Visitor = Callable[[dict, object, torch.Tensor], None]


def collate_by_size(samples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``collate_fn`` for evaluation: one stacked sub-batch per image size, in order of first appearance
    (samples keep their order inside a sub-batch)."""
    groups: dict[tuple[int, ...], list[dict[str, Any]]] = {}
    for sample in samples:
        groups.setdefault(tuple(sample["image"].shape), []).append(sample)
    return [default_collate(group) for group in groups.values()]


def eval_loader(dataset: Any, indices: Sequence[int] | None, batch_size: int, num_workers: int, **kwargs: Any) -> DataLoader:
    """A loader over ``indices`` of ``dataset`` (all when None), in order, that accepts mixed image sizes."""
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=num_workers, collate_fn=collate_by_size, **kwargs)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    num_classes: int,
    ignore_index: int,
    device: torch.device,
    progress: bool = True,
    visitor: Visitor | None = None,
) -> EvalResult:
    """Run ``model`` over ``loader``, accumulating the confusion matrix and per-image mIoU.

    A loader batch is a stacked batch dict or, from :func:`collate_by_size`, a list of them.
    ``visitor(batch, output, predictions)`` is called for every (sub-)batch (the export uses it to collect
    embeddings and predictions in the same pass).
    """
    model.eval()
    total = torch.zeros(num_classes, num_classes, dtype=torch.long)
    rows: list[dict] = []
    for loaded in tqdm(loader, desc="eval", leave=False, disable=not progress):
        for batch in loaded if isinstance(loaded, list) else [loaded]:
            images, labels = batch["image"].to(device), batch["label"].to(device)
            output = model(images)
            predictions = output.logits.argmax(1)
            for i in range(images.shape[0]):
                conf = confusion_matrix(predictions[i], labels[i], num_classes, ignore_index).cpu()
                total += conf
                stats = summarize(conf.numpy())
                rows.append({
                    "image_index": int(batch["index"][i]),
                    "image_id": str(batch["image_id"][i]),
                    "miou": stats["miou"],
                    "pixel_acc": stats["pixel_acc"],
                })
            if visitor is not None:
                visitor(batch, output, predictions)
    return EvalResult(total.numpy(), rows)
