"""What switching to ``stalwart.ThreadPoolExecutor`` costs: the same work on it
and on ``concurrent.futures.ThreadPoolExecutor``, in one run.

Users switch thread pools by changing one import, so stalwart's must cost them
nothing where the stdlib's was fine. Three workloads, each on both pools with the
same ``max_workers``: (1) 20,000 calls of ``_work.tiny`` (returns its argument),
one ``submit()`` each, collected with ``concurrent.futures.as_completed``: the
task does nothing, so tasks/s is the pool's own cost per task (queueing, waking a
thread, resolving the future) and that of holding the GIL against the workers
while submitting; (2) ``map`` of ``_work.tiny`` over 200,000 items, summed: the
stdlib's ``map`` (whose thread pool ignores ``chunksize``: one task per item),
stalwart's default (``chunksize=1``, also one task per item) and stalwart's
``chunksize="auto"``, which runs the items in chunks timed in the worker; (3) an
I/O-like case, 200 tasks that each sleep 10 ms on 20 threads, whose ideal wall
time is 200 x 10 ms / 20 = 0.1 s: waiting scales with the threads in both pools,
and the figure shows that stalwart's extra machinery (deadlines, recycling,
per-thread state) adds nothing to it. Every measurement gets a fresh pool, warmed
until each of its threads has answered, so thread start-up is out of the timed
region. Repetitions are interleaved, their order rotating each time; figures are
medians and ratios are ratios of medians, always as speed (above 1: stalwart is
faster; for the I/O case, the stdlib's wall time over stalwart's). docs/design.md sets
no bar for the thread pool; the bars here are ours and mean "no regression worth
the name": stalwart at least 0.95x the stdlib wherever code runs unchanged, and
``chunksize="auto"``, the one thing a user changes to go faster, at least as fast
as the stdlib's ``map``.
"""

from __future__ import annotations

import concurrent.futures
import gc
import threading
import time
from dataclasses import dataclass
from typing import Any

import _common
import _work

import stalwart

TINY_WORKERS = 4
"""max_workers for the tiny-task workloads, in both pools."""
IO_WORKERS = 20
"""max_workers for the I/O-like workload, in both pools."""
TASKS, QUICK_TASKS = 20_000, 4_000
ITEMS, QUICK_ITEMS = 200_000, 40_000
IO_TASKS, IO_SLEEP_S = 200, 0.01
NO_REGRESSION_BAR = 0.95
"""Ours (the design sets no thread bar): stalwart >= 0.95x the stdlib, unchanged code:
switching the import must cost nothing measurable, within this machine's noise."""
AUTO_BAR = 1.0
"""Ours: stalwart ``map(chunksize="auto")`` >= 1x the stdlib's ``map``."""
RESULT_TIMEOUT_S = 300.0

CLASS_NAMES = {
    "stalwart": "stalwart.ThreadPoolExecutor",
    "stdlib": "concurrent.futures.ThreadPoolExecutor",
}
WORKLOADS = {
    "submit": "tiny tasks, `submit()` + `as_completed`",
    "map": "tiny items, `map()`",
    "io": f"{IO_TASKS} x `time.sleep({IO_SLEEP_S})`, `submit()` + `as_completed`",
}


@dataclass(frozen=True)
class Setting:
    """One timed configuration: a workload on one pool, and map's chunk size."""

    workload: str  # a key of WORKLOADS
    contender: str  # a key of CLASS_NAMES
    chunksize: int | str | None = None  # map only; None: the pool's default

    @property
    def workers(self) -> int:
        return IO_WORKERS if self.workload == "io" else TINY_WORKERS

    @property
    def call(self) -> str:
        if self.workload != "map":
            return "`submit(fn, x)`"
        if self.chunksize is None:
            return "`map(fn, items)` (default)"
        return f"`map(fn, items, chunksize={self.chunksize!r})`".replace("'", '"')


PLAN = (
    Setting("submit", "stdlib"),
    Setting("submit", "stalwart"),
    Setting("map", "stdlib"),
    Setting("map", "stalwart"),
    Setting("map", "stalwart", "auto"),
    Setting("io", "stdlib"),
    Setting("io", "stalwart"),
)
STDLIB = {"submit": PLAN[0], "map": PLAN[2], "io": PLAN[5]}
"""The reference each stalwart row is compared with."""


