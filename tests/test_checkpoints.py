"""Runs and checkpoints you can trust: checkpoint sets survive a kill, used run directories and locked runs are
refused, exports are all-or-nothing, SIGTERM during the final export is handled, and broken inputs give one-line
errors (docs/run-format.md). Trains tiny models on small synthetic scenes."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from fake_run import write_fake_run
from safetensors.torch import load_file

from mscl.cli import main as cli_main
from mscl.cli import resolve_config_path
from mscl.config import load_config
from mscl.data import generate_synthetic_dataset
from mscl.trainer import Trainer


class Killed(BaseException):
    """Stands for a kill: not an Exception nor a KeyboardInterrupt, so no handler of the trainer catches it."""


COMMON = [
    "data.batch_size=4", "data.val_batch_size=3", "data.color_jitter=0.0", "data.hflip=false", "train.log_every=2",
    "train.val_every=3", "train.checkpoint_every=2", "train.progress=false", "train.device=cpu", "export.num_pixels=50",
    "export.num_prediction_images=2", "export.num_dense_images=1", "export.project=false", "loss.projector_dim=16",
]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic", n_train=16, n_val=6, size=(48, 64), seed=0)


def config_for(root: Path, out: Path, name: str, preset: str = "ms+cs", steps: int = 6, extra: tuple[str, ...] = ()):
    overrides = [f"name={name}", f"output_dir={out}", f"data.root={root}", f"loss.preset={preset}", f"train.steps={steps}", *COMMON]
    replaced = {text.split("=", 1)[0] for text in extra}
    return load_config(resolve_config_path("synthetic-tiny"), [t for t in overrides if t.split("=", 1)[0] not in replaced] + list(extra))


def train_args(root: Path, out: Path, name: str, *more: str, device: str = "cpu") -> list[str]:
    sets = [arg for item in COMMON if not item.startswith("train.device") for arg in ("--set", item)]
    return ["train", "--config", "synthetic-tiny", "--root", str(root), "--out", str(out), "--name", name, "--device", device, *sets, *more]


@pytest.fixture(scope="module")
def reference(synthetic_root, tmp_path_factory) -> Path:
    """An uninterrupted 6-step ms+cs run."""
    return Trainer(config_for(synthetic_root, tmp_path_factory.mktemp("reference"), "reference")).fit()


@pytest.fixture(scope="module")
def ce_run(synthetic_root, tmp_path_factory) -> Path:
    """A finished 2-step CE run with checkpoint sets at steps 1 and 2."""
    extra = ("train.checkpoint_every=1", "train.val_every=1")
    return Trainer(config_for(synthetic_root, tmp_path_factory.mktemp("ce"), "ce", preset="ce", steps=2, extra=extra)).fit()


def error_of(stderr: str) -> str:
    """The command's error: the last line of stderr (data warnings may come first), with no traceback anywhere."""
    assert "Traceback" not in stderr
    return stderr.strip().splitlines()[-1] + "\n"


def copy_run(run: Path, target: Path) -> Path:
    return Path(shutil.copytree(run, target))


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints/last.safetensors"))


def assert_same_weights(run: Path, reference: Path) -> None:
    expected, found = final_weights(reference), final_weights(run)
    assert expected.keys() == found.keys()
    for key, value in expected.items():
        torch.testing.assert_close(found[key], value, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("fatal_fsync", [2, 5])
def test_kill_while_writing_a_checkpoint_resumes_to_the_same_weights(synthetic_root, reference, tmp_path, monkeypatch, fatal_fsync) -> None:
    """The process dies at the n-th file flush of the step-4 checkpoint (2: inside the set; 5: the set is in place,
    last.safetensors not yet switched); the resumed run must end with the uninterrupted run's weights."""
    config = config_for(synthetic_root, tmp_path, "killed")
    real_fsync, real_save = os.fsync, Trainer.save_checkpoint
    flushes = {"armed": False, "count": 0}

    def fsync(fd: int) -> None:
        if flushes["armed"]:
            flushes["count"] += 1
            if flushes["count"] == fatal_fsync:
                raise Killed
        real_fsync(fd)

    def save_checkpoint(self) -> None:
        flushes["armed"] = self.step == 4
        try:
            real_save(self)
        finally:
            flushes["armed"] = False

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Trainer, "save_checkpoint", save_checkpoint)
    with pytest.raises(Killed):
        Trainer(config).fit()
    monkeypatch.undo()
    Trainer(config, resume=True).fit()
    run = tmp_path / "killed"
    assert_same_weights(run, reference)
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "finished" and meta["timing"]["steps"] == 6
    assert [int(line.split(",")[0]) for line in (run / "metrics/train.csv").read_text().splitlines()[1:]] == [2, 4, 6]
    assert not list(run.rglob("*.tmp-*")), "stale temporaries are removed when the run is opened again"


