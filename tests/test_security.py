"""Security of what the project reads: model keyword arguments never reach timm's file loading, torch files are
never unpickled beyond tensors, dependency floors exclude releases with known vulnerabilities, run files cannot
name files outside their run, broken run folders are listed as invalid, and projection caches never go into the
repository or a read-only run folder."""

from __future__ import annotations

import ast
import builtins
import errno
import json
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from fake_run import write_fake_run
from packaging.requirements import Requirement
from packaging.version import Version

from mscl.models import accepted_kwargs, build_model
from mscl.models.deeplabv3 import DeepLabV3
from mscl.models.encoders import read_state_dict
from runformat.paths import RunPathError, confine
from workbench import projections
from workbench.runs import RunFormatError, list_runs, load_run

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMM_MODELS = ("deeplabv3", "upernet", "hrnet", "ocrnet")
# keywords of timm.create_model that read files or fetch configurations
LOADING_KWARGS = ("checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


class _Marker:
    """Unpickling this object creates ``path``: proof that a file was unpickled with full pickle."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str, str]]:
        return (os.makedirs, (str(self.path), 0o755))


def emulate_read_only(monkeypatch: pytest.MonkeyPatch, folder: Path, report_writable: bool = False) -> None:
    """Make every write under ``folder`` fail with EACCES, as for a read-only folder of another user (permission
    bits do not stop root, so file creation, folder creation and renames are refused here instead).
    ``report_writable`` keeps ``os.access`` answering "writable", so only the write itself fails."""
    folder = folder.resolve()

    def inside(path: Any) -> bool:
        return isinstance(path, (str, bytes, os.PathLike)) and Path(os.fsdecode(path)).resolve().is_relative_to(folder)

    def refuse(path: Any) -> PermissionError:
        return PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))

    real_open, real_os_open, real_mkdir, real_replace, real_rename, real_access = (
        builtins.open, os.open, os.mkdir, os.replace, os.rename, os.access)

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if inside(file) and any(flag in mode for flag in "wax+"):
            raise refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        if inside(path):
            raise refuse(path)
        real_mkdir(path, *args, **kwargs)

    def fake_move(real: Callable[..., None]) -> Callable[..., None]:
        def move(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
            if inside(source) or inside(target):
                raise refuse(target)
            real(source, target, *args, **kwargs)
        return move

    def fake_access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if inside(path) and mode & os.W_OK and not report_writable:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "replace", fake_move(real_replace))
    monkeypatch.setattr(os, "rename", fake_move(real_rename))
    monkeypatch.setattr(os, "access", fake_access)


def files_under(folder: Path) -> dict[str, int]:
    return {str(path.relative_to(folder)): path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


# ------------------------------------------------------------------------------------- model keyword arguments


@pytest.mark.parametrize("name", TIMM_MODELS)
@pytest.mark.parametrize("key", LOADING_KWARGS)
def test_loading_kwargs_are_refused_before_timm_is_called(name: str, key: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    evil = tmp_path / "evil.pt"
    torch.save({"weight": _Marker(tmp_path / "executed")}, evil)
    calls: list[dict] = []
    monkeypatch.setattr(timm, "create_model", lambda *args, **kwargs: calls.append(kwargs))
    with pytest.raises(ValueError) as raised:
        build_model(name, 3, **{key: str(evil)})
    assert str(raised.value) == (f"model.kwargs: model {name!r} does not accept {key}; "
                                 f"allowed: {', '.join(accepted_kwargs(name))}")
    assert calls == [] and not (tmp_path / "executed").exists()


def test_model_kwargs_message_lists_the_head_options_and_timm_keywords() -> None:
    assert accepted_kwargs("deeplabv3") == ["atrous_rates", "decoder_channels", "drop_path_rate", "drop_rate",
                                            "output_stride"]
    assert accepted_kwargs("tiny") == ["decoder_channels", "widths"]
    assert {"img_size", "embed_dim", "depths", "num_heads", "pool_scales"} <= set(accepted_kwargs("upernet"))
    assert not set(LOADING_KWARGS) & {key for name in TIMM_MODELS for key in accepted_kwargs(name)}
    with pytest.raises(ValueError, match=r"^model\.kwargs: model 'deeplabv3' does not accept checkpoint_path, "
                                         r"pretrained_cfg; allowed: atrous_rates, decoder_channels, "):
        build_model("deeplabv3", 3, checkpoint_path="evil.pt", pretrained_cfg={"file": "evil.pt"})


def test_constructing_a_model_class_directly_also_refuses_loading_kwargs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(timm, "create_model", lambda *args, **kwargs: calls.append(kwargs))
    with pytest.raises(ValueError, match=r"timm encoder of model 'deeplabv3' does not accept checkpoint_path; "
                                         r"allowed: drop_path_rate, drop_rate, output_stride"):
        DeepLabV3(3, checkpoint_path="evil.pt")
    assert calls == []


def test_a_torch_file_needing_more_than_tensors_is_refused_not_executed(tmp_path: Path) -> None:
    evil = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(1), "extra": _Marker(tmp_path / "executed")}, evil)
    with pytest.raises(ValueError, match=r"weights\.pt was refused: it holds Python objects besides tensors, which "
                                         r"mscl never unpickles \(.*GLOBAL.*\); save the weights as a plain state dict"):
        read_state_dict(evil)
    assert not (tmp_path / "executed").exists()


def _python_files() -> list[Path]:
    skipped = {".git", "build", "mscl_workbench.egg-info", "sample_data", "results"}
    return [path for path in REPO_ROOT.rglob("*.py") if not skipped & set(path.relative_to(REPO_ROOT).parts)]


def test_every_torch_load_in_the_repository_is_weights_only() -> None:
    offenders = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = f"{getattr(func.value, 'id', '?')}.{func.attr}" if isinstance(func, ast.Attribute) else ""
            keywords = {keyword.arg: keyword.value for keyword in node.keywords}
            weights_only = keywords.get("weights_only")
            if name == "torch.load" and not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
            if name in ("pickle.load", "pickle.loads"):
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
            allow_pickle = keywords.get("allow_pickle")
            if isinstance(allow_pickle, ast.Constant) and allow_pickle.value is True:
                offenders.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert offenders == []


# ------------------------------------------------------------------------------------------ dependency floors

# first releases free of the named vulnerabilities, and the last release before each
FLOORS = {
    "torch": ("2.10", "2.9.1"),          # CVE-2025-32434, CVE-2026-24747: code execution through weights_only=True
    "timm": ("1.0.26", "1.0.25"),
    "pillow": ("12.3", "12.2.0"),        # CVE-2026-25990, CVE-2026-55379
    "tqdm": ("4.66.3", "4.66.2"),        # CVE-2024-34062
    "pyarrow": ("23.0.1", "23.0.0"),     # CVE-2026-25087
    "scikit-learn": ("1.5", "1.4.2"),    # CVE-2024-5206
    "streamlit": ("1.54", "1.53.1"),     # CVE-2026-33682
    "pytest": ("9.0.3", "9.0.2"),        # CVE-2025-71176
    "setuptools": ("78.1.1", "78.1.0"),  # CVE-2025-47273
}


def test_dependency_floors_exclude_vulnerable_releases() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    lines = [*project["project"]["dependencies"], *project["project"]["optional-dependencies"]["test"],
             *project["build-system"]["requires"]]
    specifiers = {Requirement(line).name: Requirement(line).specifier for line in lines}
    for name, (first_fixed, last_vulnerable) in FLOORS.items():
        assert Version(first_fixed) in specifiers[name], name
        assert Version(last_vulnerable) not in specifiers[name], name


def test_streamlit_listens_on_localhost_by_default() -> None:
    config = tomllib.loads((REPO_ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "localhost"


# -------------------------------------------------------------------------------------------- path confinement


def test_confine_accepts_paths_inside_the_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "predictions").mkdir(parents=True)
    (run / "predictions" / "alias.npz").symlink_to(run / "predictions" / "a.npz")
    assert confine(run, "predictions/a.npz", "x") == (run / "predictions" / "a.npz").resolve()
    assert confine(run, "predictions/../eval/summary.json", "x") == (run / "eval" / "summary.json").resolve()
    assert confine(run, "predictions/alias.npz", "x") == (run / "predictions" / "a.npz").resolve()


@pytest.mark.parametrize(("relative", "expected"), [
    ("../../x.npz", r"resolves to .*x\.npz, outside the run directory"),
    ("/etc/passwd", r"is not a path relative to the run directory"),
    ("C:\\Windows\\x.npz", r"is not a path relative to the run directory"),
    ("linked/x.npz", r"resolves through a symbolic link to .*outside/x\.npz, outside the run directory"),
])
def test_confine_refuses_paths_leaving_the_run(tmp_path: Path, relative: str, expected: str) -> None:
    run = tmp_path / "a" / "run"
    run.mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (run / "linked").symlink_to(tmp_path / "outside")
    with pytest.raises(RunPathError, match=rf"^predictions/index\.csv, column 'file', row 2: .*{expected}"):
        confine(run, relative, "predictions/index.csv, column 'file', row 2")
    assert issubclass(RunPathError, RunFormatError)


def _index_naming(run: Path, files: list[str]) -> None:
    index = pd.read_csv(run / "predictions" / "index.csv")
    index["file"] = files
    index.to_csv(run / "predictions" / "index.csv", index=False)


def test_prediction_index_naming_a_file_outside_the_run_is_refused(tmp_path: Path) -> None:
    run_dir = write_fake_run(tmp_path / "runs" / "run")
    outside = tmp_path / "x.npz"
    with np.load(run_dir / "predictions" / "val_000.npz") as data:
        np.savez(outside, **{key: data[key] for key in data.files})
    _index_naming(run_dir, ["val_000.npz", "../../../x.npz", "val_002.npz"])
    run = load_run(run_dir)
    message = (r"^predictions/index\.csv, column 'file', row 2: 'predictions/\.\./\.\./\.\./x\.npz' resolves to "
               rf"{outside}, outside the run directory {run.path}")
    with pytest.raises(RunFormatError, match=message):
        run.prediction_ids()
    with pytest.raises(RunPathError, match=message):
        run.prediction("val_001")


def test_a_symbolic_link_leaving_the_run_is_not_followed(tmp_path: Path) -> None:
    run_dir = write_fake_run(tmp_path / "runs" / "run")
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps(json.loads((run_dir / "eval" / "summary.json").read_text())))
    (run_dir / "eval" / "summary.json").unlink()
    (run_dir / "eval" / "summary.json").symlink_to(secret)
    with pytest.raises(RunPathError, match=r"^eval/summary\.json: 'eval/summary\.json' resolves through a symbolic "
                                           rf"link to {secret}, outside the run directory"):
        load_run(run_dir).eval_summary()
    assert np.isnan(list_runs(tmp_path / "runs")["miou"].iloc[0])


# ----------------------------------------------------------------------------------------------- list_runs


def test_one_broken_run_does_not_hide_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_run(tmp_path / "good")
    latin1 = write_fake_run(tmp_path / "latin1", seed=1)
    raw = (latin1 / "run.json").read_text().replace("fake-ms+cs-1", "caf\u00e9").encode("latin-1")
    (latin1 / "run.json").write_bytes(raw)
    bad_byte = raw.index(b"\xe9")
    typed = write_fake_run(tmp_path / "typed", seed=2)
    meta = json.loads((typed / "run.json").read_text())
    meta["timing"]["train_seconds"] = "an hour"
    (typed / "run.json").write_text(json.dumps(meta))
    locked = write_fake_run(tmp_path / "group" / "locked", seed=3)
    real_iterdir = Path.iterdir

    def iterdir(self: Path) -> Any:
        if self == tmp_path / "group":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    table = list_runs(tmp_path).set_index("name")
    assert table.loc["fake-ms+cs-0", "status"] == "finished"
    assert table.loc["latin1", "status"] == "invalid"
    assert table.loc["latin1", "error"] == (f"{latin1 / 'run.json'}: run.json: not UTF-8 text (byte {bad_byte}: "
                                            "invalid continuation byte); save it as UTF-8 JSON")
    assert table.loc["typed", "error"] == (f"{typed / 'run.json'}: run.json: key 'timing.train_seconds' must be a "
                                           "number, got 'an hour'")
    assert table.loc["group", "error"] == f"{tmp_path / 'group'}: cannot be read (Permission denied)"
    assert locked.name not in table.index
    with pytest.raises(RunFormatError, match=r"key 'timing\.train_seconds' must be a number, got 'an hour'"):
        load_run(typed)


# ------------------------------------------------------------------------------------------ projection caches


@pytest.fixture()
def user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "user-cache"
    monkeypatch.setenv(projections.CACHE_ENV_VAR, str(folder))
    return folder


@pytest.mark.parametrize("report_writable", [False, True], ids=["access-says-read-only", "write-fails"])
def test_read_only_run_caches_projections_in_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             user_cache: Path, report_writable: bool) -> None:
    run = load_run(write_fake_run(tmp_path / "run", stages=2))
    before = files_under(run.path)
    emulate_read_only(monkeypatch, run.path, report_writable=report_writable)
    rows = projections.select_pixels(run, max_points=30)
    coords = projections.projection(run, 1, "backbone", "pca", pixels=rows)
    path = projections.projection_cache_path(run, 1, "backbone", "pca", pixels=rows)
    assert path.is_relative_to(user_cache / "projections") and path.is_file()
    assert files_under(run.path) == before
    monkeypatch.setattr(projections, "project", lambda *args, **kwargs: pytest.fail("recomputed, cache missed"))
    np.testing.assert_array_equal(projections.projection(run, 1, "backbone", "pca", pixels=rows), coords)


def test_shipped_runs_cache_projections_outside_the_repository(user_cache: Path) -> None:
    shipped = sorted((REPO_ROOT / "sample_data" / "runs").glob("*/run.json"))
    if not shipped:
        pytest.skip("no shipped runs")
    run = load_run(shipped[0].parent)
    assert projections.cache_dir(run).is_relative_to(user_cache)
    before = files_under(run.path)
    rows = projections.select_pixels(run, max_points=30, seed=123)
    projections.projection(run, 0, "backbone", "pca", pixels=rows, seed=123)
    assert files_under(run.path) == before
    assert list(user_cache.rglob("*.npz"))


def test_writable_runs_keep_their_cache_in_the_run(tmp_path: Path, user_cache: Path) -> None:
    run = load_run(write_fake_run(tmp_path / "run", stages=2))
    assert projections.cache_dir(run) == run.path / "projections"
