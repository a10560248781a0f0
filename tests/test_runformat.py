"""runformat: atomic writes, the export swap, stale temporaries, the run lock, run names, opening a run for
writing, checkpoint-set discovery, and the workbench reader's checks of version, status and one export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_run import write_fake_run

from runformat import FORMAT_VERSION, READABLE_FORMAT_VERSIONS, RunStatus, layout
from runformat.atomic import (
    atomic_directory,
    atomic_file,
    recover_swap,
    remove_stale_temporaries,
    swap_folders,
    temporary_name,
    write_json,
)
from runformat.errors import RunExistsError, RunLockedError, RunNameError
from runformat.lock import RunLock
from runformat.names import check_run_name
from runformat.rundir import prepare_run_dir
from workbench.runs import RunFormatError, list_runs, load_run


class Killed(BaseException):
    """Stands for a kill: not an Exception, so no handler in the code under test catches it."""


def _temporaries(root: Path) -> list[Path]:
    return [path for path in root.rglob(f"*{'.tmp-'}*")]


def test_atomic_file_keeps_the_old_file_when_the_writer_dies(tmp_path: Path) -> None:
    target = tmp_path / "folder" / "table.csv"
    with atomic_file(target) as handle:
        handle.write(b"old")
    with pytest.raises(Killed):
        with atomic_file(target) as handle:
            handle.write(b"new, half")
            raise Killed
    assert target.read_bytes() == b"old"
    assert _temporaries(tmp_path) == []


def test_atomic_directory_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "checkpoints" / "set-00000004"
    with pytest.raises(Killed):
        with atomic_directory(target) as folder:
            (folder / "weights.safetensors").write_bytes(b"w")
            raise Killed
    assert not target.exists() and _temporaries(tmp_path) == []
    with atomic_directory(target) as folder:
        (folder / "a").write_text("1")
        (folder / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["a", "b"]
    with atomic_directory(target) as folder:
        (folder / "c").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c"], "a rewritten set replaces the old one as a whole"


def _export(folder: Path, tag: str) -> None:
    for name in layout.EXPORT_FOLDERS:
        (folder / name).mkdir(parents=True)
        (folder / name / "tag.txt").write_text(tag)


def test_swap_folders_rolls_forward_after_a_kill_between_renames(tmp_path: Path, monkeypatch) -> None:
    run = tmp_path / "run"
    _export(run, "old")
    staging = temporary_name(run / "export")
    _export(staging, "new")
    real_rename, calls = os.rename, []

    def rename_then_die(source, target):
        calls.append(target)
        if len(calls) == 3:  # eval/ swapped (aside + in), predictions/ moved aside: killed here
            raise Killed
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename_then_die)
    with pytest.raises(Killed):
        swap_folders(run, staging, layout.EXPORT_FOLDERS)
    monkeypatch.setattr(os, "rename", real_rename)
    assert (run / layout.SWAP_JOURNAL).is_file()
    assert recover_swap(run) is True
    assert [(run / name / "tag.txt").read_text() for name in layout.EXPORT_FOLDERS] == ["new", "new", "new"]
    assert not (run / layout.SWAP_JOURNAL).exists() and not staging.exists()
    assert recover_swap(run) is False


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale_file = tmp_path / "metrics" / f"train.csv.tmp-{dead_pid}-0a1b2c3d"
    stale_dir = tmp_path / "checkpoints" / f"set-00000004.tmp-{dead_pid}-0a1b2c3d"
    live = tmp_path / f"run.json.tmp-{os.getppid()}-0a1b2c3d"
    for path in (stale_file, live):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    stale_dir.mkdir(parents=True)
    (stale_dir / "weights.safetensors").write_text("x")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([stale_file, stale_dir])
    assert live.exists(), "a temporary of a running process (another writer) is left alone"


def test_run_lock_names_the_holder_and_is_released(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with RunLock(run, command="mscl train run"):
        with pytest.raises(RunLockedError) as caught:
            RunLock(run, command="mscl export run").acquire()
        message = str(caught.value)
        assert message.startswith(f"run directory {run} is in use by process {os.getpid()} (mscl train run, started 20")
        assert message.endswith("wait for it to finish or stop it, then try again")
    with RunLock(run, command="mscl export run") as lock:
        assert lock.held
    holder = json.loads((run / layout.LOCK_FILE).read_text())
    assert holder["pid"] == os.getpid() and holder["command"] == "mscl export run"


def test_run_lock_for_an_existing_run_does_not_create_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"^run directory {tmp_path / 'typo'} not found$"):
        RunLock(tmp_path / "typo", create=False).acquire()
    assert not (tmp_path / "typo").exists()


def test_run_lock_dies_with_its_process(tmp_path: Path) -> None:
    code = f"from runformat.lock import RunLock; RunLock({str(tmp_path)!r}, command='held').acquire(); import os; os._exit(0)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
    with RunLock(tmp_path) as lock:
        assert lock.held


@pytest.mark.parametrize("name", ["ce-s0", "camvid-mscs", "ms+cs_2.v1", "0"])
def test_valid_run_names(name: str) -> None:
    assert check_run_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/abs", "a\\b", ".hidden", "-x", "a..b", "a b", "x" * 129, None])
def test_invalid_run_names_are_refused(name: object) -> None:
    with pytest.raises(RunNameError, match=r"^--name .* is not a valid run name: it must be one folder name of letters"):
        check_run_name(name)


def test_prepare_run_dir_refuses_a_used_directory_and_overwrite_empties_it(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "ce-s0", with_projector=False, missing=["checkpoints"])
    with RunLock(run):
        with pytest.raises(RunExistsError) as caught:
            prepare_run_dir(run)
        assert str(caught.value) == (
            f"run directory {run} is not empty (config.yaml, embeddings, eval, …); continue it with mscl train --resume "
            f"{run}, replace it with --overwrite, or choose another --name"
        )
        prepare_run_dir(run, resume=True)
        assert (run / layout.RUN_JSON).is_file(), "resuming keeps the run"
        prepare_run_dir(run, overwrite=True)
        assert sorted(p.name for p in run.iterdir()) == [layout.LOCK_FILE]
        prepare_run_dir(run)


def _set(run: Path, step: int, files: tuple[str, ...] = layout.SET_FILES) -> Path:
    folder = run / layout.checkpoint_set(step)
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_bytes(b"x")
    return folder


def test_checkpoint_sets_newest_complete_first(tmp_path: Path) -> None:
    assert layout.latest_checkpoint_set(tmp_path) is None
    _set(tmp_path, 4)
    _set(tmp_path, 12)
    _set(tmp_path, 16, files=layout.SET_FILES[:2])
    (tmp_path / f"{layout.checkpoint_set(20)}.tmp-1-0a1b2c3d").mkdir()
    assert [s.step for s in layout.checkpoint_sets(tmp_path)] == [12, 4]
    latest = layout.latest_checkpoint_set(tmp_path)
    assert latest.weights == tmp_path / "checkpoints/set-00000012/weights.safetensors" and not latest.legacy


def test_format_version_1_checkpoint_is_one_legacy_set(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "old", format_version=1)
    (found,) = layout.checkpoint_sets(run)
    assert found.legacy and found.step == 200
    assert (found.weights, found.tensors, found.scalars) == (
        run / "checkpoints/last.safetensors", run / "checkpoints/last_state.safetensors", run / "checkpoints/last_state.json")


def test_fake_run_follows_the_current_format(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "new")
    meta = json.loads((run / "run.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION == 2 and meta["status"] == "finished"
    assert layout.latest_checkpoint_set(run).step == 200


@pytest.mark.parametrize("version", READABLE_FORMAT_VERSIONS)
def test_reader_reads_both_format_versions(tmp_path: Path, version: int) -> None:
    run = load_run(write_fake_run(tmp_path / "run", format_version=version))
    assert run.meta["format_version"] == version
    assert run.embedding_meta()["checkpoint"] == run.eval_summary()["checkpoint"] == "best"


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    write_json(path, data)


def test_reader_refuses_an_unknown_format_version_and_status(tmp_path: Path) -> None:
    run = write_fake_run(tmp_path / "run")
    _edit_json(run / "run.json", format_version=3)
    with pytest.raises(RunFormatError, match=r"run.json: key 'format_version' is 3; this workbench reads format versions \[1, 2\]"):
        load_run(run)
    _edit_json(run / "run.json", format_version=2, status="done")
    with pytest.raises(RunFormatError, match=r"run.json: key 'status' is 'done'; expected one of \['running', 'exporting', "
                                             r"'finished', 'interrupted', 'failed'\]"):
        load_run(run)
    assert list_runs(tmp_path)["status"].tolist() == ["invalid"]


def test_statuses_are_the_documented_five() -> None:
    assert [str(s) for s in RunStatus] == ["running", "exporting", "finished", "interrupted", "failed"]
    assert json.dumps({"status": RunStatus.INTERRUPTED}) == '{"status": "interrupted"}'
    documented = (Path(__file__).resolve().parents[1] / "docs/run-format.md").read_text()
    assert all(f"`{status}`" in documented for status in RunStatus)


def test_reader_refuses_a_mixture_of_two_exports(tmp_path: Path) -> None:
    run_dir = write_fake_run(tmp_path / "run")
    _edit_json(run_dir / "embeddings/meta.json", checkpoint="last")
    run = load_run(run_dir)
    expected = (r"eval/summary.json has checkpoint 'best' but embeddings/meta.json has 'last': the run holds parts of two "
                r"exports; rewrite them together with `mscl export .* --checkpoint best`")
    with pytest.raises(RunFormatError, match=expected):
        run.embedding_meta()
    with pytest.raises(RunFormatError, match=expected):
        run.eval_summary()
    _edit_json(run_dir / "embeddings/meta.json", checkpoint="best", step=150)
    run.refresh()
    with pytest.raises(RunFormatError, match="eval/summary.json has step 199 but embeddings/meta.json has 150"):
        run.pixels()


def test_reader_refuses_a_run_whose_export_swap_is_unfinished(tmp_path: Path) -> None:
    run_dir = write_fake_run(tmp_path / "run")
    write_json(run_dir / layout.SWAP_JOURNAL, {"staging": "export.tmp-1-0a1b2c3d", "folders": list(layout.EXPORT_FOLDERS)})
    with pytest.raises(RunFormatError, match=r"\.swap\.json: an export of run .* is being swapped in or was interrupted doing so"):
        load_run(run_dir).embedding_meta()


def test_workbench_project_command(tmp_path: Path, capsys) -> None:
    from workbench.__main__ import main

    run = write_fake_run(tmp_path / "run")
    assert main(["project", str(run), "--methods", "pca"]) == 0
    assert capsys.readouterr().out.startswith(f"10 projections cached under {run / 'projections'}")
    assert len(list((run / "projections").glob("*.npz"))) == 10 and _temporaries(run) == []
    (run / "run.json").write_text("{not json")
    assert main(["project", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("workbench project: error: run.json: not valid JSON") and err.count("\n") == 1


def test_no_mscl_module_imports_the_workbench() -> None:
    import ast

    offenders, files = [], sorted((Path(__file__).resolve().parents[1] / "mscl").rglob("*.py"))
    assert len(files) > 10
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {name}" for name in names if name == "workbench" or name.startswith("workbench.")]
    assert offenders == []


def test_runformat_does_not_import_torch() -> None:
    code = "import runformat, runformat.atomic, runformat.lock, runformat.rundir, runformat.projection_cache, sys; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.strip() == "False"
