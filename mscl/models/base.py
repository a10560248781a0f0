"""Shared segmentation-model interface (docs/architecture.md, "mscl.models").

Every model is an encoder that yields four feature maps (finest first; these are the stages the
multi-scale and cross-scale contrastive losses of Pissas et al., ECCV 2022, act on, method.md §2-3)
followed by a decode head whose logits are upsampled bilinearly to the input resolution.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NUM_STAGES = 4
"""Stages every model exposes: the paper weights four stages, highest resolution first (method.md §2)."""


class SegOutput(NamedTuple):
    """Model output: logits at input resolution and the per-stage encoder features, finest first."""

    logits: Tensor
    features: list[Tensor]


class Encoder(nn.Module, ABC):
    """A backbone returning ``NUM_STAGES`` NCHW feature maps, finest first."""

    stage_strides: tuple[int, ...]
    stage_channels: tuple[int, ...]

    @abstractmethod
    def forward(self, x: Tensor) -> list[Tensor]:
        """Return the per-stage features of ``x`` [N,3,H,W], each [N, C_s, H/r_s, W/r_s]."""


def resize_to(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Bilinear resize (align_corners=False) of an NCHW tensor to ``size``; a no-op if already that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class SegmentationModel(nn.Module, ABC):
    """Encoder + decode head; ``forward`` returns :class:`SegOutput`.

    Attributes:
        num_classes: number of output classes K.
        stage_strides: stride of each entry of ``SegOutput.features`` w.r.t. the input, finest first.
        stage_channels: channels of each entry of ``SegOutput.features``, finest first.
        last_aux_logits: auxiliary logits [N,K,H,W] at input resolution from the latest forward pass,
            for models with an auxiliary head (OCRNet's soft object regions); ``None`` otherwise.
    """

    num_classes: int
    stage_strides: tuple[int, ...]
    stage_channels: tuple[int, ...]
    last_aux_logits: Tensor | None
    timm_kwargs: frozenset[str] = frozenset()
    """timm keyword arguments the model passes to its encoder (``model.kwargs`` besides head options)."""

    def __init__(self, num_classes: int, encoder: Encoder) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if len(encoder.stage_strides) != NUM_STAGES or len(encoder.stage_channels) != NUM_STAGES:
            raise ValueError(
                f"encoder {type(encoder).__name__} exposes {len(encoder.stage_strides)} stages; "
                f"expected {NUM_STAGES} (strides {encoder.stage_strides})"
            )
        self.num_classes = num_classes
        self.encoder = encoder
        self.stage_strides = tuple(encoder.stage_strides)
        self.stage_channels = tuple(encoder.stage_channels)
        self.last_aux_logits = None

    @abstractmethod
    def decode(self, features: list[Tensor]) -> tuple[Tensor, Tensor | None]:
        """Map the encoder features to (main logits, auxiliary logits or None) at any resolution."""

    def forward(self, x: Tensor) -> SegOutput:
        """Segment ``x`` [N,3,H,W]: logits [N,K,H,W] (bilinear, align_corners=False) and stage features."""
        features = self.encoder(x)
        logits, aux_logits = self.decode(features)
        size = x.shape[-2:]
        self.last_aux_logits = None if aux_logits is None else resize_to(aux_logits, size)
        return SegOutput(logits=resize_to(logits, size), features=features)
