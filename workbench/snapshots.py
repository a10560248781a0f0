"""The embedding snapshots a training run keeps at every validation (``snapshots/``, ``docs/run-format.md``; layout
in ``runformat.snapshots``), read and checked; ``workbench.timeline`` derives the numbers and maps from them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from runformat import snapshots as layout
from runformat.columns import EMBEDDING_KINDS
from runformat.errors import RunFormatError

if TYPE_CHECKING:
    from workbench.runs import Run

__all__ = ["Snapshots"]


class Snapshots:
    """The snapshots of one run (``snapshots/``), validated on opening; arrays are read lazily.

    Raises ``MissingArtifactError`` (with how to get snapshots) when the run has none, ``RunFormatError`` naming the
    file and key when a file does not follow docs/run-format.md.
    """

    def __init__(self, run: Run) -> None:
        self.run = run
        index = run._csv(layout.INDEX, layout.INDEX_COLUMNS)
        steps = pd.to_numeric(index["step"], errors="coerce")
        if index.empty or steps.isna().any() or (steps != steps.round()).any() or steps.duplicated().any():
            raise RunFormatError(f"{layout.INDEX}: column 'step' must hold distinct integer steps, one row per snapshot, "
                                 f"got {index['step'].tolist()}")
        self.index = index.assign(step=steps.astype(int)).sort_values("step").reset_index(drop=True)
        self.meta: dict = run._json(layout.META, layout.META_KEYS)
        stages = self.meta["stages"]
        if not isinstance(stages, list) or not stages or len(self.meta["backbone_dims"]) != len(stages) \
                or (self.meta["has_projector"] and len(self.meta["projected_dims"]) != len(stages)):
            raise RunFormatError(f"{layout.META}: keys 'backbone_dims' (and 'projected_dims' with a projector) must "
                                 f"have one width per entry of 'stages' {stages}")

    @property
    def steps(self) -> list[int]:
        """Training steps with a snapshot, ascending."""
        return self.index["step"].tolist()

    @property
    def stages(self) -> list[int]:
        return [int(s) for s in self.meta["stages"]]

    @property
    def kinds(self) -> list[str]:
        """``backbone``, and ``projected`` when the run has projectors."""
        return list(EMBEDDING_KINDS) if self.meta["has_projector"] else ["backbone"]

    def miou(self) -> dict[int, float]:
        """Validation mIoU at each snapshot step."""
        return dict(zip(self.steps, self.index["miou"].astype(float)))

    def pixels(self) -> pd.DataFrame:
        """snapshots/pixels.parquet: the fixed pixels, row i = row i of every snapshot array."""
        table = self.run._parquet(layout.PIXELS, layout.PIXEL_COLUMNS)
        if len(table) != int(self.meta["num_pixels"]):
            raise RunFormatError(f"{layout.PIXELS}: {len(table)} rows, but {layout.META} says "
                                 f"num_pixels={self.meta['num_pixels']}")
        table["image_id"] = table["image_id"].astype(str)
        return table

    def _arrays(self, step: int) -> dict[str, np.ndarray]:
        rows = self.index[self.index["step"] == step]
        if rows.empty:
            raise ValueError(f"run {self.run.name!r} has no snapshot at step {step}; steps: {self.steps}")
        artifact = str(rows["file"].iloc[0])

        def load() -> dict[str, np.ndarray]:
            data = self.run._npz(artifact)
            count = int(self.meta["num_pixels"])
            expected = {layout.array_key(s, "backbone"): d for s, d in zip(self.stages, self.meta["backbone_dims"])}
            if self.meta["has_projector"]:
                expected.update({layout.array_key(s, "projected"): d for s, d in zip(self.stages, self.meta["projected_dims"])})
            out: dict[str, np.ndarray] = {}
            for key, dim in expected.items():
                if key not in data or data[key].shape != (count, int(dim)) or not np.issubdtype(data[key].dtype, np.floating):
                    found = f"{data[key].dtype} {data[key].shape}" if key in data else "nothing"
                    raise RunFormatError(f"{artifact}: {key!r} must be a float array [{count}, {dim}], found {found}")
                out[key] = data[key].astype(np.float32)
                if not np.isfinite(out[key]).all():
                    raise RunFormatError(f"{artifact}: {key!r} contains NaN or infinite values")
            prediction = data.get(layout.PREDICTION_KEY)
            if prediction is None or prediction.shape != (count,):
                raise RunFormatError(f"{artifact}: {layout.PREDICTION_KEY!r} must be an integer array [{count}]")
            out[layout.PREDICTION_KEY] = prediction.astype(np.int64)
            return out
        return self.run._arrays.get(("snapshot", artifact), load)

    def embeddings(self, step: int, stage: int, kind: str = "projected") -> np.ndarray:
        """float32 [M, D] embeddings of the snapshot pixels at ``step``, ``stage``, ``kind``."""
        if kind not in self.kinds:
            raise ValueError(f"run {self.run.name!r} has no {kind!r} snapshots (kinds: {self.kinds})")
        if stage not in self.stages:
            raise ValueError(f"stage {stage} is not in the snapshots of run {self.run.name!r}; stages: {self.stages}")
        return self._arrays(step)[layout.array_key(stage, kind)]

    def predictions(self, step: int) -> np.ndarray:
        """int64 [M] predicted class of each snapshot pixel at ``step``."""
        return self._arrays(step)[layout.PREDICTION_KEY]
