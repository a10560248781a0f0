"""OCRNet (Yuan et al., ECCV 2020, "Object-Contextual Representations") on timm's HRNet, as in the paper's HRNet-OCR.

The auxiliary head's logits are the soft object regions; they are exposed as ``model.last_aux_logits``
(input resolution) for the auxiliary cross-entropy (weight 0.4 in the usual OCRNet setting).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from mscl.models.base import SegmentationModel
from mscl.models.hrnet import HRNET_TIMM_KWARGS, build_hrnet_encoder, concat_branches


class ObjectContextHead(nn.Module):
    """OCR head: soft object regions -> object region representations -> pixel-region attention ->
    augmented representation (concat with the pixel representation, 1x1 conv-BN-ReLU) -> classifier.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        mid_channels: int,
        key_channels: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.aux_head = nn.Sequential(
            Conv2dNormActivation(in_channels, in_channels, kernel_size=1),
            nn.Conv2d(in_channels, num_classes, kernel_size=1),
        )
        self.pixel_proj = Conv2dNormActivation(in_channels, mid_channels, kernel_size=3)
        self.query_proj = nn.Sequential(
            Conv2dNormActivation(mid_channels, key_channels, kernel_size=1),
            Conv2dNormActivation(key_channels, key_channels, kernel_size=1),
        )
        self.key_proj = nn.Sequential(
            Conv2dNormActivation(mid_channels, key_channels, kernel_size=1),
            Conv2dNormActivation(key_channels, key_channels, kernel_size=1),
        )
        self.value_proj = Conv2dNormActivation(mid_channels, key_channels, kernel_size=1)
        self.context_proj = Conv2dNormActivation(key_channels, mid_channels, kernel_size=1)
        self.fuse = nn.Sequential(
            Conv2dNormActivation(2 * mid_channels, mid_channels, kernel_size=1),
            nn.Dropout2d(dropout),
        )
        self.classifier = nn.Conv2d(mid_channels, num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(OCR logits, auxiliary logits), both at the resolution of ``x``."""
        aux_logits = self.aux_head(x)
        pixels = self.pixel_proj(x)
        n, _, h, w = pixels.shape
        # Soft object regions: per class, a spatial softmax over the auxiliary logits.
        regions = F.softmax(aux_logits.flatten(2), dim=2)
        # Object region representations: region-weighted sums of pixel representations, [N, C, K, 1].
        region_repr = torch.bmm(regions, pixels.flatten(2).transpose(1, 2)).transpose(1, 2).unsqueeze(-1)
        query = self.query_proj(pixels).flatten(2).transpose(1, 2)
        key = self.key_proj(region_repr).flatten(2).transpose(1, 2)
        value = self.value_proj(region_repr).flatten(2).transpose(1, 2)
        # Pixel-region relation: softmax(q k^T / sqrt(d)) over regions, then the weighted region values.
        context = F.scaled_dot_product_attention(query, key, value)
        context = context.transpose(1, 2).reshape(n, -1, h, w)
        augmented = self.fuse(torch.cat([self.context_proj(context), pixels], dim=1))
        return self.classifier(augmented), aux_logits


class OCRNet(SegmentationModel):
    """HRNet + OCR head; ``features`` are the four HRNet branches (strides 4, 8, 16, 32).

    Each forward sets ``last_aux_logits``. Extra keyword arguments (``timm_kwargs`` only) go to
    ``timm.create_model``.
    """

    default_encoder = "hrnet_w18_small"
    timm_kwargs = HRNET_TIMM_KWARGS

    def __init__(
        self,
        num_classes: int,
        encoder: str | None = None,
        mid_channels: int = 512,
        key_channels: int = 256,
        dropout: float = 0.05,
        **encoder_kwargs: Any,
    ) -> None:
        backbone = build_hrnet_encoder(encoder or self.default_encoder, "ocrnet", **encoder_kwargs)
        super().__init__(num_classes, backbone)
        self.decode_head = ObjectContextHead(sum(self.stage_channels), num_classes, mid_channels, key_channels, dropout)

    def decode(self, features: list[Tensor]) -> tuple[Tensor, Tensor]:
        """OCR head on the concatenated HRNet branches."""
        return self.decode_head(concat_branches(features))
