"""Draw the documentation's benchmark plots from ``benchmarks/RESULTS.md``.

The benchmark programs keep their raw figures only for as long as ``run.py``
gathers them, so the tables in RESULTS.md are the record: each plot reads one
benchmark's table (found by the program's file name in its section heading) and
writes ``docs/assets/bench/NAME.png``. ``run.py`` calls this after a full run;
by hand::

    python benchmarks/plots.py                  # reads RESULTS.md, rewrites the PNGs
    python benchmarks/plots.py --check          # exit 1 if a PNG no longer matches

Each PNG records a digest of the table it was drawn from (the PNG text chunk
``Source``), so a plot that no longer matches RESULTS.md is found without
matplotlib: ``--check`` here, and ``tests/test_docs.py``. Without matplotlib
(``pip install matplotlib``; ``nox -s bench`` installs it) this program prints a
note and draws nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
OUT_DIR = HERE.parent / "docs" / "assets" / "bench"

STALWART_COLOR = "#3f51b5"  # Material's default indigo: the site's own colour
OTHER_COLOR = "#9e9e9e"
DPI = 150  # drawn about as wide as the docs' text column, sharp on dense screens


# -- reading RESULTS.md (standard library only: the docs tests use this part) -----


class ResultsError(Exception):
    """RESULTS.md lacks what a plot needs; the message says what."""


def section(results: str, program: str) -> str:
    """The text of the section whose heading names ``program`` (``bench_x.py``)."""
    match = re.search(
        rf"^## [^\n]*\(`{re.escape(program)}`\)\n(.*?)(?=^## |\Z)",
        results,
        re.M | re.S,
    )
    if match is None:
        raise ResultsError(f"RESULTS.md has no section for {program}")
    return match.group(1)


def table_text(results: str, program: str) -> str:
    """The first markdown table in ``program``'s section, as written."""
    lines = section(results, program).splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), None)
    if start is None:
        raise ResultsError(
            f"RESULTS.md's section for {program} has no table (did it fail?)"
        )
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[start:end])


def table_rows(results: str, program: str) -> list[dict[str, str]]:
    """``program``'s table as one dict per row, keyed by the column headers."""
    lines = table_text(results, program).splitlines()
    headers = _cells(lines[0])
    rows = []
    for line in lines[2:]:
        cells = _cells(line)
        if len(cells) != len(headers):
            raise ResultsError(
                f"RESULTS.md's table for {program} has a row of {len(cells)} cells "
                f"under {len(headers)} headers: {line[:80]}"
            )
        rows.append(dict(zip(headers, cells, strict=True)))
    if not rows:
        raise ResultsError(f"RESULTS.md's table for {program} has no rows")
    return rows


def source_digest(results: str, program: str) -> str:
    """What a plot records about the table it was drawn from."""
    digest = hashlib.sha256(table_text(results, program).encode()).hexdigest()
    return f"{program} sha256:{digest[:16]}"


