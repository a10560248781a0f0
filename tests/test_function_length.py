"""No function of the packages is longer than 80 lines: a longer one is split into named steps (docstring and
decorators included in the count, nested functions counted on their own and as part of the one holding them)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mscl", "runformat", "workbench", "app_pages")
MAX_LINES = 80


def long_functions(source: str, filename: str, limit: int = MAX_LINES) -> list[str]:
    """``<file>:<line> <name> (<n> lines)`` for every function or method of ``source`` longer than ``limit`` lines."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno] + [decorator.lineno for decorator in node.decorator_list])
            length = node.end_lineno - first + 1
            if length > limit:
                found.append(f"{filename}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_the_counter_finds_a_long_function_and_leaves_a_short_one() -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(79))
    source = f"@decorator\ndef long():\n{body}    return x0\n\n\ndef short():\n    return 1\n"
    assert long_functions(source, "example.py") == ["example.py:2 long (82 lines)"]
    assert long_functions(source, "example.py", limit=82) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_is_longer_than_80_lines(package: str) -> None:
    too_long = []
    for path in sorted((ROOT / package).rglob("*.py")):
        too_long += long_functions(path.read_text(), str(path.relative_to(ROOT)))
    assert not too_long, f"functions over {MAX_LINES} lines (split them into named steps): {too_long}"
