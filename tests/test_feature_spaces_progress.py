"""Feature spaces page: maps missing from the cache are computed under a progress bar with a Cancel button, a
cancelled computation stays cancelled until asked again, and Refine asks for more epochs (docs/workbench.md, view 2)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from fake_run import write_fake_run  # noqa: E402

from app_pages import common  # noqa: E402
from workbench import feature_maps, projections  # noqa: E402
from workbench.projections import aligned_cache_path, precompute_projections, select_pixels  # noqa: E402
from workbench.runs import load_run  # noqa: E402

STAGES = (0, 1, 2, 3)
PAGE = next(page.script for page in common.PAGES if page.url_path == "feature-spaces")


@pytest.fixture()
def one_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(projections.CACHE_ENV_VAR, str(tmp_path / "user-cache"))
    path = write_fake_run(tmp_path / "runs" / "only", seed=0, stages=len(STAGES))
    precompute_projections(load_run(path), methods=("pca",))
    monkeypatch.setenv(common.RUNS_ENV_VAR, str(tmp_path / "runs"))
    return path


@pytest.fixture()
def progress_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, str]]:
    """Every progress report the page receives while computing maps."""
    calls: list[tuple[float, str]] = []
    original = feature_maps.stage_maps

    def recording(*args, progress=None, **kwargs):
        if progress is None:
            return original(*args, **kwargs)

        def report(fraction: float, message: str) -> None:
            calls.append((fraction, message))
            progress(fraction, message)
        return original(*args, progress=report, **kwargs)

    monkeypatch.setattr(feature_maps, "stage_maps", recording)
    return calls


def open_page() -> AppTest:
    app = AppTest.from_file(str(REPO_ROOT / "app.py"), default_timeout=120)
    app.run()
    app.switch_page(PAGE).run()
    assert not app.exception, [item.value for item in app.exception]
    return app


def test_uncached_map_is_computed_with_progress(one_run: Path, progress_calls) -> None:
    app = open_page()
    assert app.selectbox(key="space-method").value == "pca" and not progress_calls
    app.selectbox(key="space-kind").set_value("projected")
    app.selectbox(key="space-method").set_value("tsne").run()
    assert not app.exception and not app.error, [item.value for item in app.exception]
    assert progress_calls and progress_calls[-1][0] == pytest.approx(1.0)
    assert any("t-SNE iteration" in message for _, message in progress_calls)
    run = load_run(one_run)
    items = [(run, stage, "projected") for stage in STAGES]
    assert aligned_cache_path(items, "tsne", pixels=select_pixels(run, seed=projections.DEFAULT_SEED)).is_file()
    assert len(app.get("plotly_chart")) == 1


def test_cancelled_maps_wait_until_asked_again(one_run: Path, progress_calls) -> None:
    app = open_page()
    app.selectbox(key="space-kind").set_value("projected")
    app.selectbox(key="space-method").set_value("tsne")
    job = (str(load_run(one_run).path), STAGES, "projected", "tsne", True, ())
    app.session_state["space-cancelled"] = job  # what a click on Cancel leaves behind
    app.run()
    assert any("was cancelled" in info.value for info in app.info) and not app.get("plotly_chart")
    assert not progress_calls
    next(button for button in app.button if button.label == "Compute them").click().run()
    assert not app.exception and progress_calls and len(app.get("plotly_chart")) == 1


def test_refine_asks_for_more_epochs(one_run: Path, progress_calls) -> None:
    app = open_page()
    assert app.toggle(key="space-refine").disabled, "PCA has nothing to refine"
    app.selectbox(key="space-kind").set_value("projected")
    app.selectbox(key="space-method").set_value("tsne").run()
    progress_calls.clear()
    app.toggle(key="space-refine").set_value(True).run()
    assert not app.exception and not app.error
    iterations = projections.REFINED_PARAMS["tsne"]["max_iter"]
    messages = [message for _, message in progress_calls]
    assert any(message.endswith(f"panel 1/4 · t-SNE iteration {iterations}/{iterations}") for message in messages)
    assert messages[-1].endswith(f"panel 4/4 · t-SNE iteration {iterations // 3}/{iterations // 3}")
