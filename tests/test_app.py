"""The Streamlit app through ``streamlit.testing.v1.AppTest``: every page on complete fake runs, on a run
with missing artifacts and on an empty folder; the numbers shown are those of the ``workbench`` functions.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
from streamlit.testing.v1 import AppTest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from app_pages import common  # noqa: E402
from fake_run import NUM_VAL_IMAGES, write_fake_run  # noqa: E402
from workbench import crossscale, iou, sampler_stats, separability  # noqa: E402
from workbench.figures import find_browser  # noqa: E402
from workbench.projections import precompute_projections  # noqa: E402
from workbench.runs import MissingArtifactError, list_runs, load_run  # noqa: E402

APP = str(REPO_ROOT / "app.py")
SAMPLE_RUNS = REPO_ROOT / "sample_data" / "runs"
PAGE_SCRIPTS = {page.url_path: page.script for page in common.PAGES}
STAGES = 4


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cross-entropy baseline, an ms+cs run (both with cached PCA maps) and an ms+cs run without
    embeddings and sampler tables."""
    root = tmp_path_factory.mktemp("runs")
    baseline = write_fake_run(root / "baseline", seed=0, stages=STAGES, with_projector=False)
    contrastive = write_fake_run(root / "contrastive", seed=1, stages=STAGES)
    write_fake_run(root / "incomplete", seed=2, stages=STAGES, missing=("embeddings", "sampler"))
    for path in (baseline, contrastive):
        precompute_projections(load_run(path), methods=("pca",))
    return root


def open_app(root: Path, monkeypatch: pytest.MonkeyPatch, page: str | None = None, **selection: str) -> AppTest:
    """Run the app on ``root`` (via ``MSCL_RUNS``), optionally pick run_a / run_b and switch to ``page``."""
    monkeypatch.setenv(common.RUNS_ENV_VAR, str(root))
    app = AppTest.from_file(APP, default_timeout=60)
    app.run()
    assert not app.exception, [item.value for item in app.exception]
    for key, value in selection.items():
        app.selectbox(key=key).set_value(value)
    if selection:
        app.run()
    if page is not None:
        app.switch_page(PAGE_SCRIPTS[page]).run()
    return app


def plotly_specs(app: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in app.get("plotly_chart")]


def plotly_array(value: list | dict) -> np.ndarray:
    """A data array of a plotly JSON spec (plain list, or plotly's base64 typed-array encoding)."""
    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = value.get("shape")
        if shape:
            array = array.reshape([int(size) for size in str(shape).split(",")])
        return array
    return np.asarray(value, dtype=float)


def assert_clean(app: AppTest) -> None:
    assert not app.exception, [item.value for item in app.exception]
    assert not app.error, [item.value for item in app.error]


def path_of(root: Path, folder: str) -> str:
    return str((root / folder).resolve())


def name_of(root: Path, folder: str) -> str:
    return load_run(root / folder).name


# ----------------------------------------------------------------------------------------- pure helpers


def test_default_runs_root_prefers_cli_then_env_then_sample_data(tmp_path: Path) -> None:
    cli, env = tmp_path / "cli", tmp_path / "env"
    assert common.default_runs_root(["--runs", str(cli)], {"MSCL_RUNS": str(env)}) == cli
    assert common.default_runs_root(["-q", "tests"], {"MSCL_RUNS": str(env)}) == env
    assert common.default_runs_root([], {}) == REPO_ROOT / "sample_data" / "runs"


def test_default_pair_takes_baseline_as_a_and_same_setup_as_b(runs_root: Path) -> None:
    table = list_runs(runs_root)
    run_a, run_b = common.default_pair(table)
    assert run_a == path_of(runs_root, "baseline")
    assert run_b == path_of(runs_root, "contrastive")
    assert common.default_pair(table.iloc[:0]) == (None, common.NO_RUN_B)
    assert common.default_pair(table[table["name"] == name_of(runs_root, "baseline")]) == (run_a, common.NO_RUN_B)


def test_default_pair_prefers_a_finished_mscs_run_as_b() -> None:
    table = pd.DataFrame({
        "path": ["ce-s0", "ce-s1", "ms-s0", "mscs-s1", "mscs-s0"],
        "status": ["finished", "finished", "finished", "running", "finished"],
        "loss_preset": ["ce", "ce", "ms", "ms+cs", "ms+cs"],
        "dataset": ["camvid"] * 5,
        "model": ["deeplabv3"] * 5,
    })
    assert common.default_pair(table) == ("ce-s0", "mscs-s0")
    assert common.default_pair(table.iloc[:3]) == ("ce-s0", "ms-s0")


