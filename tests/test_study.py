"""Multi-seed study statistics (workbench.study), their figures, the Study page and the study script's
evaluation of extra splits — on small synthetic runs with a known effect and on the committed CamVid runs."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from streamlit.testing.v1 import AppTest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from app_pages import common  # noqa: E402
from workbench import study, study_figures  # noqa: E402
from workbench.runs import MissingArtifactError, load_run  # noqa: E402

APP = str(REPO_ROOT / "app.py")
STUDY_PAGE = "app_pages/study.py"
LITE0 = REPO_ROOT / "results" / "camvid-lite0"
SCRATCH = REPO_ROOT / "results" / "camvid"
CLASSES = ["road", "sky", "car"]
IMAGES = [f"img{i}" for i in range(5)]


def write_eval(folder: Path, split: str, checkpoint: str, miou: float, class_iou: list[float],
               image_miou: list[float], pixel_acc: float | None = None) -> None:
    """The four eval tables of docs/run-format.md (confusion all zeros: not read by the study)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps({
        "split": split, "checkpoint": checkpoint, "step": 100, "miou": miou,
        "pixel_acc": miou + 0.4 if pixel_acc is None else pixel_acc, "mean_acc": miou, "num_images": len(image_miou)}))
    pd.DataFrame({"class_id": range(len(CLASSES)), "class_name": CLASSES, "iou": class_iou, "acc": class_iou,
                  "gt_pixels": 10, "pred_pixels": 10}).to_csv(folder / "per_class.csv", index=False)
    pd.DataFrame({"image_index": range(len(image_miou)), "image_id": IMAGES[:len(image_miou)], "miou": image_miou,
                  "pixel_acc": 0.9}).to_csv(folder / "per_image.csv", index=False)
    np.save(folder / "confusion.npy", np.zeros((len(CLASSES), len(CLASSES)), dtype=np.int64))


def write_study_run(path: Path, preset: str, seed: int, miou: float, class_iou: list[float] | None = None,
                    image_miou: list[float] | None = None, temperature: float = 0.1, status: str = "finished",
                    pixel_acc: float | None = None) -> Path:
    """A minimal run directory: run.json, config.yaml (seed, loss settings) and eval/ tables."""
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({
        "format_version": 1, "name": path.name, "status": status, "loss_preset": preset,
        "dataset": {"name": "toy", "class_names": CLASSES, "palette": [[0, 0, 0], [0, 0, 255], [255, 0, 0]],
                    "ignore_index": 255},
        "model": {"name": "tiny", "stage_strides": [4, 8], "stage_channels": [8, 16]},
    }))
    (path / "config.yaml").write_text(f"seed: {seed}\nloss:\n  preset: {preset}\n  temperature: {temperature}\n")
    write_eval(path / "eval", "val", "last", miou, class_iou or [miou] * len(CLASSES), image_miou or [miou] * len(IMAGES),
               pixel_acc)
    return path


def toy_study(root: Path, ce: dict[int, float], mscs: dict[int, float]) -> Path:
    for seed, value in ce.items():
        write_study_run(root / f"ce-s{seed}", "ce", seed, value)
    for seed, value in mscs.items():
        write_study_run(root / f"mscs-s{seed}", "ms+cs", seed, value)
    return root


def row(table: pd.DataFrame, metric: str) -> pd.Series:
    return table.set_index("metric").loc[metric]


# ---------------------------------------------------------------------------------------------- statistics