@pytest.mark.slow
def test_format_version_1_run_resumes(synthetic_root, reference, tmp_path, monkeypatch) -> None:
    """A run written before checkpoint sets (three separate files in checkpoints/) resumes to the same weights."""
    config = config_for(synthetic_root, tmp_path, "v1")
    original = Trainer.train_step

    def stop_at_step_2(self, batch, generator):
        if self.step == 2:
            raise KeyboardInterrupt
        return original(self, batch, generator)

    monkeypatch.setattr(Trainer, "train_step", stop_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config).fit()
    monkeypatch.undo()
    run = tmp_path / "v1"
    checkpoints = run / "checkpoints"
    (folder,) = checkpoints.glob("set-*")
    shutil.copyfile(folder / "state.safetensors", checkpoints / "last_state.safetensors")
    scalars = json.loads((folder / "state.json").read_text())
    scalars.pop("lr_schedule")
    (checkpoints / "last_state.json").write_text(json.dumps(scalars))
    shutil.rmtree(folder)
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "format_version": 1}))
    Trainer(config, resume=True).fit()
    assert_same_weights(run, reference)
    assert json.loads((run / "run.json").read_text())["format_version"] == 2
    assert not (checkpoints / "last_state.json").exists() and not (checkpoints / "last_state.safetensors").exists()


def test_used_run_directory_is_refused_and_overwrite_replaces_it(synthetic_root, tmp_path, capsys) -> None:
    committed = write_fake_run(tmp_path / "ce-s0", missing=["checkpoints"])
    (committed / "projections").mkdir()
    (committed / "projections/stale.npz").write_bytes(b"old")
    before = (committed / "run.json").read_text()
    args = train_args(synthetic_root, tmp_path, "ce-s0", "--loss", "ce", "--steps", "2")
    assert cli_main(args) == 2
    err = error_of(capsys.readouterr().err)
    assert err == (f"mscl train: error: run directory {committed} is not empty (config.yaml, embeddings, eval, …); continue it "
                   f"with mscl train --resume {committed}, replace it with --overwrite, or choose another --name\n")
    assert (committed / "run.json").read_text() == before
    assert cli_main([*args, "--overwrite"]) == 0
    meta = json.loads((committed / "run.json").read_text())
    assert meta["name"] == "ce-s0" and meta["loss_preset"] == "ce" and meta["status"] == "finished"
    assert not (committed / "sampler").exists() and not (committed / "projections").exists(), "no file of the old run survives"


@pytest.mark.parametrize("name", ["..", "", "../escaped", "ABSOLUTE"])
def test_run_names_that_leave_the_output_folder_are_refused(synthetic_root, tmp_path, capsys, name) -> None:
    out = tmp_path / "runs"
    out.mkdir()
    name = str(tmp_path / "absolute") if name == "ABSOLUTE" else name
    assert cli_main(train_args(synthetic_root, out, name, "--loss", "ce", "--steps", "1")) == 2
    err = error_of(capsys.readouterr().err)
    assert err.startswith("mscl train: error: name: must be one folder name of letters, digits, '.', '_', '+' and '-'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"] and not list(out.iterdir())


def _hold_lock(run: Path):
    """Lock ``run`` as another mscl process would (flock on RUN/.run.lock, holder recorded in the file)."""
    run.mkdir(parents=True, exist_ok=True)
    handle = open(run / ".run.lock", "w")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write(json.dumps({"pid": 4242, "command": "mscl train elsewhere", "started": "2025-01-01T10:00:00+00:00"}))
    handle.flush()
    return handle


