"""The Streamlit app through ``streamlit.testing.v1.AppTest``: every page on complete fake runs, on a run
with missing artifacts and on an empty folder; the numbers shown are those of the ``workbench`` functions.
"""

from __future__ import annotations

import base64
import json
import re
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

from fake_run import NUM_VAL_IMAGES, write_fake_run  # noqa: E402
from test_security import emulate_read_only, files_under  # noqa: E402

from app_pages import common  # noqa: E402
from workbench import crossscale, iou, projections, sampler_stats, stage_separability  # noqa: E402
from workbench.figures import find_browser  # noqa: E402
from workbench.projections import precompute_projections  # noqa: E402
from workbench.runs import MissingArtifactError, load_run  # noqa: E402

APP = str(REPO_ROOT / "app.py")
SAMPLE_RUNS = REPO_ROOT / "sample_data" / "runs"
PAGE_SCRIPTS = {page.url_path: page.script for page in common.PAGES}
STAGES = 4


@pytest.fixture(autouse=True)
def user_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Projection caches of shipped and read-only runs go to a temporary user cache, never the user's own."""
    folder = tmp_path_factory.mktemp("user-cache")
    monkeypatch.setenv(projections.CACHE_ENV_VAR, str(folder))
    return folder


def unescaped(markdown: str) -> str:
    """Markdown source with its backslash escapes resolved (the text a reader sees)."""
    return re.sub(r"\\(.)", r"\1", markdown)


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
    expected = [f"{100 * load_run(runs_root / name).eval_summary()['miou']:.2f} %" for name in ("baseline", "contrastive")]
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
    expected = stage_separability.separability_table(load_run(runs_root / "contrastive"), kinds=("backbone",))
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
    np.testing.assert_allclose(per_class["diff"].to_numpy(), 100 * expected["diff"].to_numpy())
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
    assert [metric.value for metric in app.metric] == [f"{100 * value:.1f} %" for value in expected]


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


# ------------------------------------------------------------------------------------ hostile or broken runs


def test_run_metadata_is_shown_as_text_not_markdown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = write_fake_run(tmp_path / "hostile", seed=5, stages=STAGES)
    meta = json.loads((run / "run.json").read_text())
    meta["name"] = "[click me](https://example.com/phish) ![x](https://example.com/t.png)"
    meta["dataset"]["name"] = "<b>bold</b> :red[red] $x^2$"
    meta["model"]["encoder"] = "**enc**`x`"
    (run / "run.json").write_text(json.dumps(meta))
    app = open_app(tmp_path, monkeypatch, page="runs")
    assert_clean(app)
    sources = [element.value for element in (*app.markdown, *app.subheader, *app.caption)]
    shown = "\n".join(sources)
    for raw in ("[click me](https://", "![x](", "<b>", ":red[", "$x^2$", "**enc**"):
        assert raw not in shown, raw
    assert any(source.startswith(r"\[click me\]\(https\://example.com/phish\) \!\[x\]") for source in sources)
    description = next(source for source in sources if source.startswith("**status**"))
    assert r"**dataset** \<b\>bold\</b\> \:red\[red\] \$x^2\$" in description
    assert r"/ \*\*enc\*\*\`x\`," in description
    assert meta["dataset"]["name"] in unescaped(description)


