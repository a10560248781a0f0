"""workbench.sampler_stats on hand-written sampler tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fake_run import write_fake_run

from workbench.runs import MissingArtifactError, load_run
from workbench.sampler_stats import cap_rates, class_timeline, sampler_histogram, sampler_timeline


@pytest.fixture()
def run(tmp_path):
    path = write_fake_run(tmp_path / "r", num_classes=3, stages=2)
    steps = pd.DataFrame({
        "step": [0, 0, 10, 10, 20, 20], "stage": [0, 1, 0, 1, 0, 1], "groups": [4, 2, 6, 2, 4, 3],
        "views": [10, 5, 8, 5, 10, 4], "filtered_groups": [0, 1, 2, 0, 0, 0],
        "cap_max_views": [True, False, False, False, True, False],
        "cap_total": [False, False, True, True, False, False], "n_sampled": [40, 10, 48, 10, 40, 12],
    })
    counts = pd.DataFrame({
        "step": [0, 0, 0, 10, 10, 10, 0, 0, 0], "stage": [0, 0, 0, 0, 0, 0, 1, 1, 1],
        "class_id": [0, 1, 2, 0, 1, 2, 0, 1, 2],
        "labelled": [60, 30, 10, 40, 40, 20, 5, 5, 0], "sampled": [10, 10, 10, 20, 20, 10, 5, 5, 0],
    })
    steps.to_parquet(path / "sampler" / "steps.parquet", index=False)
    counts.to_parquet(path / "sampler" / "class_counts.parquet", index=False)
    return load_run(path)


def test_histogram_fractions(run) -> None:
    hist = sampler_histogram(run, stage=0)
    np.testing.assert_array_equal(hist["labelled"], [100, 70, 30])
    np.testing.assert_allclose(hist["labelled_fraction"], [0.5, 0.35, 0.15])
    np.testing.assert_allclose(hist["sampled_fraction"], [30 / 80, 30 / 80, 20 / 80])
    assert list(hist["class"]) == ["class0", "class1", "class2"]
    only_first = sampler_histogram(run, stage=0, steps=[0])
    np.testing.assert_allclose(only_first["labelled_fraction"], [0.6, 0.3, 0.1])
    np.testing.assert_allclose(sampler_histogram(run, stage=1)["sampled_fraction"], [0.5, 0.5, 0.0])


def test_histogram_errors_on_unknown_stage_or_step(run) -> None:
    with pytest.raises(ValueError, match="stage 5"):
        sampler_histogram(run, stage=5)
    with pytest.raises(ValueError, match="steps"):
        sampler_histogram(run, stage=0, steps=[999])


def test_timeline(run) -> None:
    timeline = sampler_timeline(run)
    assert list(timeline.columns) == ["step", "stage", "views", "groups", "n_sampled", "filtered_groups"]
    assert list(timeline["step"]) == [0, 0, 10, 10, 20, 20]
    stage1 = timeline[timeline["stage"] == 1]
    assert list(stage1["views"]) == [5, 5, 4]
    per_class = class_timeline(run, stage=0)
    assert list(per_class["sampled"]) == [10, 10, 10, 20, 20, 10]
    assert list(per_class["class"][:3]) == ["class0", "class1", "class2"]


def test_cap_rates(run) -> None:
    rates = cap_rates(run).set_index("stage")
    assert rates.loc[0, "steps"] == 3
    assert rates.loc[0, "cap_max_views_rate"] == pytest.approx(2 / 3)
    assert rates.loc[1, "cap_total_rate"] == pytest.approx(1 / 3)
    assert rates.loc[0, "filtered_rate"] == pytest.approx(1 / 3)
    assert rates.loc[0, "filtered_groups_mean"] == pytest.approx(2 / 3)
    assert rates.loc[1, "filtered_groups_total"] == 1


def test_ce_run_has_no_sampler_tables(tmp_path) -> None:
    run = load_run(write_fake_run(tmp_path / "ce", with_projector=False))
    with pytest.raises(MissingArtifactError, match="sampler/class_counts.parquet"):
        sampler_histogram(run, 0)
