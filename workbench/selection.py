"""Which runs to show and how to name them (docs/workbench.md, "Views": run A, typically a cross-entropy baseline,
next to run B, typically a contrastive run of the same model).

Works on the table of :func:`workbench.runs.list_runs` and on loaded runs: the default A/B pair, a unique label per
run (its path below the runs folder, loss preset, mIoU in percent and the config values that set it apart), and
what several runs have in common (prediction images, dense feature maps, embedding kinds).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from runformat import layout
from workbench.runs import EMBEDDING_KINDS, Run, RunFormatError, load_run, parse_time

__all__ = [
    "CONTRASTIVE_PRESETS",
    "IGNORED_CONFIG_KEYS",
    "MAX_LABEL_DIFFERENCES",
    "newest_first",
    "default_pair",
    "flatten_config",
    "config_differences",
    "run_label",
    "run_labels",
    "short_labels",
    "shared_prediction_ids",
    "shared_dense_ids",
    "embedding_kinds",
    "default_embedding_kind",
]

CONTRASTIVE_PRESETS = ("ms+cs", "ms")
"""Loss presets with a contrastive term (docs/method.md §4); ``ce`` is the baseline."""

IGNORED_CONFIG_KEYS = ("name", "output_dir", "data.root", "data.num_workers", "loss.preset", "train.device",
                       "train.progress", "train.log_every", "train.log_all_ranks", "train.checkpoint_every", "export.")
"""Config keys (a trailing dot: a whole section) that do not set runs apart in a label: bookkeeping, where the
data lives, and the loss preset (already part of the label)."""

MAX_LABEL_DIFFERENCES = 3
"""Config differences written into a run label at most (the rest are left out)."""


def _time(value: Any) -> pd.Timestamp:
    """A run.json time of the runs table as a UTC timestamp; NaT when absent or not a time."""
    try:
        return pd.Timestamp(parse_time(str(value))) if isinstance(value, str) and value else pd.NaT
    except RunFormatError:
        return pd.NaT


def newest_first(table: pd.DataFrame) -> pd.DataFrame:
    """The runs table ordered newest first by run.json ``created`` (``updated`` when ``created`` is absent); runs
    without either come last, in table order."""
    created = table.get("created", pd.Series("", index=table.index)).map(_time)
    updated = table.get("updated", pd.Series("", index=table.index)).map(_time)
    when = created.where(created.notna(), updated)
    order = pd.DataFrame({"when": when, "position": range(len(table))}, index=table.index)
    order = order.sort_values(["when", "position"], ascending=[False, True], na_position="last", kind="stable")
    return table.loc[order.index]


def _incomplete(table: pd.DataFrame) -> pd.Series:
    """Runs that are not finished, or have no exported embeddings (embeddings/meta.json; e.g. results committed
    without them), so some views would stay empty."""
    exported = table["path"].map(lambda path: (Path(str(path)) / layout.EMBEDDING_META).is_file())
    return (table["status"] != "finished") | ~exported


def default_pair(table: pd.DataFrame) -> tuple[str | None, str | None]:
    """Paths of the runs compared when the app opens (``list_runs`` output; None where there is none).

    A is the newest cross-entropy run (else the newest run); B the newest contrastive run
    (:data:`CONTRASTIVE_PRESETS`), preferring one of A's dataset and model; without a contrastive run, the newest
    other run. "Newest" is by :func:`newest_first`, and among runs of equal preference finished runs with exported
    embeddings come before the others, so that every view has something to show.
    """
    if table.empty:
        return None, None
    ordered = newest_first(table)
    ordered = ordered.assign(_incomplete=_incomplete(ordered))
    baselines = ordered[ordered["loss_preset"] == "ce"]
    first_a = (baselines if not baselines.empty else ordered).sort_values("_incomplete", kind="stable").iloc[0]
    others = ordered[ordered["path"] != first_a["path"]]
    if others.empty:
        return str(first_a["path"]), None
    ranked = others.assign(
        _not_contrastive=~others["loss_preset"].isin(CONTRASTIVE_PRESETS),
        _other_setup=(others["dataset"] != first_a["dataset"]) | (others["model"] != first_a["model"]),
    ).sort_values(["_not_contrastive", "_other_setup", "_incomplete"], kind="stable")
    return str(first_a["path"]), str(ranked.iloc[0]["path"])


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"loss": {"temperature": 0.1}}`` as ``{"loss.temperature": 0.1}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _ignored(key: str) -> bool:
    return any(key.startswith(ignored) if ignored.endswith(".") else key == ignored for ignored in IGNORED_CONFIG_KEYS)


def config_differences(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per run (keyed as ``configs``), the config values that set it apart from the others.

    A key counts when every run's config has it (a key only newer configs write says nothing about the run), it is
    not in :data:`IGNORED_CONFIG_KEYS` and its value differs between runs; a run lists the keys where its value is
    not the most common one (ties: the value of the first run). Keys keep the config's order.
    """
    flat = {run: flatten_config(config) for run, config in configs.items()}
    filled = [keys for keys in flat.values() if keys]
    if len(filled) < 2:
        return {run: {} for run in configs}
    shared = [key for key in filled[0] if all(key in keys for keys in filled) and not _ignored(key)]
    differences: dict[str, dict[str, Any]] = {run: {} for run in configs}
    for key in shared:
        values = [json.dumps(keys[key], sort_keys=True, default=str) for keys in filled]
        if len(set(values)) < 2:
            continue
        usual = Counter(values).most_common(1)[0][0]
        for run, keys in flat.items():
            if keys and json.dumps(keys[key], sort_keys=True, default=str) != usual:
                differences[run][key] = keys[key]
    return differences


