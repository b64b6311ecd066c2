"""One segfaulting task among 200: what survives, and how fast the pool recovers.

Each pool gets 200 tasks that sleep 50 ms and return ``(index, worker pid)``; task
100 segfaults instead (``ctypes.string_at(0)``), like a bad C extension would. We
count how many of the 199 healthy futures delivered their correct result (an
exception counts as not delivered) and the wall time until every future resolved.
For pools that replace the dead worker we also time the recovery, from the moment
the crashing task stamps the clock just before it dies: until its future fails
("crash → failed"), and until the first task completes on a worker pid never seen
before the crash ("crash → replacement ran a task": a replacement started, became
ready and ran a 50 ms task). A shared-queue pool (stdlib, loky) cannot tell which
task the dead worker held, so it fails everything pending and breaks; stalwart's
contract is that only the crashed task fails. Every wait is bounded, so a broken
pool cannot hang the benchmark.
"""

from __future__ import annotations

import concurrent.futures
import os
import tempfile
import threading
import time
from dataclasses import dataclass

import _common
import _work

TASKS, TASK_S, CRASH_INDEX = 200, 0.05, 100
QUICK_TASKS, QUICK_TASK_S, QUICK_CRASH_INDEX = 60, 0.02, 30
RESOLVE_TIMEOUT_S = 120.0
REPLACEMENT_BAR_S = 1.0
"""docs/design.md: 199 results delivered; replacement worker ready < 1 s."""


@dataclass
class Outcome:
    delivered: int
    crash_error: str  # the type of the crashed task's exception
    wall_s: float
    crash_to_failed_s: float | None
    crash_to_replacement_s: float | None


def run_once(name: str, tasks: int, task_s: float, crash_index: int) -> Outcome:
    """One pool, one crash; count what came back and time the recovery."""
    fd, stamp_path = tempfile.mkstemp(prefix="stalwart-bench-crash-")
    os.close(fd)
    pool = _common.open_pool(name)
    try:
        warm_pids = _common.warm(pool)
        resolved_at: dict[int, float] = {}
        lock = threading.Lock()

        def stamp(index: int) -> None:
            with lock:
                resolved_at[index] = time.time()

        start = time.perf_counter()
        futures = []
        for i in range(tasks):
            future = pool.submit(_work.nap, i, task_s, crash_index, stamp_path)
            future.add_done_callback(lambda _f, i=i: stamp(i))
            futures.append(future)
        concurrent.futures.wait(futures, timeout=RESOLVE_TIMEOUT_S)
        wall_s = time.perf_counter() - start
    finally:
        _common.close_pool(pool)
    try:
        with open(stamp_path) as f:
            crashed_at = float(f.read())
    except ValueError:
        crashed_at = None  # the crashing task never ran (the pool broke first)
    finally:
        os.unlink(stamp_path)

    delivered = 0
    ran_on: dict[int, tuple[int, float]] = {}  # index -> (pid, resolved at)
    for i, future in enumerate(futures):
        if i == crash_index or _error_name(future) is not None:
            continue
        index, pid = future.result(timeout=0)
        if index == i:
            delivered += 1
            ran_on[i] = (pid, resolved_at[i])

    crash_error = _error_name(futures[crash_index]) or "no error"

    to_failed = to_replacement = None
    if crashed_at is not None:
        if crash_index in resolved_at:
            to_failed = resolved_at[crash_index] - crashed_at
        old_pids = warm_pids | {pid for pid, at in ran_on.values() if at < crashed_at}
        after = [at for pid, at in ran_on.values() if pid not in old_pids]
        if after:
            to_replacement = min(after) - crashed_at
    return Outcome(delivered, crash_error, wall_s, to_failed, to_replacement)


def _error_name(future: concurrent.futures.Future) -> str | None:
    """Why ``future`` delivered no result (None if it did), without ever blocking."""
    if not future.done():
        return "still pending"
    if future.cancelled():
        return "cancelled"
    error = future.exception(timeout=0)
    return None if error is None else type(error).__name__


def _seconds(values: list[float | None]) -> str:
    """Median (max) of the repetitions that measured something, else 'n/a'."""
    measured = [v for v in values if v is not None]
    if not measured:
        return "n/a"
    return f"{_common.median(measured):.3f} (max {max(measured):.3f})"


def main() -> None:
    args = _common.parse_args(__doc__)
    if args.quick:
        tasks, task_s, crash_index = QUICK_TASKS, QUICK_TASK_S, QUICK_CRASH_INDEX
    else:
        tasks, task_s, crash_index = TASKS, TASK_S, CRASH_INDEX
    healthy = tasks - 1
    outcomes: dict[str, list[Outcome]] = {name: [] for name in _common.CONTENDERS}
    for rep in range(args.reps):
        for name in _common.CONTENDERS:  # interleaved: noise hits everyone alike
            outcome = run_once(name, tasks, task_s, crash_index)
            outcomes[name].append(outcome)
            _common.progress(
                f"crash rep {rep + 1}/{args.reps} {name}: "
                f"{outcome.delivered}/{healthy} delivered, {outcome.wall_s:.2f} s, "
                f"crashed task -> {outcome.crash_error}, replacement after "
                f"{outcome.crash_to_replacement_s}"
            )

    rows, bars = [], []
    for name in _common.CONTENDERS:
        runs = outcomes[name]
        delivered = [o.delivered for o in runs]
        replacement = [o.crash_to_replacement_s for o in runs]
        errors = sorted({o.crash_error for o in runs})
        rows.append(
            [
                _common.CLASS_NAMES[name],
                f"{_common.median(delivered):.0f}/{healthy} (min {min(delivered)})",
                ", ".join(errors),
                f"{_common.median([o.wall_s for o in runs]):.2f}",
                _seconds([o.crash_to_failed_s for o in runs]),
                _seconds(replacement),
            ]
        )
        if name != "stalwart":
            continue
        bars.append(
            {
                "bar": f"stalwart delivers all {healthy} healthy results "
                "(every repetition)",
                "measured": f"min {min(delivered)}/{healthy}",
                "verdict": _common.verdict(min(delivered) == healthy),
            }
        )
        measured = [v for v in replacement if v is not None]
        rep_ok = len(measured) == len(runs) and (
            _common.median(measured) < REPLACEMENT_BAR_S
        )
        bars.append(
            {
                "bar": f"stalwart's replacement worker runs a task "
                f"< {REPLACEMENT_BAR_S:g} s after the crash (median)",
                "measured": (
                    f"{_common.median(measured):.3f} s (max {max(measured):.3f} s)"
                    if measured
                    else "never"
                )
                + ("" if len(measured) == len(runs) else ", missing in some runs"),
                "verdict": _common.verdict(rep_ok),
            }
        )
    table = _common.markdown_table(
        [
            "executor",
            "healthy results delivered, median",
            "crashed task raised",
            "wall s",
            "crash → failed s",
            "crash → replacement ran a task s",
        ],
        rows,
    )
    _common.emit(
        args,
        title="One segfaulting task among many",
        doc=__doc__,
        table=table,
        params=(
            f"{tasks} tasks of {task_s * 1000:.0f} ms, task {crash_index} segfaults, "
            f"{_common.WORKERS} workers per pool, median of {args.reps} interleaved "
            "repetitions (max in brackets)."
        ),
        bars=bars,
        raw={
            "tasks": tasks,
            "task_s": task_s,
            "crash_index": crash_index,
            "outcomes": {
                name: [vars(o) for o in runs] for name, runs in outcomes.items()
            },
        },
    )


if __name__ == "__main__":
    main()
