"""Every documentation citation in the code resolves to a section inside this repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE = [p for package in ("mscl", "runformat", "workbench", "app_pages") for p in (ROOT / package).rglob("*.py")] + [ROOT / "app.py"]

METHOD_CITATION = re.compile(r"method\.md`?\s*§\s*(\d+)(?:\s*[-–]\s*§?\s*(\d+))?")
VIEW_CITATION = re.compile(r"workbench\.md`?,?\s*view\s*(\d+)")
DOC_PATH = re.compile(r"docs/[\w./-]+\.md")


def _sections(document: Path, pattern: str) -> set[int]:
    return {int(number) for number in re.findall(pattern, document.read_text(), flags=re.MULTILINE)}


def _citations(pattern: re.Pattern[str]) -> list[tuple[str, int]]:
    found = []
    for path in CODE:
        for match in pattern.finditer(path.read_text()):
            first = int(match.group(1))
            last = int(match.group(2)) if match.lastindex and match.lastindex > 1 and match.group(2) else first
            found.extend((str(path.relative_to(ROOT)), number) for number in range(first, last + 1))
    return found


def test_method_sections_cited_in_the_code_exist():
    sections = _sections(ROOT / "docs" / "method.md", r"^## §(\d+)")
    citations = _citations(METHOD_CITATION)
    assert citations, "the code cites docs/method.md sections"
    assert [c for c in citations if c[1] not in sections] == []


def test_workbench_views_cited_in_the_code_exist():
    views = _sections(ROOT / "docs" / "workbench.md", r"^(\d+)\. \*\*")
    assert [c for c in _citations(VIEW_CITATION) if c[1] not in views] == []


def test_documents_named_in_the_code_and_docs_exist():
    sources = CODE + list((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
    missing = sorted({f"{p.relative_to(ROOT)}: {m}" for p in sources for m in DOC_PATH.findall(p.read_text()) if not (ROOT / m).is_file()})
    assert missing == []


def test_no_citation_points_outside_the_repository():
    outside = [str(p.relative_to(ROOT)) for p in CODE if "shared docs" in p.read_text() or "../shared/docs" in p.read_text()]
    assert outside == []


def test_the_citation_pattern_reads_ranges():
    assert METHOD_CITATION.findall("see method.md §2-3 and `docs/method.md` §4") == [("2", "3"), ("4", "")]
