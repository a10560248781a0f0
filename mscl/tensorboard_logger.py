"""TensorBoard copy of the scalars ``mscl train`` logs (config ``train.tensorboard: true``).

The run directory's tables stay the record the workbench reads (``metrics/train.csv``, ``metrics/val.csv``,
``docs/run-format.md``); this logger writes the same numbers as TensorBoard event files under
``RUN/tensorboard/`` so a user can follow a run with ``tensorboard --logdir runs``. Tags:

* every logged training column under its own name: ``loss/total``, ``loss/ce``, ``loss/contrastive``,
  ``loss/ms/<s>`` and ``loss/cs/<a>-<b>`` (the parts of method.md §4: CE + 0.1 x (ms + cs)), ``lr``,
  ``sec_per_step``;
* at each validation ``val/miou``, ``val/pixel_acc``, ``val/mean_acc`` and ``val/iou/<class name>``
  (per-class IoU of ``mscl.metrics.iou_per_class``; a class absent from ground truth and prediction has no
  IoU and gets no point, as it is left out of the mIoU).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

TENSORBOARD_DIR = "tensorboard"
"""Folder of the event files inside a run directory."""
NOT_SCALARS = ("step", "epoch")


class TensorBoardLogger:
    """Writes training and validation scalars of one run to ``log_dir`` (the trainer calls it as it logs).

    ``purge_step`` (the step a resumed run continues from) drops events a killed run wrote after its last
    checkpoint, so a resumed run's curves have no doubled points (``SummaryWriter(purge_step=...)``).
    """

    def __init__(self, log_dir: str | Path, class_names: Sequence[str], purge_step: int | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.class_names = list(class_names)
        from torch.utils.tensorboard import SummaryWriter  # imports the tensorboard package: only when enabled

        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def log_train(self, step: int, row: Mapping[str, float]) -> None:
        """One ``metrics/train.csv`` row: every column but ``step`` and ``epoch`` as a scalar at ``step``."""
        for key, value in row.items():
            if key not in NOT_SCALARS:
                self._writer.add_scalar(key, float(value), global_step=step)
        self._writer.flush()

    def log_val(self, step: int, summary: Mapping[str, float], class_iou: Sequence[float]) -> None:
        """One validation: ``val/<metric>`` for ``summary`` (``mscl.metrics.summarize``) and ``val/iou/<class>``."""
        if len(class_iou) != len(self.class_names):
            raise ValueError(f"class_iou has {len(class_iou)} values for {len(self.class_names)} classes")
        for key, value in summary.items():
            if math.isfinite(value):
                self._writer.add_scalar(f"val/{key}", float(value), global_step=step)
        for name, value in zip(self.class_names, class_iou):
            if math.isfinite(value):
                self._writer.add_scalar(f"val/iou/{name}", float(value), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
