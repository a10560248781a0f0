"""The layering of the packages (docs/architecture.md): ``runformat`` and ``workbench`` are torch-free, ``mscl``
never imports the analysis or app side, pages only compose workbench functions, and no first-party import cycle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mscl", "runformat", "workbench", "app_pages")

# What each package may never import, at module level or inside a function.
FORBIDDEN = {
    "runformat": ("torch", "mscl", "workbench", "streamlit", "app_pages"),
    "mscl": ("workbench", "app_pages", "streamlit", "umap", "plotly", "openTSNE"),
    "workbench": ("torch", "mscl", "streamlit", "app_pages", "timm"),
    "app_pages": ("torch", "mscl", "timm"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """Ids of the nodes under ``if TYPE_CHECKING:`` (imported for annotations only, never at run time)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for statement in node.body for child in ast.walk(statement))
    return skipped


def _imports(path: Path, module: str, is_package: bool) -> set[str]:
    """Every module name an import statement in ``path`` names (anywhere in the file, annotation-only imports
    under ``if TYPE_CHECKING:`` left out)."""
    names: set[str] = set()
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = _type_checking_nodes(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.add(prefix)
            names.update(f"{prefix}.{alias.name}" for alias in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = _imports(path, name, path.name == "__init__.py")
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_import_only_what_their_layer_allows(package):
    offending = []
    for name, path in _modules().items():
        if name.split(".")[0] != package:
            continue
        for target in _imports(path, name, path.name == "__init__.py"):
            if target.split(".")[0] in FORBIDDEN[package]:
                offending.append(f"{path.relative_to(ROOT)} imports {target}")
    assert offending == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _is_package_init_edge(source: str, target: str, modules: dict[str, Path]) -> bool:
    """A package's ``__init__`` re-exporting its own submodules is not a cycle of its own making."""
    return modules[source].name == "__init__.py" and target.startswith(source + ".")


def test_no_import_cycles():
    modules = _modules()
    graph = {s: {t for t in targets if not _is_package_init_edge(s, t, modules)} for s, targets in _graph().items()}
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_workbench_loads_neither_torch_nor_mscl():
    loaded = _loaded_after("import workbench, workbench.runs, workbench.projections, workbench.figures, workbench.study")
    assert not loaded & {"torch", "mscl", "streamlit"}


def test_training_side_loads_no_analysis_or_app_package():
    loaded = _loaded_after("import mscl.cli, mscl.trainer")
    assert not loaded & {"workbench", "streamlit", "umap", "plotly", "app_pages"}


def test_runformat_is_torch_free():
    loaded = _loaded_after("import runformat, " + ", ".join(f"runformat.{p.stem}" for p in (ROOT / "runformat").glob("[a-z]*.py")))
    assert not loaded & {"torch", "mscl", "workbench"}
