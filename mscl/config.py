"""Training configuration: typed pydantic models, YAML files, command-line overrides and presets.

The loss settings follow ``docs/method.md`` (Pissas et al., ECCV 2022): ``ce`` is cross-entropy alone,
``ms`` adds the multi-scale loss (§2) and ``ms+cs`` adds both (§3), each as ``CE + 0.1 * contrastive`` (§4).

Where a value comes from, lowest to highest precedence: the model defaults below < the config file (a
shipped preset in ``mscl/configs``, any YAML file, or a run's ``config.yaml`` on resume) < ``--set KEY=VALUE``
< the dedicated ``mscl train`` flags (``--steps``, ``--batch-size``, ...). A key given twice on the command
line (two ``--set``, or a ``--set`` and a flag) is an error, as is an unknown key, a value of the wrong type
(a boolean where a number is expected included) or a value out of its range; every error is one line that
names the key, the value and where it was given.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from mscl.data import available_datasets
from mscl.data.constants import IMAGENET_MEAN, IMAGENET_STD
from runformat.names import RUN_NAME_RULE, is_run_name

LossPreset = Literal["ce", "ms", "ms+cs"]
LOSS_PRESETS: tuple[str, ...] = get_args(LossPreset)
CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A config file or override names an unknown key, or holds a value of the wrong type or out of range."""


def _refuse_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise PydanticCustomError("bool_for_number", "expects a number, not true/false")
    return value


def _pair(what: str) -> BeforeValidator:
    def check(value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise PydanticCustomError("pair", "expects a {what} pair", {"what": what})
        return list(value)

    return BeforeValidator(check)


def _ordered(value: list[float]) -> list[float]:
    if value[0] > value[1]:
        raise PydanticCustomError("unordered", "needs [min, max] with min <= max")
    return value


# Integers and floats refuse true/false (YAML and --set read `true` as a boolean); floats take numeric
# text such as "1e-3", which PyYAML reads as a string. Ranges are attached per key below.
Int = Annotated[int, BeforeValidator(_refuse_bool)]
Float = Annotated[float, BeforeValidator(_refuse_bool)]
PositiveInt = Annotated[Int, Field(ge=1)]
NonNegativeInt = Annotated[Int, Field(ge=0)]
PositiveFloat = Annotated[Float, Field(gt=0)]
NonNegativeFloat = Annotated[Float, Field(ge=0)]
HeightWidth = Annotated[list[PositiveInt], _pair("[height, width]")]
ScaleRange = Annotated[list[PositiveFloat], _pair("[min, max]"), AfterValidator(_ordered)]
StagePair = Annotated[list[Int], _pair("[high, low] stage")]

_SCALE, _SIZE = "scale factor", "[height, width]"


def _resize_kind(value: Any) -> str | None:
    if isinstance(value, (list, tuple)):
        return _SIZE
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return _SCALE
    return None


Resize = Annotated[
    Union[Annotated[PositiveFloat, Tag(_SCALE)], Annotated[HeightWidth, Tag(_SIZE)]],
    Discriminator(
        _resize_kind, custom_error_type="resize", custom_error_message="expects a scale factor (e.g. 0.5) or a [height, width] size"
    ),
]


def _rule(message: str, *keys: str) -> PydanticCustomError:
    """A rule across keys; ``keys`` are the dotted keys it involves (to name where they were given)."""
    return PydanticCustomError("config_rule", "{message}", {"message": message, "keys": ",".join(keys)})


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False, coerce_numbers_to_str=True)


