"""Read stage features and logits out of any segmentation model with forward hooks.

Like torchvision's ``create_feature_extractor``, a stage is named by the dotted path of a module
(``model.get_submodule(name)``); its output in the forward pass is the stage's feature map. Hooks
are attached only for the duration of one forward pass, so the wrapped model is left untouched.
:class:`TappedModel` presents any model through mscl's :class:`~mscl.models.base.SegOutput` interface
(logits + per-stage features, finest first, ``docs/architecture.md``), which is what the export of
the workbench artifacts reads (``mscl.export``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mscl.models.base import SegOutput, resize_to

LIST_MODULES_HINT = "see the candidates with `mscl capture --list-modules`"


class CaptureError(ValueError):
    """A capture setting does not fit the model or the data; the message names the option and the fix."""

    def __init__(self, option: str, message: str) -> None:
        self.option = option
        super().__init__(f"{option}: {message}")


def describe(value: Any) -> str:
    """A short description of a module output for error messages (shape of tensors, type otherwise)."""
    if isinstance(value, Tensor):
        return f"a {value.ndim}-D tensor of shape {list(value.shape)}"
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {list(value)[:6]}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items ({', '.join(describe(v) for v in value[:3])})"
    return f"a {type(value).__name__}"


def resolve_stages(model: nn.Module, stages: Sequence[str]) -> list[nn.Module]:
    """The modules named by ``stages`` (dotted paths); unknown names raise with the closest matches."""
    names = [name for name, _ in model.named_modules() if name]
    if not stages:
        raise CaptureError("--stages", f"name at least one module of the model, finest first ({LIST_MODULES_HINT})")
    duplicates = sorted({name for name in stages if list(stages).count(name) > 1})
    if duplicates:
        raise CaptureError("--stages", f"{duplicates} named more than once; each stage is a different module")
    known = set(names)
    modules = []
    for name in stages:
        if name not in known:
            close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
            suggestion = f"close matches: {', '.join(close)}" if close else "no module name is close"
            raise CaptureError("--stages", f"the model has no module {name!r}; {suggestion} ({LIST_MODULES_HINT})")
        modules.append(model.get_submodule(name))
    return modules


def extract_logits(output: Any) -> Tensor:
    """The logits in a model output: a tensor, a mapping's ``"out"`` entry (torchvision segmentation
    models) or the ``.logits`` attribute (mscl ``SegOutput``, Hugging Face outputs); [N, K, h, w]."""
    if isinstance(output, Tensor):
        logits = output
    elif isinstance(output, Mapping) and "out" in output:
        logits = output["out"]
    elif hasattr(output, "logits"):
        logits = output.logits
    else:
        raise CaptureError(
            "--factory",
            f"the model returns {describe(output)}; capture reads logits from a tensor [N, K, h, w], a dict with "
            "key 'out' or an object with a .logits attribute (wrap the model so forward returns one of them)",
        )
    if not isinstance(logits, Tensor) or logits.ndim != 4:
        raise CaptureError("--factory", f"the model's logits are {describe(logits)}; expected a 4-D tensor [N, K, h, w]")
    return logits


def stride_of(input_size: int, output_size: int) -> int:
    """The stride of a map of ``output_size`` cells over ``input_size`` pixels along one axis: the smallest
    integer ``s`` with ``ceil(H / s) == h`` (padded strided layers, e.g. 360 px -> 23 cells at stride 16),
    else with ``floor(H / s) == h``, else ``round(H / h)``."""
    for rounding in (lambda s: -(-input_size // s), lambda s: input_size // s):
        for stride in range(max(1, input_size // output_size - 1), input_size // output_size + 2):
            if rounding(stride) == output_size:
                return stride
    return max(1, round(input_size / output_size))


class TappedModel(nn.Module):
    """``model`` seen as an mscl segmentation model: ``forward(x) -> SegOutput(logits, features)``.

    ``features`` are the outputs of the ``stages`` modules (each must be one 4-D map [N, C, h, w],
    strides non-decreasing: finest first, as the stages of method.md §2); ``logits`` are the model's
    logits resized bilinearly (align_corners=False) to ``output_size`` when set (the label size of the
    batch, see :func:`mscl.capture.capture_run`), else to the input size. ``stage_shapes`` holds the
    ``(C, h, w)`` of each stage and ``input_size`` the ``(H, W)`` of the latest forward pass.
    """

    def __init__(self, model: nn.Module, stages: Sequence[str], num_classes: int) -> None:
        super().__init__()
        self.model = model
        self.stage_names = list(stages)
        self.num_classes = num_classes
        self.stage_modules = resolve_stages(model, self.stage_names)
        self.output_size: tuple[int, int] | None = None
        self.stage_shapes: list[tuple[int, int, int]] = []
        self.input_size: tuple[int, int] | None = None

    @contextmanager
    def _tapped(self) -> Iterator[dict[str, list[Any]]]:
        seen: dict[str, list[Any]] = {name: [] for name in self.stage_names}
        handles = [
            module.register_forward_hook(lambda _module, _inputs, output, name=name: seen[name].append(output))
            for name, module in zip(self.stage_names, self.stage_modules)
        ]
        try:
            yield seen
        finally:
            for handle in handles:
                handle.remove()

    def _stage_features(self, seen: dict[str, list[Any]], batch: int, input_size: tuple[int, int]) -> list[Tensor]:
        features = []
        for name in self.stage_names:
            outputs = seen[name]
            if not outputs:
                raise CaptureError("--stages", f"module {name!r} did not run in the forward pass; pick a module the model uses ({LIST_MODULES_HINT})")
            if len(outputs) > 1:
                raise CaptureError("--stages", f"module {name!r} ran {len(outputs)} times in one forward pass; pick a module that runs once")
            feature = outputs[0]
            if not isinstance(feature, Tensor) or feature.ndim != 4 or feature.shape[0] != batch:
                raise CaptureError(
                    "--stages",
                    f"module {name!r} outputs {describe(feature)}; a stage must output one 4-D feature map "
                    f"[N={batch}, C, h, w] ({LIST_MODULES_HINT})",
                )
            features.append(feature.detach())
        strides = [stride_of(input_size[0], f.shape[-2]) for f in features]
        for (name_a, stride_a), (name_b, stride_b) in zip(zip(self.stage_names, strides), zip(self.stage_names[1:], strides[1:])):
            if stride_b < stride_a:
                raise CaptureError(
                    "--stages",
                    f"stages go finest first, but {name_b!r} (stride {stride_b}) comes after "
                    f"{name_a!r} (stride {stride_a}); reorder them",
                )
        return features

    def forward(self, images: Tensor) -> SegOutput:
        """Run the model once; return its logits (resized) and the tapped stage features."""
        input_size = (int(images.shape[-2]), int(images.shape[-1]))
        with self._tapped() as seen:
            output = self.model(images)
        logits = extract_logits(output)
        if logits.shape[1] != self.num_classes:
            raise CaptureError(
                "--factory",
                f"the model outputs {logits.shape[1]} classes but the dataset has {self.num_classes}; build the model "
                f"with {self.num_classes} classes (e.g. --kwargs '{{\"num_classes\": {self.num_classes}}}')",
            )
        features = self._stage_features(seen, images.shape[0], input_size)
        self.input_size = input_size
        self.stage_shapes = [(int(f.shape[1]), int(f.shape[2]), int(f.shape[3])) for f in features]
        return SegOutput(logits=resize_to(logits.float(), self.output_size or input_size), features=features)


@dataclass(frozen=True)
class ModuleOutput:
    """One module whose output is a 4-D feature map: a candidate stage for ``--stages``."""

    name: str
    type: str
    channels: int
    height: int
    width: int
    stride: int


@torch.no_grad()
def list_modules(model: nn.Module, images: Tensor) -> list[ModuleOutput]:
    """Every named module that outputs one 4-D tensor for ``images`` [N, 3, H, W], in forward order,
    with its output channels, size and stride (``H / h``); the first call counts for reused modules."""
    found: dict[str, ModuleOutput] = {}

    def record(name: str, module: nn.Module, output: Any) -> None:
        if name not in found and isinstance(output, Tensor) and output.ndim == 4:
            _, channels, height, width = (int(v) for v in output.shape)
            found[name] = ModuleOutput(name, type(module).__name__, channels, height, width,
                                       stride_of(int(images.shape[-2]), height))

    handles = [
        module.register_forward_hook(lambda m, _inputs, output, name=name: record(name, m, output))
        for name, module in model.named_modules()
        if name
    ]
    model.eval()
    try:
        model(images)
    finally:
        for handle in handles:
            handle.remove()
    return list(found.values())


def format_module_table(rows: Sequence[ModuleOutput], input_size: tuple[int, int]) -> str:
    """The ``--list-modules`` table: name, type, output C x h x w and stride, one module per line."""
    header = ("module", "type", "output (C x h x w)", "stride")
    lines = [(row.name, row.type, f"{row.channels} x {row.height} x {row.width}", str(row.stride)) for row in rows]
    widths = [max(len(str(item[i])) for item in [header, *lines]) for i in range(3)]
    text = [f"input {input_size[0]} x {input_size[1]}; modules with a 4-D output (pick stages finest first):"]
    text += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in [header, *lines]]
    return "\n".join(text)
