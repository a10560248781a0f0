"""What the command line tells the user: the summary ``mscl train`` ends with, and the progress of the projection
child process relayed to the terminal instead of silence."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from mscl.cli import resolve_config_path
from mscl.config import load_config
from mscl.data import generate_synthetic_dataset
from mscl.trainer import Trainer, format_summary
from runformat import projection_cache
from runformat.projection_cache import ProjectionError, project_in_child_process


def tiny_config(root: Path, out: Path):
    overrides = ["name=tiny", f"output_dir={out}", f"data.root={root}", "loss.preset=ms+cs", "train.steps=4",
                 "data.batch_size=4", "data.val_batch_size=3", "train.log_every=2", "train.val_every=2",
                 "train.checkpoint_every=4", "train.progress=false", "train.device=cpu", "export.num_pixels=100",
                 "export.num_prediction_images=2", "export.num_dense_images=1", "export.project=false",
                 "loss.projector_dim=8"]
    return load_config(resolve_config_path("synthetic-tiny"), overrides)


def test_training_ends_with_a_summary(tmp_path: Path, capsys) -> None:
    root = generate_synthetic_dataset(tmp_path / "data", n_train=8, n_val=3, size=(48, 64), seed=0)
    run_dir = Trainer(tiny_config(root, tmp_path / "runs")).fit()
    out = capsys.readouterr().out.strip().splitlines()
    final = json.loads((run_dir / "eval/summary.json").read_text())
    best = json.loads((run_dir / "run.json").read_text())["best_miou"]
    assert out[-3].startswith("tiny: 4 steps done in 0:0")
    assert out[-2] == (f"  final weights on {final['split']}: mIoU {final['miou'] * 100:.2f} %, "
                       f"pixel accuracy {final['pixel_acc'] * 100:.2f} % (best validation mIoU {best * 100:.2f} %)")
    assert out[-1] == f"  run directory: {run_dir}"


def test_format_summary() -> None:
    text = format_summary("camvid-mscs", Path("runs/camvid-mscs"), 8000, {"split": "val", "miou": 0.61234, "pixel_acc": 0.9},
                          0.6201, 3725.4)
    assert text == ("camvid-mscs: 8000 steps done in 1:02:05\n"
                    "  final weights on val: mIoU 61.23 %, pixel accuracy 90.00 % (best validation mIoU 62.01 %)\n"
                    "  run directory: runs/camvid-mscs")


FAKE_CHILD = (
    "import sys, time\n"
    "for done in (0, 50, 100):\n"
    "    sys.stderr.write(f'\\rprojections: {done:3d}%|##| {done}/100 [00:00], pca'); sys.stderr.flush(); time.sleep(0.05)\n"
    "print('30 projections cached under x')\n"
    "if sys.argv[1] == 'fail':\n"
    "    sys.stderr.write('\\nworkbench project: error: run.json: not valid JSON\\n'); sys.exit(2)\n"
)


@pytest.mark.parametrize("outcome", ["ok", "fail"])
def test_projection_child_progress_reaches_the_terminal(monkeypatch, capsys, outcome) -> None:
    monkeypatch.setattr(projection_cache, "projection_command", lambda run_dir, seed: [sys.executable, "-c", FAKE_CHILD, outcome])
    if outcome == "ok":
        assert project_in_child_process("runs/r", 0) == 0
    else:
        with pytest.raises(ProjectionError, match=r"^precomputing the projections of runs/r failed: workbench project: error: "
                                                  r"run.json: not valid JSON; retry with python -m workbench project runs/r$"):
            project_in_child_process("runs/r", 0)
    captured = capsys.readouterr()
    assert "\rprojections:  50%|##| 50/100 [00:00], pca\rprojections: 100%|##| 100/100 [00:00], pca" in captured.err
    assert captured.out == "", "the child's stdout is not mixed into the training output"
