"""Embedding snapshots during training (``mscl.snapshots``), the timeline and step maps read from them
(``workbench.timeline``), the checkpoint export in a child process (``workbench.export_job``) and the Training
dynamics page, on short real trainings of the tiny model on synthetic scenes."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from scipy.linalg import orthogonal_procrustes
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from streamlit.testing.v1 import AppTest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from app_pages import common  # noqa: E402
from mscl.checkpoints import SegmentationWithProjectors, load_run_module, resolve_checkpoint  # noqa: E402
from mscl.cli import main as cli_main  # noqa: E402
from mscl.cli import resolve_config_path  # noqa: E402
from mscl.config import load_config  # noqa: E402
from mscl.data import generate_synthetic_dataset  # noqa: E402
from mscl.data.loading import build_split  # noqa: E402
from mscl.models import build_model  # noqa: E402
from mscl.projectors import ProjectorSet  # noqa: E402
from mscl.snapshots import SnapshotRecorder  # noqa: E402
from mscl.trainer import Trainer  # noqa: E402
from runformat import snapshots as layout  # noqa: E402
from workbench import export_job, load_run  # noqa: E402
from workbench.export_job import ExportJob, parse_progress  # noqa: E402
from workbench.runs import MissingArtifactError  # noqa: E402
from workbench.separability import knn_accuracy  # noqa: E402
from workbench.timeline import METRICS, TIMELINE_COLUMNS, step_maps, timeline, timeline_figure  # noqa: E402

APP = str(REPO_ROOT / "app.py")
PAGE = "app_pages/dynamics.py"
CAMVID = Path("/work/shared/datasets/camvid")
STEPS, VAL_EVERY = 4, 2
SNAPSHOT_STEPS = [2, 4]
STAGES = [0, 1, 2, 3]


def small_config(root: Path, out: Path, name: str, preset: str, extra: tuple[str, ...] = ()):
    overrides = [
        f"name={name}", f"output_dir={out}", f"data.root={root}", f"loss.preset={preset}", f"train.steps={STEPS}",
        "data.batch_size=4", "data.val_batch_size=3", "data.color_jitter=0.0", "data.hflip=false",
        "train.log_every=2", f"train.val_every={VAL_EVERY}", "train.checkpoint_every=2", "train.progress=false",
        "train.device=cpu", "export.num_pixels=200", "export.num_prediction_images=2", "export.num_dense_images=1",
        "export.project=false", "loss.projector_dim=16",
    ]
    return load_config(resolve_config_path("synthetic-tiny"), overrides + list(extra))


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic", n_train=16, n_val=6,
                                      size=(48, 64), seed=0)


@pytest.fixture(scope="module")
def runs_root(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CE run and an ms+cs run with snapshots, and the same ms+cs run with ``export.snapshots=false``."""
    root = tmp_path_factory.mktemp("runs")
    for name, preset, extra in (("ce", "ce", ()), ("mscs", "ms+cs", ()), ("mscs-off", "ms+cs", ("export.snapshots=false",))):
        Trainer(small_config(synthetic_root, root, name, preset, extra)).fit()
    return root