def open_executor(setting: Setting) -> concurrent.futures.ThreadPoolExecutor:
    if setting.contender == "stalwart":
        return stalwart.ThreadPoolExecutor(max_workers=setting.workers)
    return concurrent.futures.ThreadPoolExecutor(max_workers=setting.workers)


def warm(
    executor: concurrent.futures.ThreadPoolExecutor,
    setting: Setting,
    timeout_s: float = 30.0,
) -> None:
    """Run short tasks until every thread has answered one, then tiny ones.

    Both pools start threads lazily, on submit; the first timed tasks would
    otherwise pay for it.
    """
    deadline = time.monotonic() + timeout_s
    seen: set[int] = set()
    while len(seen) < setting.workers:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(
                f"{CLASS_NAMES[setting.contender]}: only {len(seen)} of "
                f"{setting.workers} threads answered within {timeout_s:.0f} s of "
                "warm-up"
            )
        # Each task sleeps, so that no thread can take them all.
        futures = [
            executor.submit(_work.thread_id, 0.01) for _ in range(setting.workers)
        ]
        seen.update(f.result(timeout=remaining) for f in futures)
    for f in [executor.submit(_work.tiny, i) for i in range(setting.workers)]:
        f.result(timeout=max(1.0, deadline - time.monotonic()))


def close(
    executor: concurrent.futures.ThreadPoolExecutor,
    setting: Setting,
    timeout_s: float = 30.0,
) -> None:
    """Shut ``executor`` down; a hang stops the benchmark (threads cannot be killed)."""
    closer = threading.Thread(target=executor.shutdown, daemon=True)
    closer.start()
    closer.join(timeout_s)
    if closer.is_alive():
        raise RuntimeError(
            f"{CLASS_NAMES[setting.contender]}: shutdown(wait=True) did not return "
            f"within {timeout_s:.0f} s; its threads cannot be killed, so later "
            "measurements would share the CPU with them"
        )


def run_once(setting: Setting, tasks: int, items: int) -> float:
    """Time ``setting`` on a fresh, warm pool; return the wall time in seconds."""
    executor = open_executor(setting)
    try:
        warm(executor, setting)
        gc.collect()  # no one pays for the garbage of the measurement before
        start = time.perf_counter()
        if setting.workload == "submit":
            submit, tiny = executor.submit, _work.tiny
            futures = [submit(tiny, i) for i in range(tasks)]
            total: float = sum(
                f.result()
                for f in concurrent.futures.as_completed(
                    futures, timeout=RESULT_TIMEOUT_S
                )
            )
            expected: float = tasks * (tasks - 1) // 2
        elif setting.workload == "map":
            options: dict[str, Any] = {}
            if setting.chunksize is not None:
                options["chunksize"] = setting.chunksize
            total = sum(
                executor.map(
                    _work.tiny, range(items), timeout=RESULT_TIMEOUT_S, **options
                )
            )
            expected = items * (items - 1) // 2
        else:
            futures = [
                executor.submit(_work.io_wait, IO_SLEEP_S) for _ in range(IO_TASKS)
            ]
            total = sum(
                f.result()
                for f in concurrent.futures.as_completed(
                    futures, timeout=RESULT_TIMEOUT_S
                )
            )
            expected = IO_TASKS * IO_SLEEP_S
        elapsed = time.perf_counter() - start
    finally:
        close(executor, setting)
    if abs(total - expected) > 1e-6:
        raise RuntimeError(f"{setting}: wrong results (sum {total}, not {expected})")
    return elapsed


def units(setting: Setting, tasks: int, items: int) -> int:
    """How many tasks or items one run of ``setting`` processes."""
    return {"submit": tasks, "map": items, "io": IO_TASKS}[setting.workload]