def test_a_locked_run_refuses_every_writer(synthetic_root, ce_run, tmp_path, capsys) -> None:
    run = copy_run(ce_run, tmp_path / "ce")
    fresh = tmp_path / "fresh"
    expected = ("is in use by process 4242 (mscl train elsewhere, started 2025-01-01T10:00:00+00:00); wait for it to finish or stop it, "
                "then try again\n")
    handles = [_hold_lock(run), _hold_lock(fresh)]
    try:
        before = (run / "eval/summary.json").read_bytes()
        for args in (["export", str(run), "--device", "cpu", "--no-project"], ["eval", str(run), "--device", "cpu", "--save"],
                     ["train", "--resume", str(run)], train_args(synthetic_root, tmp_path, "fresh", "--loss", "ce", "--steps", "1")):
            assert cli_main(args) == 2, args
            err = error_of(capsys.readouterr().err)
            target = fresh if args[-1] == "1" else run
            assert err == f"mscl {args[0]}: error: run directory {target} {expected}", args
        assert (run / "eval/summary.json").read_bytes() == before
        assert not list(run.glob("eval-*")) and sorted(p.name for p in fresh.iterdir()) == [".run.lock"]
    finally:
        for handle in handles:
            handle.close()
    assert cli_main(["eval", str(run), "--device", "cpu", "--save"]) == 0, "the lock is free once its holder is gone"


def test_export_is_all_or_nothing(ce_run, tmp_path, monkeypatch) -> None:
    import mscl.export
    from workbench import load_run

    run = copy_run(ce_run, tmp_path / "ce")
    before = {name: (run / name).read_bytes() for name in ("eval/summary.json", "eval/per_class.csv", "predictions/index.csv",
                                                           "embeddings/meta.json", "embeddings/pixels.parquet")}
    real_write_npy = mscl.export.write_npy

    def killed_at_embeddings(path, array):
        if "embeddings" in str(path):
            raise Killed
        return real_write_npy(path, array)

    monkeypatch.setattr(mscl.export, "write_npy", killed_at_embeddings)
    with pytest.raises(Killed):
        cli_main(["export", str(run), "--checkpoint", "best", "--device", "cpu", "--no-project"])
    monkeypatch.undo()
    assert {name: (run / name).read_bytes() for name in before} == before, "the previous export is untouched"
    assert load_run(run).embedding_meta()["checkpoint"] == "last"
    assert cli_main(["export", str(run), "--checkpoint", "best", "--device", "cpu", "--no-project"]) == 0
    reread = load_run(run)
    assert reread.eval_summary()["checkpoint"] == reread.embedding_meta()["checkpoint"] == "best"
    assert not list(run.rglob("*.tmp-*")) and not (run / ".swap.json").exists()


