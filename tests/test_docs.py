"""The documentation is tested like code: every ```python block in README.md and
docs/ runs (tests/_markdown_blocks.py says the convention), every page is in the
site's navigation, and the benchmark plots match benchmarks/RESULTS.md.

Nothing here needs the docs dependency group: mkdocs.yml is read as YAML.
"""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests import _markdown_blocks as md

if TYPE_CHECKING:
    from pathlib import Path
    from types import ModuleType

FILES = md.markdown_files()
RUNNABLE = [block for path in FILES for block in md.read_blocks(path) if block.runs]


@pytest.mark.timeout(md.RUN_TIMEOUT + 30)
@pytest.mark.parametrize("block", RUNNABLE, ids=[b.where for b in RUNNABLE])
def test_python_block_runs(block: md.Block, tmp_path: Path) -> None:
    if block.skip_reason is not None:
        pytest.skip(f"{block.where}: {block.skip_reason}")
    outcome = md.run_block(block, tmp_path)
    if outcome.returncode != 0:
        pytest.fail(md.failure_message(block, outcome), pytrace=False)


def test_no_block_is_tagged_almost_python() -> None:
    almost = [
        f"{b.where}: ```{b.info}"
        for path in FILES
        for b in md.read_blocks(path)
        if b.looks_like_python
    ]
    assert not almost, (
        "these blocks look like Python but are not tagged exactly `python`, so "
        "they are never run; tag them `python` (a complete program, or one with "
        "a skip marker) or `pycon`/`text`:\n" + "\n".join(almost)
    )


def test_docs_test_markers_are_well_formed() -> None:
    problems = [problem for path in FILES for problem in md.marker_problems(path)]
    assert not problems, "\n".join(problems)


# -- the site's navigation --------------------------------------------------------


class _TolerantLoader(yaml.SafeLoader):
    """Reads mkdocs.yml without mkdocs: tags such as ``!relative`` or
    ``!!python/name:...`` become None instead of errors."""


_TolerantLoader.add_multi_constructor("", lambda loader, suffix, node: None)


def nav_pages() -> list[str]:
    """Every page mkdocs.yml's nav lists, relative to docs/."""
    config = yaml.load(
        (md.ROOT / "mkdocs.yml").read_text(encoding="utf-8"),
        Loader=_TolerantLoader,  # a SafeLoader: builds no Python objects
    )
    pages: list[str] = []

    def walk(entry: Any) -> None:
        if isinstance(entry, str):
            if not entry.startswith(("http://", "https://")):
                pages.append(entry)
        elif isinstance(entry, list):
            for item in entry:
                walk(item)
        elif isinstance(entry, dict):
            for value in entry.values():
                walk(value)

    walk(config["nav"])
    return pages


def test_every_docs_page_is_in_the_nav() -> None:
    listed = set(nav_pages())
    orphans = [
        path.relative_to(md.DOCS).as_posix()
        for path in sorted(md.DOCS.rglob("*.md"))
        if path.relative_to(md.DOCS).as_posix() not in listed
    ]
    assert not orphans, (
        "pages under docs/ that mkdocs.yml's nav does not list (no reader finds "
        f"them): {', '.join(orphans)}"
    )


def test_every_nav_entry_is_a_page() -> None:
    pages = nav_pages()
    missing = [page for page in pages if not (md.DOCS / page).is_file()]
    assert not missing, (
        f"mkdocs.yml's nav lists pages that docs/ lacks: {', '.join(missing)}"
    )
    duplicates = sorted({page for page in pages if pages.count(page) > 1})
    assert not duplicates, f"pages listed twice in the nav: {', '.join(duplicates)}"


# -- the benchmarks page ----------------------------------------------------------


def _benchmarks_module(stem: str) -> ModuleType:
    """benchmarks/<stem>.py (benchmarks/ is not a package)."""
    name = f"stalwart_benchmark_{stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, md.ROOT / "benchmarks" / f"{stem}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while defining
    spec.loader.exec_module(module)
    return module


def _plots_module() -> ModuleType:
    """benchmarks/plots.py; its reading half needs no matplotlib."""
    return _benchmarks_module("plots")


