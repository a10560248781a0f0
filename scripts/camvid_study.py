"""The CamVid study (docs/results/camvid.md): ce, ms and ms+cs arms x seeds with identical data,
schedule and augmentation; then the mIoU table, per-class IoU and per-stage separability per arm.

    python scripts/camvid_study.py --out results/camvid --seeds 0 1 2          # train (resumes, skips finished runs)
    python scripts/camvid_study.py --out results/camvid --summarize-only       # tables only
    python scripts/camvid_study.py --out results/camvid-variants/w0.03 --seeds 0 --arms mscs \
        --set loss.contrastive_weight=0.03                                         # a variant

Extra config overrides for every run: ``--set key=value`` (e.g. a variant of the loss weight).

``--eval-splits val test`` also evaluates every finished run on those splits (``mscl eval RUN --split S
--checkpoint last --save`` into ``RUN/eval-<split>-last/``, skipping tables that exist and splits the dataset
copy does not have) and prints the paired effect of each contrastive arm over ce per split
(``workbench.study``; docs/results/camvid.md). The 3 x 3 study at full resolution on one GPU:

    python scripts/camvid_study.py --config camvid-full-lite0 --out runs/camvid-full-lite0 --seeds 0 1 2 \
        --eval-splits val test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import yaml

from runformat.layout import latest_checkpoint_set

ARMS = {"ce": "ce", "ms": "ms", "mscs": "ms+cs"}


def train_all(out: Path, seeds: list[int], config: str, overrides: list[str], arms: list[str]) -> None:
    """Train every (seed, arm) run not finished yet, each in its own process (resuming interrupted ones).

    A fresh process per run keeps one run's state (memory, threads, a crash) away from the next; the
    numba threads of the export's UMAP are already confined to the child process `mscl project`.
    """
    for seed in seeds:
        for arm in arms:
            run = out / f"{arm}-s{seed}"
            meta = run / "run.json"
            status = json.loads(meta.read_text())["status"] if meta.is_file() else None
            if status == "finished":
                continue
            sets = [arg for item in overrides for arg in ("--set", item)]
            if latest_checkpoint_set(run) is not None:
                command = ["train", "--resume", str(run), *sets]
            else:
                command = ["train", "--config", config, "--out", str(out), "--name", run.name, "--loss", ARMS[arm], "--seed", str(seed), *sets]
            code = subprocess.run([sys.executable, "-m", "mscl.cli", *command]).returncode
            if code != 0:
                raise SystemExit(f"training {run} failed with exit code {code}")


def split_available(run: Path, split: str) -> bool:
    """Whether the run's dataset copy has ``split``: CamVid keeps one ``<split>.txt`` list per split (the copy in
    ``../shared/datasets/camvid`` has train and val only); other datasets are left to ``mscl eval`` to check."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    data = config.get("data", {})
    return data.get("name") != "camvid" or (Path(data.get("root", "")) / f"{split}.txt").is_file()


def evaluate_splits(out: Path, splits: list[str], checkpoint: str = "last",
                    run_command: Callable[[list[str]], int] | None = None) -> list[Path]:
    """Evaluate every finished run under ``out`` on each split with ``mscl eval --save`` (docs/run-format.md
    ``eval-<split>-<checkpoint>/``); returns the folders written. Evaluations the run has are kept (``eval/``
    already holds the final validation, split val at checkpoint last); a split the dataset lacks is skipped with
    a note; a run without its checkpoint or a failing evaluation stops the script with a one-line message."""
    from workbench import load_run

    run_command = run_command or (lambda command: subprocess.run(command).returncode)
    written = []
    for meta in sorted(out.glob("*/run.json")):
        run = meta.parent
        if json.loads(meta.read_text())["status"] != "finished":
            continue
        done = load_run(run).evaluations()
        for split in splits:
            target = run / f"eval-{split}-{checkpoint}"
            if ((done["split"] == split) & (done["checkpoint"] == checkpoint)).any():
                continue
            if not split_available(run, split):
                print(f"skipping {run} on split {split}: its dataset has no {split}.txt list")
                continue
            if not (run / "checkpoints" / f"{checkpoint}.safetensors").is_file():
                raise SystemExit(f"cannot evaluate {run} on {split}: checkpoints/{checkpoint}.safetensors is missing "
                                 "(results keep no checkpoints); train the runs again with this script first")
            code = run_command([sys.executable, "-m", "mscl.cli", "eval", str(run), "--split", split,
                                "--checkpoint", checkpoint, "--save"])
            if code != 0:
                raise SystemExit(f"`mscl eval {run} --split {split} --checkpoint {checkpoint} --save` failed with exit "
                                 f"code {code} (its message is above)")
            written.append(target)
    return written


def effect_lines(out: Path, splits: list[str]) -> list[str]:
    """The paired effect (``workbench.study.effect_sentence``) of ms and ms+cs over ce on each split that has
    evaluations of both arms."""
    from workbench import study

    lines = []
    for split in splits:
        for arm in ("ms", "ms+cs"):
            try:
                lines.append(study.effect_sentence(study.compare_arms(out, "ce", arm, split=split)))
            except study.StudyError as error:
                lines.append(f"{arm} vs ce on {split}: {error}")
    return lines