def test_broken_runs_are_listed_as_invalid_and_the_others_stay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = write_fake_run(tmp_path / "good", seed=0, stages=STAGES)
    latin1 = write_fake_run(tmp_path / "latin1", seed=1, stages=STAGES)
    raw = (latin1 / "run.json").read_text().replace("fake", "f\u00e4ke").encode("latin-1")
    (latin1 / "run.json").write_bytes(raw)
    bad_byte = raw.index(b"\xe4")
    typed = write_fake_run(tmp_path / "typed", seed=2, stages=STAGES)
    meta = json.loads((typed / "run.json").read_text())
    meta["timing"]["train_seconds"] = "an hour"
    (typed / "run.json").write_text(json.dumps(meta))
    write_fake_run(tmp_path / "group" / "locked", seed=3, stages=STAGES)
    real_iterdir = Path.iterdir

    def iterdir(self: Path):
        if self.name == "group":
            raise PermissionError(13, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    app = open_app(tmp_path, monkeypatch, page="runs")
    assert not app.exception, [item.value for item in app.exception]
    assert app.selectbox(key="run_a").value == path_of(tmp_path, "good")
    assert len(app.selectbox(key="run_a").options) == 1
    (expander,) = app.sidebar.expander
    assert expander.label == "3 run(s) cannot be read"
    reasons = sorted(unescaped(error.value) for error in expander.error)
    assert reasons == sorted([
        f"**group**: {tmp_path / 'group'}: cannot be read (Permission denied)",
        f"**latin1**: {latin1 / 'run.json'}: run.json: not UTF-8 text (byte {bad_byte}: invalid continuation byte); "
        "save it as UTF-8 JSON",
        f"**typed**: {typed / 'run.json'}: run.json: key 'timing.train_seconds' must be a number, got 'an hour'",
    ])
    assert [metric.value for metric in app.metric][:1] == [f"{100 * load_run(good).eval_summary()['miou']:.2f} %"]


def test_corrupt_prediction_archive_shows_a_message_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = write_fake_run(tmp_path / "corrupt", seed=6, stages=STAGES)
    archive = run / "predictions" / "val_000.npz"
    archive.write_bytes(archive.read_bytes()[:200])  # a zip archive cut short: no central directory
    app = open_app(tmp_path, monkeypatch, page="predictions")
    assert not app.exception, [item.value for item in app.exception]
    (error,) = app.error
    assert unescaped(error.value).startswith("predictions/val_000.npz: cannot be read as a NumPy .npz archive (")


def test_sampler_tables_without_rows_show_a_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = write_fake_run(tmp_path / "fresh", seed=7, stages=STAGES)
    for table in ("steps", "class_counts"):
        path = run / "sampler" / f"{table}.parquet"
        pd.read_parquet(path).iloc[:0].to_parquet(path, index=False)
    app = open_app(tmp_path, monkeypatch, page="sampler")
    assert_clean(app)
    (info,) = app.info
    assert info.value == ("Run **fake-ms+cs-7**: `sampler/steps.parquet` has no rows yet; the sampler adds rows "
                          "at every logged training step (`train.log_every`).")
    assert not plotly_specs(app)


def test_read_only_run_folder_draws_feature_spaces_from_the_user_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      user_cache: Path) -> None:
    run = write_fake_run(tmp_path / "runs" / "shared", seed=8, stages=STAGES)
    before = files_under(run)
    emulate_read_only(monkeypatch, run)
    app = open_app(tmp_path / "runs", monkeypatch, page="feature-spaces")
    assert_clean(app)
    (spec,) = plotly_specs(app)
    assert len({trace.get("xaxis", "x") for trace in spec["data"]}) == STAGES
    assert files_under(run) == before
    assert list((user_cache / "projections").glob("fake-ms_cs-8-*/aligned-*.npz"))


# ------------------------------------------------------------------------------------ readability and run choice


def set_created(run: Path, created: str) -> None:
    meta = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**meta, "created": created, "updated": created}))


def test_validation_chart_draws_a_single_validation_as_a_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = write_fake_run(tmp_path / "once", seed=9, stages=STAGES)
    val = pd.read_csv(run / "metrics" / "val.csv").iloc[:1]
    val.to_csv(run / "metrics" / "val.csv", index=False)
    app = open_app(tmp_path, monkeypatch, page="runs")
    assert_clean(app)
    validation = plotly_specs(app)[-1]
    assert [annotation["text"] for annotation in validation["layout"]["annotations"]] == [
        "val mIoU (%)", "pixel accuracy (%)", "mean class accuracy (%)"]
    miou = next(trace for trace in validation["data"] if trace.get("yaxis", "y") == "y")
    assert "markers" in miou["mode"]
    np.testing.assert_allclose(plotly_array(miou["y"]), [100 * val["miou"].iloc[0]])