def test_benchmark_plots_match_results_md() -> None:
    plots = _plots_module()
    results = (md.ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    problems = plots.stale_plots(results)
    assert not problems, (
        "docs/assets/bench/ does not show benchmarks/RESULTS.md's figures "
        "(run python benchmarks/plots.py):\n" + "\n".join(problems)
    )


def test_a_changed_table_makes_its_plot_stale() -> None:
    plots = _plots_module()
    results = (md.ROOT / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    table = plots.table_text(results, "bench_submit.py")
    changed = results.replace(table, table.replace("|", "| 1", 2), 1)
    assert any(p.startswith("submit.png") for p in plots.stale_plots(changed))


def test_quoted_figures_are_in_results_md() -> None:
    quotes = _benchmarks_module("quotes")
    problems = quotes.stale_quotes(quotes.RESULTS.read_text(encoding="utf-8"))
    assert not problems, (
        "README.md and docs/ quote figures that benchmarks/RESULTS.md does not "
        "hold (quote the last run's figures, as RESULTS.md prints them):\n"
        + "\n".join(problems)
    )


def test_a_quote_of_an_older_run_is_stale(tmp_path: Path) -> None:
    quotes = _benchmarks_module("quotes")
    results = "| stalwart | 0.026 | 0.77x |\n| cold start | CPython 3.11.7 | 1,075 |\n"
    page = tmp_path / "page.md"
    page.write_text(
        textwrap.dedent("""\
            On the benchmark machine (CPython 3.11), 0.026 s, 1,075 MB and
            0.77x, then 0.031 s.

            | workload | ratio |
            | --- | --- |
            | tiny | 0.79x |

            Not a quote: 2.5 seconds, 4 tasks.

            ```python
            print(0.5, "9.9x")
            ```
            """),
        encoding="utf-8",
    )
    assert quotes.stale_quotes(results, [page]) == [
        f"{page}:2: 0.031",
        f"{page}:6: 0.79x",
    ]


def test_benchmarks_page_includes_results_md() -> None:
    page = (md.DOCS / "benchmarks.md").read_text(encoding="utf-8")
    assert '--8<-- "benchmarks/RESULTS.md' in page, (
        "docs/benchmarks.md must include benchmarks/RESULTS.md, not a copy of it"
    )


# -- the runner itself: each way a block can fail is reported ---------------------


def _page(tmp_path: Path, text: str) -> list[md.Block]:
    page = tmp_path / "page.md"
    page.write_text(textwrap.dedent(text), encoding="utf-8")
    return md.read_blocks(page)


def test_runner_reports_where_and_why_a_block_failed(tmp_path: Path) -> None:
    blocks = _page(
        tmp_path,
        """\
        # A page

        ```python
        import sys

        print("to stderr", file=sys.stderr)
        raise SystemExit(3)
        ```
        """,
    )
    (block,) = blocks
    outcome = md.run_block(block, tmp_path)
    assert outcome.returncode == 3
    message = md.failure_message(block, outcome)
    assert f"{tmp_path / 'page.md'}:3" in message
    assert "exited with status 3" in message
    assert "to stderr" in message


def test_runner_kills_a_block_that_hangs(tmp_path: Path) -> None:
    (block,) = _page(
        tmp_path,
        """\
        ```python
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        time.sleep(60)
        ```
        """,
    )
    outcome = md.run_block(block, tmp_path, timeout=1.0)
    assert outcome.returncode is None
    assert "was killed after" in md.failure_message(block, outcome)


def test_runner_reads_fences_tags_and_skip_markers(tmp_path: Path) -> None:
    blocks = _page(
        tmp_path,
        """\
        ```python
        print(1)
        ```

        <!-- docs-test: skip: needs a cluster -->

        ```python
        client = Client("tcp://scheduler:8786")
        ```

        * in a list:

            ````python
            text = '''
            ```
            '''
            ````

        ```pycon
        >>> 1 + 1
        ```

        ```py
        x = 1
        ```
        """,
    )
    assert [(b.line, b.info) for b in blocks] == [
        (1, "python"),
        (7, "python"),
        (13, "python"),
        (19, "pycon"),
        (23, "py"),
    ]
    assert [b.skip_reason for b in blocks[:3]] == [None, "needs a cluster", None]
    assert blocks[2].code == "text = '''\n```\n'''\n"
    assert [b.runs for b in blocks] == [True, True, True, False, False]
    assert [b.looks_like_python for b in blocks] == [False] * 4 + [True]


def test_runner_refuses_a_marker_without_a_reason(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- docs-test: skip -->\n```python\nx = 1\n```\n")
    (problem,) = md.marker_problems(page)
    assert "REASON is required" in problem