def read_snapshot(run_dir: Path, step: int) -> dict[str, np.ndarray]:
    with np.load(run_dir / layout.snapshot_file(step), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


# ------------------------------------------------------------------------------------------ the recorder


def test_training_keeps_one_snapshot_per_validation_within_the_budget(runs_root: Path) -> None:
    for name, kinds in (("ce", ["backbone"]), ("mscs", ["backbone", "projected"])):
        run_dir = runs_root / name
        index = pd.read_csv(run_dir / layout.INDEX)
        val = pd.read_csv(run_dir / "metrics/val.csv")
        assert index["step"].tolist() == SNAPSHOT_STEPS == val["step"].tolist()
        np.testing.assert_allclose(index["miou"], val["miou"])
        meta = json.loads((run_dir / layout.META).read_text())
        pixels = pd.read_parquet(run_dir / layout.PIXELS)
        assert len(pixels) == meta["num_pixels"] > 100 and meta["stages"] == STAGES
        assert list(pixels.columns) == list(layout.PIXEL_COLUMNS)
        assert (pixels["label"] != 255).all() and pixels["pixel"].tolist() == list(range(len(pixels)))
        for step, file in zip(index["step"], index["file"]):
            assert file == layout.snapshot_file(step)
            assert (run_dir / file).stat().st_size <= layout.MAX_BYTES == 1_000_000
            arrays = read_snapshot(run_dir, step)
            expected = {layout.array_key(s, kind) for s in STAGES for kind in kinds} | {layout.PREDICTION_KEY}
            assert set(arrays) == expected
            for s, dim in zip(STAGES, meta["backbone_dims"]):
                assert arrays[f"stage{s}_backbone"].dtype == np.float16
                assert arrays[f"stage{s}_backbone"].shape == (len(pixels), dim)
            if "projected" in kinds:
                assert all(arrays[f"stage{s}_projected"].shape == (len(pixels), 16) for s in STAGES)
            assert arrays["prediction"].shape == (len(pixels),)
    assert not (runs_root / "mscs-off" / layout.SNAPSHOTS_DIR).exists()


def test_snapshot_pixels_are_class_balanced_and_depend_on_the_seed_only(runs_root: Path) -> None:
    ce = pd.read_parquet(runs_root / "ce" / layout.PIXELS)
    mscs = pd.read_parquet(runs_root / "mscs" / layout.PIXELS)
    pd.testing.assert_frame_equal(ce, mscs)
    meta = json.loads((runs_root / "mscs" / layout.META).read_text())
    budget = layout.pixel_budget(meta["backbone_dims"], meta["projected_dims"])
    assert mscs["label"].value_counts().max() <= budget // mscs["label"].nunique()
    assert mscs["image_index"].nunique() == 6


def test_weights_are_identical_with_and_without_snapshots(runs_root: Path) -> None:
    for checkpoint in ("last", "best"):
        with_snapshots = load_file(str(resolve_checkpoint(runs_root / "mscs", checkpoint)))
        without = load_file(str(resolve_checkpoint(runs_root / "mscs-off", checkpoint)))
        assert with_snapshots.keys() == without.keys()
        for key, value in with_snapshots.items():
            assert torch.equal(value, without[key]), f"{checkpoint}: {key}"


def test_last_snapshot_equals_features_recomputed_from_the_checkpoint(runs_root: Path) -> None:
    run_dir = runs_root / "mscs"
    config, module = load_run_module(run_dir, "last")
    module.eval()
    val = build_split(config, config.data.val_split, train=False)
    pixels = pd.read_parquet(run_dir / layout.PIXELS)
    snapshot = read_snapshot(run_dir, SNAPSHOT_STEPS[-1])
    with torch.no_grad():
        for image_index, rows in pixels.groupby("image_index"):
            sample = val[int(image_index)]
            output = module.model(sample["image"][None])
            projected = module.projectors(output.features)
            height, width = sample["label"].shape
            ys, xs = rows["y"].to_numpy(), rows["x"].to_numpy()
            for kind, maps in (("backbone", output.features), ("projected", projected)):
                for stage, feature in enumerate(maps):
                    h, w = feature.shape[-2:]
                    expected = feature[0][:, ys * h // height, xs * w // width].T.numpy()
                    stored = snapshot[f"stage{stage}_{kind}"][rows.index].astype(np.float32)
                    np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=2e-3, err_msg=f"{kind} {stage}")
            prediction = output.logits[0].argmax(0).numpy()[ys, xs]
            np.testing.assert_array_equal(snapshot["prediction"][rows.index], prediction)


class FakeValSplit:
    """Six seeded 32x40 images whose labels are class blocks with an ignore border (the dataset item contract)."""

    def __init__(self, num_classes: int = 5) -> None:
        self.info = SimpleNamespace(class_names=[f"c{k}" for k in range(num_classes)], ignore_index=255)
        self.num_classes = num_classes

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int) -> dict:
        generator = torch.Generator().manual_seed(index)
        label = torch.randint(0, self.num_classes, (4, 5), generator=generator).repeat_interleave(8, 0).repeat_interleave(8, 1)
        label[0] = 255
        return {"image": torch.randn(3, 32, 40, generator=generator), "label": label, "index": index,
                "image_id": f"img{index}"}


