"""Command line: ``mscl train | eval | export | project | demo | convert-weights``.

Examples::

    mscl train --config camvid-deeplabv3 --loss ms+cs --name camvid-mscs
    torchrun --nproc_per_node 2 -m mscl.cli train --config camvid-deeplabv3 --loss ce
    mscl train --resume runs/camvid-mscs
    mscl eval runs/camvid-mscs --split val
    mscl export runs/camvid-mscs
    mscl project runs/camvid-mscs
    mscl demo
    mscl convert-weights efficientnet-lite0-57934424.pth lite0.safetensors --arch tf_efficientnet_lite0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mscl.config import LOSS_PRESETS, Config, ConfigError, load_config

CONFIG_DIR = Path(__file__).parent / "configs"


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


def _train_overrides(args: argparse.Namespace) -> list[str]:
    pairs = {
        "name": args.name,
        "output_dir": args.out,
        "seed": args.seed,
        "loss.preset": args.loss,
        "model.name": args.model,
        "model.encoder": args.encoder,
        "model.pretrained": args.pretrained,
        "data.name": args.data,
        "data.root": args.root,
        "data.batch_size": args.batch_size,
        "train.steps": args.steps,
        "train.device": args.device,
    }
    overrides = [f"{key}={json.dumps(value)}" for key, value in pairs.items() if value is not None]
    return overrides + list(args.set or [])


def cmd_train(args: argparse.Namespace) -> int:
    from mscl.trainer import Trainer

    if args.resume:
        run_dir = Path(args.resume)
        config = load_config(run_dir / "config.yaml", _train_overrides(args))
        config.output_dir, config.name = str(run_dir.parent), run_dir.name
    else:
        config = load_config(resolve_config_path(args.config), _train_overrides(args))
    try:
        Trainer(config, resume=bool(args.resume)).fit()
    except KeyboardInterrupt:
        return 130
    print(f"run written to {config.run_dir}")
    return 0


def _val_loader(config: Config, split: str, data_root: str | None):
    from torch.utils.data import DataLoader

    from mscl.trainer import build_split

    dataset = build_split(config, split, train=False, root=data_root)
    indices = list(range(len(dataset)))[: config.data.max_val_images] if split == config.data.val_split else None
    return DataLoader(dataset, batch_size=config.data.val_batch_size, sampler=indices, num_workers=config.data.num_workers)


def cmd_eval(args: argparse.Namespace) -> int:
    from mscl.export import evaluate, write_eval
    from mscl.metrics import iou_per_class
    from mscl.trainer import load_run_module, resolve_device

    config, module = load_run_module(args.run, args.checkpoint)
    device = resolve_device(args.device)
    split = args.split or config.data.val_split
    loader = _val_loader(config, split, args.data_root)
    info = loader.dataset.info
    result = evaluate(module.model.to(device), loader, len(info.class_names), info.ignore_index, device)
    summary = {"split": split, "checkpoint": args.checkpoint, **result.summary(), "num_images": len(result.per_image)}
    for name, iou in zip(info.class_names, iou_per_class(result.confusion)):
        print(f"  {name:>16s}  {iou:6.4f}")
    print(json.dumps(summary, indent=2))
    if args.save:
        out = Path(args.run) / f"eval-{split}-{args.checkpoint}"
        write_eval(out, result, list(info.class_names), split, args.checkpoint, step=-1)
        print(f"written to {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mscl.export import export_artifacts
    from mscl.trainer import load_run_module, resolve_device

    config, module = load_run_module(args.run, args.checkpoint)
    device = resolve_device(args.device)
    module.to(device)
    loader = _val_loader(config, config.data.val_split, args.data_root)
    step = json.loads((Path(args.run) / "run.json").read_text()).get("timing", {}).get("steps", -1)
    summary = export_artifacts(
        args.run,
        module.model,
        module.projectors,
        loader,
        split=config.data.val_split,
        checkpoint=args.checkpoint,
        step=step,
        num_pixels=config.export.num_pixels,
        num_prediction_images=config.export.num_prediction_images,
        num_dense_images=config.export.num_dense_images,
        seed=config.seed,
        device=device,
    )
    if config.export.project and not args.no_project:
        precompute(args.run, config.seed)
    print(json.dumps(summary, indent=2))
    return 0


def precompute(run_dir: str | Path, seed: int) -> None:
    """Fill a run's 2-D projection cache with the app's default parameters (``workbench.projections``)."""
    from workbench.projections import precompute_projections
    from workbench.runs import load_run

    paths = precompute_projections(load_run(run_dir), seed=seed)
    print(f"{len(paths)} projections cached under {Path(run_dir) / 'projections'}")


def cmd_project(args: argparse.Namespace) -> int:
    precompute(args.run, args.seed)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mscl.demo import make_demo

    make_demo(Path(args.out), steps=args.steps, seed=args.seed)
    return 0


def cmd_convert_weights(args: argparse.Namespace) -> int:
    from mscl.models.convert import convert_weights

    path = convert_weights(args.source, args.destination, args.source_format, args.arch)
    print(f"wrote {path} (timm {args.arch} naming); train with --pretrained {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mscl", description="Multi-scale and cross-scale contrastive learning for segmentation")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a run (CE, ms or ms+cs) and write its run directory")
    train.add_argument("--config", help="YAML file or shipped preset name (see mscl/configs)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    train.add_argument("--name", help="run name (folder under --out)")
    train.add_argument("--out", help="parent folder of run directories (default runs/)")
    train.add_argument("--loss", choices=LOSS_PRESETS, help="loss preset: ce, ms, or ms+cs (CE + 0.1 x contrastive)")
    train.add_argument("--model", help="tiny, deeplabv3, upernet, hrnet or ocrnet")
    train.add_argument("--encoder", help="timm encoder name, e.g. resnet18, convnext_tiny, hrnet_w18_small")
    train.add_argument("--pretrained", metavar="PATH", help="local encoder weights (.safetensors or torch file)")
    train.add_argument("--data", help="dataset format: camvid, folder, cityscapes, ade20k, pascal_context, cadis")
    train.add_argument("--root", help="dataset root folder")
    train.add_argument("--steps", type=int, help="optimiser steps")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="any config override, e.g. --set loss.temperature=0.2")
    train.set_defaults(func=cmd_train)

    for name, func, help_text in (("eval", cmd_eval, "evaluate a run's checkpoint on a split"), ("export", cmd_export, "recompute a run's embeddings and predictions")):
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"mscl {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
