"""Plumbing shared by the benchmark programs: the pools under test, warm-up,
bounded shutdown, medians, and the one markdown table each program prints.

Every benchmark program follows the same protocol so that ``run.py`` can gather
them: the table goes to stdout, progress to stderr, and with ``--json PATH`` the
figures and the verdicts against the performance bars (docs/design.md) are also
written to PATH.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import multiprocessing
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import _work
import loky
import pebble
import psutil

import stalwart

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

WORKERS = max(1, int(loky.cpu_count()))
"""Every pool gets this many workers: the CPUs this process may use."""

CONTENDERS = ("stalwart", "stdlib", "loky", "pebble")

CLASS_NAMES = {
    "stalwart": "stalwart.ProcessPoolExecutor",
    "stdlib": "concurrent.futures.ProcessPoolExecutor",
    "loky": "loky.ProcessPoolExecutor",
    "pebble": "pebble.ProcessPool",
}


def start_method(name: str) -> str:
    """The start method each contender uses by default (each runs with its default)."""
    if name == "stalwart":
        return "stalwart (the caller forked where safe, else its template)"
    if name == "loky":
        return "loky (fork+exec)"
    return multiprocessing.get_start_method()  # stdlib and pebble: Python's default


@dataclass
class Pool:
    """One open pool of a contender, behind the same ``submit(fn, *args)``."""

    name: str
    submit: Callable[..., concurrent.futures.Future[Any]]
    close: Callable[[], None]  # graceful: waits for the workers to exit
    children_before: set[int] = field(default_factory=set)
    executor: concurrent.futures.Executor | None = None  # for its own map(); not pebble


def open_pool(name: str, workers: int = WORKERS) -> Pool:
    """Start a pool of ``name`` (one of CONTENDERS) with ``workers`` workers."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    if name == "pebble":
        pebble_pool = pebble.ProcessPool(max_workers=workers)

        def schedule(fn: Callable[..., Any], *args: Any) -> Any:
            return pebble_pool.schedule(fn, args=args)

        def close_pebble() -> None:
            pebble_pool.close()
            pebble_pool.join()

        return Pool(name, schedule, close_pebble, before)
    executor: concurrent.futures.Executor
    if name == "stalwart":
        executor = stalwart.ProcessPoolExecutor(max_workers=workers)
    elif name == "stdlib":
        executor = concurrent.futures.ProcessPoolExecutor(max_workers=workers)
    elif name == "loky":
        executor = loky.ProcessPoolExecutor(max_workers=workers)
    else:
        raise ValueError(f"unknown contender {name!r}; expected one of {CONTENDERS}")
    return Pool(
        name, executor.submit, lambda: executor.shutdown(wait=True), before, executor
    )


def warm(pool: Pool, workers: int = WORKERS, timeout_s: float = 60.0) -> set[int]:
    """Run tiny tasks until every worker has answered one; return the worker pids.

    Start-up is then out of the timed region: some pools start workers lazily, on
    the first submit, and the first tasks would otherwise pay for it.
    """
    deadline = time.monotonic() + timeout_s
    seen: set[int] = set()
    delay_s = 0.0
    while len(seen) < workers:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(
                f"{pool.name}: only {len(seen)} of {workers} workers answered "
                f"within {timeout_s:.0f} s of warm-up"
            )
        futures = [pool.submit(_work.worker_pid, delay_s) for _ in range(workers)]
        seen.update(f.result(timeout=remaining) for f in futures)
        delay_s = 0.01  # spread the next round if one worker took them all
    # End on tiny tasks, so a pool that adapts to task length has seen some.
    for f in [pool.submit(_work.tiny, i) for i in range(workers)]:
        f.result(timeout=max(1.0, deadline - time.monotonic()))
    return seen