class DataConfig(_Section):
    """Which dataset to read and how to augment it (labels are always resampled nearest, docs/method.md "Idea")."""

    name: str = Field("camvid", description="dataset format: " + ", ".join(available_datasets()))
    root: str = Field("../shared/datasets/camvid", description="dataset root folder")
    train_split: str = "train"
    val_split: str = "val"
    resize: Resize | None = Field(0.5, description="scale factor (e.g. 0.5) or [height, width], applied in training and evaluation")
    crop_size: HeightWidth | None = Field(None, description="[height, width] of the random training crop")
    scale_range: ScaleRange = Field(default_factory=lambda: [1.0, 1.0], description="[min, max] random rescale in training")
    hflip: StrictBool = True
    color_jitter: NonNegativeFloat = 0.2
    mean: list[Float] = Field(default_factory=lambda: list(IMAGENET_MEAN), description="per-channel RGB mean")
    std: list[Float] = Field(default_factory=lambda: list(IMAGENET_STD), description="per-channel RGB standard deviation")
    batch_size: PositiveInt = Field(8, description="training batch size per process")
    val_batch_size: PositiveInt = 4
    num_workers: NonNegativeInt = 2
    max_train_images: PositiveInt | None = None
    max_val_images: PositiveInt | None = None
    unknown_labels: Literal["error", "ignore"] = Field(
        "error", description="a label value outside the dataset's classes: stop with an error, or train with it ignored"
    )

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value not in available_datasets():
            raise PydanticCustomError("choice", "must be one of {choices}", {"choices": ", ".join(available_datasets())})
        return value

    @model_validator(mode="after")
    def _stackable_and_normalised(self) -> DataConfig:
        if self.crop_size is None and self.scale_range != [1.0, 1.0] and self.batch_size > 1:
            raise _rule(
                f"data.scale_range={self.scale_range} makes images of different sizes; set data.crop_size "
                "(e.g. [176, 240]) so a batch can be stacked, or data.scale_range=[1.0, 1.0]",
                "data.scale_range",
                "data.crop_size",
            )
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) != 3:
                raise _rule(f"data.{key} needs one value per RGB channel (3), got {values}", f"data.{key}")
        if min(self.std) <= 0:
            raise _rule(f"data.std must be positive, got {self.std}", "data.std")
        return self


class ModelConfig(_Section):
    """Segmentation model (see ``mscl.models.available_models``); ``pretrained`` is a local file."""

    name: str = Field("deeplabv3", description="tiny, deeplabv3, upernet, hrnet or ocrnet")
    encoder: str | None = Field(None, description="timm encoder name, e.g. resnet18, convnext_tiny, hrnet_w18_small")
    pretrained: str | None = Field(None, description="local encoder weights (.safetensors or torch file)")
    kwargs: dict[str, Any] = Field(default_factory=dict)


class LossConfig(_Section):
    """Loss settings; the defaults are the paper's public configuration (docs/method.md §1-§4)."""

    preset: LossPreset = Field("ms+cs", description="ce, ms or ms+cs: CE + contrastive_weight x (ms + cs) (docs/method.md §4)")
    contrastive_weight: NonNegativeFloat = Field(0.1, description="weight of the contrastive terms (docs/method.md §4)")
    temperature: PositiveFloat = Field(0.1, description="InfoNCE temperature tau (docs/method.md §2)")
    ms_weights: list[NonNegativeFloat] = Field(
        default_factory=lambda: [1.0, 0.7, 0.4, 0.1], min_length=1, description="per-stage multi-scale weights (docs/method.md §2)"
    )
    cs_pairs: list[StagePair] = Field(
        default_factory=lambda: [[0, -1], [0, -2]], description="[high, low] stage pairs of the cross-scale loss (docs/method.md §3)"
    )
    cs_weights: list[NonNegativeFloat] = Field(default_factory=lambda: [1.0, 1.0], description="one weight per cs pair (docs/method.md §3)")
    min_views_per_class: PositiveInt = Field(5, description="sampler: fewer labelled pixels drop the pair (docs/method.md §1)")
    max_views_per_class: PositiveInt = Field(2500, description="sampler: views per image-class pair at most (docs/method.md §1)")
    max_features_total: PositiveInt = Field(10000, description="sampler: sampled pixels per stage at most (docs/method.md §1)")
    projector_dim: PositiveInt = Field(256, description="projector output channels d (docs/method.md \"Idea\")")
    cs_detach_deepest: StrictBool = False
    same_positions: StrictBool = False
    aux_weight: NonNegativeFloat = 0.4

    @model_validator(mode="after")
    def _one_weight_per_pair(self) -> LossConfig:
        if len(self.cs_pairs) != len(self.cs_weights):
            raise _rule(
                f"loss.cs_pairs has {len(self.cs_pairs)} pairs but loss.cs_weights has {len(self.cs_weights)} weights",
                "loss.cs_pairs",
                "loss.cs_weights",
            )
        return self


class OptimConfig(_Section):
    """Optimiser with polynomial learning-rate decay ``lr * (1 - step/steps) ** poly_power``."""

    name: Literal["sgd", "adamw"] = "sgd"
    lr: PositiveFloat = Field(0.01, description="base learning rate")
    momentum: NonNegativeFloat = 0.9
    weight_decay: NonNegativeFloat = 1e-4
    poly_power: NonNegativeFloat = 0.9
    warmup_steps: NonNegativeInt = 0


