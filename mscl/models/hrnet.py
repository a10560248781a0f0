"""HRNetV2 segmentation (Wang et al., 2020) on timm's HRNet; the paper reports HRNet-W48.

The encoder's four parallel branches (strides 4, 8, 16, 32) are the contrastive stages.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from mscl.models.base import SegmentationModel, resize_to
from mscl.models.encoders import TimmEncoder, unknown_encoder_message

HRNET_TIMM_KWARGS = frozenset({"drop_rate", "feature_location"})
"""timm keywords HRNet encoders take from ``model.kwargs`` (timm's HighResolutionNet options)."""


def hrnet_encoder_names() -> list[str]:
    """timm HRNet variants usable as encoders (hrnet_w18_small ... hrnet_w64)."""
    return timm.list_models("hrnet*")


def build_hrnet_encoder(name: str, model_name: str, **encoder_kwargs: Any) -> TimmEncoder:
    """timm HRNet exposing its four raw branch outputs; ValueError listing the variants for other names."""
    valid = hrnet_encoder_names()
    if name not in valid:
        raise ValueError(unknown_encoder_message(name, model_name, valid))
    return TimmEncoder(name, model_name=model_name, allowed_kwargs=HRNET_TIMM_KWARGS, **encoder_kwargs)


def concat_branches(features: list[Tensor]) -> Tensor:
    """HRNetV2 representation: every branch upsampled (bilinear) to the finest one and concatenated."""
    size = features[0].shape[-2:]
    return torch.cat([resize_to(f, size) for f in features], dim=1)


class HRNet(SegmentationModel):
    """HRNetV2: concatenated branches -> 1x1 conv-BN-ReLU -> 1x1 classifier, at stride 4.

    Extra keyword arguments (``timm_kwargs`` only) go to ``timm.create_model``.
    """

    default_encoder = "hrnet_w18_small"
    timm_kwargs = HRNET_TIMM_KWARGS

    def __init__(self, num_classes: int, encoder: str | None = None, **encoder_kwargs: Any) -> None:
        backbone = build_hrnet_encoder(encoder or self.default_encoder, "hrnet", **encoder_kwargs)
        super().__init__(num_classes, backbone)
        channels = sum(self.stage_channels)
        self.decode_head = nn.Sequential(
            Conv2dNormActivation(channels, channels, kernel_size=1),
            nn.Conv2d(channels, num_classes, kernel_size=1),
        )

    def decode(self, features: list[Tensor]) -> tuple[Tensor, None]:
        """Classify the concatenated branches."""
        return self.decode_head(concat_branches(features)), None
