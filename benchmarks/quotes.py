"""Figures the documentation quotes must be figures benchmarks/RESULTS.md holds.

README.md and the guides quote measurements ("0.77x loky's time", "7.13x faster
than the stdlib") so that a reader need not open RESULTS.md. A quote rots
silently when the benchmarks are run again, so this module finds every
*quoting paragraph* (a paragraph or table with a ratio such as ``1.30x``, or
one that names the benchmark machine or links to the results) and checks that
each ratio in it occurs in RESULTS.md exactly as printed there, and each decimal
figure (``0.026``, ``2.527``) as a number. ``tests/test_docs.py`` fails on a
figure that does not, and ``benchmarks/run.py`` lists them after a run, so
whoever reruns the benchmarks also updates the quotes. A figure that happens to
equal another number in RESULTS.md passes: this catches drift, not a figure
copied from the wrong row.

Whole numbers other than ratios are not checked: "4 tiny tasks" and "2 CPUs"
are not measurements. docs/design.md states the bars, not results, and
docs/changelog.md is history; neither is checked.

    python benchmarks/quotes.py      # lists stale quotes; exit status 1 if any
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "RESULTS.md"
NOT_QUOTES = {"docs/design.md", "docs/changelog.md"}
"""Pages whose figures are bars or history, not quotes of the last run."""

RATIO = re.compile(r"(?<![\w.,])(\d[\d,]*(?:\.\d+)?)x\b")
DECIMAL = re.compile(r"(?<![\w.,])(\d[\d,]*\.\d+)(?![\d.]*\d)")
"""A decimal figure, not a part of a version (``3.11.7``) or a longer number."""
PYTHON_VERSIONS = {"3.10", "3.11", "3.12", "3.13", "3.14"}
"""Decimals that name a Python, not a measurement."""
MEASURED_MARKS = ("benchmark machine", "benchmarks.md", "RESULTS.md")
NUMBER_IN_RESULTS = re.compile(r"\d[\d,]*(?:\.\d+)*")


def quoting_pages() -> list[Path]:
    """README.md and every docs/ page but the bars and the history."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    return [p for p in pages if p.relative_to(REPO).as_posix() not in NOT_QUOTES]


def paragraphs(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, text) of each paragraph; a whole table is one.
    Code blocks are skipped: their numbers are code, not quotes."""
    start, in_code, in_table = 0, False, False
    lines: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        fence = line.lstrip().startswith("```")
        row = line.lstrip().startswith("|")
        if fence or in_code or not line.strip() or row != in_table:
            if lines:
                yield start, "\n".join(lines)
            lines = []
        if fence:
            in_code = not in_code
        if fence or in_code or not line.strip():
            in_table = False
            continue
        in_table = row
        if not lines:
            start = number
        lines.append(line)
    if lines:
        yield start, "\n".join(lines)


def quotes_measurements(paragraph: str) -> bool:
    """A ratio, or words that say the figures come from the benchmarks."""
    return bool(RATIO.search(paragraph)) or any(
        mark in paragraph for mark in MEASURED_MARKS
    )


def figures_in_results(results: str) -> set[str]:
    """Every number RESULTS.md prints, and each decimal's leading ``a.b``
    (so that the docs may quote ``3.11`` of ``3.11.7``)."""
    found: set[str] = set()
    for token in NUMBER_IN_RESULTS.findall(results):
        found.add(token)
        parts = token.split(".")
        if len(parts) > 2:
            found.add(".".join(parts[:2]))
    return found


def stale_quotes(results: str, pages: list[Path] | None = None) -> list[str]:
    """``page:line: figure`` for each quoted figure RESULTS.md does not hold."""
    known = figures_in_results(results) | PYTHON_VERSIONS
    known_ratios = set(RATIO.findall(results))
    problems = []
    for page in quoting_pages() if pages is None else pages:
        where = page.relative_to(REPO) if page.is_relative_to(REPO) else page
        for start, text in paragraphs(page.read_text(encoding="utf-8")):
            if not quotes_measurements(text):
                continue
            for offset, line in enumerate(text.splitlines()):
                ratios = RATIO.findall(line)
                stale = [f"{r}x" for r in ratios if r not in known_ratios]
                stale += [
                    figure
                    for figure in DECIMAL.findall(line)
                    if figure not in known and figure not in ratios
                ]
                problems += [f"{where}:{start + offset}: {f}" for f in stale]
    return problems


def main() -> int:
    problems = stale_quotes(RESULTS.read_text(encoding="utf-8"))
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