def test_run_pickers_label_runs_uniquely_and_start_with_the_newest_ce_and_contrastive_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same-named runs of different variants get different labels (path · loss · mIoU % · config difference);
    A and B default to the newest ce and the newest contrastive run, not the alphabetically first ones."""
    older_ce = write_fake_run(tmp_path / "ce-a", seed=0, stages=STAGES, with_projector=False)
    newer_ce = write_fake_run(tmp_path / "ce-b", seed=0, stages=STAGES, with_projector=False)
    tau = write_fake_run(tmp_path / "tau0.2" / "mscs-s0", seed=1, stages=STAGES)
    base = write_fake_run(tmp_path / "w0.3" / "mscs-s0", seed=1, stages=STAGES)
    config = (tau / "config.yaml").read_text()
    (tau / "config.yaml").write_text(config.replace("temperature: 0.1", "temperature: 0.2"))
    for run, created in ((older_ce, "2024-01-01"), (newer_ce, "2024-03-01"), (tau, "2024-02-01"), (base, "2024-04-01")):
        set_created(run, f"{created}T00:00:00+00:00")
    app = open_app(tmp_path, monkeypatch)
    assert_clean(app)
    assert app.selectbox(key="run_a").value == str(newer_ce.resolve())
    assert app.selectbox(key="run_b").value == str(base.resolve())
    labels = app.selectbox(key="run_a").options
    assert len(set(labels)) == len(labels) == 4
    tau_miou = 100 * load_run(tau).eval_summary()["miou"]
    assert f"tau0.2/mscs-s0 · ms+cs · mIoU {tau_miou:.1f} % · temperature 0.2" in labels
    assert any(label.startswith("w0.3/mscs-s0 · ms+cs · mIoU ") for label in labels)
    assert app.selectbox(key="run_b").options[0] == "— none —"


def test_feature_spaces_hint_works_for_a_run_without_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = write_fake_run(tmp_path / "shipped", seed=3, stages=STAGES, missing=("embeddings", "checkpoints"))
    app = open_app(tmp_path, monkeypatch, page="feature-spaces")
    assert_clean(app)
    (warning,) = app.warning
    assert unescaped(warning.value) == (
        f"Run **{name_of(tmp_path, 'shipped')}** has no `embeddings/meta.json`. This run has no checkpoint (its "
        "`checkpoints/` folder was not shipped or copied with it), so `mscl export` and `mscl eval` cannot make it; train "
        f"the run again with `mscl train --config {run.resolve()}/config.yaml --out runs` (the new run is exported when "
        "training ends) or pick a run that has it.")


def test_model_line_names_a_built_in_encoder_and_shows_percent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = write_fake_run(tmp_path / "tiny", seed=2, stages=STAGES)
    meta = json.loads((run / "run.json").read_text())
    meta["model"]["encoder"] = None
    (run / "run.json").write_text(json.dumps(meta))
    app = open_app(tmp_path, monkeypatch, page="runs")
    assert_clean(app)
    description = next(element.value for element in app.markdown if element.value.startswith("**status**"))
    assert "**model** tiny / built-in encoder, strides" in description
    summary = load_run(run).eval_summary()
    assert [metric.value for metric in app.metric][:2] == [f"{100 * summary['miou']:.2f} %",
                                                           f"{100 * summary['pixel_acc']:.2f} %"]
    label = app.selectbox(key="run_a").options[0]
    assert label == f"tiny · ms+cs · mIoU {100 * summary['miou']:.1f} %"


@pytest.mark.parametrize(("page", "charts_of_b"), [("sampler", 3), ("cross-scale", 1)])
def test_run_b_gets_the_page_when_run_a_has_no_sampler_or_projector(runs_root: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    page: str, charts_of_b: int) -> None:
    """A cross-entropy run as A: a one-line note for it, and the contrastive run B draws across the full width
    (its figures in a single column), not in half of the page next to an empty one."""
    app = open_app(runs_root, monkeypatch, page=page)
    assert_clean(app)
    baseline = name_of(runs_root, "baseline")
    assert any(baseline in note.value for note in (*app.warning, *app.info))
    drawing = [(column.weight, len(column.get("plotly_chart"))) for column in app.main.columns if column.get("plotly_chart")]
    assert drawing[0] == (1.0, charts_of_b)


def test_shipped_runs_get_no_new_files(monkeypatch: pytest.MonkeyPatch, user_cache: Path) -> None:
    """A map the shipped runs do not cache (PCA of stages 0 and 1, aligned) is computed into the user cache, not into
    sample_data/."""
    before = files_under(SAMPLE_RUNS)
    app = open_app(SAMPLE_RUNS, monkeypatch, page="feature-spaces")
    app.button_group(key="space-stages").set_value([0, 1]).run()
    assert_clean(app)
    assert plotly_specs(app)
    assert files_under(SAMPLE_RUNS) == before
    assert list((user_cache / "projections").glob("synthetic-*/aligned-*.npz"))
