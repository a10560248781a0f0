"""Multi-seed statistics of a study: the runs of a folder grouped into arms x seeds, two arms compared.

An *arm* is the value of one setting shared by several runs (``by``: ``loss_preset`` from run.json, or any
dotted config.yaml key such as ``loss.temperature``); the runs of an arm differ only by ``seed``. Two arms
are compared **paired by seed** (the same seed gives the same data order and augmentation in every arm,
docs/results/camvid.md), the way docs/workbench.md view 5 compares two runs, but over seeds:

- per seed s the difference d_s = m_B(s) − m_A(s) of a metric m (mIoU, pixel accuracy, the IoU of each class);
- ``diff`` = mean of d_s over the n paired seeds; the 95 % interval is the Student-t interval
  ``diff ± t_{0.975, n−1} · sd(d) / √n`` (sd with n − 1 degrees of freedom) and ``p_value`` the two-sided
  paired t-test of mean d = 0 (``scipy.stats.ttest_rel``);
- values are in the units the run files store: **fractions in [0, 1]** (summary.json ``miou`` and
  ``pixel_acc``, per_class.csv ``iou``, docs/run-format.md); ``effect_sentence`` shows them as points (x 100).

Per-class IoU is NaN in a run where the class is absent from both ground truth and prediction; such seeds are
left out of that class's pairs, so ``n_pairs`` can differ between rows. Runs without a partner seed, runs that
are not finished and runs without an evaluation of the split are reported in ``DataFrame.attrs`` and in the
sentence, never silently dropped; two runs of the same arm and seed are an error naming both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from workbench.runs import Run, list_runs, load_run

__all__ = [
    "CONFIDENCE",
    "COMPARE_COLUMNS",
    "MIOU",
    "PIXEL_ACC",
    "StudyError",
    "arm_label",
    "class_metric",
    "compare_arms",
    "config_value",
    "effect_sentence",
    "paired_statistics",
    "per_image_differences",
    "per_image_summary",
    "seed_spread",
    "seed_values",
    "study_table",
]

CONFIDENCE = 0.95
MIOU = "mIoU"
PIXEL_ACC = "pixel accuracy"
COMPARE_COLUMNS = ("metric", "n_pairs", "mean_a", "mean_b", "diff", "ci_low", "ci_high", "p_value")
STUDY_COLUMNS = ("path", "name", "status", "arm", "seed", "split", "checkpoint", "folder", "miou", "pixel_acc",
                 "num_images")
PER_IMAGE_COLUMNS = ("seed", "image_id", "miou_a", "miou_b", "diff")
SPREAD_COLUMNS = ("arm", "metric", "n_seeds", "mean", "std", "min", "max")
SEED_COLUMNS = ("arm", "seed", "name", "path", "checkpoint", "miou", "pixel_acc")
POINTS = 100.0
_MISSING = object()


class StudyError(ValueError):
    """A folder of runs cannot be compared as asked (message names the runs, the key or the split and the fix)."""


def class_metric(class_name: str) -> str:
    """The ``metric`` label of a class's IoU row in ``compare_arms`` (e.g. ``Sky IoU``)."""
    return f"{class_name} IoU"


def arm_label(value: Any) -> str:
    """The arm name of a setting's value: strings as they are, anything else as JSON (``0.1``, ``true``, ``[1, 2]``)."""
    return value if isinstance(value, str) else json.dumps(value)