def png_text(path: Path) -> dict[str, str]:
    """The text chunks (``tEXt``, ``zTXt``, uncompressed ``iTXt``) of a PNG file."""
    data = path.read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"{path} is not a PNG file")
    texts: dict[str, str] = {}
    offset = 8
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        body = data[offset + 8 : offset + 8 + length]
        offset += 12 + length
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            texts[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            texts[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            if rest[:1] == b"\0":  # not compressed
                _, _, rest = rest[2:].partition(b"\0")  # language tag
                _, _, value = rest.partition(b"\0")  # translated keyword
                texts[key.decode("utf-8")] = value.decode("utf-8")
        elif kind == b"IEND":
            break
    return texts


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def number(cell: str) -> float:
    """The first figure in a cell: ``"44,804"``, ``"0.070 (max 0.245)"``,
    ``"199/199 (min 199)"`` (199) or ``"1,074 (worst 1,074)"``."""
    match = re.search(r"-?\d[\d,]*(?:\.\d+)?", cell)
    if match is None:
        raise ResultsError(f"no number in the table cell {cell!r}")
    return float(match.group().replace(",", ""))


def column(row: dict[str, str], name: str, program: str) -> str:
    if name not in row:
        raise ResultsError(
            f"RESULTS.md's table for {program} has no column {name!r} "
            f"(it has {', '.join(row)}); update benchmarks/plots.py to match"
        )
    return row[name]


def contender(name: str) -> str:
    """A short label for a table's executor column."""
    name = name.replace("`", "")
    labels = (
        ("stalwart.ProcessPoolExecutor, stalwart.shared()", "stalwart, shared()"),
        ("stalwart.ProcessPoolExecutor, plain", "stalwart, plain"),
        ('stalwart.ProcessPoolExecutor(mp_context="template")', "stalwart, template"),
        ('stalwart.ProcessPoolExecutor(mp_context="fork")', "stalwart, fork"),
        ("stalwart.ProcessPoolExecutor (default", "stalwart (default)"),
        ("stalwart.ProcessPoolExecutor", "stalwart"),
        ('get_context("forkserver")', "stdlib, forkserver"),
        ('get_context("spawn")', "stdlib, spawn"),
        ('get_context("fork")', "stdlib, fork"),
        ("concurrent.futures.ProcessPoolExecutor", "stdlib"),
        ("loky.ProcessPoolExecutor", "loky"),
        ("pebble.ProcessPool", "pebble"),
        ("joblib.Parallel", "joblib"),
    )
    for start, label in labels:
        if start in name:
            return label
    return name.split(",")[0][:30]


# -- drawing ----------------------------------------------------------------------


@dataclass
class Plot:
    name: str  # docs/assets/bench/NAME.png
    program: str  # the benchmark whose table it draws
    draw: Callable[[Any, list[dict[str, str]], str], Any]  # (pyplot, rows, program)


def _colors(labels: Sequence[str]) -> list[str]:
    return [STALWART_COLOR if x.startswith("stalwart") else OTHER_COLOR for x in labels]


def _rows(count: int) -> list[int]:
    """y positions that put the first of ``count`` bars on top."""
    return list(range(count - 1, -1, -1))


def _bars(
    ax: Any,
    labels: Sequence[str],
    values: Sequence[float],
    fmt: str,
    label_at: Sequence[float] | None = None,
) -> Any:
    """Horizontal bars, first label on top, each with its value past its end
    (or past ``label_at``, where a whisker would cover it)."""
    positions = _rows(len(labels))
    bars = ax.barh(positions, values, color=_colors(labels), height=0.6)
    ax.set_yticks(positions, labels)
    texts = [fmt.format(v) for v in values]
    if label_at is None:
        ax.bar_label(bars, texts, padding=3, fontsize=9)
    else:
        for y, x, text in zip(positions, label_at, texts, strict=True):
            ax.annotate(
                text,
                (x, y),
                xytext=(4, 0),
                textcoords="offset points",
                va="center",
                fontsize=9,
            )
    ax.margins(x=0.18)
    ax.spines[["top", "right"]].set_visible(False)
    ax.tick_params(axis="y", length=0)
    return bars


def draw_submit(plt: Any, rows: list[dict[str, str]], program: str) -> Any:
    labels = [contender(column(r, "executor", program)) for r in rows]
    medians = [number(column(r, "median tasks/s", program)) for r in rows]
    spans = [column(r, "min-max tasks/s", program).split("-") for r in rows]
    low = [m - number(s[0]) for m, s in zip(medians, spans, strict=True)]
    high = [number(s[1]) - m for m, s in zip(medians, spans, strict=True)]
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(rows) + 1.3))
    tops = [m + h for m, h in zip(medians, high, strict=True)]
    _bars(ax, labels, medians, "{:,.0f}", label_at=tops)
    ax.errorbar(
        medians, _rows(len(rows)), xerr=[low, high], fmt="none", ecolor="#424242"
    )
    ax.xaxis.set_major_formatter(lambda x, _: f"{x:,.0f}")
    ax.set_xlabel("tasks per second, median (lines: min to max); higher is better")
    ax.set_title("Tiny tasks through submit() and as_completed", loc="left")
    return fig


