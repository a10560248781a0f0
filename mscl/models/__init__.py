"""Segmentation models exposing per-stage encoder features (docs/architecture.md, "mscl.models")."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mscl.models.base import NUM_STAGES, Encoder, SegmentationModel, SegOutput
from mscl.models.deeplabv3 import DeepLabV3
from mscl.models.encoders import (
    RESERVED_TIMM_KWARGS,
    TIMM_ENCODER_KWARGS,
    PretrainedLoadReport,
    TimmEncoder,
    load_encoder_weights,
    reserved_kwargs_message,
)
from mscl.models.hrnet import HRNet
from mscl.models.ocrnet import OCRNet
from mscl.models.tiny import TinySegNet
from mscl.models.upernet import UPerNet
from mscl.registry import Registry

MODEL_CLASSES: Registry[type[SegmentationModel]] = Registry("model", {
    "tiny": TinySegNet,
    "deeplabv3": DeepLabV3,
    "upernet": UPerNet,
    "hrnet": HRNet,
    "ocrnet": OCRNet,
})


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return MODEL_CLASSES.names()


def accepted_kwargs(name: str) -> list[str]:
    """Keyword arguments model ``name`` accepts (``model.kwargs`` in a config), sorted: its head options (the
    named parameters of its class) and the timm keywords its encoder takes (the class's ``timm_kwargs``, a
    subset of :data:`TIMM_ENCODER_KWARGS`)."""
    model_class = MODEL_CLASSES.lookup(name)
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    head = {key for key, parameter in inspect.signature(model_class.__init__).parameters.items()
            if key not in ("self", "num_classes", "encoder") and parameter.kind in named}
    return sorted(head | model_class.timm_kwargs)


def check_model_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise ValueError, before any model or timm call, when ``kwargs`` holds a key model ``name`` does not
    accept (:func:`accepted_kwargs`); keys mscl fixes itself (``pretrained``, ``features_only``, ...) say so."""
    reserved = RESERVED_TIMM_KWARGS.intersection(kwargs)
    if reserved:
        raise ValueError(reserved_kwargs_message(reserved))
    allowed = accepted_kwargs(name)
    refused = sorted(set(kwargs) - set(allowed))
    if refused:
        raise ValueError(
            f"model.kwargs: model {name!r} does not accept {', '.join(refused)}; allowed: {', '.join(allowed)}"
        )


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
            (e.g. ``img_size``); only those of :func:`accepted_kwargs` (ValueError for any other, checked
            before timm is called).
    """
    check_model_kwargs(name, kwargs)
    model = MODEL_CLASSES.lookup(name)(num_classes, encoder=encoder, **kwargs)
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
    "TIMM_ENCODER_KWARGS",
    "TimmEncoder",
    "TinySegNet",
    "UPerNet",
    "accepted_kwargs",
    "available_models",
    "build_model",
    "check_model_kwargs",
    "load_encoder_weights",
]