def _dotted(mapping: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(mapping, dict) or part not in mapping:
            return _MISSING
        mapping = mapping[part]
    return mapping


def config_value(run: Run, key: str) -> Any:
    """The value of dotted ``key`` in the run's config.yaml, else in its run.json (``loss_preset``, ``model.encoder``)."""
    for source in (run.config, run.meta):
        value = _dotted(source, key)
        if value is not _MISSING:
            return value
    raise StudyError(f"run {run.name} ({run.path}): key '{key}' is in neither config.yaml nor run.json; "
                     "group by a key both files name, e.g. 'loss_preset' or 'loss.temperature'")


def _seed(run: Run, seed_key: str) -> int:
    value = config_value(run, seed_key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise StudyError(f"run {run.name} ({run.path}): key '{seed_key}' is {value!r}, expected an integer seed")
    return value


def _pick_evaluation(rows: pd.DataFrame, split: str, checkpoint: str | None) -> pd.Series | None:
    """The ``study_table`` row of one run's evaluation of ``split`` (see ``compare_arms`` for ``checkpoint``)."""
    chosen = rows[rows["split"] == split]
    if checkpoint is not None:
        chosen = chosen[chosen["checkpoint"] == checkpoint]
    if len(chosen) > 1:
        last = chosen[chosen["checkpoint"] == "last"]
        if len(last) != 1:
            raise StudyError(f"run {chosen['name'].iloc[0]} ({chosen['path'].iloc[0]}) has {split} evaluations of "
                             f"checkpoints {sorted(chosen['checkpoint'])}; choose one with checkpoint=...")
        chosen = last
    return chosen.iloc[0] if len(chosen) else None


def study_table(runs_dir: str | Path, by: str = "loss_preset", seed_key: str = "seed") -> pd.DataFrame:
    """One row per (run, evaluation) of the readable runs in ``runs_dir`` (and up to 2 levels below).

    Columns: path, name, status, arm (``arm_label`` of the ``by`` value), seed, split, checkpoint, folder (the
    evaluation's run-relative folder, ``Run.evaluations``), miou and pixel_acc (fractions, as stored),
    num_images. A run without any evaluation has one row with an empty split. Runs whose run.json cannot be
    read are left out here; ``workbench.runs.list_runs`` reports them.
    """
    listed = list_runs(runs_dir)
    rows: list[dict[str, Any]] = []
    for _, entry in listed[listed["status"] != "invalid"].iterrows():
        run = load_run(entry["path"])
        base = {"path": str(run.path), "name": run.name, "status": str(run.meta["status"]),
                "arm": arm_label(config_value(run, by)), "seed": _seed(run, seed_key)}
        evaluations = run.evaluations()
        if evaluations.empty:
            rows.append({**base, "split": "", "checkpoint": "", "folder": "", "miou": np.nan, "pixel_acc": np.nan,
                         "num_images": 0})
        for _, evaluation in evaluations.iterrows():
            rows.append({**base, **{key: evaluation[key] for key in STUDY_COLUMNS if key in evaluation.index}})
    table = pd.DataFrame(rows, columns=list(STUDY_COLUMNS))
    return table.astype({"seed": "int64", "miou": "float64", "pixel_acc": "float64", "num_images": "int64"})


def paired_statistics(values_a: Any, values_b: Any, confidence: float = CONFIDENCE) -> dict[str, float]:
    """Paired comparison of B with A over seeds (values at the same index belong to the same seed).

    Pairs where either value is NaN are left out. Returns n_pairs, mean_a, mean_b, diff = mean(b − a), the
    two-sided Student-t interval ``diff ± t_{(1+confidence)/2, n−1} · sd(b − a) / √n`` (ci_low, ci_high) and
    the paired t-test p-value (``scipy.stats.ttest_rel``). With one pair there is no interval and no p-value
    (NaN); differences identical on every seed give a zero-width interval and no p-value (NaN).
    """
    a = np.asarray(values_a, dtype=np.float64)
    b = np.asarray(values_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_statistics needs two 1-D arrays of equal length, got shapes {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(keep.sum())
    out = {"n_pairs": n, "mean_a": np.nan, "mean_b": np.nan, "diff": np.nan, "ci_low": np.nan, "ci_high": np.nan,
           "p_value": np.nan}
    if n == 0:
        return out
    out.update(mean_a=float(a.mean()), mean_b=float(b.mean()), diff=float((b - a).mean()))
    if n >= 2:
        with np.errstate(divide="ignore", invalid="ignore"):
            result = stats.ttest_rel(b, a)
            interval = result.confidence_interval(confidence)
        out.update(ci_low=float(interval.low), ci_high=float(interval.high), p_value=float(result.pvalue))
    return out


def _arm_runs(table: pd.DataFrame, arm: str, by: str) -> pd.DataFrame:
    """The runs of one arm (one row per run), with duplicates of a seed rejected."""
    runs = table[table["arm"] == arm].drop_duplicates("path")
    for seed, group in runs.groupby("seed"):
        if len(group) > 1:
            first, second = group["path"].iloc[:2]
            raise StudyError(f"runs {first} and {second} are both arm '{arm}' (by {by}) with seed {seed}; a study "
                             "needs one run per arm and seed: move one of them out of the folder")
    return runs


def _select(runs_dir: str | Path, a: str, b: str, by: str, split: str, checkpoint: str | None,
            seed_key: str) -> tuple[dict[str, dict[int, pd.Series]], list[int], list[str], list[str]]:
    """Per arm the usable evaluation row of each seed, the paired seeds, and notes on unpaired/unused runs."""
    if a == b:
        raise StudyError(f"arms A and B are both '{a}'; choose two different arms")
    table = study_table(runs_dir, by=by, seed_key=seed_key)
    present = sorted(set(table["arm"]))
    for arm in (a, b):
        if arm not in present:
            raise StudyError(f"no run of arm '{arm}' in {runs_dir} (by {by}); arms there: {present or 'none'}")
    usable: dict[str, dict[int, pd.Series]] = {}
    excluded: list[str] = []
    for arm in (a, b):
        usable[arm] = {}
        for _, entry in _arm_runs(table, arm, by).iterrows():
            runs = table[table["path"] == entry["path"]]
            where = f"{arm} seed {entry['seed']} ({entry['name']})"
            if entry["status"] != "finished":
                excluded.append(f"{where} is {entry['status']}, not finished")
                continue
            evaluation = _pick_evaluation(runs, split, checkpoint)
            if evaluation is None:
                which = f"{split} evaluation" + (f" of checkpoint {checkpoint}" if checkpoint else "")
                excluded.append(f"{where} has no {which}: run `mscl eval {entry['path']} --split {split} "
                                f"--checkpoint {checkpoint or 'last'} --save`")
                continue
            usable[arm][int(entry["seed"])] = evaluation
    seeds = sorted(set(usable[a]) & set(usable[b]))
    unpaired = [f"{arm} seed {seed} (no {other} run with seed {seed})"
                for arm, other in ((a, b), (b, a)) for seed in sorted(set(usable[arm]) - set(usable[other]))]
    if not seeds:
        raise StudyError(
            f"no seed has both a '{a}' and a '{b}' run with a {split} evaluation in {runs_dir} (by {by}): "
            f"{a} seeds {sorted(usable[a])}, {b} seeds {sorted(usable[b])}"
            + (f"; {'; '.join(excluded)}" if excluded else "")
        )
    return usable, seeds, unpaired, excluded


def compare_arms(runs_dir: str | Path, a: str = "ce", b: str = "ms+cs", by: str = "loss_preset", split: str = "val",
                 checkpoint: str | None = None, seed_key: str = "seed") -> pd.DataFrame:
    """Arm B against arm A, paired by seed: one row for mIoU, one for pixel accuracy, one per class (IoU).

    Columns ``metric, n_pairs, mean_a, mean_b, diff, ci_low, ci_high, p_value`` (``paired_statistics``; means
    over the paired seeds; ``diff`` = B − A). Values are **fractions in [0, 1]**, the units of summary.json and
    per_class.csv. ``split`` picks each run's evaluation of that split (``Run.evaluations``: ``eval/`` or
    ``eval-<split>-<checkpoint>/`` from ``mscl eval --save``); ``checkpoint`` None takes the only one, or
    ``last`` when there are several. ``by`` is ``loss_preset`` or any dotted config.yaml key
    (e.g. ``loss.temperature``); arms are named by ``arm_label``.

    ``attrs``: a, b, by, split, folder, units, seeds (the paired seeds), checkpoints (per arm), unpaired (runs
    whose seed has no partner in the other arm) and excluded (unfinished runs, runs without the split's
    evaluation). Raises StudyError when an arm is absent, no seed pairs up, two runs share an arm and a seed,
    or the paired runs have different class lists.
    """
    usable, seeds, unpaired, excluded = _select(runs_dir, a, b, by, split, checkpoint, seed_key)
    per_class: dict[str, list[pd.DataFrame]] = {a: [], b: []}
    for arm in (a, b):
        for seed in seeds:
            evaluation = usable[arm][seed]
            per_class[arm].append(load_run(evaluation["path"]).per_class(evaluation["folder"]))
    reference = per_class[a][0]["class_name"].astype(str).tolist()
    for arm in (a, b):
        for seed, frame in zip(seeds, per_class[arm]):
            names = frame["class_name"].astype(str).tolist()
            if names != reference:
                raise StudyError(f"{usable[arm][seed]['path']} has classes {names}, but "
                                 f"{usable[a][seeds[0]]['path']} has {reference}; compare runs of the same dataset")
    metrics = {
        MIOU: ([usable[a][s]["miou"] for s in seeds], [usable[b][s]["miou"] for s in seeds]),
        PIXEL_ACC: ([usable[a][s]["pixel_acc"] for s in seeds], [usable[b][s]["pixel_acc"] for s in seeds]),
    }
    for index, name in enumerate(reference):
        metrics[class_metric(name)] = ([frame["iou"].iloc[index] for frame in per_class[a]],
                                       [frame["iou"].iloc[index] for frame in per_class[b]])
    table = pd.DataFrame([{"metric": metric, **paired_statistics(values_a, values_b)}
                          for metric, (values_a, values_b) in metrics.items()], columns=list(COMPARE_COLUMNS))
    table.attrs.update({
        "a": a, "b": b, "by": by, "split": split, "folder": str(runs_dir),
        "units": "fractions in [0, 1], as stored in summary.json and per_class.csv",
        "seeds": seeds, "class_names": reference, "unpaired": unpaired, "excluded": excluded,
        "checkpoints": {arm: sorted({str(usable[arm][s]["checkpoint"]) for s in seeds}) for arm in (a, b)},
    })
    return table


def _format_p(p: float) -> str:
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def effect_sentence(table: pd.DataFrame, metric: str = MIOU) -> str:
    """One plain sentence for one row of ``compare_arms``, with the stored fractions shown as points (x 100).

    E.g. ``ms+cs − ce = +1.45 mIoU, 95 % CI [0.13, 2.76], p = 0.04, 3 seeds — val split``, followed by the
    seeds without a partner and the runs left out, when there are any.
    """
    rows = table[table["metric"] == metric]
    if rows.empty:
        raise StudyError(f"metric '{metric}' is not a row of the comparison; rows: {table['metric'].tolist()}")
    row = rows.iloc[0]
    attrs = table.attrs
    n = int(row["n_pairs"])
    if n == 0:
        raise StudyError(f"metric '{metric}' has no seed with a value in both arms")
    head = f"{attrs.get('b', 'B')} − {attrs.get('a', 'A')} = {POINTS * row['diff']:+.2f} {metric}"
    level = round(100 * CONFIDENCE)
    if n == 1:
        middle = "1 seed (no interval or p-value from a single pair)"
    elif np.isnan(row["p_value"]):
        middle = (f"{level} % CI [{POINTS * row['ci_low']:.2f}, {POINTS * row['ci_high']:.2f}], no p-value (the same "
                  f"difference on every seed), {n} seeds")
    else:
        middle = (f"{level} % CI [{POINTS * row['ci_low']:.2f}, {POINTS * row['ci_high']:.2f}], "
                  f"{_format_p(row['p_value'])}, {n} seeds")
    sentence = f"{head}, {middle} — {attrs.get('split', '?')} split"
    if attrs.get("unpaired"):
        sentence += "; not paired: " + ", ".join(attrs["unpaired"])
    if attrs.get("excluded"):
        sentence += "; left out: " + "; ".join(attrs["excluded"])
    return sentence


def per_image_differences(runs_dir: str | Path, a: str = "ce", b: str = "ms+cs", by: str = "loss_preset",
                          split: str = "val", checkpoint: str | None = None, seed_key: str = "seed") -> pd.DataFrame:
    """Per-image mIoU of B and A for every paired seed, pooled: columns seed, image_id, miou_a, miou_b, diff (B − A).

    Values are fractions (per_image.csv of the chosen evaluation). Images whose mIoU is NaN in either run are
    left out; the two runs of a seed must have been evaluated on the same images (else StudyError naming both).
    Rows are sorted by diff, largest first; ``attrs`` as ``compare_arms`` (a, b, split, seeds, unpaired, excluded).
    """
    usable, seeds, unpaired, excluded = _select(runs_dir, a, b, by, split, checkpoint, seed_key)
    frames = []
    for seed in seeds:
        first, second = usable[a][seed], usable[b][seed]
        image_a = load_run(first["path"]).per_image(first["folder"])
        image_b = load_run(second["path"]).per_image(second["folder"])
        if set(image_a["image_id"]) != set(image_b["image_id"]):
            raise StudyError(f"seed {seed}: {first['path']} and {second['path']} were evaluated on different images "
                             f"({len(image_a)} and {len(image_b)}); evaluate both on the whole {split} split")
        merged = image_a[["image_id", "miou"]].merge(image_b[["image_id", "miou"]], on="image_id", suffixes=("_a", "_b"))
        frames.append(merged.assign(seed=seed))
    pooled = pd.concat(frames, ignore_index=True).dropna(subset=["miou_a", "miou_b"])
    pooled["diff"] = pooled["miou_b"] - pooled["miou_a"]
    pooled = pooled[list(PER_IMAGE_COLUMNS)].sort_values("diff", ascending=False, kind="stable").reset_index(drop=True)
    pooled.attrs.update({"a": a, "b": b, "by": by, "split": split, "seeds": seeds, "unpaired": unpaired,
                         "excluded": excluded})
    return pooled


def per_image_summary(differences: pd.DataFrame) -> dict[str, Any]:
    """Counts of ``per_image_differences``: images (pooled over seeds) where B is better, worse or tied, and the
    mean and median of the per-image difference (fractions)."""
    diff = differences["diff"].to_numpy(dtype=np.float64)
    return {"images": int(diff.size), "better": int((diff > 0).sum()), "worse": int((diff < 0).sum()),
            "tied": int((diff == 0).sum()), "mean_diff": float(diff.mean()) if diff.size else np.nan,
            "median_diff": float(np.median(diff)) if diff.size else np.nan}


def seed_values(runs_dir: str | Path, by: str = "loss_preset", split: str = "val", checkpoint: str | None = None,
                arms: list[str] | None = None, seed_key: str = "seed") -> pd.DataFrame:
    """mIoU and pixel accuracy of every seed of every arm on ``split``: columns arm, seed, name, path, checkpoint,
    miou, pixel_acc (fractions), sorted by arm and seed.

    Uses each arm's finished runs with an evaluation of the split (``checkpoint`` as in ``compare_arms``); two runs
    of one arm with the same seed are an error. ``arms`` None takes every arm with such a run.
    """
    table = study_table(runs_dir, by=by, seed_key=seed_key)
    chosen = arms if arms is not None else sorted(set(table.loc[table["split"] == split, "arm"]))
    rows = []
    for arm in chosen:
        for _, entry in _arm_runs(table, arm, by).iterrows():
            if entry["status"] != "finished":
                continue
            evaluation = _pick_evaluation(table[table["path"] == entry["path"]], split, checkpoint)
            if evaluation is not None:
                rows.append({"arm": arm, **{key: evaluation[key] for key in SEED_COLUMNS[1:]}})
    values = pd.DataFrame(rows, columns=list(SEED_COLUMNS))
    return values.sort_values(["arm", "seed"], kind="stable").reset_index(drop=True)


def seed_spread(values: pd.DataFrame) -> pd.DataFrame:
    """Seed-to-seed spread per arm of ``seed_values``: columns arm, metric (mIoU, pixel accuracy), n_seeds, mean,
    std (sample standard deviation, n − 1 degrees of freedom; NaN for a single seed), min, max — fractions."""
    rows = []
    for arm, group in values.groupby("arm", sort=False):
        for metric, column in ((MIOU, "miou"), (PIXEL_ACC, "pixel_acc")):
            series = group[column].to_numpy(dtype=np.float64)
            rows.append({"arm": arm, "metric": metric, "n_seeds": int(series.size), "mean": float(series.mean()),
                         "std": float(series.std(ddof=1)) if series.size > 1 else np.nan,
                         "min": float(series.min()), "max": float(series.max())})
    return pd.DataFrame(rows, columns=list(SPREAD_COLUMNS))