def close_pool(pool: Pool, timeout_s: float = 30.0) -> bool:
    """Close ``pool`` within ``timeout_s``, killing its processes if it hangs.

    Returns whether it closed by itself. A broken pool must not hang the benchmark.
    """
    closer = threading.Thread(target=_close_quietly, args=(pool,), daemon=True)
    closer.start()
    closer.join(timeout_s)
    if not closer.is_alive():
        return True
    progress(f"  {pool.name}: shutdown hung for {timeout_s:.0f} s; killing its workers")
    for child in psutil.Process().children(recursive=True):
        if child.pid not in pool.children_before:
            with contextlib.suppress(psutil.Error):
                child.kill()
    return False


def _close_quietly(pool: Pool) -> None:
    try:
        pool.close()
    except Exception as exc:  # a broken pool may complain on the way out
        progress(f"  {pool.name}: shutdown raised {exc!r}")


def parse_args(
    doc: str | None, *, default_reps: int = 5, quick_reps: int = 3
) -> argparse.Namespace:
    """The options every benchmark program accepts."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help=f"repetitions per contender (default {default_reps}, --quick {quick_reps})",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller sizes and fewer repetitions"
    )
    parser.add_argument(
        "--json", metavar="PATH", help="also write figures and verdicts to PATH"
    )
    args = parser.parse_args()
    if args.reps is None:
        args.reps = quick_reps if args.quick else default_reps
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


def progress(message: str) -> None:
    """Progress goes to stderr; stdout carries only the table."""
    print(message, file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], fmt: str) -> str:
    """``min-max`` of the repetitions, in the given format."""
    return f"{min(values):{fmt}}-{max(values):{fmt}}"


def verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(" --- " for _ in headers) + "|",
    ]
    lines.extend("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)
    return "\n".join(lines)


def emit(
    args: argparse.Namespace,
    *,
    title: str,
    doc: str | None,
    table: str,
    params: str,
    bars: list[dict[str, str]],
    raw: dict[str, Any],
) -> None:
    """Print the table; with ``--json``, write everything ``run.py`` needs.

    ``bars``: one dict per bar (docs/design.md): ``bar`` (its text), ``measured`` (the
    figure compared with it) and ``verdict`` (PASS or MISS, computed from the
    figures by the caller).
    """
    print(table, flush=True)
    if args.json:
        report = {
            "title": title,
            "explanation": " ".join((doc or "").split()),
            "params": params,
            "bars": bars,
            "reps": args.reps,
            "quick": args.quick,
            "workers": WORKERS,
            "raw": raw,
        }
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(report, out, indent=2)


TEMPLATE_NAME = "stalwart-tmpl"
"""stalwart's template process (docs/guides/how-it-works.md, "How workers start"), one per program
by design, by the name ``ps -o comm`` shows; the workers it forks are checked."""

HELPER_MARKERS = ("resource_tracker", "forkserver")
"""Command-line marks of the start methods' helper processes, which stay for the
life of the program by design and so are no leak."""


class ChildWatch:
    """Checks that a contender left no process behind once its run ended.

    Only the start methods' helpers (resource trackers, a forkserver) may stay:
    they are started on first use and live as long as the program.
    """

    def __init__(self) -> None:
        self.allowed = {p.pid for p in psutil.Process().children(recursive=True)}

    def check(self, after: str) -> None:
        leaked: list[tuple[psutil.Process, str]] = []
        for child in psutil.Process().children(recursive=True):
            if child.pid in self.allowed:
                continue
            try:
                if child.status() == psutil.STATUS_ZOMBIE:
                    continue  # it has exited; only its exit status is left to reap
                cmdline = " ".join(child.cmdline())
                name = child.name()
            except psutil.Error:
                continue  # it exited while we looked
            if name == TEMPLATE_NAME or any(m in cmdline for m in HELPER_MARKERS):
                self.allowed.add(child.pid)
                continue
            leaked.append((child, cmdline))
        if not leaked:
            return
        for child, _ in leaked:  # so that they cannot outlive the benchmark
            with contextlib.suppress(psutil.Error):
                child.kill()
        details = "; ".join(f"pid {child.pid}: {cmd}" for child, cmd in leaked)
        raise RuntimeError(
            f"{len(leaked)} child process(es) still running after {after} had shut "
            f"down and killed its workers ({details}); killed them. A contender "
            "that leaves workers behind would slow down the ones measured after it."
        )
