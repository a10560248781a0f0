"""The CamVid study (docs/results/camvid.md): ce, ms and ms+cs arms x seeds with identical data,
schedule and augmentation; then the mIoU table, per-class IoU and per-stage separability per arm.

    python scripts/camvid_study.py --out results/camvid --seeds 0 1 2          # train (resumes, skips finished runs)
    python scripts/camvid_study.py --out results/camvid --summarize-only       # tables only

Extra config overrides for every run: ``--set key=value`` (e.g. a variant of the loss weight).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

ARMS = {"ce": "ce", "ms": "ms", "mscs": "ms+cs"}


def train_all(out: Path, seeds: list[int], config: str, overrides: list[str]) -> None:
    from mscl.cli import main as mscl

    for seed in seeds:
        for arm, preset in ARMS.items():
            run = out / f"{arm}-s{seed}"
            meta = run / "run.json"
            status = json.loads(meta.read_text())["status"] if meta.is_file() else None
            if status == "finished":
                continue
            sets = [arg for item in overrides for arg in ("--set", item)]
            if (run / "checkpoints/last_state.json").is_file():
                code = mscl(["train", "--resume", str(run), *sets])
            else:
                code = mscl(["train", "--config", config, "--out", str(out), "--name", run.name, "--loss", preset, "--seed", str(seed), *sets])
            if code != 0:
                raise SystemExit(f"training {run} failed with exit code {code}")


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame (index included) as a markdown table."""
    header = [str(frame.index.name or "")] + [" ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in frame.iterrows():
        lines.append("| " + " | ".join([str(index)] + [f"{v:.3f}" for v in row]) + " |")
    return "\n".join(lines)


def summarize(out: Path) -> str:
    from workbench import load_run, separability

    rows, classes, separations = [], [], []
    for run_dir in sorted(p.parent for p in out.glob("*/run.json")):
        run = load_run(run_dir)
        if run.meta["status"] != "finished":
            continue
        arm, seed = run_dir.name.rsplit("-s", 1)
        summary = run.eval_summary()
        rows.append({"arm": arm, "seed": int(seed), "miou": 100 * summary["miou"], "pixel_acc": 100 * summary["pixel_acc"],
                     "minutes": run.meta["timing"]["train_seconds"] / 60})
        per_class = run.per_class()[["class_name", "iou"]].assign(arm=arm, seed=int(seed))
        classes.append(per_class)
        table = separability.separability_table(run, kinds=("backbone",))
        separations.append(table.assign(arm=arm, seed=int(seed)))
    if not rows:
        raise SystemExit(f"no finished runs under {out}")
    runs = pd.DataFrame(rows)
    order = [a for a in ARMS if a in set(runs["arm"])]
    table = runs.groupby("arm")["miou"].agg(["mean", "std", "count"]).reindex(order)
    per_seed = runs.pivot(index="arm", columns="seed", values="miou").reindex(order)
    per_class = pd.concat(classes).groupby(["class_name", "arm"])["iou"].mean().unstack("arm")[order] * 100
    separation = pd.concat(separations).groupby(["stage", "arm"])[["silhouette", "knn_accuracy"]].mean().unstack("arm")
    lines = [
        "| arm | " + " | ".join(f"seed {s}" for s in per_seed.columns) + " | mean | std |",
        "|---|" + "---|" * (len(per_seed.columns) + 2),
    ]
    for arm in order:
        cells = " | ".join(f"{v:.2f}" for v in per_seed.loc[arm])
        lines.append(f"| {ARMS[arm]} | {cells} | {table.loc[arm, 'mean']:.2f} | {table.loc[arm, 'std']:.2f} |")
    text = "\n".join(lines)
    text += "\n\nPer-class IoU (mean over seeds, %):\n\n" + markdown_table(per_class)
    text += "\n\nBackbone separability per stage (mean over seeds):\n\n" + markdown_table(separation)
    text += f"\n\nTraining minutes per run: {runs['minutes'].mean():.1f} (min {runs['minutes'].min():.1f}, max {runs['minutes'].max():.1f})\n"
    runs.to_csv(out / "study_runs.csv", index=False)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/camvid")
    parser.add_argument("--config", default="camvid-study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.summarize_only:
        train_all(out, args.seeds, args.config, args.set)
    print(summarize(out))


if __name__ == "__main__":
    main()
