"""Run every ``benchmarks/bench_*.py`` and write ``benchmarks/RESULTS.md``.

Each benchmark program runs in its own interpreter (this one, ``sys.executable``),
prints one markdown table on stdout and writes its figures and its verdicts
against docs/design.md's performance contract to a JSON file; this script gathers them
under a description of the machine. ``nox -s bench`` runs it::

    python benchmarks/run.py                 # full run, rewrites benchmarks/RESULTS.md
    python benchmarks/run.py --quick         # smoke run: prints the report, writes nothing
    python benchmarks/run.py --reps 7 -k submit

A benchmark that fails is reported as such (and makes the exit status 1); a bar
that is missed is a result, not a failure.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import quotes  # benchmarks/quotes.py: this script's directory is on sys.path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_OUTPUT = HERE / "RESULTS.md"
ORDER = (
    "bench_submit",
    "bench_crash",
    "bench_large_args",
    "bench_large_data",
    "bench_joblib",
    "bench_map",
    "bench_map_memory",
    "bench_thread",
    "bench_reuse",
    "bench_startup",
    "bench_dask",
)
"""The contract's order; any other ``bench_*.py`` follows, alphabetically."""
TIMEOUT_S = {False: 900, True: 180}  # per benchmark program: full, --quick


def discover(selectors: list[str]) -> list[Path]:
    found = {path.stem: path for path in HERE.glob("bench_*.py")}
    names = [n for n in ORDER if n in found] + sorted(set(found) - set(ORDER))
    if selectors:
        names = [n for n in names if any(s in n for s in selectors)]
    return [found[n] for n in names]