def draw_crash(plt: Any, rows: list[dict[str, str]], program: str) -> Any:
    labels = [contender(column(r, "executor", program)) for r in rows]
    delivered_cells = [
        column(r, "healthy results delivered, median", program) for r in rows
    ]
    delivered = [number(c) for c in delivered_cells]
    healthy = number(delivered_cells[0].split("/")[1])
    raised = [column(r, "crashed task raised", program) for r in rows]
    recovery = [
        column(r, "crash → replacement ran a task s", program).split(" ")[0]
        for r in rows
    ]
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(7.5, 0.55 * len(rows) + 1.5), width_ratios=(3, 2)
    )
    _bars(left, labels, delivered, "{:.0f}")
    left.axvline(healthy, color="#424242", linestyle="--", linewidth=1)
    left.set_xlim(0, healthy * 1.25)
    left.set_xlabel(f"healthy results delivered of {healthy:.0f}, median")
    left.set_title("One task segfaults", loc="left")
    for y, name in zip(_rows(len(rows)), raised, strict=True):
        left.text(2, y, name, va="center", fontsize=8, color="white")
    seconds = [float(x) if re.fullmatch(r"[\d.]+", x) else None for x in recovery]
    shown = [s or 0.0 for s in seconds]
    bars = right.barh(_rows(len(rows)), shown, color=_colors(labels), height=0.6)
    right.bar_label(
        bars,
        ["no replacement: pool broken" if s is None else f"{s:.3f} s" for s in seconds],
        padding=3,
        fontsize=9,
    )
    right.set_yticks(_rows(len(rows)), [])
    right.margins(x=0.9 if all(s is None or s == 0 for s in seconds) else 0.6)
    right.spines[["top", "right"]].set_visible(False)
    right.tick_params(axis="y", length=0)
    right.set_xlabel("s from the crash to\na new worker's first task")
    right.set_title("Recovery", loc="left")
    return fig


def draw_startup(plt: Any, rows: list[dict[str, str]], program: str) -> Any:
    groups: dict[str, list[tuple[str, float]]] = {}
    for r in rows:
        measurement = column(r, "measurement", program)
        if measurement.startswith("cold `with` block"):
            label = contender(column(r, "executor", program))
            seconds = number(column(r, "median s", program))
            groups.setdefault(measurement, []).append((label, seconds * 1000))
    if not groups:
        raise ResultsError(f"RESULTS.md's table for {program} has no cold-start rows")
    fig, axes = plt.subplots(
        1, len(groups), figsize=(7.5, 3.4), sharey=True, squeeze=False
    )
    for ax, (measurement, points) in zip(axes[0], groups.items(), strict=True):
        labels = [label for label, _ in points]
        _bars(ax, labels, [ms for _, ms in points], "{:.0f} ms")
        parent = measurement.split(", ", 1)[1].split(" (")[0]
        ax.set_title(parent.capitalize(), loc="left", fontsize=10)
        ax.set_xlabel("ms, median; lower is better")
    fig.suptitle(
        "A fresh executor's first with block", x=0.01, ha="left", fontweight="bold"
    )
    return fig


