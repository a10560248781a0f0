"""Joint image/label transforms built on ``torchvision.transforms.v2``.

The image travels as a ``tv_tensors.Image`` and the label as a ``tv_tensors.Mask``, so every
geometric op is applied to both with the same parameters and the label is ALWAYS resampled with
nearest interpolation (torchvision's mask kernels); colour jitter touches the image only.

All randomness comes from the global torch RNG (torchvision v2 draws with ``torch.rand`` /
``torch.randint``); :class:`mscl.data.base.SegmentationDataset` either leaves it to the
``DataLoader``'s per-worker seeding or re-seeds it per (seed, epoch, index) — see that module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from mscl.data.constants import IMAGENET_MEAN, IMAGENET_STD


class RandomRescale(v2.Transform):
    """Scale image and label by a factor drawn uniformly from ``[min_scale, max_scale]``.

    ``min_scale == max_scale`` gives a fixed rescale (``resize=<float>``). Image: bilinear with
    antialias; label: nearest.
    """

    def __init__(self, min_scale: float, max_scale: float) -> None:
        super().__init__()
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"scale range must satisfy 0 < min <= max, got ({min_scale}, {max_scale})")
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if self.min_scale == self.max_scale:
            return {"scale": self.min_scale}
        draw = float(torch.empty(()).uniform_(self.min_scale, self.max_scale))
        return {"scale": draw}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        height, width = TF.get_size(inpt)
        size = [max(1, round(height * params["scale"])), max(1, round(width * params["scale"]))]
        return self._call_kernel(TF.resize, inpt, size=size, antialias=True)


class SegmentationTransform:
    """Joint transform: ``(image uint8 [H,W,3] array or PIL, label int [H,W] array)`` ->
    ``(FloatTensor[3,h,w] normalised, LongTensor[h,w])``."""

    def __init__(self, ops: Sequence[v2.Transform], mean: Sequence[float], std: Sequence[float]) -> None:
        self.pipeline = v2.Compose(
            [*ops, v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
             v2.Normalize(mean=list(mean), std=list(std))]
        )

    def __call__(self, image: Any, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        image_array = np.array(image, dtype=np.uint8)
        if image_array.ndim != 3 or image_array.shape[2] != 3:
            raise ValueError(f"image must be [H,W,3] uint8, got shape {image_array.shape}")
        label_array = np.array(label, dtype=np.int64)
        if label_array.shape != image_array.shape[:2]:
            raise ValueError(f"label shape {label_array.shape} differs from image shape {image_array.shape[:2]}")
        image_tensor = tv_tensors.Image(torch.from_numpy(image_array).permute(2, 0, 1))
        label_tensor = tv_tensors.Mask(torch.from_numpy(label_array))
        out_image, out_label = self.pipeline(image_tensor, label_tensor)
        return out_image.as_subclass(torch.Tensor), out_label.as_subclass(torch.Tensor).long()

    def __repr__(self) -> str:
        return f"SegmentationTransform({self.pipeline})"


def _pair(size: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    values = tuple(int(v) for v in size)
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"{what} must be an int or (height, width) of positive ints, got {size!r}")
    return values  # type: ignore[return-value]


def _jitter_strengths(color_jitter: float | Sequence[float]) -> tuple[float, float, float, float]:
    if isinstance(color_jitter, (int, float)):
        return (float(color_jitter), float(color_jitter), float(color_jitter), 0.0)
    values = tuple(float(v) for v in color_jitter)
    if len(values) != 4:
        raise ValueError(
            f"color_jitter must be a float or (brightness, contrast, saturation, hue), got {color_jitter!r}"
        )
    return values  # type: ignore[return-value]


def _resize_op(resize: float | Sequence[int]) -> v2.Transform:
    if isinstance(resize, float):
        return RandomRescale(resize, resize)
    if isinstance(resize, Sequence) and not isinstance(resize, str):
        return v2.Resize(_pair(resize, "resize"), antialias=True)
    raise ValueError(
        f"resize must be a float scale factor (e.g. 0.5) or a (height, width) size, got {resize!r}"
    )


def build_transforms(
    train: bool,
    crop_size: int | Sequence[int] | None = None,
    scale_range: Sequence[float] | None = (0.5, 2.0),
    resize: float | Sequence[int] | None = None,
    hflip: bool = True,
    color_jitter: float | Sequence[float] = 0.2,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = 255,
) -> SegmentationTransform:
    """Joint transform for training (``train=True``) or evaluation.

    Order: ``resize`` (``(h, w)`` fixed size or a float scale factor; train and eval) ->
    random rescale by a factor in ``scale_range`` (train) -> random crop to ``crop_size``, padding
    the label with ``ignore_index`` and the image with the mean colour (0 after normalisation)
    (train) -> horizontal flip with p=0.5 (train, ``hflip``) -> colour jitter (train; a float ``j``
    means brightness=contrast=saturation=j, hue=0; or a 4-tuple) -> float + normalise
    (``mean``/``std``, ImageNet by default).
    """
    ops: list[v2.Transform] = []
    if resize is not None:
        ops.append(_resize_op(resize))
    if train:
        if scale_range is not None:
            low, high = (float(v) for v in scale_range)
            ops.append(RandomRescale(low, high))
        if crop_size is not None:
            fill_colour = tuple(round(m * 255) for m in mean)
            ops.append(
                v2.RandomCrop(
                    _pair(crop_size, "crop_size"),
                    pad_if_needed=True,
                    fill={tv_tensors.Image: fill_colour, tv_tensors.Mask: ignore_index},
                )
            )
        if hflip:
            ops.append(v2.RandomHorizontalFlip(p=0.5))
        brightness, contrast, saturation, hue = _jitter_strengths(color_jitter)
        if max(brightness, contrast, saturation, hue) > 0:
            ops.append(v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue))
    return SegmentationTransform(ops, mean=mean, std=std)