def main() -> None:
    # Default reps: the two default-map rows take ~7 s each per repetition on
    # two cores; four repetitions keep the full run near a minute.
    args = _common.parse_args(__doc__, default_reps=4, quick_reps=3)
    tasks = QUICK_TASKS if args.quick else TASKS
    items = QUICK_ITEMS if args.quick else ITEMS
    seconds: dict[Setting, list[float]] = {setting: [] for setting in PLAN}
    for rep in range(args.reps):
        shift = rep * len(PLAN) // args.reps  # rotate: no setting always goes first
        for setting in PLAN[shift:] + PLAN[:shift]:
            seconds[setting].append(run_once(setting, tasks, items))
            _common.progress(
                f"thread rep {rep + 1}/{args.reps} {setting.contender} "
                f"{setting.workload} {setting.call}: {seconds[setting][-1]:.3f} s"
            )

    median_s = {setting: _common.median(values) for setting, values in seconds.items()}

    def speedup(setting: Setting) -> float:
        """stalwart's speed over the stdlib's on the same workload."""
        return median_s[STDLIB[setting.workload]] / median_s[setting]

    bar_specs = {
        PLAN[1]: (
            NO_REGRESSION_BAR,
            f"stalwart `submit()` + `as_completed` tasks/s ≥ {NO_REGRESSION_BAR}x "
            "stdlib's",
        ),
        PLAN[3]: (
            NO_REGRESSION_BAR,
            f"stalwart default `map()` items/s ≥ {NO_REGRESSION_BAR}x stdlib's",
        ),
        PLAN[4]: (
            AUTO_BAR,
            f'stalwart `map(chunksize="auto")` items/s ≥ {AUTO_BAR:.0f}x stdlib\'s '
            "`map()`",
        ),
        PLAN[6]: (
            NO_REGRESSION_BAR,
            f"stalwart I/O-like wall time ≤ {1 / NO_REGRESSION_BAR:.2f}x stdlib's "
            f"(speed ≥ {NO_REGRESSION_BAR}x)",
        ),
    }
    ours = " (ours: no regression worth the name)"
    bars, rows = [], []
    for setting in PLAN:
        values = seconds[setting]
        if setting.workload == "io":
            figure = f"{median_s[setting]:.3f} s"
            span = _common.spread(values, ".3f") + " s"
        else:
            unit = "tasks/s" if setting.workload == "submit" else "items/s"
            n = units(setting, tasks, items)
            figure = f"{n / median_s[setting]:,.0f} {unit}"
            span = f"{n / max(values):,.0f}-{n / min(values):,.0f} {unit}"
        ratio_text = bar_text = verdict = ""
        if setting.contender == "stalwart":
            ratio = speedup(setting)
            ratio_text = f"{ratio:,.2f}x"
            if setting in bar_specs:
                bar, text = bar_specs[setting]
                bar_text = f"≥ {bar:g}x"
                verdict = _common.verdict(ratio >= bar)
                bars.append(
                    {"bar": text + ours, "measured": ratio_text, "verdict": verdict}
                )
        else:
            ratio_text = "—"
        rows.append(
            [
                WORKLOADS[setting.workload],
                f"{CLASS_NAMES[setting.contender]}(max_workers={setting.workers})",
                setting.call,
                figure,
                span,
                ratio_text,
                bar_text,
                verdict,
            ]
        )
    table = _common.markdown_table(
        [
            "workload",
            "executor",
            "call",
            "median",
            "min-max",
            "stalwart ÷ stdlib (speed)",
            "bar (ours)",
            "verdict",
        ],
        rows,
    )
    _common.emit(
        args,
        title="Thread pool: stalwart vs the stdlib's",
        doc=__doc__,
        table=table,
        params=(
            f"{tasks:,} tasks of `_work.tiny` via `submit()`, {items:,} items of "
            f"`_work.tiny` per `map()`, both with max_workers={TINY_WORKERS}; "
            f"{IO_TASKS} tasks of `_work.io_wait({IO_SLEEP_S})` with "
            f"max_workers={IO_WORKERS} (ideal wall time "
            f"{IO_TASKS * IO_SLEEP_S / IO_WORKERS:.3f} s). Median of {args.reps} "
            "interleaved repetitions, each on a fresh, warm pool."
        ),
        bars=bars,
        raw={
            "tasks": tasks,
            "items": items,
            "io_tasks": IO_TASKS,
            "io_sleep_s": IO_SLEEP_S,
            "tiny_workers": TINY_WORKERS,
            "io_workers": IO_WORKERS,
            "seconds": [
                {
                    "workload": s.workload,
                    "contender": s.contender,
                    "chunksize": s.chunksize,
                    "max_workers": s.workers,
                    "units": units(s, tasks, items),
                    "seconds": values,
                }
                for s, values in seconds.items()
            ],
        },
    )


if __name__ == "__main__":
    main()
