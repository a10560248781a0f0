"""UPerNet (Xiao et al., 2018): pyramid pooling on the deepest stage + FPN fusion of all four stages.

The paper pairs it with Swin-T/S/B and ResNet encoders; any hierarchical timm encoder works.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from mscl.models.base import SegmentationModel, resize_to
from mscl.models.encoders import TIMM_ENCODER_KWARGS, TimmEncoder


class PyramidPoolingModule(nn.Module):
    """PSPNet pyramid pooling: average-pool to each scale, 1x1 conv-BN-ReLU, upsample, concat, 3x3 fuse."""

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), Conv2dNormActivation(in_channels, channels, kernel_size=1))
            for scale in pool_scales
        )
        self.bottleneck = Conv2dNormActivation(in_channels + len(pool_scales) * channels, channels, kernel_size=3)

    def forward(self, x: Tensor) -> Tensor:
        """Context-augmented ``x`` with ``channels`` channels at the same resolution."""
        pooled = [resize_to(branch(x), x.shape[-2:]) for branch in self.branches]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UPerHead(nn.Module):
    """PPM on the deepest stage, top-down FPN over the others, all levels fused at the finest stride."""

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        pool_scales: Sequence[int],
        dropout: float,
    ) -> None:
        super().__init__()
        self.ppm = PyramidPoolingModule(in_channels[-1], channels, pool_scales)
        self.laterals = nn.ModuleList(Conv2dNormActivation(c, channels, kernel_size=1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(
            Conv2dNormActivation(channels, channels, kernel_size=3) for _ in in_channels[:-1]
        )
        self.fuse = Conv2dNormActivation(len(in_channels) * channels, channels, kernel_size=3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: list[Tensor]) -> Tensor:
        """Logits at the resolution of ``features[0]``."""
        levels = [lateral(f) for lateral, f in zip(self.laterals, features[:-1])] + [self.ppm(features[-1])]
        for i in range(len(levels) - 1, 0, -1):
            levels[i - 1] = levels[i - 1] + resize_to(levels[i], levels[i - 1].shape[-2:])
        outputs = [conv(level) for conv, level in zip(self.fpn_convs, levels[:-1])] + [levels[-1]]
        size = outputs[0].shape[-2:]
        fused = self.fuse(torch.cat([resize_to(out, size) for out in outputs], dim=1))
        return self.classifier(self.dropout(fused))


class UPerNet(SegmentationModel):
    """UPerNet on a timm encoder (ResNet, ConvNeXt, Swin, ...); ``features`` are its four stages (4, 8, 16, 32).

    Extra keyword arguments (``timm_kwargs`` only) go to ``timm.create_model`` (e.g. ``img_size``, or ``embed_dim``/``depths``
    for a small Swin). Swin accepts any input size (``strict_img_size=False`` by default); leave
    ``img_size`` unset when loading 224-px Swin weights, since a smaller ``img_size`` shrinks the
    attention windows and with them the relative-position tables.
    """

    default_encoder = "resnet18"
    timm_kwargs = TIMM_ENCODER_KWARGS

    def __init__(
        self,
        num_classes: int,
        encoder: str | None = None,
        decoder_channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        **encoder_kwargs: Any,
    ) -> None:
        backbone = TimmEncoder(encoder or self.default_encoder, model_name="upernet", allowed_kwargs=self.timm_kwargs,
                               **encoder_kwargs)
        super().__init__(num_classes, backbone)
        self.decode_head = UPerHead(self.stage_channels, decoder_channels, num_classes, pool_scales, dropout)

    def decode(self, features: list[Tensor]) -> tuple[Tensor, None]:
        """UPerHead over all four stages."""
        return self.decode_head(features), None