def test_missing_artifact_message_names_file_and_hint(tmp_path: Path) -> None:
    error = MissingArtifactError(tmp_path, "sampler/steps.parquet", "written by `mscl train`")
    message = common.missing_artifact_message(error, "my-run")
    assert message == "Run **my-run** has no `sampler/steps.parquet`. Written by `mscl train`."


def test_run_stamp_changes_when_an_artifact_appears_but_not_for_projections(runs_root: Path) -> None:
    run = runs_root / "incomplete"
    before = common.run_stamp(run)
    (run / "projections").mkdir(exist_ok=True)
    (run / "projections" / "x.npz").write_bytes(b"0")
    assert common.run_stamp(run) == before
    (run / "eval" / "extra.json").write_text("{}")
    try:
        assert common.run_stamp(run) > before
    finally:
        (run / "eval" / "extra.json").unlink()


@pytest.mark.skipif(find_browser() is None, reason="static export needs Chromium/Chrome for kaleido")
def test_figure_bytes_exports_svg_and_png() -> None:
    fig = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))
    assert b"<svg" in common.figure_bytes(fig, "svg")[:200]
    assert common.figure_bytes(fig, "png").startswith(b"\x89PNG\r\n\x1a\n")


# ------------------------------------------------------------------------------------------------ pages