def fake_module(widths: tuple[int, ...] = (8, 8, 16, 16), dim: int | None = 8) -> SegmentationWithProjectors:
    torch.manual_seed(0)
    model = build_model("tiny", 5, widths=widths)
    projectors = ProjectorSet(list(widths), dim=dim) if dim else None
    return SegmentationWithProjectors(model, projectors)


def recorder(run_dir: Path, seed: int = 0, **limits: int) -> SnapshotRecorder:
    return SnapshotRecorder(run_dir, FakeValSplit(), range(6), split="val", seed=seed, batch_size=4, device="cpu", **limits)


def test_recorder_keeps_its_pixels_on_resume_and_replaces_later_rows(tmp_path: Path) -> None:
    module = fake_module()
    first = recorder(tmp_path / "run", max_pixels=120)
    first.record(2, module, 0.25)
    first.record(4, module, 0.5)
    pixels_file = tmp_path / "run" / layout.PIXELS
    chosen = pixels_file.read_bytes()
    arrays_before = read_snapshot(tmp_path / "run", 4)

    resumed = recorder(tmp_path / "run", max_pixels=120)
    resumed.record(4, module, 0.75)
    assert pixels_file.read_bytes() == chosen
    index = pd.read_csv(tmp_path / "run" / layout.INDEX)
    assert index["step"].tolist() == [2, 4] and index["miou"].tolist() == [0.25, 0.75]
    arrays_after = read_snapshot(tmp_path / "run", 4)
    for key, value in arrays_before.items():
        np.testing.assert_array_equal(arrays_after[key], value, err_msg=key)
    first_snapshot = read_snapshot(tmp_path / "run", 2)
    resumed.record(2, module, 0.3)
    assert pd.read_csv(tmp_path / "run" / layout.INDEX)["step"].tolist() == [2]
    for key, value in first_snapshot.items():
        np.testing.assert_array_equal(read_snapshot(tmp_path / "run", 2)[key], value, err_msg=key)

    same_seed = recorder(tmp_path / "same", max_pixels=120)
    same_seed.record(2, fake_module(widths=(4, 8, 8, 8), dim=None), 0.1)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "same" / layout.PIXELS), pd.read_parquet(pixels_file))
    other_seed = recorder(tmp_path / "other", seed=1, max_pixels=120)
    other_seed.record(2, module, 0.1)
    assert not pd.read_parquet(tmp_path / "other" / layout.PIXELS).equals(pd.read_parquet(pixels_file))


def test_recording_leaves_the_global_rng_and_the_training_mode_alone(tmp_path: Path) -> None:
    module = fake_module()
    module.train()
    torch.manual_seed(7)
    state = torch.get_rng_state()
    recorder(tmp_path / "run").record(2, module, 0.1)
    assert torch.equal(torch.get_rng_state(), state)
    assert module.training and module.model.training


def test_a_wide_model_snapshot_stays_within_the_byte_budget(tmp_path: Path) -> None:
    widths, dim = (64, 128, 256, 512), 256
    path = recorder(tmp_path / "run").record(2, fake_module(widths, dim), 0.1)
    budget = layout.pixel_budget(widths, [dim] * 4)
    bytes_per_pixel = 2 * (sum(widths) + 4 * dim) + 2
    assert budget == (layout.MAX_BYTES - layout.ARCHIVE_SLACK_BYTES) // bytes_per_pixel == 247
    assert path.stat().st_size <= layout.MAX_BYTES
    assert len(pd.read_parquet(tmp_path / "run" / layout.PIXELS)) <= budget
    assert layout.pixel_budget((16, 32, 64, 96), [64] * 4) == layout.MAX_PIXELS
    with pytest.raises(ValueError, match="more than the snapshot budget of 1000000 bytes; set export.snapshots=false"):
        layout.pixel_budget([600_000], [])


