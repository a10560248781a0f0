"""The demo's synthetic scenes are not kept in git: they regenerate byte for byte from the seed."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from mscl.demo import generate_demo_scenes

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "sample_data" / "synthetic.sha256"


def _manifest() -> dict[str, str]:
    entries = {}
    for line in MANIFEST.read_text().splitlines():
        digest, relative = line.split(maxsplit=1)
        entries[relative] = digest
    return entries


def test_generated_scenes_are_not_tracked_in_git():
    listed = subprocess.run(["git", "ls-files", "sample_data/synthetic"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert listed.stdout == ""


def test_demo_scenes_regenerate_byte_for_byte(tmp_path):
    expected = _manifest()
    assert len(expected) == 501  # classes.json + 200 train and 50 val images with their masks
    root = generate_demo_scenes(tmp_path / "synthetic", seed=0)
    written = {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}
    assert written == expected