def test_failure_then_sigterm_during_the_final_export_then_resume(synthetic_root, tmp_path, monkeypatch) -> None:
    """A crash leaves ``failed`` with its error; the resumed run clears it. SIGTERM while the projection child runs
    stops the child and leaves ``interrupted`` (not ``exporting``); the next resume only exports and finishes."""
    config = config_for(synthetic_root, tmp_path, "run", steps=2, extra=("train.checkpoint_every=1",))
    run = tmp_path / "run"
    original = Trainer.train_step

    def crash_at_step_2(self, batch, generator):
        if self.step == 1:
            raise RuntimeError("deliberate failure in step 2")
        return original(self, batch, generator)

    monkeypatch.setattr(Trainer, "train_step", crash_at_step_2)
    with pytest.raises(RuntimeError, match="deliberate"):
        Trainer(config).fit()
    monkeypatch.undo()
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "failed" and meta["error"] == "RuntimeError: deliberate failure in step 2"

    pid_file = tmp_path / "child.pid"
    fake_python = tmp_path / "fake-python"
    fake_python.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 120\n")
    fake_python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake_python))

    done = threading.Event()

    def terminate_when_the_child_runs() -> None:
        while not pid_file.is_file():
            if done.wait(0.05):
                return
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        project_config = config_for(synthetic_root, tmp_path, "run", steps=2, extra=("train.checkpoint_every=1", "export.project=true"))
        threading.Thread(target=terminate_when_the_child_runs, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            Trainer(project_config, resume=True).fit()
    finally:
        done.set()
        signal.signal(signal.SIGTERM, previous)
    monkeypatch.undo()
    child = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "interrupted" and "error" not in meta and meta["timing"]["steps"] == 2
    Trainer(config, resume=True).fit()
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "finished" and json.loads((run / "eval/summary.json").read_text())["step"] == 2


def test_damaged_checkpoints_give_one_line_errors(ce_run, tmp_path, capsys) -> None:
    run = copy_run(ce_run, tmp_path / "ce")
    best = run / "checkpoints/best.safetensors"
    intact = best.read_bytes()
    reasons = {"truncated": intact[: len(intact) // 2], "empty": b"", "random": os.urandom(256)}
    for damaged in reasons.values():
        best.write_bytes(damaged)
        assert cli_main(["eval", str(run), "--checkpoint", "best", "--device", "cpu"]) == 2
        err = error_of(capsys.readouterr().err)
        assert err.startswith(f"mscl eval: error: {best} is damaged or not a safetensors file (")
        assert err.endswith("); try --checkpoint last\n")
    newest = run / "checkpoints/set-00000002"
    (newest / "weights.safetensors").write_bytes(intact[:100])
    assert cli_main(["train", "--resume", str(run)]) == 2
    err = error_of(capsys.readouterr().err)
    assert err.startswith(f"mscl train: error: {newest / 'weights.safetensors'} is damaged or not a safetensors file (")
    assert err.endswith(f"delete {newest} to resume from the previous set {run / 'checkpoints/set-00000001'} (step 1), "
                        "or start again with mscl train --overwrite\n")
    assert json.loads((run / "run.json").read_text())["status"] == "finished", "a refused resume leaves the run as it was"


def test_resume_with_another_loss_is_refused(ce_run, tmp_path, capsys) -> None:
    run = copy_run(ce_run, tmp_path / "ce")
    assert cli_main(["train", "--resume", str(run), "--loss", "ms+cs"]) == 2
    assert error_of(capsys.readouterr().err) == (
        f"mscl train: error: {run / 'run.json'}: the run was trained with loss preset ce, not ms+cs; resume it without --loss "
        "(its config.yaml keeps ce), or train a new run with --loss ms+cs and another --name\n")
    assert json.loads((run / "run.json").read_text())["status"] == "finished"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_device_without_a_gpu(synthetic_root, ce_run, tmp_path, capsys) -> None:
    assert cli_main(["eval", str(ce_run), "--device", "cuda"]) == 2
    advice = "no CUDA GPU is available on this machine; use --device cpu (or auto)\n"
    assert error_of(capsys.readouterr().err) == f"mscl eval: error: --device cuda: {advice}"
    assert cli_main(train_args(synthetic_root, tmp_path, "gpu", "--loss", "ce", "--steps", "1", device="cuda:0")) == 2
    assert error_of(capsys.readouterr().err) == f"mscl train: error: --device cuda:0: {advice}"


def test_mscl_project_on_a_malformed_run(tmp_path, capfd) -> None:
    run = write_fake_run(tmp_path / "run")
    (run / "embeddings/meta.json").write_text('{"num_pixels": 240}')
    assert cli_main(["project", str(run)]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines() == ["workbench project: error: embeddings/meta.json: missing key(s) ['stages', 'strides', "
                                        "'backbone_dims', 'projected_dims', 'has_projector', 'split', 'checkpoint', 'seed']"]


def test_damaged_only_set_and_misfitting_weights_name_the_way_out(ce_run, tmp_path) -> None:
    from mscl.checkpoints import CheckpointError, load_checkpoint_set, load_weights

    run = copy_run(ce_run, tmp_path / "ce")
    shutil.rmtree(run / "checkpoints/set-00000001")
    (run / "checkpoints/set-00000002/state.json").write_text('{"step": 2')
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint_set(run)
    assert str(caught.value).startswith(f"{run / 'checkpoints/set-00000002/state.json'} is damaged (")
    assert str(caught.value).endswith("the run has no other checkpoint set: start it again with --overwrite (or another --name); "
                                      f"its best weights may be intact in {run / 'checkpoints/best.safetensors'}")
    module = torch.nn.Linear(2, 3)
    weights = {"weight": torch.zeros(3, 2), "bias": torch.zeros(4), "extra": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"^w.safetensors does not fit the model: 1 unexpected key\(s\) \(e.g. extra\), "
                                              r"1 tensor\(s\) of another shape \(e.g. bias\); use another file$"):
        load_weights(module, weights, "w.safetensors", "use another file")
