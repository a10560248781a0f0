"""Pieces shared by every page: the page list, the sidebar run picker, cached workbench calls, figure
export buttons and the message shown when a run lacks an artifact.

Nothing here computes an analysis result: which runs to show and how to name them come from
``workbench.selection``, everything else from the other ``workbench`` modules; the cached wrappers only call
them with run paths, so Streamlit can key its caches on plain values (run path + a stamp that changes whenever
the run directory changes).
"""

from __future__ import annotations

import argparse
import html
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from workbench import figures, runs
from workbench import selection as run_selection
from workbench.runs import MissingArtifactError, Run, RunFormatError

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

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#|~$:!])")
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


def md(value: object) -> str:
    """``value`` as literal text inside Streamlit markdown (and widget labels, which read markdown too).

    Run names, dataset and encoder names, class names and error texts come from files anyone can write: every
    character that starts markdown, HTML, a link or image, Streamlit's ``:color[...]`` directives or LaTeX
    (``$``) is backslash-escaped (CommonMark renders ``\\x`` as ``x``), and line breaks become spaces, so such a
    value can neither format the page nor add links or images to it.
    """
    return _MARKDOWN_SPECIAL.sub(r"\\\1", _LINE_BREAKS.sub(" ", str(value)))


def md_code(value: object) -> str:
    """``value`` as an inline code span: fenced by one more backtick than its longest backtick run (CommonMark),
    so a name holding backticks cannot close the span early; line breaks become spaces."""
    text = _LINE_BREAKS.sub(" ", str(value))
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{padding}{text}{padding}{fence}"


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


def run_stamp(path: str | Path) -> int:
    """A number that changes whenever a file is added to, replaced in or removed from the run directory
    (atomic writes rename into place, which updates the folder's mtime). The projection cache folder is
    left out: filling it does not change any other result."""
    return max(child.stat().st_mtime_ns for child in Path(path).iterdir()
               if (child.is_dir() and child.name != "projections") or child.name in ("run.json", "config.yaml"))


@dataclass(frozen=True)
class RunSelection:
    """The runs chosen in the sidebar: the folder, run A (or none when the folder is empty), run B, and the
    picker label of every readable run of the folder (``workbench.selection.run_labels``)."""

    root: Path
    table: pd.DataFrame
    run_a: Run | None
    run_b: Run | None
    labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def runs(self) -> list[Run]:
        return [run for run in (self.run_a, self.run_b) if run is not None]

    def labelled(self) -> list[tuple[str, Run]]:
        """``(label, run)`` for A and B (``workbench.selection.short_labels``: names, or paths when names clash)."""
        selected = self.runs
        return list(zip(run_selection.short_labels(selected, self.root), selected))

    def label(self, path: str) -> str:
        """The picker label of the run at ``path`` (its path when the folder listing does not have it)."""
        return "— none —" if path == NO_RUN_B else self.labels.get(path, path)


@st.cache_data(ttl=5, show_spinner=False)
def cached_run_table(root: str) -> pd.DataFrame:
    return runs.list_runs(root)


@st.cache_data(ttl=5, show_spinner=False)
def cached_run_labels(root: str, table: pd.DataFrame) -> dict[str, str]:
    """``workbench.selection.run_labels`` of the readable runs of ``root`` (reads every run's config.yaml)."""
    return run_selection.run_labels(table, root)


@st.cache_resource(show_spinner=False, max_entries=32)
def cached_run(path: str, stamp: int) -> Run:
    """``workbench.runs.load_run``, shared by all sessions until the run directory changes."""
    return runs.load_run(path)


