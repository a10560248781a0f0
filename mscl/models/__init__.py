"""Segmentation models exposing per-stage encoder features (docs/architecture.md, "mscl.models")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mscl.models.base import NUM_STAGES, Encoder, SegmentationModel, SegOutput
from mscl.models.deeplabv3 import DeepLabV3
from mscl.models.encoders import PretrainedLoadReport, TimmEncoder, load_encoder_weights
from mscl.models.hrnet import HRNet
from mscl.models.ocrnet import OCRNet
from mscl.models.tiny import TinySegNet
from mscl.models.upernet import UPerNet

MODEL_CLASSES: dict[str, type[SegmentationModel]] = {
    "tiny": TinySegNet,
    "deeplabv3": DeepLabV3,
    "upernet": UPerNet,
    "hrnet": HRNet,
    "ocrnet": OCRNet,
}


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return list(MODEL_CLASSES)


def build_model(
    name: str,
    num_classes: int,
    encoder: str | None = None,
    pretrained: str | Path | None = None,
    **kwargs: Any,
) -> SegmentationModel:
    """Build model ``name`` with ``num_classes`` outputs.

    Args:
        name: one of :func:`available_models`.
        num_classes: number of classes K.
        encoder: timm encoder name (None: the model's ``default_encoder``).
        pretrained: local file with encoder weights in timm naming (``.safetensors`` or a torch file);
            never downloaded.
        **kwargs: head options (e.g. ``decoder_channels``, ``output_stride``) and timm keyword arguments
            (e.g. ``img_size``).
    """
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(available_models())}")
    model = MODEL_CLASSES[name](num_classes, encoder=encoder, **kwargs)
    if pretrained is not None:
        load_encoder_weights(model.encoder, pretrained)
    return model


__all__ = [
    "NUM_STAGES",
    "DeepLabV3",
    "Encoder",
    "HRNet",
    "MODEL_CLASSES",
    "OCRNet",
    "PretrainedLoadReport",
    "SegOutput",
    "SegmentationModel",
    "TimmEncoder",
    "TinySegNet",
    "UPerNet",
    "available_models",
    "build_model",
    "load_encoder_weights",
]