def test_snapshots_are_on_by_default_and_in_the_demo_config() -> None:
    assert load_config().export.snapshots is True
    assert load_config(resolve_config_path("synthetic-tiny")).export.snapshots is True
    assert load_config(overrides=["export.snapshots=false"]).export.snapshots is False


# ------------------------------------------------------------------------------------------ the workbench


def test_timeline_has_steps_times_stages_rows_per_metric_and_equals_the_formulas(runs_root: Path) -> None:
    run = load_run(runs_root / "mscs")
    table = timeline(run)
    assert list(table.columns) == ["step", "stage", "kind", "metric", "value", "miou"]
    for (kind, metric), rows in table.groupby(["kind", "metric"]):
        assert len(rows) == len(SNAPSHOT_STEPS) * len(STAGES), (kind, metric)
        assert set(zip(rows["step"], rows["stage"])) == {(s, g) for s in SNAPSHOT_STEPS for g in STAGES}
    assert set(table.loc[table["kind"] == "projected", "metric"]) == set(METRICS)
    assert "prototype_similarity" not in set(table.loc[table["kind"] == "backbone", "metric"])
    val = pd.read_csv(runs_root / "mscs/metrics/val.csv").set_index("step")["miou"]
    np.testing.assert_allclose(table["miou"], val.loc[table["step"]].to_numpy())

    pixels = pd.read_parquet(runs_root / "mscs" / layout.PIXELS)
    labels, groups = pixels["label"].to_numpy(), pixels["image_index"].to_numpy()
    arrays = read_snapshot(runs_root / "mscs", 4)
    X = arrays["stage2_projected"].astype(np.float64)
    X0 = arrays["stage0_projected"].astype(np.float64)
    Z = X / np.linalg.norm(X, axis=1, keepdims=True)
    distances = np.maximum(2 - 2 * Z @ Z.T, 0)
    same = (labels[:, None] == labels[None, :]) & ~np.eye(len(Z), dtype=bool)
    off_diagonal = ~np.eye(len(Z), dtype=bool)

    def prototypes(data: np.ndarray) -> np.ndarray:
        unit = data / np.linalg.norm(data, axis=1, keepdims=True)
        means = np.stack([unit[labels == c].mean(0) for c in np.unique(labels)])
        return means / np.linalg.norm(means, axis=1, keepdims=True)

    def cka(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a - a.mean(0), b - b.mean(0)
        return np.linalg.norm(b.T @ a) ** 2 / (np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b))

    expected = {
        "silhouette": silhouette_score(X, labels, metric="cosine"),
        "knn_accuracy": knn_accuracy(X, labels, groups),
        "alignment": distances[same].mean(),
        "uniformity": np.log(np.exp(-2 * distances[off_diagonal]).mean()),
        "prototype_similarity": np.mean(np.sum(prototypes(X) * prototypes(X0), axis=1)),
        "cka_to_finest": cka(X0, X),
    }
    got = table[(table["step"] == 4) & (table["stage"] == 2) & (table["kind"] == "projected")].set_index("metric")["value"]
    for metric, value in expected.items():
        assert got[metric] == pytest.approx(value, rel=1e-4, abs=1e-6), metric
    stage0 = table[(table["stage"] == 0) & (table["kind"] == "projected")]
    np.testing.assert_allclose(stage0.loc[stage0["metric"].isin(["cka_to_finest", "prototype_similarity"]), "value"], 1.0)


