"""Pieces shared by every page: the page list, the sidebar run picker, cached workbench calls, figure
export buttons and the message shown when a run lacks an artifact.

Nothing here computes an analysis result: the cached wrappers only call ``workbench`` functions with
run paths, so Streamlit can key its caches on plain values (run path + a stamp that changes whenever
the run directory changes).
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from workbench import figures, projections, runs, separability
from workbench.runs import EMBEDDING_KINDS, MissingArtifactError, Run, RunFormatError

APP_DIR = Path(__file__).resolve().parent.parent
DEFAULT_RUNS_ROOT = APP_DIR / "sample_data" / "runs"
RUNS_ENV_VAR = "MSCL_RUNS"
NO_RUN_B = ""


@dataclass(frozen=True)
class PageSpec:
    """One page of the app: its script (relative to ``app.py``), title, icon and URL path."""

    script: str
    title: str
    icon: str
    url_path: str

    @property
    def is_default(self) -> bool:
        return self is PAGES[0]

    @property
    def url(self) -> str:
        """The page's URL path below the app root (the default page lives at the root itself)."""
        return "" if self.is_default else self.url_path

    def as_st_page(self) -> st.Page:
        return st.Page(self.script, title=self.title, icon=self.icon, url_path=self.url_path, default=self.is_default)


PAGES: tuple[PageSpec, ...] = (
    PageSpec("app_pages/runs.py", "Runs", ":material/monitoring:", "runs"),
    PageSpec("app_pages/feature_spaces.py", "Feature spaces", ":material/scatter_plot:", "feature-spaces"),
    PageSpec("app_pages/cross_scale.py", "Cross-scale similarity", ":material/layers:", "cross-scale"),
    PageSpec("app_pages/sampler.py", "Sampler", ":material/filter_alt:", "sampler"),
    PageSpec("app_pages/iou.py", "IoU", ":material/target:", "iou"),
    PageSpec("app_pages/predictions.py", "Predictions", ":material/image:", "predictions"),
)

NAN_IOU_NOTE = (
    "IoU_c = TP / (TP + FP + FN) over the whole split. A class absent from both the ground truth and the "
    "prediction has no IoU (NaN) and is left out of the mean."
)


# --------------------------------------------------------------------------------------------------
# Runs folder and run selection