class TrainConfig(_Section):
    """Loop settings; ``steps`` counts optimiser steps (iterations), as the paper's schedules do."""

    steps: PositiveInt = Field(2000, description="optimiser steps")
    val_every: PositiveInt = 500
    log_every: PositiveInt = 10
    checkpoint_every: PositiveInt = 100
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1 ...")
    amp: StrictBool = False
    sync_bn: StrictBool = False
    log_all_ranks: StrictBool = False
    progress: StrictBool = True
    tensorboard: StrictBool = Field(False, description="also write the logged scalars to RUN/tensorboard/ (tensorboard --logdir)")

    @field_validator("device")
    @classmethod
    def _torch_device(cls, value: str) -> str:
        if value != "auto":
            import torch

            try:
                torch.device(value)
            except RuntimeError:
                raise PydanticCustomError("device", "expects auto or a torch device such as cpu, cuda, cuda:1") from None
        return value


class ExportConfig(_Section):
    """What the run keeps for the workbench: embeddings sample, predictions, dense maps (docs/workbench.md)."""

    num_pixels: PositiveInt = 4000
    num_prediction_images: NonNegativeInt | None = Field(
        None, description="evaluated images whose predictions predictions/ keeps, evenly spaced; null = every one "
                          "(the IoU page can open any image it ranks)")
    num_dense_images: NonNegativeInt = 3
    project: StrictBool = True
    snapshots: StrictBool = Field(True, description="keep an embedding snapshot of fixed val pixels at every validation "
                                                    "(snapshots/, docs/run-format.md)")