def test_step_maps_show_the_same_pixels_aligned_step_to_step(runs_root: Path) -> None:
    run = load_run(runs_root / "mscs")
    maps = step_maps(run, 1, "projected", "pca")
    assert list(maps) == SNAPSHOT_STEPS
    pixel_count = len(pd.read_parquet(runs_root / "mscs" / layout.PIXELS))
    assert all(coords.shape == (pixel_count, 2) and coords.dtype == np.float32 for coords in maps.values())

    def pca(step: int) -> np.ndarray:
        X = read_snapshot(runs_root / "mscs", step)["stage1_projected"].astype(np.float64)
        return PCA(n_components=2, random_state=0).fit_transform(X / np.linalg.norm(X, axis=1, keepdims=True))

    first, second = pca(2), pca(4)
    np.testing.assert_allclose(maps[2], first, atol=1e-5)
    rotation, _ = orthogonal_procrustes(second - second.mean(0), maps[2])
    np.testing.assert_allclose(maps[4], (second - second.mean(0)) @ rotation, atol=1e-5)
    assert np.linalg.norm(maps[4] - maps[2]) <= np.linalg.norm(second - maps[2]) + 1e-6


def test_a_run_without_snapshots_names_the_missing_file_and_the_setting(runs_root: Path) -> None:
    run = load_run(runs_root / "mscs-off")
    with pytest.raises(MissingArtifactError) as caught:
        timeline(run)
    assert caught.value.artifact == "snapshots/index.csv"
    assert "written by `mscl train` at every validation when `export.snapshots` is true" in str(caught.value)
    assert f"`mscl export {run.path}`" in str(caught.value)


