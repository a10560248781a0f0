"""A small CPU-friendly segmentation model for tests and demos (not from the paper).

Four conv stages at strides 4, 8, 16, 32 and a decoder that fuses all of them, so coarse context
reaches the prediction as in the paper's models, at a fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from mscl.models.base import NUM_STAGES, Encoder, SegmentationModel, resize_to

TINY_ENCODER_NAME = "tiny"


class TinyEncoder(Encoder):
    """Stem to stride 4, then three stride-2 stages; each stage is two 3x3 conv-BN-ReLU blocks."""

    name = TINY_ENCODER_NAME

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 96)) -> None:
        super().__init__()
        if len(widths) != NUM_STAGES or any(w < 1 for w in widths):
            raise ValueError(f"tiny widths must be {NUM_STAGES} positive integers, got {tuple(widths)}")
        stem_width = max(widths[0] // 2, 1)
        self.stages = nn.ModuleList(
            [
                nn.Sequential(
                    Conv2dNormActivation(3, stem_width, kernel_size=3, stride=2),
                    Conv2dNormActivation(stem_width, widths[0], kernel_size=3, stride=2),
                    Conv2dNormActivation(widths[0], widths[0], kernel_size=3),
                )
            ]
            + [
                nn.Sequential(
                    Conv2dNormActivation(c_in, c_out, kernel_size=3, stride=2),
                    Conv2dNormActivation(c_out, c_out, kernel_size=3),
                )
                for c_in, c_out in zip(widths[:-1], widths[1:])
            ]
        )
        self.stage_strides = (4, 8, 16, 32)
        self.stage_channels = tuple(int(w) for w in widths)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Features at strides 4, 8, 16, 32."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features


class TinySegNet(SegmentationModel):
    """TinyEncoder + all-stage fusion decoder (1x1 projections, upsample to stride 4, concat, 3x3 conv)."""

    default_encoder = TINY_ENCODER_NAME

    def __init__(
        self,
        num_classes: int,
        encoder: str | None = None,
        widths: Sequence[int] = (16, 32, 64, 96),
        decoder_channels: int = 32,
    ) -> None:
        if encoder not in (None, TINY_ENCODER_NAME):
            raise ValueError(f"model 'tiny' has a built-in encoder; encoder must be None or 'tiny', got {encoder!r}")
        super().__init__(num_classes, TinyEncoder(widths))
        self.projections = nn.ModuleList(
            Conv2dNormActivation(c, decoder_channels, kernel_size=1) for c in self.stage_channels
        )
        self.fuse = Conv2dNormActivation(NUM_STAGES * decoder_channels, decoder_channels, kernel_size=3)
        self.classifier = nn.Conv2d(decoder_channels, num_classes, kernel_size=1)

    def decode(self, features: list[Tensor]) -> tuple[Tensor, None]:
        """Fuse every stage at stride 4 and classify."""
        size = features[0].shape[-2:]
        projected = [resize_to(proj(f), size) for proj, f in zip(self.projections, features)]
        return self.classifier(self.fuse(torch.cat(projected, dim=1))), None
