"""timm encoders with per-stage features and local pretrained-weight loading.

Every encoder is a timm model created with ``features_only=True`` and ``pretrained=False`` (weights
never download); :func:`load_encoder_weights` fills it from a local file instead.
"""

from __future__ import annotations

import difflib
import logging
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch
from timm.layers import Format
from torch import Tensor, nn

from mscl.models.base import NUM_STAGES, Encoder

logger = logging.getLogger(__name__)

LAST_STAGES: tuple[int, ...] = tuple(range(-NUM_STAGES, 0))
"""timm ``out_indices`` selecting the last four feature taps (strides 4, 8, 16, 32 for ResNet,
ConvNeXt, Swin and HRNet; ResNet's stride-2 stem tap is dropped)."""

FAMILY_DEFAULTS: tuple[tuple[str, dict[str, Any]], ...] = (
    # Swin: accept any input size (train crops and full-size evaluation images differ).
    ("swin", {"strict_img_size": False}),
    # HRNet: the four raw branch outputs (the paper's stages), not the classification "incre" head.
    ("hrnet", {"feature_location": ""}),
)
"""timm keyword defaults per encoder-name prefix; explicit keyword arguments override them."""

RESERVED_TIMM_KWARGS = frozenset({"pretrained", "features_only", "out_indices"})
"""timm keywords mscl sets itself (no download, four feature stages); never taken from a config."""

TIMM_ENCODER_KWARGS = frozenset({
    "img_size", "patch_size", "window_size", "embed_dim", "depths", "dims", "num_heads", "mlp_ratio",
    "drop_rate", "drop_path_rate", "strict_img_size", "feature_location", "output_stride",
})
"""The only timm keyword arguments an encoder accepts (``model.kwargs`` in a config): architecture shape and
regularisation. Keywords that make timm read a file or fetch a config (``checkpoint_path``, ``pretrained_cfg``,
``pretrained_cfg_overlay``, ``cache_dir``, ...) are refused: timm would load ``checkpoint_path`` itself (releases
before 1.0.26 with full pickle), so a run or config file could execute code. Local weights go through
:func:`load_encoder_weights` (safetensors, or torch files with ``weights_only=True``)."""

STRIPPABLE_PREFIXES: tuple[str, ...] = ("module.", "encoder.", "backbone.", "model.")
"""Leading key prefixes ignored when matching a weight file to an encoder (DDP, wrappers, timm)."""

CHECKPOINT_CONTAINER_KEYS: tuple[str, ...] = ("state_dict", "model")
"""Keys under which training checkpoints commonly nest their state dict."""


def unknown_encoder_message(name: str, model_name: str, valid: Sequence[str] | None = None) -> str:
    """Error text for an encoder name that ``model_name`` cannot use, listing what it accepts."""
    candidates = list(valid) if valid is not None else timm.list_models()
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    if valid is not None:
        accepted = f"valid encoders: {', '.join(valid)}"
    else:
        accepted = "valid encoders: any name in timm.list_models() that supports features_only"
    hint = f"; closest: {', '.join(close)}" if close else ""
    return f"unknown encoder {name!r} for model {model_name!r}; {accepted}{hint}"


def reserved_kwargs_message(reserved: set[str] | frozenset[str]) -> str:
    """Error text for timm keywords that mscl fixes itself (:data:`RESERVED_TIMM_KWARGS`)."""
    return (
        f"encoder keyword(s) {sorted(reserved)} are fixed by mscl (features_only=True, "
        "pretrained=False, last four stages); pass local weights with build_model(pretrained=PATH)"
    )


def check_timm_kwargs(kwargs: Mapping[str, Any], model_name: str,
                      allowed: frozenset[str] = TIMM_ENCODER_KWARGS) -> None:
    """Raise ValueError unless every key of ``kwargs`` is in ``allowed`` and in :data:`TIMM_ENCODER_KWARGS`."""
    reserved = RESERVED_TIMM_KWARGS.intersection(kwargs)
    if reserved:
        raise ValueError(reserved_kwargs_message(reserved))
    allowed = allowed & TIMM_ENCODER_KWARGS
    refused = sorted(set(kwargs) - allowed)
    if refused:
        raise ValueError(
            f"model.kwargs: the timm encoder of model {model_name!r} does not accept {', '.join(refused)}; "
            f"allowed: {', '.join(sorted(allowed)) or 'none'}"
        )


def _family_defaults(name: str) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for prefix, kwargs in FAMILY_DEFAULTS:
        if name.startswith(prefix):
            defaults.update(kwargs)
    return defaults


class TimmEncoder(Encoder):
    """A timm ``features_only`` backbone exposing its last four stages as NCHW tensors, finest first.

    ``timm_kwargs`` must be in ``allowed_kwargs`` (the model's ``timm_kwargs``) and in
    :data:`TIMM_ENCODER_KWARGS`; any other key raises ValueError before timm is called.
    ``stage_strides`` / ``stage_channels`` come from timm's ``feature_info``. Models whose features
    are channels-last (timm Swin) are permuted to NCHW; every feature is returned contiguous
    (ConvNeXt's are not), so consumers may ``view`` them.
    """

    def __init__(self, name: str, model_name: str = "encoder", allowed_kwargs: frozenset[str] = TIMM_ENCODER_KWARGS,
                 **timm_kwargs: Any) -> None:
        super().__init__()
        if not timm.is_model(name):
            raise ValueError(unknown_encoder_message(name, model_name))
        check_timm_kwargs(timm_kwargs, model_name, allowed_kwargs)
        kwargs = {**_family_defaults(name), **timm_kwargs}
        try:
            self.model = timm.create_model(
                name, pretrained=False, features_only=True, out_indices=LAST_STAGES, **kwargs
            )
        except TypeError as err:
            raise TypeError(f"timm encoder {name!r} rejected keyword arguments {sorted(kwargs)}: {err}") from err
        self.name = name
        info = self.model.feature_info
        self.stage_strides = tuple(int(r) for r in info.reduction())
        self.stage_channels = tuple(int(c) for c in info.channels())
        self.channels_last = Format(getattr(self.model, "output_fmt", Format.NCHW)) is Format.NHWC

    def forward(self, x: Tensor) -> list[Tensor]:
        """Per-stage features of ``x`` [N,3,H,W], contiguous NCHW, finest first."""
        features = self.model(x)
        if self.channels_last:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return [f.contiguous() for f in features]


