"""Training configuration: typed dataclasses, YAML files, dotted command-line overrides and presets.

The loss presets follow the paper (Pissas et al., ECCV 2022, Sec. 3.4): ``ce`` is cross-entropy alone,
``ms`` adds the multi-scale loss and ``ms+cs`` adds both, each as ``CE + 0.1 * contrastive``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mscl.data.transforms import IMAGENET_MEAN, IMAGENET_STD

LOSS_PRESETS = ("ce", "ms", "ms+cs")


class ConfigError(ValueError):
    """A config file or override names an unknown key or holds a value of the wrong type."""


@dataclass
class DataConfig:
    """Which dataset to read and how to augment it (labels are always resampled nearest)."""

    name: str = "camvid"
    root: str = "../shared/datasets/camvid"
    train_split: str = "train"
    val_split: str = "val"
    resize: float | None = 0.5
    crop_size: list[int] | None = None
    scale_range: list[float] = field(default_factory=lambda: [1.0, 1.0])
    hflip: bool = True
    color_jitter: float = 0.2
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    batch_size: int = 8
    val_batch_size: int = 4
    num_workers: int = 2
    max_train_images: int | None = None
    max_val_images: int | None = None


@dataclass
class ModelConfig:
    """Segmentation model (see ``mscl.models.available_models``); ``pretrained`` is a local file."""

    name: str = "deeplabv3"
    encoder: str | None = None
    pretrained: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    """Loss settings; defaults are the paper's public configuration (method.md)."""

    preset: str = "ms+cs"
    contrastive_weight: float = 0.1
    temperature: float = 0.1
    ms_weights: list[float] = field(default_factory=lambda: [1.0, 0.7, 0.4, 0.1])
    cs_pairs: list[list[int]] = field(default_factory=lambda: [[0, -1], [0, -2]])
    cs_weights: list[float] = field(default_factory=lambda: [1.0, 1.0])
    min_views_per_class: int = 5
    max_views_per_class: int = 2500
    max_features_total: int = 10000
    projector_dim: int = 256
    cs_detach_deepest: bool = False
    same_positions: bool = False
    aux_weight: float = 0.4


@dataclass
class OptimConfig:
    """Optimiser with polynomial learning-rate decay ``lr * (1 - step/steps) ** poly_power``."""

    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    warmup_steps: int = 0


@dataclass
class TrainConfig:
    """Loop settings; ``steps`` counts optimiser steps (iterations), as the paper's schedules do."""

    steps: int = 2000
    val_every: int = 500
    log_every: int = 10
    checkpoint_every: int = 100
    device: str = "auto"
    amp: bool = False
    sync_bn: bool = False
    log_all_ranks: bool = False
    progress: bool = True


@dataclass
class ExportConfig:
    """What the run keeps for the workbench: embeddings sample, predictions, dense maps."""

    num_pixels: int = 4000
    num_prediction_images: int = 8
    num_dense_images: int = 3
    project: bool = True


@dataclass
class Config:
    """A complete, resolved training configuration; written to ``RUN/config.yaml``."""

    name: str = "run"
    output_dir: str = "runs"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_value(path: str, current: Any, value: Any) -> Any:
    """Coerce ``value`` to the type of the default ``current``, or raise naming the key."""
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{path}' expects true/false, got {value!r}")
        return value
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(current, (int, float, str, list, dict)) and not isinstance(value, type(current)):
        raise ConfigError(f"config key '{path}' expects {type(current).__name__}, got {value!r}")
    return value


def _apply(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'; valid keys here: {sorted(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{path}' is a section and needs a mapping, got {value!r}")
            _apply(current, value, prefix=f"{path}.")
        else:
            setattr(obj, key, _check_value(path, current, value))


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` (value parsed as YAML) into (["a", "b", "c"], value)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build a Config from defaults, an optional YAML file and dotted ``key=value`` overrides."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        try:
            _apply(config, values)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from err
    for text in overrides or []:
        keys, value = parse_override(text)
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        _apply(config, nested)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Cross-field checks that a single key's type cannot express."""
    loss = config.loss
    if loss.preset not in LOSS_PRESETS:
        raise ConfigError(f"loss.preset must be one of {LOSS_PRESETS}, got '{loss.preset}'")
    if len(loss.cs_pairs) != len(loss.cs_weights):
        raise ConfigError(
            f"loss.cs_pairs has {len(loss.cs_pairs)} pairs but loss.cs_weights has {len(loss.cs_weights)} weights"
        )
    if any(len(pair) != 2 for pair in loss.cs_pairs):
        raise ConfigError(f"loss.cs_pairs must be a list of [high, low] stage pairs, got {loss.cs_pairs}")
    if config.data.crop_size is None and list(config.data.scale_range) != [1.0, 1.0] and config.data.batch_size > 1:
        raise ConfigError(
            f"data.scale_range={config.data.scale_range} makes images of different sizes; set data.crop_size "
            "(e.g. [176, 240]) so a batch can be stacked, or data.scale_range=[1.0, 1.0]"
        )
    for key in ("mean", "std"):
        values = getattr(config.data, key)
        if len(values) != 3:
            raise ConfigError(f"data.{key} needs one value per RGB channel (3), got {values}")
    if min(config.data.std) <= 0:
        raise ConfigError(f"data.std must be positive, got {config.data.std}")
    if config.optim.name not in ("sgd", "adamw"):
        raise ConfigError(f"optim.name must be 'sgd' or 'adamw', got '{config.optim.name}'")
    if config.train.steps < 1:
        raise ConfigError(f"train.steps must be >= 1, got {config.train.steps}")
    for key in ("val_every", "log_every", "checkpoint_every"):
        if getattr(config.train, key) < 1:
            raise ConfigError(f"train.{key} must be >= 1, got {getattr(config.train, key)}")


def save_config(config: Config) -> str:
    """The YAML text of a config (re-loadable with ``load_config``)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