def run_benchmark(path: Path, args: argparse.Namespace) -> dict[str, object]:
    """Run one benchmark program; return its JSON report plus its table, or an error."""
    flags = ["--quick"] if args.quick else []
    if args.reps is not None:
        flags += ["--reps", str(args.reps)]
    fd, json_path = tempfile.mkstemp(prefix=f"{path.stem}-", suffix=".json")
    os.close(fd)
    command = [sys.executable, str(path), *flags, "--json", json_path]
    print(f"== {path.name} {' '.join(flags)}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        # stderr (progress) passes through; stdout carries the table.
        done = subprocess.run(
            command,
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
            timeout=TIMEOUT_S[args.quick],
            check=False,
        )
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            return _failure(path, f"exited with status {done.returncode}", done.stdout)
        table = "\n".join(
            line for line in done.stdout.splitlines() if line.startswith("|")
        )
        with open(json_path, encoding="utf-8") as f:
            report: dict[str, object] = json.load(f)
    except subprocess.TimeoutExpired as exc:
        output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout
        return _failure(path, f"timed out after {exc.timeout:.0f} s", output or "")
    except (OSError, ValueError) as exc:
        return _failure(path, f"left no readable report ({exc})", "")
    finally:
        os.unlink(json_path)
    report.update(name=path.name, table=table, seconds=elapsed)
    print(f"   {path.name} took {elapsed:.0f} s", file=sys.stderr, flush=True)
    return report


def _failure(path: Path, why: str, stdout: str) -> dict[str, object]:
    print(f"   {path.name} FAILED: {why}", file=sys.stderr, flush=True)
    return {"name": path.name, "error": why, "stdout": stdout}


# -- the machine ------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        match = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
        if match:
            return f"{int(match.group(1)) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _os() -> str:
    pretty = platform.system()
    try:
        match = re.search(
            r'^PRETTY_NAME="?([^"\n]*)', Path("/etc/os-release").read_text(), re.M
        )
        if match:
            pretty = match.group(1)
    except OSError:
        pass
    return f"{pretty}; kernel {platform.release()} ({platform.machine()})"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        module = importlib.import_module(package)
    except ImportError:
        return "not installed"
    version = getattr(module, "__version__", None)
    return f"{version or '?'} (not installed: imported from a source tree)"


def _git(*args: str) -> subprocess.CompletedProcess[str] | None:
    """A read-only git query (no optional locks: it never rewrites the index)."""
    try:
        return subprocess.run(
            ["git", *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def _git_commit() -> str | None:
    """The checked-out commit, and whether src/ differs from it."""
    head = _git("rev-parse", "--short", "HEAD")
    if head is None or head.returncode != 0:
        return None
    diff = _git("diff", "--quiet", "HEAD", "--", "src")
    dirty = diff is not None and diff.returncode == 1
    return head.stdout.strip() + (" with uncommitted changes in src/" if dirty else "")


def machine() -> list[str]:
    """The lines of the machine description."""
    try:
        import loky

        loky_cpus = str(loky.cpu_count())
    except ImportError:
        loky_cpus = "n/a (loky not installed)"
    try:
        affinity = str(len(os.sched_getaffinity(0)))
    except AttributeError:
        affinity = "n/a"
    commit = _git_commit()
    stalwart = _version("stalwart") + (f", commit {commit}" if commit else "")
    return [
        f"- CPU: {_cpu_model()}",
        f"- CPUs: `os.cpu_count()` = {os.cpu_count()}, affinity = {affinity}, "
        f"`loky.cpu_count()` = {loky_cpus} (the worker count of every pool)",
        f"- Memory: {_memory()}",
        f"- OS: {_os()}",
        f"- Python: {platform.python_implementation()} {platform.python_version()} "
        f"(`python{sys.version_info.major}.{sys.version_info.minor}`); default start method "
        f"`{multiprocessing.get_start_method()}` (stdlib, pebble); loky starts "
        "workers with its fork+exec; stalwart forks the caller where provably "
        "safe, else its template process (docs/guides/how-it-works.md, 'How workers start')",
        f"- Versions: stalwart {stalwart}; loky {_version('loky')}; "
        f"cloudpickle {_version('cloudpickle')}; pebble {_version('pebble')}; "
        f"psutil {_version('psutil')}; numpy {_version('numpy')}; "
        f"joblib {_version('joblib')}; scikit-learn {_version('scikit-learn')}; "
        f"dask {_version('dask')}",
    ]


def report_stale_quotes(document: str) -> None:
    """List the figures README.md and docs/ quote that the new results lack:
    tests/test_docs.py fails until they are brought up to date."""
    stale = quotes.stale_quotes(document)
    if stale:
        print(
            f"{len(stale)} figures quoted in README.md and docs/ are not in the new "
            "results; update them (python benchmarks/quotes.py lists them again):\n  "
            + "\n  ".join(stale),
            file=sys.stderr,
        )


# -- the document -----------------------------------------------------------------


def render(reports: list[dict], args: argparse.Namespace, total_s: float) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    mode = "a quick smoke run, not for comparison" if args.quick else "a full run"
    out = [
        "# stalwart benchmarks",
        "",
        f"Generated {now} by `python benchmarks/run.py` ({mode}), in {total_s:.0f} s.",
        "The verdicts are computed from the figures below against the performance",
        "contract in docs/design.md; nothing here is edited by hand.",
        "",
        "## Summary",
        "",
        "| benchmark | bar (docs/design.md) | measured | verdict |",
        "| --- | --- | --- | --- |",
    ]
    for report in reports:
        title = report.get("title", report["name"])
        if "error" in report:
            out.append(f"| {title} | — | {report['error']} | ERROR |")
            continue
        out.extend(
            f"| {title} | {bar['bar']} | {bar['measured']} | **{bar['verdict']}** |"
            for bar in report["bars"]
        )
    out += ["", "## Machine", "", *machine(), ""]
    out += [
        "## How to reproduce",
        "",
        "```",
        "nox -s bench                 # installs stalwart, pebble, psutil; rewrites this file",
        "nox -s bench -- --quick      # smoke run (< 1 min): prints the report only",
        "nox -s bench -- --reps 7     # more repetitions",
        "python benchmarks/bench_submit.py --reps 3   # one benchmark, its table on stdout",
        "```",
        "",
        "Method: each benchmark is its own program. Every pool gets "
        "`loky.cpu_count()` workers, is started and warmed (every worker has answered "
        "a task) before the clock starts, and is shut down after; contenders are "
        "interleaved within each repetition (A B C D, A B C D, ...) so that machine "
        "noise hits them alike. Figures are medians over the repetitions; ratios are "
        "ratios of medians. The submitted functions live in `benchmarks/_work.py`, so "
        "every pool pickles them by reference.",
        "",
    ]
    for number, report in enumerate(reports, start=1):
        title = report.get("title", report["name"])
        out += [f"## {number}. {title} (`{report['name']}`)", ""]
        if "error" in report:
            out += [f"**ERROR**: the benchmark {report['error']}.", ""]
            if report.get("stdout"):
                out += ["```", str(report["stdout"]).rstrip(), "```", ""]
            continue
        out += [str(report["explanation"]), ""]
        bars = "; ".join(f"{b['bar']}: **{b['verdict']}**" for b in report["bars"])
        out += [f"**Bar** (docs/design.md): {bars}.", ""]
        out += [str(report["params"]) + f" Took {report['seconds']:.0f} s.", ""]
        out += [str(report["table"]), ""]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes, fewer repetitions; prints the report, writes no file "
        "unless --output is given",
    )
    parser.add_argument("--reps", type=int, help="repetitions per benchmark")
    parser.add_argument(
        "-k",
        dest="select",
        action="append",
        default=[],
        metavar="SUBSTRING",
        help="run only the benchmarks whose file name contains SUBSTRING",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help=f"where to write the report (default {DEFAULT_OUTPUT})",
    )
    args = parser.parse_args()
    benchmarks = discover(args.select)
    if not benchmarks:
        parser.error("no benchmark matches")

    started = time.perf_counter()
    reports = [run_benchmark(path, args) for path in benchmarks]
    document = render(reports, args, time.perf_counter() - started)

    output = args.output or (None if args.quick else DEFAULT_OUTPUT)
    if output is None:
        print(document)
    else:
        output.write_text(document + "\n", encoding="utf-8")
        print(f"wrote {output}", file=sys.stderr)
        if output == DEFAULT_OUTPUT:  # the docs' plots, redrawn from the new tables
            subprocess.run([sys.executable, str(HERE / "plots.py")], check=False)
            report_stale_quotes(document)
    return 1 if any("error" in report for report in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
