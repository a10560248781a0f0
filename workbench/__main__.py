"""Workbench command line: ``python -m workbench project RUN [--seed S] [--methods ...] [--aligned-methods ...]``.

``project`` fills a run's 2-D projection cache (``projections/``, docs/run-format.md) with the parameters the
app uses by default (``workbench.projections.precompute_projections``, docs/workbench.md view 2): PCA, UMAP and
t-SNE maps of every stage and kind, and the stage-aligned set of each. It prints its progress on stderr as a
progress bar (``projections:  42%|...| 42/100 [00:12], umap projected stages · stage 2 · UMAP epoch 120/200``;
warnings of the numerical libraries are silenced) and, at the end, ``N projections cached under FOLDER`` on stdout.
``mscl train`` (at its end), ``mscl export`` and ``mscl project`` run it as a child process and show its progress
bar. A run the workbench cannot read stops it with one line naming the file and exit status 2; Ctrl-C stops it
with exit status 130, keeping the maps already cached.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from workbench.projection_methods import ALIGNED_METHODS, METHODS, quiet_third_party
from workbench.projections import DEFAULT_MAX_POINTS, DEFAULT_SEED, precompute_projections
from workbench.runs import EMBEDDING_KINDS, RunFormatError, load_run

PROGRESS_FORMAT = "{desc}: {percentage:3.0f}%|{bar:20}| {n}/{total} [{elapsed}]{postfix}"
"""tqdm format of the progress bar; ``n/total`` is percent, so ``workbench.export_job.parse_progress`` reads it."""


def cmd_project(args: argparse.Namespace) -> int:
    """Precompute the single-panel and stage-aligned projections of one run, with a progress bar on stderr."""
    run = load_run(args.run)
    run.embedding_meta()  # a malformed or missing embedding sample stops here with one line, before any progress bar
    with tqdm(total=100, desc="projections", bar_format=PROGRESS_FORMAT, file=sys.stderr, mininterval=0.5,
              disable=args.quiet) as bar:
        def report(fraction: float, message: str) -> None:
            bar.set_postfix_str(message, refresh=False)
            bar.update(int(fraction * 100) - bar.n)

        paths = precompute_projections(run, methods=tuple(args.methods), kinds=tuple(args.kinds) if args.kinds else None,
                                       max_points=args.max_points, seed=args.seed, aligned_methods=tuple(args.aligned_methods),
                                       cache_folder=args.cache_folder, progress=report)
    folders = ", ".join(sorted({str(path.parent) for path in paths})) or str(Path(args.run) / "projections")
    print(f"{len(paths)} projections cached under {folders}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m workbench`` argument parser."""
    parser = argparse.ArgumentParser(prog="python -m workbench", description="MSCL workbench: analysis of run directories")
    sub = parser.add_subparsers(dest="command", required=True)
    project = sub.add_parser("project", help="precompute a run's 2-D projections (PCA, UMAP, t-SNE, aligned sets) for the app")
    project.add_argument("run", help="run directory")
    project.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the pixel subset and of the projections")
    project.add_argument("--methods", nargs="+", choices=METHODS, default=["pca", "umap", "tsne"],
                         help="methods of the per-stage maps, in this order (default: pca umap tsne)")
    project.add_argument("--aligned-methods", nargs="+", choices=ALIGNED_METHODS, default=list(METHODS),
                         help="methods whose stage-aligned set is computed too (default: umap tsne pca; umap-joint is "
                              "umap.AlignedUMAP, several times slower)")
    project.add_argument("--kinds", nargs="+", choices=EMBEDDING_KINDS, help="embedding kinds (default: all the run has)")
    project.add_argument("--max-points", type=int, default=DEFAULT_MAX_POINTS, help="pixels per map (class-balanced subset)")
    project.add_argument("--cache-folder", type=Path, help="write the maps here (default: RUN/projections, or the user cache "
                                                          "for read-only and shipped runs)")
    project.add_argument("--quiet", action="store_true", help="no progress bar")
    project.set_defaults(func=cmd_project)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; a run-format or parameter problem prints one line and returns 2, Ctrl-C returns 130."""
    args = build_parser().parse_args(argv)
    try:
        with quiet_third_party():
            return args.func(args)
    except (RunFormatError, ValueError, OSError) as err:
        print(f"workbench {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"workbench {args.command}: interrupted; the maps finished so far stay cached", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
