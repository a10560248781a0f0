"""The ``mscl`` command line starts without the training stack: ``mscl --help`` must not import torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm", "umap", "sklearn", "workbench")

PROBE = f"""
import sys
from mscl.cli import main
try:
    main(["--help"])
except SystemExit as stop:
    assert stop.code == 0, stop.code
print(sorted(name for name in {HEAVY!r} if name in sys.modules))
"""


def run_python(code: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)


def test_mscl_help_imports_no_heavy_module() -> None:
    result = run_python(PROBE)
    assert "usage: mscl" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_importing_the_cli_and_the_config_skips_torch_per_importtime() -> None:
    """``-X importtime`` lists every module a process imports; torch must not be among them."""
    result = run_python("import mscl.cli, mscl.config, mscl.data, mscl.data.constants", "-X", "importtime")
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert {"mscl.cli", "mscl.config", "pydantic"} <= imported
    assert not {name for name in imported if name.split(".")[0] in ("torch", "torchvision", "timm")}


def test_lazy_names_still_resolve() -> None:
    """The lazily loaded names of ``mscl`` and ``mscl.data`` are the real objects (loaded on first use)."""
    result = run_python("import mscl, mscl.data as d, mscl.losses, mscl.data.camvid as c, mscl.data.transforms as t; "
                        "assert mscl.MSCSLoss is mscl.losses.MSCSLoss and d.CamVidDataset is c.CamVidDataset; "
                        "assert d.IMAGENET_MEAN == t.IMAGENET_MEAN == (0.485, 0.456, 0.406); "
                        "assert 'camvid' in d.available_datasets() and type(d.build_dataset).__name__ == 'function'; "
                        "print('ok')")
    assert result.stdout.strip() == "ok"