def get_run(path: str) -> Run:
    return cached_run(path, run_stamp(path))


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
        sidebar.warning(f"{md_code(root)} is not a folder.")
    else:
        listed = cached_run_table(str(root.resolve()))
        invalid = listed[listed["status"] == "invalid"]
        if not invalid.empty:
            with sidebar.expander(f"{len(invalid)} run(s) cannot be read", icon=":material/error:"):
                for path, message in zip(invalid["path"], invalid["error"]):
                    st.error(f"**{md(Path(path).name)}**: {md(message)}")
        table = listed[listed["status"] != "invalid"].reset_index(drop=True)
    if table.empty:
        sidebar.info(
            "No runs here yet. Make one with `mscl demo` (two small synthetic runs, about 8 minutes on a 2-core CPU) "
            "or `mscl train --config <file>`, then type its parent folder above."
        )
        selection = RunSelection(root=root, table=table, run_a=None, run_b=None)
        st.session_state["selection"] = selection
        return selection

    paths = [str(path) for path in table["path"]]
    labels = cached_run_labels(str(root.resolve()), table)
    default_a, default_b = run_selection.default_pair(table)
    _keep_valid("run_a", paths, default_a)
    _keep_valid("run_b", [NO_RUN_B, *paths], default_b or NO_RUN_B)
    picker = RunSelection(root=root, table=table, run_a=None, run_b=None, labels=labels)
    sidebar.selectbox("Run A", paths, key="run_a", format_func=picker.label,
                      help="Defaults to the newest cross-entropy baseline. Labels: path in the runs folder · loss · "
                           "final val mIoU · config values that set the run apart.")
    sidebar.selectbox("Run B (optional)", [NO_RUN_B, *paths], key="run_b", format_func=picker.label,
                      help="Defaults to the newest contrastive (ms+cs or ms) run; every page compares A with B.")
    run_a = _load_or_report(st.session_state["run_a"], sidebar)
    run_b = _load_or_report(st.session_state["run_b"], sidebar) if st.session_state["run_b"] else None
    sidebar.caption(f"{len(table)} run(s) in {md_code(root)}")
    selection = RunSelection(root=root, table=table, run_a=run_a, run_b=run_b, labels=labels)
    st.session_state["selection"] = selection
    return selection


def _load_or_report(path: str, container: Any) -> Run | None:
    try:
        return get_run(path)
    except (RunFormatError, OSError) as error:
        container.error(f"Cannot read run {md_code(path)}: {md(error)}")
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
    return f"Run **{md(run_name)}** has no {md_code(error.artifact)}. {hint.rstrip('.')}."


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
    (``RunFormatError``, ``ValueError`` from workbench, e.g. different class lists) show their message, files
    the app may not read (``OSError``) the file and the reason."""
    owner = f"Run **{md(run_name)}**: " if run_name else ""
    try:
        yield
    except MissingArtifactError as error:
        st.warning(missing_artifact_message(error, _name_of_run_at(error.run_path)), icon=":material/folder_off:")
    except (RunFormatError, ValueError) as error:
        st.error(f"{owner}{md(error)}", icon=":material/error:")
    except OSError as error:
        st.error(f"{owner}cannot read {md_code(error.filename or '?')}: {md(error.strerror or error)}",
                 icon=":material/error:")


def runs_that_open(selection: RunSelection, probe: Callable[[Run], Any]) -> list[tuple[str, Run]]:
    """The selected (label, run) pairs for which ``probe(run)`` reads its artifact; for each other run,
    ``artifact_guard`` shows which file is missing or malformed and how to get it."""
    usable = []
    for label, run in selection.labelled():
        with artifact_guard(label):
            probe(run)
            usable.append((label, run))
    return usable


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
# Figures shared by several pages


def show_prediction(labelled: Sequence[tuple[str, Run]], image_id: str, key: str) -> None:
    """Image, ground truth, each run's prediction and where they differ (``figures.prediction_figure``)."""
    first = labelled[0][1]
    sample = first.prediction(image_id)
    predictions = {label: run.prediction(image_id)["prediction"] for label, run in labelled}
    fig = figures.prediction_figure(sample, predictions, first.palette, first.ignore_index)
    show_figure(fig, key=key, file_stem=f"predictions_{image_id}")


def palette_legend(run: Run) -> None:
    """The dataset's class colours (those of the label images) as a row of swatches, each outlined so a light colour
    stays visible on a white page."""
    swatch_style = ("display:inline-block;width:0.9em;height:0.9em;border-radius:2px;vertical-align:middle;"
                    "border:1px solid rgba(0,0,0,0.45)")
    swatches = " ".join(
        f'<span style="white-space:nowrap;margin-right:0.8em"><span style="{swatch_style};'
        f'background:rgb({r},{g},{b})"></span> {html.escape(name)}</span>'
        for name, (r, g, b) in zip(run.class_names, run.palette.tolist())
    )
    st.markdown(f"<div style='font-size:0.85em;line-height:1.8'>{swatches}</div>", unsafe_allow_html=True)