def default_runs_root(argv: Sequence[str], environ: Mapping[str, str]) -> Path:
    """The runs folder the app opens with: ``--runs PATH`` (after ``--``), else ``$MSCL_RUNS``, else
    ``sample_data/runs`` next to ``app.py``. Relative paths are taken from the working directory."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--runs", default=None)
    known, _ = parser.parse_known_args(list(argv))
    chosen = known.runs or environ.get(RUNS_ENV_VAR) or None
    return Path(chosen).expanduser().resolve() if chosen else DEFAULT_RUNS_ROOT


def default_pair(run_table: pd.DataFrame) -> tuple[str | None, str]:
    """Paths of the runs selected at start: A is a cross-entropy baseline when the folder has one (else
    the first run), B another run of the same dataset and model, preferring a finished ms+cs run, then ms,
    then any (else the first other run, else none). ``run_table`` is ``workbench.runs.list_runs`` output."""
    if run_table.empty:
        return None, NO_RUN_B
    baselines = run_table[run_table["loss_preset"] == "ce"]
    first_a = baselines.iloc[0] if not baselines.empty else run_table.iloc[0]
    others = run_table[run_table["path"] != first_a["path"]]
    if others.empty:
        return str(first_a["path"]), NO_RUN_B
    same_setup = others[(others["dataset"] == first_a["dataset"]) & (others["model"] == first_a["model"])]
    candidates = same_setup if not same_setup.empty else others
    preference = {"ms+cs": 0, "ms": 1}
    ranked = candidates.assign(
        _preset=candidates["loss_preset"].map(preference).fillna(2), _unfinished=candidates["status"] != "finished"
    ).sort_values(["_unfinished", "_preset"], kind="stable")
    return str(first_a["path"]), str(ranked.iloc[0]["path"])


def run_stamp(path: str | Path) -> int:
    """A number that changes whenever a file is added to, replaced in or removed from the run directory
    (atomic writes rename into place, which updates the folder's mtime). The projection cache folder is
    left out: filling it does not change any other result."""
    return max(child.stat().st_mtime_ns for child in Path(path).iterdir()
               if (child.is_dir() and child.name != "projections") or child.name in ("run.json", "config.yaml"))


@dataclass(frozen=True)
class RunSelection:
    """The runs chosen in the sidebar: the folder, run A (or none when the folder is empty), run B."""

    root: Path
    table: pd.DataFrame
    run_a: Run | None
    run_b: Run | None

    @property
    def runs(self) -> list[Run]:
        return [run for run in (self.run_a, self.run_b) if run is not None]

    def labelled(self) -> list[tuple[str, Run]]:
        """``(label, run)`` for A and B; labels are the run names, prefixed with A/B when they clash."""
        selected = self.runs
        if len(selected) == 2 and selected[0].name == selected[1].name:
            return [(f"A: {selected[0].name}", selected[0]), (f"B: {selected[1].name}", selected[1])]
        return [(run.name, run) for run in selected]


@st.cache_data(ttl=5, show_spinner=False)
def cached_run_table(root: str) -> pd.DataFrame:
    return runs.list_runs(root)


@st.cache_resource(show_spinner=False, max_entries=32)
def cached_run(path: str, stamp: int) -> Run:
    """``workbench.runs.load_run``, shared by all sessions until the run directory changes."""
    return runs.load_run(path)


def get_run(path: str) -> Run:
    return cached_run(path, run_stamp(path))


def run_label(table: pd.DataFrame, path: str) -> str:
    if path == NO_RUN_B:
        return "— none —"
    row = table[table["path"].astype(str) == path].iloc[0]
    miou = row.get("miou")
    score = f" · mIoU {miou:.3f}" if miou is not None and pd.notna(miou) else ""
    return f"{row['name']} · {row['loss_preset']}{score}"


def _keep_valid(key: str, options: list[str], fallback: str | None) -> None:
    if st.session_state.get(key) not in options:
        st.session_state[key] = fallback


def render_sidebar() -> RunSelection:
    """Draw the runs folder and the run A / run B pickers, and remember the selection for the pages."""
    if "runs_root" not in st.session_state:
        st.session_state["runs_root"] = str(default_runs_root(sys.argv[1:], os.environ))
    sidebar = st.sidebar
    sidebar.text_input(
        "Runs folder",
        key="runs_root",
        help="A folder holding run directories (each with a run.json). Relative paths start at the working directory.",
    )
    root = Path(st.session_state["runs_root"]).expanduser()
    table = pd.DataFrame(columns=["path", "name", "status", "dataset", "model", "loss_preset", "miou"])
    if not root.is_dir():
        sidebar.warning(f"`{root}` is not a folder.")
    else:
        listed = cached_run_table(str(root.resolve()))
        invalid = listed[listed["status"] == "invalid"]
        for message in invalid["error"]:
            sidebar.error(message, icon=":material/error:")
        table = listed[listed["status"] != "invalid"].reset_index(drop=True)
    if table.empty:
        sidebar.info(
            "No runs here yet. Make one with `mscl demo` (a small synthetic run, about a minute on a CPU) "
            "or `mscl train --config <file>`, then type its parent folder above."
        )
        selection = RunSelection(root=root, table=table, run_a=None, run_b=None)
        st.session_state["selection"] = selection
        return selection

    paths = [str(path) for path in table["path"]]
    default_a, default_b = default_pair(table)
    _keep_valid("run_a", paths, default_a)
    _keep_valid("run_b", [NO_RUN_B, *paths], default_b)
    sidebar.selectbox("Run A", paths, key="run_a", format_func=lambda path: run_label(table, path),
                      help="Usually the cross-entropy baseline.")
    sidebar.selectbox("Run B (optional)", [NO_RUN_B, *paths], key="run_b", format_func=lambda path: run_label(table, path),
                      help="Usually the ms+cs run of the same model; every page compares A with B.")
    run_a = _load_or_report(st.session_state["run_a"], sidebar)
    run_b = _load_or_report(st.session_state["run_b"], sidebar) if st.session_state["run_b"] else None
    sidebar.caption(f"{len(table)} run(s) in `{root}`")
    selection = RunSelection(root=root, table=table, run_a=run_a, run_b=run_b)
    st.session_state["selection"] = selection
    return selection


def _load_or_report(path: str, container: Any) -> Run | None:
    try:
        return get_run(path)
    except (RunFormatError, OSError) as error:
        container.error(f"Cannot read run `{path}`: {error}")
        return None


def current_selection() -> RunSelection:
    """The selection made by the sidebar in this script run (the sidebar is drawn before any page)."""
    return st.session_state["selection"]


def require_runs() -> RunSelection:
    """The current selection; stops the page with a note when no run A is available."""
    selection = current_selection()
    if selection.run_a is None:
        st.info("Choose a runs folder with at least one readable run in the sidebar.")
        st.stop()
    return selection


# --------------------------------------------------------------------------------------------------
# Missing artifacts


def missing_artifact_message(error: MissingArtifactError, run_name: str) -> str:
    """The text shown for a missing artifact: which run, which file and how to produce it."""
    hint = error.hint[:1].upper() + error.hint[1:]
    return f"Run **{run_name}** has no `{error.artifact}`. {hint.rstrip('.')}."


def _name_of_run_at(path: Path) -> str:
    table = st.session_state["selection"].table if "selection" in st.session_state else pd.DataFrame()
    if not table.empty:
        rows = table[table["path"].astype(str) == str(Path(path).resolve())]
        if not rows.empty:
            return str(rows["name"].iloc[0])
    return Path(path).name


@contextmanager
def artifact_guard(run_name: str | None = None) -> Iterator[None]:
    """Run a section of a page; when a run lacks a file, show which one and how to produce it instead of
    a traceback, and continue with the rest of the page. Malformed files and runs that cannot be compared
    (``RunFormatError``, ``ValueError`` from workbench, e.g. different class lists) show their message."""
    try:
        yield
    except MissingArtifactError as error:
        st.warning(missing_artifact_message(error, _name_of_run_at(error.run_path)), icon=":material/folder_off:")
    except (RunFormatError, ValueError) as error:
        owner = f"Run **{run_name}**: " if run_name else ""
        st.error(f"{owner}{error}", icon=":material/error:")


# --------------------------------------------------------------------------------------------------
# Figures


def figure_bytes(fig: go.Figure, file_format: str) -> bytes:
    """The figure as a static PNG or SVG file (``workbench.figures.export_figure``)."""
    with tempfile.TemporaryDirectory(prefix="mscl-export-") as folder:
        written = figures.export_figure(fig, Path(folder) / f"figure.{file_format}", format=file_format)
        return Path(written).read_bytes()


def show_figure(fig: go.Figure, key: str, file_stem: str) -> None:
    """Draw a plotly figure with PNG / SVG download buttons; the static file is made only when clicked."""
    st.plotly_chart(fig, key=key,
                    config={"displaylogo": False, "toImageButtonOptions": {"filename": file_stem, "scale": 2}})
    with st.popover("Export", icon=":material/download:"):
        for file_format, mime in (("png", "image/png"), ("svg", "image/svg+xml")):
            st.download_button(
                f"{file_format.upper()}",
                data=lambda file_format=file_format: figure_bytes(fig, file_format),
                file_name=f"{file_stem}.{file_format}",
                mime=mime,
                key=f"{key}-{file_format}",
                on_click="ignore",
            )


def explain(lines: Mapping[str, str]) -> None:
    """One line per metric, as a compact caption list."""
    st.caption("  \n".join(f"**{name}** — {text}" for name, text in lines.items()))


# --------------------------------------------------------------------------------------------------
# Cached workbench calls


@st.cache_data(show_spinner=False, max_entries=256)
def _cached_call(name: str, _function: Callable[..., Any], paths: tuple[str, ...], stamps: tuple[int, ...],
                 args: tuple, kwargs: tuple) -> Any:
    return _function(*(get_run(path) for path in paths), *args, **dict(kwargs))


def cached_call(function: Callable[..., Any], runs_first: Sequence[Run], *args: Any, **kwargs: Any) -> Any:
    """``function(*runs_first, *args, **kwargs)`` for a ``workbench`` function taking runs first, cached by
    Streamlit on the function's name, the run paths, their stamps and the other (hashable) arguments."""
    name = f"{function.__module__}.{function.__qualname__}"
    return _cached_call(name, function, tuple(str(run.path) for run in runs_first),
                        tuple(run_stamp(run.path) for run in runs_first), args, tuple(sorted(kwargs.items())))


# --------------------------------------------------------------------------------------------------
# Small compositions shared by several pages


def shared_prediction_ids(selected: Sequence[Run]) -> list[str]:
    """Prediction image ids saved by every selected run, in the first run's order."""
    common_ids = set.intersection(*(set(run.prediction_ids()) for run in selected))
    return [image_id for image_id in selected[0].prediction_ids() if image_id in common_ids]


def shared_dense_ids(selected: Sequence[Run]) -> list[str]:
    """Image ids with dense feature maps in every selected run, in the first run's order."""
    common_ids = set.intersection(*(set(run.dense_ids()) for run in selected))
    return [image_id for image_id in selected[0].dense_ids() if image_id in common_ids]


def embedding_kinds(selected: Sequence[Run]) -> list[str]:
    """Embedding kinds any selected run has, ``backbone`` first."""
    found = {kind for run in selected for kind in run.embedding_kinds()}
    return [kind for kind in EMBEDDING_KINDS if kind in found]


def embedding_widths(run: Run, kind: str) -> dict[int, int]:
    """Channels of the exported ``kind`` embeddings per stage (embeddings/meta.json)."""
    meta = run.embedding_meta()
    dims = meta["backbone_dims"] if kind == "backbone" else meta["projected_dims"]
    return {int(stage): int(dim) for stage, dim in zip(meta["stages"], dims)}


def show_prediction(labelled: Sequence[tuple[str, Run]], image_id: str, key: str) -> None:
    """Image, ground truth, each run's prediction and where they differ (``figures.prediction_figure``)."""
    first = labelled[0][1]
    sample = first.prediction(image_id)
    predictions = {label: run.prediction(image_id)["prediction"] for label, run in labelled}
    fig = figures.prediction_figure(sample, predictions, first.palette, first.ignore_index)
    show_figure(fig, key=key, file_stem=f"predictions_{image_id}")


def palette_legend(run: Run) -> None:
    """The dataset's class colours as a row of swatches."""
    swatch_style = "display:inline-block;width:0.9em;height:0.9em;border-radius:2px;vertical-align:middle"
    swatches = " ".join(
        f'<span style="white-space:nowrap;margin-right:0.8em"><span style="{swatch_style};'
        f'background:rgb({r},{g},{b})"></span> {html.escape(name)}</span>'
        for name, (r, g, b) in zip(run.class_names, run.palette.tolist())
    )
    st.markdown(f"<div style='font-size:0.85em;line-height:1.8'>{swatches}</div>", unsafe_allow_html=True)


# --------------------------------------------------------------------------------------------------
# Feature-space compositions (2-D maps from ``workbench.projections``)


def default_embedding_kind(selected: Sequence[Run]) -> str:
    """``projected`` when every selected run has projectors, else ``backbone`` (comparable across runs)."""
    return "projected" if all("projected" in run.embedding_kinds() for run in selected) else "backbone"


def _own_pixel_rows(run: Run) -> np.ndarray:
    return projections.select_pixels(run, max_points=projections.DEFAULT_MAX_POINTS, seed=projections.DEFAULT_SEED)


def _shared_pixel_rows(*selected: Run) -> list[np.ndarray]:
    return projections.aligned_pixel_rows(list(selected), seed=projections.DEFAULT_SEED,
                                          max_points=projections.DEFAULT_MAX_POINTS)


def own_pixel_rows(run: Run) -> np.ndarray:
    """The class-balanced embedding rows ``precompute_projections`` maps (so default maps hit the cache)."""
    return cached_call(_own_pixel_rows, [run])


def shared_pixel_rows(selected: Sequence[Run]) -> list[np.ndarray] | None:
    """Rows per run that are the same (image_id, y, x) pixels in every run, or None when fewer than 3 match."""
    try:
        return cached_call(_shared_pixel_rows, list(selected))
    except ValueError:
        return None


def maps_are_cached(run: Run, stages: Sequence[int], kind: str, method: str, rows: np.ndarray, align: bool) -> bool:
    """Whether ``stage_maps`` with these arguments will read the on-disk projection cache."""
    seed = projections.DEFAULT_SEED
    if align and len(stages) > 1:
        items = [(run, stage, kind) for stage in stages]
        return projections.aligned_cache_path(items, method, pixels=rows, seed=seed).is_file()
    return all(projections.projection_cache_path(run, stage, kind, method, pixels=rows, seed=seed).is_file()
               for stage in stages)


def default_map_method(run: Run, kind: str, stages: Sequence[int], options: Sequence[str]) -> str:
    """The first method in ``options`` whose default view (all stages, aligned) is cached; else PCA (fast)."""
    rows = own_pixel_rows(run)
    for method in options:
        if maps_are_cached(run, stages, kind, method, rows, align=True):
            return method
    return "pca"


def _stage_maps(run: Run, stages: tuple[int, ...], kind: str, method: str, rows: np.ndarray,
                align: bool) -> list[np.ndarray]:
    seed = projections.DEFAULT_SEED
    if align and len(stages) > 1:
        return projections.aligned_projections([(run, stage, kind) for stage in stages], method, pixels=rows, seed=seed)
    return [projections.projection(run, stage, kind, method, pixels=rows, seed=seed) for stage in stages]


def stage_maps(run: Run, stages: tuple[int, ...], kind: str, method: str, rows: np.ndarray,
               align: bool) -> list[np.ndarray]:
    """2-D maps of embedding ``rows`` for each stage (aligned across stages or one by one), default
    parameters, read from / written to the run's projection cache."""
    return cached_call(_stage_maps, [run], stages, kind, method, rows, align)


def _map_trustworthiness(run: Run, stage: int, kind: str, rows: np.ndarray, coords: np.ndarray) -> float:
    return separability.trustworthiness(run.embeddings(stage, kind)[rows], coords)


def map_trustworthiness(run: Run, stage: int, kind: str, rows: np.ndarray, coords: np.ndarray) -> float:
    """Trustworthiness of the 2-D map ``coords`` of embedding ``rows`` (``workbench.separability``)."""
    return cached_call(_map_trustworthiness, [run], stage, kind, rows, coords)