def test_paired_statistics_match_the_t_interval_and_scipy() -> None:
    a = np.array([0.30, 0.35, 0.32, 0.40, 0.31])
    b = np.array([0.33, 0.36, 0.36, 0.41, 0.35])
    out = study.paired_statistics(a, b)
    d = b - a
    n = d.size
    half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n)
    t_stat = d.mean() / (d.std(ddof=1) / np.sqrt(n))
    assert out["n_pairs"] == 5
    assert out["mean_a"] == pytest.approx(a.mean()) and out["mean_b"] == pytest.approx(b.mean())
    assert out["diff"] == pytest.approx(d.mean())
    assert (out["ci_low"], out["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert out["p_value"] == pytest.approx(2 * stats.t.sf(abs(t_stat), n - 1))
    assert out["p_value"] == pytest.approx(stats.ttest_rel(b, a).pvalue)


def test_paired_statistics_drop_nan_pairs_and_need_two_pairs_for_an_interval() -> None:
    dropped = study.paired_statistics([0.1, np.nan, 0.3, 0.2], [0.2, 0.5, np.nan, 0.25])
    assert dropped["n_pairs"] == 2 and dropped["diff"] == pytest.approx(0.075)
    single = study.paired_statistics([0.1], [0.3])
    assert single["n_pairs"] == 1 and single["diff"] == pytest.approx(0.2)
    assert np.isnan(single["ci_low"]) and np.isnan(single["p_value"])
    flat = study.paired_statistics([0.0, 0.0, 0.0], [0.0, 0.0, 0.0])
    assert (flat["ci_low"], flat["ci_high"]) == (0.0, 0.0) and np.isnan(flat["p_value"])


def test_interval_covers_a_known_effect_at_its_nominal_rate() -> None:
    """Seeds share a large random offset (as real seeds do); B = A + 0.02 + noise. Over 1,000 simulated
    3-seed studies the 95 % interval covers the true 0.02 in 95 % of them (binomial sd 0.7 %)."""
    rng = np.random.default_rng(0)
    covered = 0
    trials = 1000
    for _ in range(trials):
        base = 0.35 + rng.normal(0, 0.02, size=3)
        a = base + rng.normal(0, 0.004, size=3)
        b = base + 0.02 + rng.normal(0, 0.004, size=3)
        out = study.paired_statistics(a, b)
        covered += out["ci_low"] <= 0.02 <= out["ci_high"]
    assert 0.93 <= covered / trials <= 0.97


def test_compare_arms_recovers_a_known_effect(tmp_path: Path) -> None:
    ce = {0: 0.300, 1: 0.340, 2: 0.320, 3: 0.360}
    effect = {0: 0.021, 1: 0.018, 2: 0.022, 3: 0.019}
    root = toy_study(tmp_path, ce, {seed: value + effect[seed] for seed, value in ce.items()})
    table = study.compare_arms(root, "ce", "ms+cs")
    assert list(table.columns) == list(study.COMPARE_COLUMNS)
    assert table["metric"].tolist() == ["mIoU", "pixel accuracy", "road IoU", "sky IoU", "car IoU"]
    miou = row(table, "mIoU")
    assert miou["n_pairs"] == 4 and miou["diff"] == pytest.approx(0.02)
    assert miou["ci_low"] < 0.02 < miou["ci_high"] and miou["ci_low"] > 0
    assert miou["mean_a"] == pytest.approx(0.33) and miou["mean_b"] == pytest.approx(0.35)
    assert table.attrs["seeds"] == [0, 1, 2, 3] and table.attrs["unpaired"] == [] and table.attrs["excluded"] == []
    assert "fractions" in table.attrs["units"]


def test_effect_sentence_reports_points_interval_p_and_seeds(tmp_path: Path) -> None:
    root = toy_study(tmp_path, {0: 0.30, 1: 0.34, 2: 0.32}, {0: 0.32, 1: 0.35, 2: 0.35})
    table = study.compare_arms(root)
    expected = study.paired_statistics([0.30, 0.34, 0.32], [0.32, 0.35, 0.35])
    assert study.effect_sentence(table) == (
        f"ms+cs − ce = +2.00 mIoU, 95 % CI [{100 * expected['ci_low']:.2f}, {100 * expected['ci_high']:.2f}], "
        f"p = {expected['p_value']:.2f}, 3 seeds — val split")


def test_an_arm_with_a_missing_seed_is_reported_not_dropped(tmp_path: Path) -> None:
    root = toy_study(tmp_path, {0: 0.30, 1: 0.34, 2: 0.32, 3: 0.31}, {0: 0.32, 1: 0.35, 2: 0.35, 5: 0.4})
    table = study.compare_arms(root)
    assert row(table, "mIoU")["n_pairs"] == 3
    assert table.attrs["unpaired"] == ["ce seed 3 (no ms+cs run with seed 3)", "ms+cs seed 5 (no ce run with seed 5)"]
    sentence = study.effect_sentence(table)
    assert sentence.endswith("3 seeds — val split; not paired: ce seed 3 (no ms+cs run with seed 3), "
                             "ms+cs seed 5 (no ce run with seed 5)")


def test_two_runs_of_one_arm_and_seed_are_an_error_naming_both(tmp_path: Path) -> None:
    root = toy_study(tmp_path, {0: 0.30, 1: 0.34}, {0: 0.32, 1: 0.35})
    write_study_run(tmp_path / "copy" / "ce-again", "ce", 1, 0.31)
    with pytest.raises(study.StudyError) as error:
        study.compare_arms(root)
    message = str(error.value)
    assert str((tmp_path / "ce-s1").resolve()) in message and str((tmp_path / "copy" / "ce-again").resolve()) in message
    assert "both arm 'ce' (by loss_preset) with seed 1" in message


def test_unfinished_runs_and_missing_arms_are_explained(tmp_path: Path) -> None:
    root = toy_study(tmp_path, {0: 0.30, 1: 0.34}, {0: 0.32})
    write_study_run(tmp_path / "mscs-s1", "ms+cs", 1, 0.2, status="running")
    table = study.compare_arms(root)
    assert table.attrs["excluded"] == ["ms+cs seed 1 (mscs-s1) is running, not finished"]
    assert table.attrs["unpaired"] == ["ce seed 1 (no ms+cs run with seed 1)"]
    assert "left out: ms+cs seed 1 (mscs-s1) is running, not finished" in study.effect_sentence(table)
    with pytest.raises(study.StudyError, match=r"no run of arm 'ms' in .* \(by loss_preset\); arms there: \['ce', 'ms\+cs'\]"):
        study.compare_arms(root, "ce", "ms")
    with pytest.raises(study.StudyError, match="arms A and B are both 'ce'"):
        study.compare_arms(root, "ce", "ce")


def test_arms_by_a_dotted_config_key(tmp_path: Path) -> None:
    for seed, (low, high) in enumerate([(0.30, 0.31), (0.32, 0.34), (0.31, 0.33)]):
        write_study_run(tmp_path / f"t01-s{seed}", "ms+cs", seed, low, temperature=0.1)
        write_study_run(tmp_path / f"t02-s{seed}", "ms+cs", seed, high, temperature=0.2)
    assert sorted(set(study.study_table(tmp_path, by="loss.temperature")["arm"])) == ["0.1", "0.2"]
    table = study.compare_arms(tmp_path, "0.1", "0.2", by="loss.temperature")
    assert row(table, "mIoU")["diff"] == pytest.approx(0.05 / 3)
    with pytest.raises(study.StudyError, match="key 'loss.temprature' is in neither config.yaml nor run.json"):
        study.compare_arms(tmp_path, "0.1", "0.2", by="loss.temprature")


def test_class_rows_leave_out_seeds_where_the_class_has_no_iou(tmp_path: Path) -> None:
    write_study_run(tmp_path / "ce-s0", "ce", 0, 0.3, class_iou=[0.5, 0.2, np.nan])
    write_study_run(tmp_path / "ce-s1", "ce", 1, 0.3, class_iou=[0.6, 0.3, 0.1])
    write_study_run(tmp_path / "ce-s2", "ce", 2, 0.3, class_iou=[0.7, 0.2, 0.2])
    write_study_run(tmp_path / "mscs-s0", "ms+cs", 0, 0.3, class_iou=[0.6, 0.2, 0.3])
    write_study_run(tmp_path / "mscs-s1", "ms+cs", 1, 0.3, class_iou=[0.6, 0.4, 0.2])
    write_study_run(tmp_path / "mscs-s2", "ms+cs", 2, 0.3, class_iou=[0.8, 0.2, 0.4])
    table = study.compare_arms(tmp_path)
    assert row(table, "car IoU")["n_pairs"] == 2 and row(table, "car IoU")["diff"] == pytest.approx(0.15)
    assert row(table, "road IoU")["n_pairs"] == 3 and row(table, "road IoU")["diff"] == pytest.approx(0.2 / 3)
    assert row(table, "sky IoU")["diff"] == pytest.approx(0.1 / 3)


def test_split_reads_the_mscl_eval_save_tables_and_reports_runs_without_them(tmp_path: Path) -> None:
    root = toy_study(tmp_path, {0: 0.30, 1: 0.34, 2: 0.32}, {0: 0.32, 1: 0.35, 2: 0.35})
    for name, value in (("ce-s0", 0.20), ("ce-s1", 0.22), ("mscs-s0", 0.21), ("mscs-s1", 0.25)):
        write_eval(tmp_path / name / "eval-test-last", "test", "last", value, [value] * 3, [value] * 5)
    evaluations = load_run(tmp_path / "ce-s0").evaluations()
    assert evaluations[["split", "checkpoint", "folder"]].values.tolist() == [
        ["val", "last", "eval"], ["test", "last", "eval-test-last"]]
    assert evaluations["miou"].tolist() == [0.30, 0.20]
    table = study.compare_arms(root, split="test")
    assert row(table, "mIoU")["diff"] == pytest.approx(0.02) and row(table, "mIoU")["n_pairs"] == 2
    assert row(table, "mIoU")["mean_a"] == pytest.approx(0.21)
    missing = [note for note in table.attrs["excluded"] if "seed 2" in note]
    assert missing == [
        f"ce seed 2 (ce-s2) has no test evaluation: run `mscl eval {(tmp_path / 'ce-s2').resolve()} --split test "
        "--checkpoint last --save`",
        f"ms+cs seed 2 (mscs-s2) has no test evaluation: run `mscl eval {(tmp_path / 'mscs-s2').resolve()} --split test "
        "--checkpoint last --save`",
    ]
    assert study.effect_sentence(table).startswith("ms+cs − ce = +2.00 mIoU, 95 % CI")
    assert "— test split; left out: ce seed 2 (ce-s2) has no test evaluation" in study.effect_sentence(table)


def test_an_eval_save_folder_wins_over_eval_and_its_hint_names_the_command(tmp_path: Path) -> None:
    run_dir = write_study_run(tmp_path / "ce-s0", "ce", 0, 0.30)
    write_eval(run_dir / "eval-val-last", "val", "last", 0.31, [0.31] * 3, [0.31] * 5)
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "best.safetensors").write_bytes(b"")  # the hint names `mscl eval` for a run it can load
    run = load_run(run_dir)
    assert run.evaluations()[["folder", "miou"]].values.tolist() == [["eval-val-last", 0.31]]
    with pytest.raises(MissingArtifactError) as error:
        run.per_image("eval-test-best")
    assert str(error.value) == (f"eval-test-best/per_image.csv is missing in run {run.path}: run `mscl eval {run.path} "
                                "--split test --checkpoint best --save`")


def test_per_image_differences_pool_seeds_and_count_wins(tmp_path: Path) -> None:
    write_study_run(tmp_path / "ce-s0", "ce", 0, 0.3, image_miou=[0.1, 0.2, 0.3, 0.4, np.nan])
    write_study_run(tmp_path / "ce-s1", "ce", 1, 0.3, image_miou=[0.1, 0.2, 0.3, 0.4, 0.5])
    write_study_run(tmp_path / "mscs-s0", "ms+cs", 0, 0.3, image_miou=[0.2, 0.2, 0.2, 0.5, 0.5])
    write_study_run(tmp_path / "mscs-s1", "ms+cs", 1, 0.3, image_miou=[0.2, 0.3, 0.3, 0.3, 0.6])
    differences = study.per_image_differences(tmp_path)
    assert list(differences.columns) == ["seed", "image_id", "miou_a", "miou_b", "diff"]
    assert len(differences) == 9  # img4 of seed 0 has no mIoU in ce
    assert differences["diff"].is_monotonic_decreasing
    assert study.per_image_summary(differences) == {
        "images": 9, "better": 5, "worse": 2, "tied": 2, "mean_diff": pytest.approx(0.3 / 9),
        "median_diff": pytest.approx(0.1)}


def test_seed_values_and_spread(tmp_path: Path) -> None:
    root = toy_study(tmp_path, {0: 0.30, 1: 0.34, 2: 0.32}, {0: 0.32, 1: 0.35})
    values = study.seed_values(root)
    assert values[["arm", "seed", "miou"]].values.tolist() == [
        ["ce", 0, 0.30], ["ce", 1, 0.34], ["ce", 2, 0.32], ["ms+cs", 0, 0.32], ["ms+cs", 1, 0.35]]
    spread = study.seed_spread(values).set_index(["arm", "metric"])
    assert spread.loc[("ce", "mIoU"), "std"] == pytest.approx(np.std([0.30, 0.34, 0.32], ddof=1))
    assert spread.loc[("ce", "mIoU"), "n_seeds"] == 3 and spread.loc[("ms+cs", "mIoU"), "max"] == pytest.approx(0.35)


# ---------------------------------------------------------------------------------- committed CamVid runs


@pytest.mark.skipif(not LITE0.is_dir(), reason="results/camvid-lite0 is not in this checkout")
def test_committed_lite0_study_gives_the_documented_effect() -> None:
    table = study.compare_arms(LITE0, "ce", "ms+cs", by="loss_preset", split="val")
    miou = row(table, "mIoU")
    assert miou["n_pairs"] == 3
    assert miou["diff"] == pytest.approx(0.0145, abs=5e-5)
    assert miou["ci_low"] == pytest.approx(0.0013, abs=5e-5) and miou["ci_high"] == pytest.approx(0.0276, abs=5e-5)
    assert miou["p_value"] == pytest.approx(0.042, abs=1e-3)
    assert len(table) == 2 + 11
    assert study.effect_sentence(table) == "ms+cs − ce = +1.45 mIoU, 95 % CI [0.13, 2.76], p = 0.04, 3 seeds — val split"


@pytest.mark.skipif(not LITE0.is_dir(), reason="results/camvid-lite0 is not in this checkout")
def test_readme_study_example_prints_the_sentence_it_documents(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    text = (REPO_ROOT / "README.md").read_text()
    section = text[text.index("## Compare two arms over seeds"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    documented = code.strip().splitlines()[-1].split("# ", 1)[1]
    monkeypatch.chdir(REPO_ROOT)
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == documented


# ------------------------------------------------------------------------------------------------ figures


def test_forest_figure_draws_each_interval_in_percentage_points(tmp_path: Path) -> None:
    root = toy_study(tmp_path, {0: 0.30, 1: 0.34, 2: 0.32}, {0: 0.32, 1: 0.35, 2: 0.35})
    table = study.compare_arms(root)
    fig = study_figures.forest_figure(table)
    trace = fig.data[0]
    assert list(trace.y) == table["metric"].tolist()
    np.testing.assert_allclose(np.asarray(trace.x), 100 * table["diff"])
    assert trace.x[0] == pytest.approx(2.0)  # (0.02 + 0.01 + 0.03) / 3 as points
    np.testing.assert_allclose(np.asarray(trace.x) + np.asarray(trace.error_x.array), 100 * table["ci_high"])
    np.testing.assert_allclose(np.asarray(trace.x) - np.asarray(trace.error_x.arrayminus), 100 * table["ci_low"])
    assert fig.layout.xaxis.title.text == "difference ms+cs − ce (percentage points)"
    assert table["diff"].iloc[0] == pytest.approx(0.02)  # compare_arms keeps the stored fractions
    with pytest.raises(ValueError, match="needs a non-empty compare_arms table"):
        study_figures.forest_figure(table.iloc[:0])


def test_per_seed_figure_has_one_line_per_arm(tmp_path: Path) -> None:
    values = study.seed_values(toy_study(tmp_path, {0: 0.30, 1: 0.34}, {0: 0.32, 1: 0.35}))
    fig = study_figures.per_seed_figure(values)
    assert [trace.name for trace in fig.data] == ["ce", "ms+cs"]
    np.testing.assert_allclose(fig.data[1].y, [32.0, 35.0])
    assert list(fig.data[1].x) == ["0", "1"] and fig.layout.yaxis.title.text == "mIoU (%)"
    with pytest.raises(ValueError, match="metric must be one of"):
        study_figures.per_seed_figure(values, "acc")


# ------------------------------------------------------------------------------------------------ the page


def test_per_image_histogram_and_tables_in_percent(tmp_path: Path) -> None:
    write_study_run(tmp_path / "ce-s0", "ce", 0, 0.3, image_miou=[0.1, 0.2, 0.3, 0.4, 0.5])
    write_study_run(tmp_path / "mscs-s0", "ms+cs", 0, 0.3, image_miou=[0.2, 0.2, 0.25, 0.5, 0.5])
    differences = study.per_image_differences(tmp_path)
    fig = study_figures.per_image_histogram(differences)
    np.testing.assert_allclose(sorted(fig.data[0].x), [-5.0, 0.0, 0.0, 10.0, 10.0], atol=1e-9)
    assert fig.layout.xaxis.title.text == "difference (percentage points)"
    shown = study_figures.in_percent(differences)
    np.testing.assert_allclose(shown["miou_a"], 100 * differences["miou_a"])
    assert shown["seed"].tolist() == differences["seed"].tolist()
    spread = study_figures.in_percent(study.seed_spread(study.seed_values(tmp_path)))
    assert spread["mean"].tolist() == pytest.approx([30.0, 70.0, 30.0, 70.0]) and spread["n_seeds"].tolist() == [1] * 4



def open_study_page(root: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv(common.RUNS_ENV_VAR, str(root))
    app = AppTest.from_file(APP, default_timeout=60)
    app.run()
    app.switch_page(STUDY_PAGE).run()
    assert not app.exception, [item.value for item in app.exception]
    return app


@pytest.mark.parametrize("folder", [LITE0, SCRATCH], ids=["camvid-lite0", "camvid"])
def test_study_page_renders_on_the_committed_runs(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    if not folder.is_dir():
        pytest.skip(f"{folder} is not in this checkout")
    app = open_study_page(folder, monkeypatch)
    assert not app.error, [item.value for item in app.error]
    assert app.title[0].value == "Study"
    assert app.selectbox(key="study_arm_a").value == "ce" and app.selectbox(key="study_arm_b").value == "ms+cs"
    sentence = study.effect_sentence(study.compare_arms(folder))
    assert any(sentence in item.value for item in app.markdown)
    assert len(app.get("plotly_chart")) == 3
    assert len(app.get("download_button")) >= 3


def plotly_array(value: list | dict) -> np.ndarray:
    """The numbers of a plotly JSON array (a list, or the base64 ``bdata`` form of plotly 6)."""
    if isinstance(value, dict) and "bdata" in value:
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.asarray(value, dtype=float)


def shown_cell(element, metric: str, column: str) -> tuple[str, str]:
    """A cell of an ``st.dataframe`` as the page formats it (the column's printf format applied to its value)."""
    config = json.loads(element.proto.columns)[column]
    value = element.value.set_index("metric").loc[metric, column]
    return config["type_config"]["format"] % value, config["label"]


@pytest.mark.skipif(not LITE0.is_dir(), reason="results/camvid-lite0 is not in this checkout")
def test_study_page_shows_the_lite0_effect_in_percent(monkeypatch: pytest.MonkeyPatch) -> None:
    app = open_study_page(LITE0, monkeypatch)
    effects, spread = app.dataframe[0], app.dataframe[1]
    assert shown_cell(effects, "mIoU", "diff") == ("+1.45", "B − A (points)")
    assert shown_cell(effects, "mIoU", "ci_low") == ("+0.13", "95 % CI low (points)")
    assert shown_cell(effects, "mIoU", "ci_high") == ("+2.76", "95 % CI high (points)")
    assert shown_cell(effects, "mIoU", "p_value") == ("0.042", "p")
    comparison = study.compare_arms(LITE0)
    expected_a = comparison.set_index("metric").loc["mIoU", "mean_a"]
    assert shown_cell(effects, "mIoU", "mean_a") == (f"{100 * expected_a:.2f}", "mean A (%)")
    assert 20 < effects.value.set_index("metric").loc["mIoU", "mean_a"] < 60
    expected_spread = study.seed_spread(study.seed_values(LITE0))
    np.testing.assert_allclose(spread.value["mean"], 100 * expected_spread["mean"])
    forest = json.loads(app.get("plotly_chart")[0].proto.spec)["data"][0]
    assert plotly_array(forest["x"])[0] == pytest.approx(1.45, abs=5e-3)
    assert any("median difference" in item.value and item.value.endswith(" points.") for item in app.caption)


def test_study_page_reports_a_missing_seed_and_follows_the_arm_choice(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root = toy_study(tmp_path, {0: 0.30, 1: 0.34, 2: 0.32}, {0: 0.32, 1: 0.35})
    app = open_study_page(root, monkeypatch)
    assert [item.value for item in app.warning] == ["Not paired: ce seed 2 (no ms+cs run with seed 2)."]
    app.selectbox(key="study_arm_a").set_value("ms+cs").run()
    app.selectbox(key="study_arm_b").set_value("ce").run()
    assert not app.error, [item.value for item in app.error]
    assert any(item.value.startswith("**ce − ms+cs = -1.50 mIoU, 95 % CI [") for item in app.markdown)


def test_study_page_names_an_unknown_grouping_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = toy_study(tmp_path, {0: 0.30}, {0: 0.32})
    app = open_study_page(root, monkeypatch)
    app.text_input(key="study_by").set_value("loss.temprature").run()
    assert not app.exception, [item.value for item in app.exception]
    assert len(app.error) == 1 and "key 'loss.temprature' is in neither config.yaml nor run.json" in app.error[0].value


def test_study_page_on_a_folder_without_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = open_study_page(tmp_path, monkeypatch)
    assert any("No runs in" in item.value for item in app.info)


# ------------------------------------------------------------------------------------------ the study script


def load_script():
    spec = importlib.util.spec_from_file_location("camvid_study", REPO_ROOT / "scripts" / "camvid_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_eval_splits_runs_mscl_eval_for_missing_splits_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = load_script()
    data = tmp_path / "camvid"
    data.mkdir()
    (data / "test.txt").write_text("")
    out = tmp_path / "study"
    for name in ("ce-s0", "mscs-s0"):
        run = write_study_run(out / name, "ce" if name.startswith("ce") else "ms+cs", 0, 0.3)
        (run / "config.yaml").write_text(f"seed: 0\ndata:\n  name: camvid\n  root: {data}\nloss:\n  preset: ce\n")
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.safetensors").write_bytes(b"")
    commands: list[list[str]] = []
    written = script.evaluate_splits(out, ["val", "test", "train"], run_command=lambda c: commands.append(c) or 0)
    assert [command[3:] for command in commands] == [
        ["eval", str(out / name), "--split", "test", "--checkpoint", "last", "--save"] for name in ("ce-s0", "mscs-s0")]
    assert written == [out / "ce-s0" / "eval-test-last", out / "mscs-s0" / "eval-test-last"]
    (out / "mscs-s0" / "checkpoints" / "last.safetensors").unlink()
    with pytest.raises(SystemExit, match="checkpoints/last.safetensors is missing"):
        script.evaluate_splits(out, ["test"], run_command=lambda c: 0)
    with pytest.raises(SystemExit, match="failed with exit code 2"):
        script.evaluate_splits(out, ["test"], run_command=lambda c: 2)
