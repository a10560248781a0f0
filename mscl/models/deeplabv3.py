"""DeepLabV3 (Chen et al., 2017) on a dilated timm ResNet; the paper's setting is ResNet-101 at output stride 8."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.ops import Conv2dNormActivation

from mscl.models.base import SegmentationModel
from mscl.models.encoders import TimmEncoder

BASE_ATROUS_RATES = (6, 12, 18)
"""ASPP rates at output stride 16; doubled at output stride 8 (Chen et al., 2017)."""


class DeepLabV3(SegmentationModel):
    """Dilated ResNet + ASPP head (torchvision's ASPP, then 3x3 conv-BN-ReLU and a 1x1 classifier).

    ``features`` are the outputs of the four ResNet stages (strides 4, 8, 8, 8 at output stride 8;
    4, 8, 16, 16 at 16). Extra keyword arguments (``timm_kwargs`` only) go to ``timm.create_model``.
    """

    default_encoder = "resnet18"
    timm_kwargs = frozenset({"drop_rate", "drop_path_rate"})

    def __init__(
        self,
        num_classes: int,
        encoder: str | None = None,
        output_stride: int = 8,
        decoder_channels: int = 256,
        atrous_rates: Sequence[int] | None = None,
        **encoder_kwargs: Any,
    ) -> None:
        if output_stride not in (8, 16):
            raise ValueError(f"deeplabv3 output_stride must be 8 or 16, got {output_stride}")
        name = encoder or self.default_encoder
        backbone = TimmEncoder(name, model_name="deeplabv3", allowed_kwargs=self.timm_kwargs | {"output_stride"},
                               output_stride=output_stride, **encoder_kwargs)
        if backbone.stage_strides[-1] != output_stride:
            raise ValueError(
                f"encoder {name!r} does not support output_stride={output_stride} (its last stage has stride "
                f"{backbone.stage_strides[-1]}); use a dilatable timm ResNet such as resnet18/34/50/101"
            )
        super().__init__(num_classes, backbone)
        rates = tuple(atrous_rates) if atrous_rates is not None else tuple(
            rate * 16 // output_stride for rate in BASE_ATROUS_RATES
        )
        self.decode_head = nn.Sequential(
            ASPP(self.stage_channels[-1], rates, decoder_channels),
            Conv2dNormActivation(decoder_channels, decoder_channels, kernel_size=3),
            nn.Conv2d(decoder_channels, num_classes, kernel_size=1),
        )

    def decode(self, features: list[Tensor]) -> tuple[Tensor, None]:
        """ASPP on the deepest stage."""
        return self.decode_head(features[-1]), None