class Config(_Section):
    """A complete, resolved training configuration; written to ``RUN/config.yaml``."""

    name: str = Field("run", description="run name (folder under --out)")
    output_dir: str = Field("runs", min_length=1, description="parent folder of run directories")
    seed: NonNegativeInt = Field(0, description="seed of data order, augmentation, sampler and initialisation")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        if not is_run_name(value):
            raise PydanticCustomError("folder_name", RUN_NAME_RULE)
        return value

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON types (lists, not tuples), as written to ``config.yaml``."""
        return self.model_dump(mode="json")


def resolve_config_path(name: str | None) -> Path | None:
    """A config file path, or the name of a shipped preset in ``mscl/configs`` (without ``.yaml``)."""
    if name is None:
        return None
    path = Path(name)
    if path.is_file():
        return path
    preset = CONFIG_DIR / f"{name}.yaml"
    if preset.is_file():
        return preset
    shipped = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config '{name}' is neither a file nor a shipped preset; presets: {shipped}")


_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``section.key=value`` (the value read as YAML) into (``"section.key"``, value)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not _KEY.fullmatch(key):
        raise ConfigError(f"--set {text}: must look like section.key=value, e.g. --set loss.temperature=0.2")
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {text}: the value is not valid YAML ({_one_line(err)})") from None


def _field(key: str) -> FieldInfo:
    """The model field of a dotted key (``data.batch_size``); ConfigError listing the valid keys if unknown."""
    model: type[BaseModel] = Config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            raise ConfigError(f"unknown config key '{key}'; valid keys here: {sorted(fields)}")
        info = fields[part]
        if depth < len(parts) - 1:
            if not _is_section(info.annotation):
                raise ConfigError(f"config key '{'.'.join(parts[: depth + 1])}' is not a section; '{key}' does not exist")
            model = info.annotation
    return info


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def cli_option(key: str) -> dict[str, Any]:
    """argparse keyword arguments (type, choices, help) of a flag that sets config ``key``, from its field."""
    info = _field(key)
    args = [a for a in get_args(info.annotation) if a is not type(None)] if get_origin(info.annotation) in (Union, UnionType) else []
    kind = args[0] if len(args) == 1 else info.annotation
    if get_origin(kind) is Literal:
        return {"choices": get_args(kind), "help": f"{info.description} (config key {key})"}
    if kind not in (int, float, str):
        raise ConfigError(f"config key '{key}' has no single type for a command-line flag; use --set {key}=VALUE")
    return {"type": kind, "help": f"{info.description or key} (config key {key})"}


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {_one_line(err)}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return values


def _assign(values: dict[str, Any], parts: list[str], value: Any, model: type[BaseModel] | None) -> None:
    """Set ``values[parts...] = value``; a mapping given for a whole section is merged into it key by key."""
    head, rest = parts[0], parts[1:]
    info = model.model_fields.get(head) if model is not None else None
    section = info.annotation if info is not None and _is_section(info.annotation) else None
    if rest:
        if not isinstance(values.get(head), dict):
            values[head] = {}
        _assign(values[head], rest, value, section)
    elif section is not None and isinstance(value, dict) and isinstance(values.get(head), dict):
        for key, item in value.items():
            _assign(values[head], [str(key)], item, section)
    else:
        values[head] = value


def _overlap(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _leaf_keys(key: str, value: Any) -> list[str]:
    """The keys a command-line value sets: a mapping given for a section sets each of its keys."""
    model: Any = Config
    for part in key.split("."):
        info = model.model_fields.get(part) if _is_section(model) else None
        model = info.annotation if info is not None else None
    if _is_section(model) and isinstance(value, dict):
        return [leaf for item, sub in value.items() for leaf in _leaf_keys(f"{key}.{item}", sub)]
    return [key]


def _refuse_conflicts(given: list[tuple[str, Any, str]]) -> None:
    seen: list[tuple[str, str]] = []
    for key, value, origin in given:
        for leaf in _leaf_keys(key, value):
            for other, other_origin in seen:
                if _overlap(leaf, other):
                    raise ConfigError(
                        f"{max(leaf, other, key=len)} is given twice on the command line, by {other_origin} and by {origin}; keep one"
                    )
        seen += [(leaf, origin) for leaf in _leaf_keys(key, value)]


def _loc_key(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if part in (_SCALE, _SIZE):
            continue
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _valid_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        model = model.model_fields[part].annotation
    return sorted(model.model_fields)


def _problem(error: Mapping[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "extra_forbidden":
        valid = _valid_keys(error["loc"])
        close = difflib.get_close_matches(str(error["loc"][-1]), valid, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        section = _loc_key(error["loc"][:-1]) or "the top level"
        return f"unknown key{hint}; valid keys in {section}: {valid}"
    return {
        "greater_than_equal": f"must be >= {ctx.get('ge')}",
        "greater_than": f"must be > {ctx.get('gt')}",
        "less_than_equal": f"must be <= {ctx.get('le')}",
        "less_than": f"must be < {ctx.get('lt')}",
        "int_parsing": "expects a whole number",
        "int_type": "expects a whole number",
        "int_from_float": "expects a whole number",
        "float_parsing": "expects a number",
        "float_type": "expects a number",
        "finite_number": "must be a finite number",
        "bool_type": "expects true or false",
        "bool_parsing": "expects true or false",
        "string_type": "expects text",
        "list_type": "expects a list",
        "dict_type": "expects a mapping",
        "model_type": "is a section and needs a mapping",
        "model_attributes_type": "is a section and needs a mapping",
        "literal_error": f"must be one of {ctx.get('expected')}",
        "too_short": f"needs at least {ctx.get('min_length')} value(s)",
        "string_too_short": "must not be empty",
    }.get(kind, error["msg"])


def _explain(err: ValidationError, path: Path | None, given: list[tuple[str, Any, str]]) -> str:
    """One line per problem (joined by '; '): key, problem, value, and where the value was given."""
    lines = []
    for error in err.errors(include_url=False):
        if error["type"] == "config_rule":
            keys = error["ctx"]["keys"].split(",")
            text = error["ctx"]["message"]
        else:
            key = _loc_key(error["loc"])
            keys = [_loc_key(tuple(part for part in error["loc"] if isinstance(part, str)))]
            text = f"{key}: {_problem(error)}"
            if error["type"] != "extra_forbidden":
                text += f", got {error['input']!r}"
        origins = [(origin, given_key) for given_key, _, origin in given if any(_overlap(given_key, k) for k in keys)]
        if origins:
            flags = [origin.split()[0] for origin, _ in origins if not origin.startswith("--set")]
            fix = f"; set {' or '.join(flags + [k for _, k in origins])}" if flags else ""
            text += f" (given by {', '.join(origin for origin, _ in origins)}{fix})"
        elif path is not None:
            text = f"{path}: {text}"
        lines.append(text)
    return "; ".join(lines)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    flags: Mapping[str, tuple[str, Any]] | None = None,
) -> Config:
    """Build a Config from defaults < a YAML file < ``key=value`` overrides (``--set``) < ``flags``.

    ``flags`` maps a dotted key to the dedicated command-line flag that gave it and its value, e.g.
    ``{"data.batch_size": ("--batch-size", 4)}``; it only names the flag in errors. A key given by two
    overrides, or by an override and a flag, is refused (ConfigError naming both).
    """
    path = Path(path) if path is not None else None
    values = _read_config_file(path) if path is not None else {}
    given = [(*parse_override(text), f"--set {text}") for text in overrides or []]
    given += [(key, value, f"{flag} {value}") for key, (flag, value) in (flags or {}).items()]
    _refuse_conflicts(given)
    for key, value, _ in given:
        _assign(values, key.split("."), value, Config)
    try:
        return Config.model_validate(values)
    except ValidationError as err:
        raise ConfigError(_explain(err, path, given)) from None


def save_config(config: Config) -> str:
    """The YAML text of a config (re-loadable with ``load_config`` into an equal Config)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