def test_sidebar_selects_baseline_and_contrastive_by_default(runs_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = open_app(runs_root, monkeypatch)
    assert_clean(app)
    assert app.text_input(key="runs_root").value == str(runs_root)
    assert app.selectbox(key="run_a").value == path_of(runs_root, "baseline")
    assert app.selectbox(key="run_b").value == path_of(runs_root, "contrastive")
    assert len(app.selectbox(key="run_a").options) == 3
    assert len(app.selectbox(key="run_b").options) == 4
    assert app.title[0].value == "Runs"


def test_runs_page_shows_both_runs_and_every_loss_part(runs_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = open_app(runs_root, monkeypatch, page="runs")
    assert_clean(app)
    shown_miou = [metric.value for metric in app.metric if metric.label == "val mIoU"]
    expected = [f"{load_run(runs_root / name).eval_summary()['miou']:.4f}" for name in ("baseline", "contrastive")]
    assert shown_miou == expected
    training, validation = plotly_specs(app)
    titles = {annotation["text"] for annotation in training["layout"]["annotations"]}
    contrastive_columns = load_run(runs_root / "contrastive").train_metrics().columns
    assert titles == {column for column in contrastive_columns if column.startswith("loss/")}
    assert {trace["name"] for trace in validation["data"]} == {name_of(runs_root, "baseline"),
                                                               name_of(runs_root, "contrastive")}


def test_feature_spaces_page_draws_every_stage_of_both_runs(runs_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = open_app(runs_root, monkeypatch, page="feature-spaces")
    assert_clean(app)
    assert app.selectbox(key="space-kind").value == "backbone"
    assert app.selectbox(key="space-method").value == "pca"
    (spec,) = plotly_specs(app)
    assert {trace["type"] for trace in spec["data"]} == {"scattergl"}
    assert len({trace.get("xaxis", "x") for trace in spec["data"]}) == 2 * STAGES
    tables = [frame.value for frame in app.dataframe]
    assert len(tables) == 2
    expected = separability.separability_table(load_run(runs_root / "contrastive"), kinds=("backbone",))
    np.testing.assert_allclose(tables[1].loc["silhouette"].to_numpy(), expected["silhouette"].to_numpy(), rtol=1e-6)
    assert list(tables[1].columns) == ["stage 0", "stage 1", "stage 2", "stage 3"]
    assert tables[1].loc["trustworthiness"].between(0.0, 1.0).all()
    app.radio(key="space-colour").set_value("correct").run()
    assert_clean(app)
    assert {trace["name"] for trace in plotly_specs(app)[0]["data"]} == {"correct", "wrong"}


def test_feature_spaces_projected_kind_skips_the_run_without_projector(runs_root: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    app = open_app(runs_root, monkeypatch, page="feature-spaces")
    app.selectbox(key="space-kind").set_value("projected").run()
    assert_clean(app)
    baseline = name_of(runs_root, "baseline")
    assert any(baseline in info.value and "projected" in info.value for info in app.info)
    (spec,) = plotly_specs(app)
    assert len({trace.get("xaxis", "x") for trace in spec["data"]}) == STAGES


def test_cross_scale_page_shows_prototypes_cka_and_pixel_maps(runs_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = open_app(runs_root, monkeypatch, page="cross-scale")
    assert_clean(app)
    specs = plotly_specs(app)
    heatmap_titles = [spec["layout"]["title"]["text"] for spec in specs if spec["data"][0]["type"] == "heatmap"]
    baseline, contrastive = name_of(runs_root, "baseline"), name_of(runs_root, "contrastive")
    assert heatmap_titles == [f"{contrastive}: stage 0 (rows) vs stage {STAGES - 1}, projected",
                              f"{baseline}: linear CKA (backbone)", f"{contrastive}: linear CKA (backbone)"]
    cka = crossscale.cka_matrix(load_run(runs_root / "baseline"), "backbone")
    np.testing.assert_allclose(plotly_array(specs[1]["data"][0]["z"]), cka.to_numpy(), rtol=1e-6)
    # the pixel-similarity overlays: one image + heatmap + query marker per stage, for each run
    overlays = [spec for spec in specs if spec["data"][0]["type"] == "image"]
    assert len(overlays) == 2 and all(len(spec["data"]) == 3 * STAGES for spec in overlays)
    app.slider(key="dense-y").set_value(3).run()
    assert_clean(app)
    marker = [trace for trace in plotly_specs(app)[-1]["data"] if trace["type"] == "scatter"][0]
    assert marker["y"] == [3]


def test_sampler_page_warns_for_the_baseline_and_shows_cap_rates(runs_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = open_app(runs_root, monkeypatch, page="sampler")
    assert_clean(app)
    assert len(app.warning) == 1 and "sampler/steps.parquet" in app.warning[0].value
    assert name_of(runs_root, "baseline") in app.warning[0].value
    assert len(plotly_specs(app)) == 3
    (rates,) = [frame.value for frame in app.dataframe]
    pd.testing.assert_frame_equal(rates, sampler_stats.cap_rates(load_run(runs_root / "contrastive")))


def test_iou_page_compares_classes_confusions_and_images(runs_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = open_app(runs_root, monkeypatch, page="iou")
    assert_clean(app)
    assert any("NaN" in caption.value for caption in app.caption)
    per_class, per_image = (frame.value for frame in app.dataframe)
    expected = iou.per_class_iou_diff(load_run(runs_root / "baseline"), load_run(runs_root / "contrastive"))
    assert per_class["class_name"].tolist() == expected["class_name"].tolist()
    np.testing.assert_allclose(per_class["diff"].to_numpy(), expected["diff"].to_numpy())
    assert len(per_image) == NUM_VAL_IMAGES and per_image["diff"].is_monotonic_decreasing
    specs = plotly_specs(app)
    heatmaps = [spec for spec in specs if spec["data"][0]["type"] == "heatmap"]
    assert [spec["layout"]["title"]["text"] for spec in heatmaps] == [
        f"A: {name_of(runs_root, 'baseline')}", f"B: {name_of(runs_root, 'contrastive')}", "B − A"]
    saved = set(load_run(runs_root / "baseline").prediction_ids())
    offered = [option.split()[0] for option in app.selectbox(key="iou_image").options]
    assert offered == [image_id for image_id in per_image["image_id"] if image_id in saved]
    app.selectbox(key="iou_image").set_value(offered[-1]).run()
    assert_clean(app)
    prediction = plotly_specs(app)[-1]
    assert prediction["data"][0]["type"] == "image" and len(prediction["data"]) == 5


def test_predictions_page_shows_shared_images(runs_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = open_app(runs_root, monkeypatch, page="predictions")
    assert_clean(app)
    baseline = load_run(runs_root / "baseline")
    image_ids = baseline.prediction_ids()
    assert app.selectbox(key="prediction-image").options == image_ids
    (spec,) = plotly_specs(app)
    titles = [annotation["text"] for annotation in spec["layout"]["annotations"]]
    assert titles[:4] == ["image", "ground truth", baseline.name, name_of(runs_root, "contrastive")]
    assert len(spec["data"]) == 5
    app.selectbox(key="prediction-image").set_value(image_ids[-1]).run()
    assert_clean(app)
    expected = [load_run(runs_root / folder).per_image().set_index("image_id").loc[image_ids[-1], "miou"]
                for folder in ("baseline", "contrastive")]
    assert [metric.value for metric in app.metric] == [f"{value:.3f}" for value in expected]


@pytest.mark.parametrize("page", list(PAGE_SCRIPTS))
def test_single_run_renders_every_page(runs_root: Path, monkeypatch: pytest.MonkeyPatch, page: str) -> None:
    app = open_app(runs_root, monkeypatch, page=page, run_a=path_of(runs_root, "contrastive"), run_b=common.NO_RUN_B)
    assert_clean(app)
    assert not app.warning
    assert plotly_specs(app), f"page {page} drew no figure for a complete run"


@pytest.mark.parametrize(("page", "missing"), [
    ("feature-spaces", "embeddings/meta.json"),
    ("cross-scale", "embeddings/"),
    ("sampler", "sampler/steps.parquet"),
])
def test_missing_artifacts_give_warnings_not_tracebacks(runs_root: Path, monkeypatch: pytest.MonkeyPatch,
                                                        page: str, missing: str) -> None:
    app = open_app(runs_root, monkeypatch, page=page, run_a=path_of(runs_root, "incomplete"), run_b=common.NO_RUN_B)
    assert_clean(app)
    assert app.warning, f"page {page} shows no warning for the run without {missing}"
    assert all(name_of(runs_root, "incomplete") in warning.value for warning in app.warning)
    assert any(f"`{missing}" in warning.value and "mscl" in warning.value for warning in app.warning)


@pytest.mark.parametrize("page", list(PAGE_SCRIPTS))
def test_complete_and_incomplete_runs_together_render(runs_root: Path, monkeypatch: pytest.MonkeyPatch, page: str) -> None:
    app = open_app(runs_root, monkeypatch, page=page, run_a=path_of(runs_root, "contrastive"),
                   run_b=path_of(runs_root, "incomplete"))
    assert not app.exception, [item.value for item in app.exception]
    assert not app.error, [item.value for item in app.error]


@pytest.mark.parametrize("page", list(PAGE_SCRIPTS))
def test_empty_folder_explains_how_to_make_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, page: str) -> None:
    app = open_app(tmp_path, monkeypatch, page=page)
    assert_clean(app)
    assert any("mscl demo" in info.value for info in app.sidebar.info)
    assert any("runs folder" in info.value for info in app.main.info)


@pytest.mark.parametrize("page", list(PAGE_SCRIPTS))
def test_malformed_file_shows_an_error_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, page: str) -> None:
    run = write_fake_run(tmp_path / "broken", seed=4, stages=STAGES)
    meta = json.loads((run / "embeddings" / "meta.json").read_text())
    (run / "embeddings" / "meta.json").write_text(json.dumps({**meta, "stages": 3}))
    app = open_app(tmp_path, monkeypatch, page=page)
    assert not app.exception, [item.value for item in app.exception]
    if page in ("feature-spaces", "cross-scale"):
        assert app.error and all("embeddings/meta.json" in error.value for error in app.error)


def test_default_map_hits_the_projection_cache_and_panels_share_pixels(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs exported with the same pixels: the default view reads the t-SNE maps precomputed for
    them (no new cache file appears) and both runs' panels show the same pixels."""
    paths = [write_fake_run(tmp_path / name, seed=3, stages=STAGES) for name in ("first", "second")]
    for path in paths:
        precompute_projections(load_run(path), methods=("tsne",), kinds=("projected",))
    cached_before = {path: sorted((path / "projections").iterdir()) for path in paths}
    app = open_app(tmp_path, monkeypatch, page="feature-spaces")
    assert_clean(app)
    assert app.selectbox(key="space-kind").value == "projected"
    assert app.selectbox(key="space-method").value == "tsne"
    assert not any("different pixels" in info.value for info in app.info)
    assert {path: sorted((path / "projections").iterdir()) for path in paths} == cached_before
    (spec,) = plotly_specs(app)
    hovered = {}
    for trace in spec["data"]:
        hovered.setdefault(trace.get("xaxis", "x"), set()).update(tuple(row[:3]) for row in trace["customdata"])
    assert len(hovered) == 2 * STAGES and len({frozenset(pixels) for pixels in hovered.values()}) == 1


COMMITTED_RUNS = [folder for folder in (SAMPLE_RUNS, REPO_ROOT / "results" / "camvid", REPO_ROOT / "results" / "camvid-lite0")
                  if folder.is_dir() and any(folder.rglob("run.json"))]


@pytest.mark.skipif(not COMMITTED_RUNS, reason="no committed runs (sample_data/runs, results/camvid) yet")
@pytest.mark.parametrize("folder", COMMITTED_RUNS, ids=lambda folder: folder.relative_to(REPO_ROOT).as_posix())
@pytest.mark.parametrize("page", list(PAGE_SCRIPTS))
def test_committed_runs_render_every_page(monkeypatch: pytest.MonkeyPatch, folder: Path, page: str) -> None:
    app = open_app(folder, monkeypatch, page=page)
    assert_clean(app)
    assert plotly_specs(app)