@dataclass(frozen=True)
class PretrainedLoadReport:
    """Outcome of :func:`load_encoder_weights`: encoder keys filled, left as initialised, and file keys unused.

    BatchNorm ``num_batches_tracked`` counters are not reported missing: they do not affect the weights.
    """

    path: str
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a flat name->tensor mapping from ``.safetensors`` or a torch file (``weights_only=True``).

    A torch checkpoint nesting its weights under ``state_dict`` or ``model`` is unwrapped. A torch file that
    needs more than tensors to unpickle raises ValueError (nothing of it is executed).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained encoder weights not found: {path}")
    if path.suffix == ".safetensors":
        return dict(safetensors.torch.load_file(str(path), device="cpu"))
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = next((line for line in lines if "global" in line.lower()), lines[0] if lines else type(err).__name__)
        raise ValueError(
            f"{path} was refused: it holds Python objects besides tensors, which mscl never unpickles ({reason}); "
            "save the weights as a plain state dict or as .safetensors"
        ) from err
    if not isinstance(content, Mapping):
        raise ValueError(f"{path} holds a {type(content).__name__}; expected a state dict (name -> tensor)")
    for container in CHECKPOINT_CONTAINER_KEYS:
        nested = content.get(container)
        if isinstance(nested, Mapping):
            content = nested
            break
    non_tensors = [key for key, value in content.items() if not isinstance(value, Tensor)]
    if non_tensors:
        raise ValueError(
            f"{path} is not a flat state dict: entries {non_tensors[:5]} are not tensors "
            f"(nested state dicts are read from {list(CHECKPOINT_CONTAINER_KEYS)})"
        )
    return dict(content)


def canonical_key(key: str) -> str:
    """Key used to match file and encoder names: wrapper prefixes stripped, ``_`` read as ``.``.

    timm's ``features_only`` wrappers rename nested modules (e.g. Swin ``layers.0`` -> ``layers_0``),
    so both spellings of a timm name map to the same canonical key.
    """
    stripped = True
    while stripped:
        stripped = False
        for prefix in STRIPPABLE_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                stripped = True
    return key.replace("_", ".")


def _index_by_canonical(keys: Sequence[str], origin: str) -> dict[str, str]:
    index: dict[str, str] = {}
    for key in keys:
        canonical = canonical_key(key)
        if canonical in index:
            raise ValueError(f"{origin}: keys {index[canonical]!r} and {key!r} both match encoder key {canonical!r}")
        index[canonical] = key
    return index


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> PretrainedLoadReport:
    """Load encoder weights in timm naming from the local file ``path`` into ``encoder``.

    Keys may carry a ``module.`` / ``encoder.`` / ``backbone.`` / ``model.`` prefix. Raises
    FileNotFoundError if the file is absent, ValueError if no key matches or a matched shape differs.
    Missing and unexpected key counts are logged and returned.
    """
    source = read_state_dict(path)
    target = encoder.state_dict()
    encoder_name = getattr(encoder, "name", type(encoder).__name__)
    target_index = _index_by_canonical(list(target), f"encoder {encoder_name}")
    source_index = _index_by_canonical(list(source), str(path))

    matched: dict[str, Tensor] = {}
    mismatched: list[str] = []
    for canonical, source_key in source_index.items():
        target_key = target_index.get(canonical)
        if target_key is None:
            continue
        if source[source_key].shape != target[target_key].shape:
            mismatched.append(
                f"{source_key}: file {tuple(source[source_key].shape)} vs encoder {tuple(target[target_key].shape)}"
            )
        else:
            matched[target_key] = source[source_key]
    if mismatched:
        raise ValueError(
            f"{path}: {len(mismatched)} tensor(s) do not fit encoder {encoder_name}, e.g. {mismatched[:3]}"
        )
    if not matched:
        raise ValueError(
            f"no key of {path} matches encoder {encoder_name}: file keys e.g. {list(source)[:3]}, "
            f"encoder keys e.g. {list(target)[:3]}"
        )
    encoder.load_state_dict(matched, strict=False)
    used = {canonical_key(key) for key in matched}
    report = PretrainedLoadReport(
        path=str(path),
        loaded=tuple(matched),
        missing=tuple(key for key in target if key not in matched and not key.endswith("num_batches_tracked")),
        unexpected=tuple(key for key in source if canonical_key(key) not in used),
    )
    level = logging.WARNING if report.missing else logging.INFO
    logger.log(
        level,
        "loaded %d encoder tensors from %s into %s; %d missing (left as initialised), %d unexpected (ignored)",
        len(report.loaded),
        path,
        encoder_name,
        len(report.missing),
        len(report.unexpected),
    )
    return report
