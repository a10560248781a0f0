"""Time one whole training step (forward, CE [+ 0.1 x contrastive], backward, SGD) for ce, ms and ms+cs.

All three presets run in one process on the same batch and model config, so the ratios compare like
with like. Usage::

    python benchmarks/bench_train_step.py --config camvid-deeplabv3 --repeats 5
    python benchmarks/bench_train_step.py --config camvid-tiny --device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from mscl.cli import resolve_config_path
from mscl.config import load_config
from mscl.trainer import Trainer

PRESETS = ("ce", "ms", "ms+cs")


def time_preset(config_name: str, preset: str, device: str, repeats: int, warmup: int, overrides: list[str]) -> dict:
    """Median seconds per training step of ``preset`` on one fixed batch of the config's training data."""
    with tempfile.TemporaryDirectory() as out:
        config = load_config(
            resolve_config_path(config_name),
            [f"loss.preset={preset}", f"train.device={device}", f"output_dir={out}", "name=bench", "data.num_workers=0", *overrides],
        )
        trainer = Trainer(config)
        batch = next(iter(trainer.data.train_loader(0)))
        trainer.module.train()
        times = []
        for step in range(warmup + repeats):
            generator = torch.Generator().manual_seed(step)
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            tic = time.perf_counter()
            trainer.train_step(batch, generator)
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            if step >= warmup:
                times.append(time.perf_counter() - tic)
        return {
            "preset": preset,
            "sec_per_step": statistics.median(times),
            "batch": list(batch["image"].shape),
            "model": config.model.name,
            "encoder": config.model.encoder,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="camvid-deeplabv3")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    rows = [time_preset(args.config, preset, args.device, args.repeats, args.warmup, args.set) for preset in PRESETS]
    base = rows[0]["sec_per_step"]
    print(f"config {args.config}, device {args.device}, batch {rows[0]['batch']}, model {rows[0]['model']} ({rows[0]['encoder']})")
    print("| preset | s / step | ratio to ce |\n|---|---|---|")
    for row in rows:
        row["ratio_to_ce"] = row["sec_per_step"] / base
        print(f"| {row['preset']} | {row['sec_per_step']:.3f} | {row['ratio_to_ce']:.2f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"config": args.config, "device": args.device, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
