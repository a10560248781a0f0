"""docs/reliability.md names the tests behind each guarantee: every one of them must exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cited_tests(text: str) -> list[tuple[str, str]]:
    """(file, test) pairs; a bare ``::test`` refers to the file named last before it."""
    cited, current = [], None
    for match in re.finditer(r"(test_\w+\.py)?::(test_\w+)", text):
        current = match.group(1) or current
        assert current is not None, f"{match.group(0)} names no test file before it"
        cited.append((current, match.group(2)))
    return cited


def defined_tests(file: str) -> set[str]:
    tree = ast.parse((ROOT / "tests" / file).read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_test_named_in_reliability_md_exists():
    cited = cited_tests((ROOT / "docs" / "reliability.md").read_text())
    assert len(cited) >= 30
    missing = [f"{file}::{name}" for file, name in cited if name not in defined_tests(file)]
    assert missing == []


def test_bare_references_take_the_file_named_before_them():
    assert cited_tests("`test_a.py::test_x`, `::test_y` and `test_b.py::test_z`") == [
        ("test_a.py", "test_x"), ("test_a.py", "test_y"), ("test_b.py", "test_z")]
