"""Command line: ``mscl train | check-data | eval | export | project | demo | convert-weights | capture``.

Examples::

    mscl train --config camvid-deeplabv3 --loss ms+cs --name camvid-mscs
    torchrun --nproc_per_node 2 -m mscl.cli train --config camvid-deeplabv3 --loss ce
    mscl train --resume runs/camvid-mscs
    mscl check-data --data folder --root my_dataset
    mscl eval runs/camvid-mscs --split val
    mscl export runs/camvid-mscs
    mscl project runs/camvid-mscs
    mscl demo
    mscl convert-weights efficientnet-lite0-57934424.pth lite0.safetensors --arch tf_efficientnet_lite0
    mscl capture --factory torchvision.models.segmentation:deeplabv3_mobilenet_v3_large --list-modules --data camvid --root DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from pathlib import Path

from mscl.config import Config, ConfigError, cli_option, load_config, resolve_config_path
from mscl.data.constants import IMAGENET_MEAN, IMAGENET_STD
from runformat.atomic import atomic_directory
from runformat.errors import RunFormatError, RunLockedError
from runformat.layout import eval_folder
from runformat.lock import RunLock
from runformat.projection_cache import ProjectionError, project_in_child_process
from runformat.rundir import tidy_run_dir

# The dedicated `mscl train` flags and the config key each one sets; type, choices and help come from the
# config model, and the same table turns the parsed flags into overrides (precedence: mscl/config.py).
TRAIN_FLAGS: dict[str, str] = {
    "--name": "name",
    "--out": "output_dir",
    "--seed": "seed",
    "--loss": "loss.preset",
    "--model": "model.name",
    "--encoder": "model.encoder",
    "--pretrained": "model.pretrained",
    "--data": "data.name",
    "--root": "data.root",
    "--steps": "train.steps",
    "--batch-size": "data.batch_size",
    "--device": "train.device",
}
TRAIN_PRECEDENCE = (
    "Each config key comes from, lowest to highest precedence: the built-in defaults < the --config file (with --resume: "
    "the run's config.yaml) < --set KEY=VALUE < the dedicated flags (--steps, --batch-size, ...). Giving one key twice on "
    "the command line (two --set, or a --set and its flag) is an error."
)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _train_flags(args: argparse.Namespace) -> dict[str, tuple[str, object]]:
    """The config keys set by dedicated flags: ``{key: (flag, value)}`` (see TRAIN_FLAGS)."""
    values = vars(args)
    return {key: (flag, values[_dest(flag)]) for flag, key in TRAIN_FLAGS.items() if values[_dest(flag)] is not None}


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        run_dir = Path(args.resume)
        config = load_config(run_dir / "config.yaml", args.set, _train_flags(args))
        config.output_dir, config.name = str(run_dir.parent), run_dir.name
    else:
        config = load_config(resolve_config_path(args.config), args.set, _train_flags(args))
    from mscl.trainer import Trainer

    try:
        Trainer(config, resume=bool(args.resume), overwrite=args.overwrite).fit()
    except KeyboardInterrupt:
        return 130
    return 0


def cmd_check_data(args: argparse.Namespace) -> int:
    """Print the dataset report of the training config (mscl.data.validation); 1 when it finds problems."""
    from mscl.data.validation import check_data

    config = load_config(resolve_config_path(args.config), args.set, _train_flags(args))
    report = check_data(config, progress=sys.stderr.isatty())
    print(report.format())
    return 1 if report.problems else 0


def _val_loader(config: Config, split: str, data_root: str | None, run_dir: str | Path):
    """The evaluation loader of ``split``; refuses a dataset whose class list is not the run's (``run.json``)."""
    from mscl.data.loading import build_split, evaluation_loader, validation_indices

    dataset = build_split(config, split, train=False, root=data_root)
    trained_on = json.loads((Path(run_dir) / "run.json").read_text())["dataset"]["class_names"]
    found = list(dataset.info.class_names)
    if found != list(trained_on):
        where = f"--data-root {data_root}" if data_root else f"data.root {config.data.root}"
        raise ConfigError(
            f"the dataset at {where} has {len(found)} classes {found} but run {run_dir} was trained on {len(trained_on)} classes "
            f"{trained_on} (run.json dataset.class_names); point --data-root at a copy of the dataset the run was trained on"
        )
    indices = validation_indices(config, dataset) if split == config.data.val_split else None
    return evaluation_loader(dataset, indices, batch_size=config.data.val_batch_size, num_workers=config.data.num_workers, seed=config.seed)


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint; with ``--save`` (holding the run's lock) write ``eval-<split>-<checkpoint>/`` as one unit."""
    with RunLock(args.run, "mscl eval --save", create=False) if args.save else nullcontext():
        return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    from mscl.checkpoints import load_run_module
    from mscl.composition import resolve_device
    from mscl.export import evaluate, write_eval
    from mscl.metrics import iou_per_class

    config, module = load_run_module(args.run, args.checkpoint)
    device = resolve_device(args.device)
    split = args.split or config.data.val_split
    loader = _val_loader(config, split, args.data_root, args.run)
    info = loader.dataset.info
    result = evaluate(module.model.to(device), loader, len(info.class_names), info.ignore_index, device)
    summary = {"split": split, "checkpoint": args.checkpoint, **result.summary(), "num_images": len(result.per_image)}
    for name, iou in zip(info.class_names, iou_per_class(result.confusion)):
        print(f"  {name:>16s}  {iou:6.4f}")
    print(json.dumps(summary, indent=2))
    if args.save:
        out = Path(args.run) / eval_folder(split, args.checkpoint)
        with atomic_directory(out) as folder:
            write_eval(folder, result, list(info.class_names), split, args.checkpoint, step=-1)
        print(f"written to {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Rewrite eval/, predictions/ and embeddings/ as one unit from a checkpoint, holding the run's lock."""
    with RunLock(args.run, "mscl export", create=False):
        tidy_run_dir(args.run)
        return _export(args)


def _export(args: argparse.Namespace) -> int:
    from mscl.checkpoints import load_run_module
    from mscl.composition import resolve_device
    from mscl.export import ExportSettings, export_artifacts, project_after_export

    config, module = load_run_module(args.run, args.checkpoint)
    device = resolve_device(args.device)
    module.to(device)
    loader = _val_loader(config, config.data.val_split, args.data_root, args.run)
    step = json.loads((Path(args.run) / "run.json").read_text()).get("timing", {}).get("steps", -1)
    settings = ExportSettings.from_config(config, progress=True, project=config.export.project and not args.no_project)
    summary = export_artifacts(args.run, module.model, module.projectors, loader, settings, checkpoint=args.checkpoint, step=step, device=device)
    project_after_export(args.run, settings)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_project(args: argparse.Namespace) -> int:
    """``python -m workbench project RUN`` in a child process (its messages go to this terminal)."""
    return project_in_child_process(args.run, args.seed, capture=False)


def cmd_demo(args: argparse.Namespace) -> int:
    from mscl.demo import make_demo

    make_demo(Path(args.out), steps=args.steps, seed=args.seed)
    return 0


def cmd_convert_weights(args: argparse.Namespace) -> int:
    from mscl.models.convert import convert_weights

    path = convert_weights(args.source, args.destination, args.source_format, args.arch)
    print(f"wrote {path} (timm {args.arch} naming); train with --pretrained {path}")
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    from mscl.capture import capture_command

    print(capture_command(
        factory=args.factory, kwargs=args.kwargs, checkpoint=args.checkpoint, stages=args.stages, data=args.data,
        root=args.root, split=args.split, max_images=args.max_images, out=args.out, name=args.name,
        list_only=args.list_modules, resize=args.resize, mean=args.mean, std=args.std, batch_size=args.batch_size,
        num_pixels=args.num_pixels,
        seed=args.seed, device=args.device, overwrite=args.overwrite, project=args.project,
    ))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``mscl`` parser: one subcommand per command of the module docstring."""
    parser = argparse.ArgumentParser(prog="mscl", description="Multi-scale and cross-scale contrastive learning for segmentation")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_training_commands(sub)
    _add_run_commands(sub)
    _add_tool_commands(sub)
    _add_capture_command(sub)
    return parser


def _add_training_commands(sub: argparse._SubParsersAction) -> None:
    """``mscl train`` and ``mscl check-data`` (the same config options)."""
    train = sub.add_parser("train", help="train a run (CE, ms or ms+cs) and write its run directory", description=TRAIN_PRECEDENCE)
    train.add_argument("--config", help="YAML file or shipped preset name (see mscl/configs)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its newest checkpoint set")
    train.add_argument("--overwrite", action="store_true", help="replace the run directory --out/--name: empty it first, then train")
    for flag, key in TRAIN_FLAGS.items():
        train.add_argument(flag, **cli_option(key))
    train.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any config key, value read as YAML, e.g. --set loss.temperature=0.2 (repeatable)"
    )
    train.set_defaults(func=cmd_train)

    check = sub.add_parser(
        "check-data",
        help="check the data a training config would use and print the dataset report",
        description="Decodes every train and val file the config uses (cached per file) and prints counts, image sizes, the raw "
        "label values as class / void / UNKNOWN with pixel counts, and every problem found. Exit status: 0 clean, 1 problems "
        "found, 2 config error (or a dataset that cannot be listed). Takes the options of mscl train. " + TRAIN_PRECEDENCE,
    )
    check.add_argument("--config", help="YAML file or shipped preset name (see mscl/configs)")
    for flag, key in TRAIN_FLAGS.items():
        check.add_argument(flag, **cli_option(key))
    check.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="any config key, value read as YAML, e.g. --set data.unknown_labels=ignore"
    )
    check.set_defaults(func=cmd_check_data)


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    """``mscl eval``, ``mscl export`` and ``mscl project``: commands on a finished run directory."""
    commands = (("eval", cmd_eval, "evaluate a run's checkpoint on a split"), ("export", cmd_export, "recompute a run's embeddings and predictions"))
    for name, func, help_text in commands:
        command = sub.add_parser(name, help=help_text)
        command.add_argument("run", help="run directory")
        command.add_argument("--checkpoint", default="last", choices=("last", "best"))
        command.add_argument("--data-root", help="dataset root, if it moved since training")
        command.add_argument("--device", default="auto")
        command.set_defaults(func=func)
        if name == "eval":
            command.add_argument("--split", help="split to evaluate (default: the run's validation split)")
            command.add_argument("--save", action="store_true", help="write the tables to RUN/eval-<split>-<checkpoint>/")
        else:
            command.add_argument("--no-project", action="store_true", help="skip precomputing 2-D projections")

    project = sub.add_parser("project", help="precompute a run's 2-D projections (UMAP, PCA, aligned sets) for the app")
    project.add_argument("run", help="run directory")
    project.add_argument("--seed", type=int, default=0)
    project.set_defaults(func=cmd_project)


def _add_tool_commands(sub: argparse._SubParsersAction) -> None:
    """``mscl demo`` and ``mscl convert-weights``."""
    demo = sub.add_parser("demo", help="generate synthetic scenes and train the shipped baseline and ms+cs demo runs")
    demo.add_argument("--out", default="sample_data", help="output folder (default sample_data)")
    demo.add_argument("--steps", type=int, default=None, help="optimiser steps per run (default: the demo config's)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    convert = sub.add_parser("convert-weights", help="rename published ImageNet weights to timm naming (a safetensors file for --pretrained)")
    convert.add_argument("source", help="weight file (torch file, read with weights_only=True, or .safetensors)")
    convert.add_argument("destination", help="output .safetensors file")
    convert.add_argument("--from", dest="source_format", help="naming of the source file (default: efficientnet-pytorch, the one supported so far)")
    convert.add_argument("--arch", default="tf_efficientnet_lite0", help="timm architecture the weights belong to")
    convert.set_defaults(func=cmd_convert_weights)


def _add_capture_command(sub: argparse._SubParsersAction) -> None:
    """``mscl capture``: a run directory from any segmentation model."""
    capture = sub.add_parser("capture", help="write a run directory from any segmentation model (no training) for the workbench")
    capture.add_argument("--factory", required=True, metavar="MODULE:FUNCTION",
                         help="function that builds the model, e.g. torchvision.models.segmentation:deeplabv3_mobilenet_v3_large")
    capture.add_argument("--kwargs", metavar="JSON", help="keyword arguments of the factory as a JSON object")
    capture.add_argument("--checkpoint", metavar="FILE", help="weights: .safetensors or a torch file (read with weights_only=True)")
    capture.add_argument("--stages", nargs="+", metavar="NAME", help="modules whose outputs are the stages, finest first")
    capture.add_argument("--list-modules", action="store_true", help="print the modules with a 4-D output (shape, stride) and exit")
    capture.add_argument("--data", required=True, help="dataset format: camvid, folder, cityscapes, ade20k, pascal_context, cadis")
    capture.add_argument("--root", required=True, help="dataset root folder")
    capture.add_argument("--split", default="val", help="split to run the model on (default val)")
    capture.add_argument("--max-images", type=int, help="only the first N images of the split")
    capture.add_argument("--resize", nargs="+", type=float, metavar="SIZE", help="scale factor, or H W, applied before the model")
    capture.add_argument("--mean", nargs=3, type=float, default=list(IMAGENET_MEAN), metavar=("R", "G", "B"),
                         help="input normalisation mean (default ImageNet's)")
    capture.add_argument("--std", nargs=3, type=float, default=list(IMAGENET_STD), metavar=("R", "G", "B"),
                         help="input normalisation std (default ImageNet's)")
    capture.add_argument("--batch-size", type=int, default=4)
    capture.add_argument("--num-pixels", type=int, default=4000, help="pixels in the class-balanced embedding sample")
    capture.add_argument("--out", default="runs", help="parent folder of the run directory (default runs/)")
    capture.add_argument("--name", help="run name (folder under --out)")
    capture.add_argument("--seed", type=int, default=0, help="seeds the model's random initialisation and the pixel sample")
    capture.add_argument("--device", default="auto")
    capture.add_argument("--overwrite", action="store_true", help="replace an earlier capture with the same name")
    capture.add_argument("--project", action="store_true", help="also precompute the 2-D projections the app shows")
    capture.set_defaults(func=cmd_capture)

def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, RunFormatError, RunLockedError, ProjectionError) as err:
        print(f"mscl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