def markdown_table(frame: pd.DataFrame) -> str:
    """A DataFrame (index included) as a markdown table."""
    header = [str(frame.index.name or "")] + [" ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in frame.iterrows():
        lines.append("| " + " | ".join([str(index)] + [f"{v:.3f}" for v in row]) + " |")
    return "\n".join(lines)


def summarize(out: Path) -> str:
    from workbench import load_run, stage_separability

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
        if run.has("embeddings/pixels.parquet"):  # variant runs in git keep no embedding sample
            table = stage_separability.separability_table(run, kinds=("backbone",))
            separations.append(table.assign(arm=arm, seed=int(seed)))
    if not rows:
        raise SystemExit(f"no finished runs under {out}")
    runs = pd.DataFrame(rows)
    order = [a for a in ARMS if a in set(runs["arm"])]
    table = runs.groupby("arm")["miou"].agg(["mean", "std", "count"]).reindex(order)
    per_seed = runs.pivot(index="arm", columns="seed", values="miou").reindex(order)
    per_class = pd.concat(classes).groupby(["class_name", "arm"])["iou"].mean().unstack("arm")[order] * 100
    lines = [
        "| arm | " + " | ".join(f"seed {s}" for s in per_seed.columns) + " | mean | std |",
        "|---|" + "---|" * (len(per_seed.columns) + 2),
    ]
    for arm in order:
        cells = " | ".join(f"{v:.2f}" for v in per_seed.loc[arm])
        lines.append(f"| {ARMS[arm]} | {cells} | {table.loc[arm, 'mean']:.2f} | {table.loc[arm, 'std']:.2f} |")
    text = "\n".join(lines)
    text += "\n\nPer-class IoU (mean over seeds, %):\n\n" + markdown_table(per_class)
    if separations:
        separation = pd.concat(separations).groupby(["stage", "arm"])[["silhouette", "knn_accuracy"]].mean().unstack("arm")
        text += "\n\nBackbone separability per stage (mean over seeds with an embedding sample):\n\n" + markdown_table(separation)
    text += f"\n\nTraining minutes per run: {runs['minutes'].mean():.1f} (min {runs['minutes'].min():.1f}, max {runs['minutes'].max():.1f})\n"
    runs.to_csv(out / "study_runs.csv", index=False)
    return text


def export_figures(out: Path, figures_dir: Path, seed: int = 0) -> list[Path]:
    """The per-class IoU difference (mean over seeds, ms+cs - ce) and the per-stage feature spaces of the
    ce and ms+cs runs of one seed (aligned PCA of the backbone features, the same pixels in every panel)."""
    import numpy as np

    from workbench import figures, load_run, projections

    runs = {run.name: run for run in (load_run(meta.parent) for meta in out.glob("*/run.json")) if run.meta["status"] == "finished"}
    ce = [r for name, r in runs.items() if name.startswith("ce-")]
    mscs = [r for name, r in runs.items() if name.startswith("mscs-")]
    iou_a = np.nanmean([r.per_class()["iou"].to_numpy() for r in ce], axis=0)
    iou_b = np.nanmean([r.per_class()["iou"].to_numpy() for r in mscs], axis=0)
    per_class = ce[0].per_class()
    diff = pd.DataFrame({
        "class_id": per_class["class_id"], "class_name": per_class["class_name"], "iou_a": iou_a, "iou_b": iou_b,
        "diff": iou_b - iou_a, "gt_frequency": per_class["gt_pixels"] / per_class["gt_pixels"].sum(),
    }).sort_values("diff", ascending=False)
    written = [figures.export_figure(figures.iou_diff_figure(diff, f"ce (mean of {len(ce)})", f"ms+cs (mean of {len(mscs)})"),
                                     figures_dir / "iou_diff.png", format="png")]
    pair = [runs[f"ce-s{seed}"], runs[f"mscs-s{seed}"]]
    for kind in ("backbone",):
        items = [(run, stage, kind) for run in pair for stage in run.embedding_stages()]
        rows = projections.aligned_pixel_rows(pair)
        coords = projections.aligned_projections(items, method="pca", pixels=rows[0])
        panels = [figures.embedding_panel(run, stage, kind, xy, rows[pair.index(run)]) for (run, stage, kind), xy in zip(items, coords)]
        figure = figures.embedding_panels(panels, class_names=pair[0].class_names)
        written.append(figures.export_figure(figure, figures_dir / f"feature_spaces_{kind}_seed{seed}.png", format="png"))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/camvid")
    parser.add_argument("--config", default="camvid-study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS), help="which arms to train")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--summarize-only", action="store_true")
    parser.add_argument("--figures", help="also export the IoU-difference and feature-space figures into this folder")
    parser.add_argument("--eval-splits", nargs="+", default=[], metavar="SPLIT",
                        help="also evaluate the finished runs on these splits (mscl eval --save), e.g. val test")
    args = parser.parse_args()
    out = Path(args.out)
    if not args.summarize_only:
        train_all(out, args.seeds, args.config, args.set, args.arms)
    for folder in evaluate_splits(out, args.eval_splits):
        print("evaluated:", folder)
    print(summarize(out))
    print("\n".join(effect_lines(out, args.eval_splits or ["val"])))
    if args.figures:
        for path in export_figures(out, Path(args.figures)):
            print("figure:", path)


if __name__ == "__main__":
    main()