def draw_large_data(plt: Any, rows: list[dict[str, str]], program: str) -> Any:
    panels = (
        ("(1) ", "median s", "100 MiB argument, 10 calls", "s for 10 calls", "{:.2f}"),
        ("(1b) ", "median s", "The same array, unchanged", "s for 10 calls", "{:.2f}"),
        ("(2) ", "median s", "100 MiB result, 10 calls", "s for 10 calls", "{:.2f}"),
        ("(3) ", "ms per task", "One array read by many tasks", "ms per task", None),
        (
            "(4) ",
            "parent peak RSS growth MB",
            "A 1 GiB result",
            "parent's peak memory growth, MB",
            "{:,.0f}",
        ),
    )
    fig, axes = plt.subplots(3, 2, figsize=(7.5, 8.4))
    flat = list(axes.flat)
    for ax, (prefix, field, title, unit, fmt) in zip(flat, panels, strict=False):
        chosen = [
            r for r in rows if column(r, "measurement", program).startswith(prefix)
        ]
        if not chosen:
            raise ResultsError(f"RESULTS.md's table for {program} has no {prefix}rows")
        labels = [contender(column(r, "executor", program)) for r in chosen]
        values = [number(column(r, field, program)) for r in chosen]
        wrong = [not column(r, "correct", program).startswith("yes") for r in chosen]
        bars = _bars(ax, labels, values, fmt or "{:g}")
        for bar, is_wrong in zip(bars, wrong, strict=True):
            if is_wrong:
                bar.set_hatch("////")
                bar.set_edgecolor("white")
        if fmt is None:  # from 0.07 ms to hundreds: only a log scale shows both
            ax.set_xscale("log")
            ax.margins(x=0.5)
        ax.set_title(title, loc="left", fontsize=10)
        ax.set_xlabel(f"{unit}, median; lower is better", fontsize=8.5)
    legend = flat[-1]
    legend.axis("off")
    patches = [
        plt.Rectangle((0, 0), 1, 1, color=STALWART_COLOR),
        plt.Rectangle((0, 0), 1, 1, color=OTHER_COLOR),
        plt.Rectangle(
            (0, 0), 1, 1, facecolor=OTHER_COLOR, hatch="////", edgecolor="white"
        ),
    ]
    legend.legend(
        patches,
        ["stalwart", "the others", "tasks saw wrong data"],
        loc="center left",
        frameon=False,
    )
    return fig


PLOTS = (
    Plot("submit", "bench_submit.py", draw_submit),
    Plot("crash", "bench_crash.py", draw_crash),
    Plot("startup", "bench_startup.py", draw_startup),
    Plot("large_data", "bench_large_data.py", draw_large_data),
)


def stale_plots(results: str, out_dir: Path = OUT_DIR) -> list[str]:
    """Why each plot does not match ``results`` (empty: all match)."""
    problems = []
    for plot in PLOTS:
        path = out_dir / f"{plot.name}.png"
        try:
            expected = source_digest(results, plot.program)
        except ResultsError as exc:
            problems.append(f"{path.name}: {exc}")
            continue
        if not path.exists():
            problems.append(f"{path.name}: missing")
            continue
        recorded = png_text(path).get("Source")
        if recorded != expected:
            problems.append(
                f"{path.name}: drawn from {recorded or 'an unknown table'}, "
                f"RESULTS.md now has {expected}"
            )
    return problems


def draw_all(results: str, out_dir: Path) -> int:
    """Write every plot; return how many could not be drawn."""
    try:
        import matplotlib
    except ImportError:
        print(
            "benchmarks/plots.py: matplotlib is not installed, so the docs' plots "
            "were not redrawn (pip install matplotlib, then run it again)",
            file=sys.stderr,
        )
        return 0
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titleweight": "bold"})
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for plot in PLOTS:
        path = out_dir / f"{plot.name}.png"
        try:
            rows = table_rows(results, plot.program)
            fig = plot.draw(plt, rows, plot.program)
        except ResultsError as exc:
            print(
                f"benchmarks/plots.py: {path.name} not redrawn: {exc}", file=sys.stderr
            )
            failed += 1
            continue
        fig.tight_layout()
        fig.savefig(
            path,
            dpi=DPI,
            metadata={"Source": source_digest(results, plot.program), "Software": None},
        )
        plt.close(fig)
        print(f"wrote {path.relative_to(HERE.parent)}", file=sys.stderr)
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--results", type=Path, default=RESULTS, help="RESULTS.md to read"
    )
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="where the PNGs go")
    parser.add_argument(
        "--check",
        action="store_true",
        help="draw nothing; exit 1 if a plot does not match the tables",
    )
    args = parser.parse_args(argv)
    results = args.results.read_text(encoding="utf-8")
    if args.check:
        problems = stale_plots(results, args.out)
        for problem in problems:
            print(f"stale plot: {problem}", file=sys.stderr)
        return 1 if problems else 0
    return 1 if draw_all(results, args.out) else 0


if __name__ == "__main__":
    sys.exit(main())