def _config_of(path: str) -> dict:
    """The run's config.yaml, or {} when the run has none or it cannot be read (captured runs, broken files)."""
    try:
        return load_run(path).config
    except (RunFormatError, OSError):
        return {}


def _relative_path(path: str, root: str | Path | None) -> str:
    if root is None:
        return Path(path).name
    try:
        relative = Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return str(path)
    return relative.as_posix() if relative.parts else Path(path).name


def run_label(row: Mapping[str, Any], root: str | Path | None = None,
              differences: Mapping[str, Any] | None = None) -> str:
    """``relative/path · loss · mIoU 55.3 % · key value, ...`` for one row of the runs table: the run's path below
    ``root``, its loss preset, its final mIoU in percent (docs/workbench.md, "Numbers": mIoU is shown in percent;
    left out before the first validation) and up to :data:`MAX_LABEL_DIFFERENCES` config differences."""
    parts = [_relative_path(str(row["path"]), root), str(row["loss_preset"])]
    miou = row.get("miou")
    if miou is not None and pd.notna(miou):
        parts.append(f"mIoU {100 * float(miou):.1f} %")
    shown = list((differences or {}).items())[:MAX_LABEL_DIFFERENCES]
    if shown:
        parts.append(", ".join(f"{key.rsplit('.', 1)[-1]} {_format_value(value)}" for key, value in shown))
    return " · ".join(parts)


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_value(item) for item in value) + "]"
    return "none" if value is None else str(value)


def run_labels(table: pd.DataFrame, root: str | Path | None = None) -> dict[str, str]:
    """A label per run of the runs table (``list_runs`` output), keyed by path; different runs never share a label
    (each names its path below ``root``), see :func:`run_label` and :func:`config_differences`."""
    paths = [str(path) for path in table["path"]]
    differences = config_differences({path: _config_of(path) for path in paths})
    return {path: run_label(row, root, differences[path]) for path, (_, row) in zip(paths, table.iterrows())}


def short_labels(runs: Sequence[Run], root: str | Path | None = None) -> list[str]:
    """Headings for runs shown side by side: their names; where names clash, their paths below ``root``; the same
    run twice as ``A: …`` and ``B: …``."""
    names = [run.name for run in runs]
    if len(set(names)) == len(names):
        return names
    paths = [_relative_path(str(run.path), root) for run in runs]
    if len(set(paths)) == len(paths):
        return paths
    return [f"{chr(ord('A') + number)}: {path}" for number, path in enumerate(paths)]


def _in_common(id_lists: Iterable[list[str]]) -> list[str]:
    lists = list(id_lists)
    if not lists:
        return []
    common_ids = set.intersection(*(set(ids) for ids in lists))
    return [image_id for image_id in lists[0] if image_id in common_ids]


def shared_prediction_ids(runs: Sequence[Run]) -> list[str]:
    """Prediction image ids (predictions/index.csv) saved by every run, in the first run's order."""
    return _in_common(run.prediction_ids() for run in runs)


def shared_dense_ids(runs: Sequence[Run]) -> list[str]:
    """Image ids with dense feature maps (embeddings/dense/) in every run, in the first run's order."""
    return _in_common(run.dense_ids() for run in runs)


def embedding_kinds(runs: Sequence[Run]) -> list[str]:
    """Embedding kinds any of the runs has, ``backbone`` first."""
    found = {kind for run in runs for kind in run.embedding_kinds()}
    return [kind for kind in EMBEDDING_KINDS if kind in found]


def default_embedding_kind(runs: Sequence[Run]) -> str:
    """``projected`` when every run has projectors (where the contrastive loss acts, docs/method.md §2), else
    ``backbone`` (the kind every run has, so the runs stay comparable)."""
    return "projected" if runs and all("projected" in run.embedding_kinds() for run in runs) else "backbone"