def test_the_app_side_never_imports_torch() -> None:
    code = ("import sys, workbench.timeline, workbench.export_job, runformat.snapshots\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


# ------------------------------------------------------------------------------------------ the export job

FAKE_EXPORT = textwrap.dedent("""
    import json, sys, time
    for done in range(4):
        sys.stderr.write(f"\\reval:  {25 * done}%|##   | {done}/4 [00:00<00:00]")
        sys.stderr.flush()
        time.sleep(float(sys.argv[1]))
    sys.stderr.write("\\r")
    print(json.dumps({"split": "val", "checkpoint": sys.argv[2], "step": 4, "miou": 0.1234}, indent=2))
""")


def fake_command(pause: float = 0.0, checkpoint: str = "last") -> list[str]:
    return [sys.executable, "-c", FAKE_EXPORT, str(pause), checkpoint]


def test_parse_progress_reads_tqdm_and_projection_lines() -> None:
    assert parse_progress("eval:  45%|####5     | 5/11 [00:01<00:01,  3.2it/s]") == ("eval", 5 / 11)
    assert parse_progress("24 projections cached under runs/x/projections") == ("projections", None)
    assert parse_progress('  "miou": 0.5,') is None
    assert parse_progress("eval:  45%|####5     | 5/1") is None, "a line cut inside its counter is not read"


def test_export_job_reports_progress_the_summary_and_failures(tmp_path: Path) -> None:
    job = ExportJob(tmp_path, "best", command=fake_command(checkpoint="best")).start()
    assert job.wait(timeout=60) == "finished"
    assert job.progress().fraction == 1.0
    assert job.summary() == {"split": "val", "checkpoint": "best", "step": 4, "miou": 0.1234}
    assert "eval:  75%|##   | 3/4 [00:00<00:00]" in job.output()

    failing = [sys.executable, "-c", "import sys; print('mscl export: error: checkpoint not found: x'); sys.exit(2)"]
    job = ExportJob(tmp_path, "last", command=failing).start()
    assert job.wait(timeout=60) == "failed"
    assert job.error() == "mscl export: error: checkpoint not found: x" and job.summary() is None
    assert export_job.export_command(tmp_path, "best") == [
        sys.executable, "-m", "mscl.cli", "export", str(tmp_path), "--checkpoint", "best", "--device", "auto", "--no-project"]


def test_export_job_can_be_cancelled(tmp_path: Path) -> None:
    job = ExportJob(tmp_path, "last", command=fake_command(pause=30.0)).start()
    deadline = time.monotonic() + 60
    while job.progress().phase != "eval" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.progress() == export_job.ExportProgress("running", "eval", 0.0)
    job.cancel(grace=5.0)
    assert job.state == "cancelled" and not job.running


# ------------------------------------------------------------------------------------------ the page


def plotly_array(value: list | dict) -> np.ndarray:
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.asarray(value, dtype=float)


def open_page(root: Path, monkeypatch: pytest.MonkeyPatch, timeout: float = 120, run_a: str = "ce",
              run_b: str | None = "mscs") -> AppTest:
    """The Training dynamics page on the runs under ``root``, with run A and B picked by folder name."""
    monkeypatch.setenv(common.RUNS_ENV_VAR, str(root))
    app = AppTest.from_file(APP, default_timeout=timeout)
    app.run()
    app.selectbox(key="run_a").set_value(str((root / run_a).resolve()))
    app.selectbox(key="run_b").set_value(str((root / run_b).resolve()) if run_b else common.NO_RUN_B)
    app.run()
    app.switch_page(PAGE).run()
    assert not app.exception, [item.value for item in app.exception]
    return app


def chart(app: AppTest, key: str) -> dict:
    for element in app.get("plotly_chart"):
        spec = json.loads(element.proto.spec)
        if element.proto.id.endswith(key) or key in element.proto.id:
            return spec
    raise AssertionError(f"no chart {key}")


def test_page_draws_the_curves_of_runs_a_and_b_with_miou_on_a_second_axis(runs_root: Path, monkeypatch) -> None:
    app = open_page(runs_root, monkeypatch)
    assert not app.error, [item.value for item in app.error]
    assert app.selectbox(key="dynamics-kind").value == "backbone"
    assert app.selectbox(key="dynamics-metric").value == "silhouette"
    traces = {trace["name"]: trace for trace in chart(app, "dynamics-curves")["data"]}
    for name in ("ce", "mscs"):
        for stage in STAGES:
            assert f"{name} · stage {stage}" in traces
        assert traces[f"{name} · val mIoU"]["yaxis"] == "y2"
    expected = timeline(load_run(runs_root / "mscs"))
    rows = expected[(expected["metric"] == "silhouette") & (expected["kind"] == "backbone") & (expected["stage"] == 3)]
    np.testing.assert_allclose(plotly_array(traces["mscs · stage 3"]["y"]), rows["value"])
    miou = plotly_array(traces["ce · val mIoU"]["y"])
    np.testing.assert_allclose(miou, 100 * pd.read_csv(runs_root / "ce/metrics/val.csv")["miou"])
    assert np.all((miou >= 0) & (miou <= 100))
    assert chart(app, "dynamics-curves")["layout"]["yaxis2"]["title"]["text"] == "val mIoU (%)"


def test_timeline_figure_draws_the_val_miou_in_percent() -> None:
    rows = [{"step": step, "stage": stage, "kind": "backbone", "metric": "silhouette", "value": 0.1 * stage,
             "miou": miou} for step, miou in ((2, 0.125), (4, 0.5)) for stage in (0, 1)]
    fig = timeline_figure({"run": pd.DataFrame(rows, columns=list(TIMELINE_COLUMNS))}, "silhouette", "backbone")
    traces = {trace.name: trace for trace in fig.data}
    np.testing.assert_allclose(traces["run · val mIoU"].y, [12.5, 50.0])
    np.testing.assert_allclose(traces["run · stage 1"].y, [0.1, 0.1])  # the metric itself keeps its own scale
    assert fig.layout.yaxis2.title.text == "val mIoU (%)"


def test_page_says_how_a_run_without_snapshots_gets_them(runs_root: Path, monkeypatch) -> None:
    app = open_page(runs_root, monkeypatch, run_a="mscs", run_b="mscs-off")
    warnings = [item.value for item in app.warning]
    assert any("Run **mscs-off** has no `snapshots/index.csv`. Embedding snapshots are written by `mscl train` at every "
               "validation when `export.snapshots` is true" in text for text in warnings), warnings
    names = [trace["name"] for trace in chart(app, "dynamics-curves")["data"]]
    assert "mscs · stage 0" in names and not any(name.startswith("mscs-off") for name in names)


def test_moving_the_step_slider_moves_the_map(runs_root: Path, monkeypatch) -> None:
    app = open_page(runs_root, monkeypatch)
    slider = app.select_slider(key="dynamics-step")
    assert slider.value == SNAPSHOT_STEPS[-1]

    def panel_x(app: AppTest) -> np.ndarray:
        traces = [t for t in chart(app, "dynamics-map")["data"] if t.get("xaxis", "x") == "x"]
        return np.sort(np.concatenate([plotly_array(t["x"]) for t in traces]))

    last = panel_x(app)
    slider.set_value(SNAPSHOT_STEPS[0]).run()
    assert not app.exception, [item.value for item in app.exception]
    first = panel_x(app)
    assert not np.allclose(first, last)
    maps = step_maps(load_run(runs_root / "ce"), 0, "backbone", "pca")
    np.testing.assert_allclose(first, np.sort(maps[SNAPSHOT_STEPS[0]][:, 0]), rtol=1e-6)
    np.testing.assert_allclose(last, np.sort(maps[SNAPSHOT_STEPS[-1]][:, 0]), rtol=1e-6)


def run_without_embeddings(runs_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "mscs", root / "mscs")
    shutil.rmtree(root / "mscs/embeddings")
    return root


def test_export_button_runs_the_export_with_a_patched_child(runs_root: Path, tmp_path: Path, monkeypatch) -> None:
    root = run_without_embeddings(runs_root, tmp_path)
    commands = []

    def patched(run_dir, checkpoint="last", project=False, device="auto"):
        commands.append((Path(run_dir), checkpoint, project))
        return fake_command(0.05, checkpoint)

    monkeypatch.setattr(export_job, "export_command", patched)
    app = open_page(root, monkeypatch, run_a="mscs", run_b=None)
    assert app.radio(key="dynamics-checkpoint-0").options == ["last", "best"]
    app.radio(key="dynamics-checkpoint-0").set_value("best").run()
    app.button(key="dynamics-export-0").click().run()
    assert not app.exception, [item.value for item in app.exception]
    assert commands == [((root / "mscs").resolve(), "best", False)]
    assert [item.value for item in app.success] == ["Exported **mscs** from checkpoint `best` · val mIoU 12.34."]


@pytest.mark.slow
def test_export_button_end_to_end_writes_the_embeddings(runs_root: Path, tmp_path: Path, monkeypatch) -> None:
    root = run_without_embeddings(runs_root, tmp_path)
    app = open_page(root, monkeypatch, timeout=300, run_a="mscs", run_b=None)
    app.button(key="dynamics-export-0").click().run()
    assert not app.exception, [item.value for item in app.exception]
    assert [item.value for item in app.success][0].startswith("Exported **mscs** from checkpoint `last` · val mIoU ")
    meta = json.loads((root / "mscs/embeddings/meta.json").read_text())
    assert meta["checkpoint"] == "last" and meta["has_projector"]
    assert len(app.dataframe) == 1, "the separability of the new export is shown"


@pytest.mark.slow
@pytest.mark.skipif(not (CAMVID / "train").is_dir(), reason="CamVid is not at /work/shared/datasets/camvid")
def test_camvid_tiny_200_steps_has_four_snapshots(tmp_path: Path) -> None:
    code = cli_main(["train", "--config", "camvid-tiny", "--root", str(CAMVID), "--out", str(tmp_path), "--name", "dyn",
                     "--device", "cpu", "--set", "train.val_every=50", "--set", "export.project=false",
                     "--set", "train.progress=false"])
    assert code == 0
    run = load_run(tmp_path / "dyn")
    assert run.snapshots().steps == [50, 100, 150, 200]
    assert all((tmp_path / "dyn" / layout.snapshot_file(step)).stat().st_size <= layout.MAX_BYTES for step in run.snapshots().steps)
    table = timeline(run)
    for _, rows in table.groupby(["kind", "metric"]):
        assert len(rows) == 4 * 4
        assert sorted(rows["step"].unique()) == [50, 100, 150, 200] and sorted(rows["stage"].unique()) == STAGES
