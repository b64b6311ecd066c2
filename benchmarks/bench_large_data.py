"""Large data: 100 MiB NumPy arrays as arguments and results, one array shared
by 1,000 tasks, and the parent's memory for a 1 GiB result.

A pool that sends every big buffer through its pipe pickles it into bytes, writes
them, and the other side reads and unpickles them: several copies of the data and
a long wait on the pipe. stalwart is meant to send big buffers through shared
memory instead, and ``stalwart.shared(obj)`` to copy an object's big buffers
once for any number of tasks. Four contenders, in the same run, each with the
same number of workers, started and warmed (every worker has answered a task)
before the clock starts: ``stalwart.ProcessPoolExecutor``,
``concurrent.futures.ProcessPoolExecutor``, ``loky.ProcessPoolExecutor``, and
``joblib.Parallel`` with its default loky backend and default memmapping (an
array argument over ``max_nbytes='1M'`` is dumped to a file once per ``Parallel``
call and the workers map it). Four measurements and a variant of the first. (1)
A 100 MiB float64 array as
an argument, 10 calls: the same array every time, with ``arr[0] = i`` set just
before call ``i`` is handed over, all 10 handed over before any result is
awaited; each task sums the whole array (``_work.array_sum``), and the sums are
checked: call ``i`` must have seen ``arr[0] == i``. The pools get 10 ``submit()``
calls; joblib gets one ``Parallel`` call over a generator that sets ``arr[0]``
before yielding each ``delayed`` call. Column "correct" says whether every call
saw the data it was handed, and if not, which ``arr[0]`` each call saw: a pool
that pickles a call after ``submit()`` has returned (the stdlib's and loky's
feeder threads) or that caches an array by identity (joblib's memmapping) sends
data the caller has changed since. The figure is the wall time of the 10 calls,
the first included. (1b) The same 100 MiB array, 10 calls, but nobody changes
it: each task sums it, and every sum is checked. stalwart runs twice, as two
contenders: "stalwart (shared())" calls ``x = stalwart.shared(arr)``, inside the
timed region (one copy into sealed read-only shared memory), then submits 10
calls on ``x``, each carrying a reference; "stalwart (plain)" submits 10 calls on
``arr``, each copying it. The stdlib and loky get 10 ``submit()`` calls on
``arr``; joblib one ``Parallel`` call over 10 ``delayed`` calls on ``arr``
(memmapping dumps it once). The figure is the wall time of the 10 calls, the
first included; the ratios are over stalwart (shared())'s figure, the plain
run's included. (2) A 100 MiB result, 10 calls: each task builds a float64
array full of ``i + 1`` (``_work.filled``) and returns it; the parent checks its
shape and its first and last elements as the results come, in order, and drops
each. joblib's results come back pickled through its pipe
(``return_as='generator'``). (3) One 100 MiB array read by 1,000 tasks that each
return one element (``_work.read_one``, indices spread over the array): stalwart
calls ``x = stalwart.shared(arr)``, inside the timed region, then submits 1,000
calls on ``x``; joblib runs one ``Parallel`` call over 1,000 ``delayed`` calls
on ``arr`` (memmapping dumps it once). The stdlib and loky have no such thing and
send the whole array with each call, so they run only 50 calls, to keep the run
short, and their time is amortised over those. The figure is milliseconds per
task. (4) A 1 GiB result: in a fresh interpreter per run, so that memory an
earlier run freed but the allocator kept cannot hide a peak, a pool is started
and warmed, one task returns a 1 GiB float64 array of ones, and the parent sums
it (touching every page). The figure is the parent's peak RSS growth over the
RSS just before the call: the higher of samples every 10 ms and ``getrusage``'s
high-water mark; RSS counts the pages of a shared mapping the parent has touched.
The verdict takes the worst repetition (MB and GB are powers of 10). Every
measurement records the parent's peak RSS growth the same way, in the benchmark's
own process for (1) to (3), (1b) included. After each run the pool is shut down (joblib's
reusable executor with ``kill_workers=True``) and psutil checks that no child
process is left but the start methods' helpers; a leftover fails the benchmark,
as does an exception or a timeout. Contenders are interleaved within each
repetition, their order rotating; figures are medians over the repetitions and
ratios are ratios of medians ("stalwart faster by": the contender's figure over
stalwart's). The speed bars compare times only: a contender whose values were
wrong is still timed, and the summary says its values were wrong. One exception:
if joblib's values in (1) were wrong in any repetition, the bar against joblib
there is not judged: its verdict reads "n/a: joblib's values were stale" (some
call saw an ``arr[0]`` older than its own, as a cache of the array's first dump
gives; "wrong" instead of "stale" otherwise), its time and ratio still shown.
(1b), where nobody changes the array and joblib's memmapping sends the right
data, is where the bar against joblib is judged.
"""

from __future__ import annotations

import gc
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import _common
import _work
import joblib
import numpy as np
from bench_large_args import PeakRSS  # the same 10 ms RSS sampler
from joblib.externals import loky as joblib_loky

import stalwart

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

SHARE: Callable[[Any], Any] | None = getattr(stalwart, "shared", None)
NO_SHARE = "n/a (stalwart.shared missing)"

CONTENDERS = ("stalwart", "stdlib", "loky", "joblib")
SAME_CONTENDERS = ("stalwart_shared", "stalwart_plain", "stdlib", "loky", "joblib")
"""(1b): stalwart twice, with and without ``stalwart.shared()``."""
RSS_CONTENDERS = ("stalwart", "stdlib", "loky")
"""(4) needs only stalwart and the stdlib; loky is there for comparison."""
POOL_OF = {"stalwart_shared": "stalwart", "stalwart_plain": "stalwart"}
"""The pool each of (1b)'s stalwart contenders opens."""
LABELS = {
    "stalwart_shared": "stalwart (shared())",
    "stalwart_plain": "stalwart (plain)",
}
"""How (1b)'s stalwart contenders are named in the progress lines and the bars."""
CLASS_NAMES = {
    **_common.CLASS_NAMES,
    "joblib": "joblib.Parallel (loky backend, memmapping)",
    "stalwart_shared": f"{_common.CLASS_NAMES['stalwart']}, `stalwart.shared()`",
    "stalwart_plain": f"{_common.CLASS_NAMES['stalwart']}, plain",
}

CALLS = 10
"""Calls in measurements (1), (1b) and (2)."""
SPEED_BAR = 5.0
"""The issue: (1) and (2) stalwart ≥ 5x faster than the stdlib."""
TASK_MS_BAR = 1.0
"""The issue: (3) stalwart < 1 ms per task, shared() included."""
RSS_BAR_BYTES = 1.3e9
"""The issue: (4) a 1 GiB result grows the parent's peak RSS by ≤ 1.3 GB."""
RESULT_TIMEOUT_S = 300.0
CHILD_TIMEOUT_S = 300

MEASUREMENTS = ("arg", "same", "result", "shared", "rss")
REFERENCE = {"same": "stalwart_shared"}
"""The stalwart contender other contenders' figures are compared with, where it
is not "stalwart"."""


@dataclass(frozen=True)
class Sizes:
    array_bytes: int
    big_result_bytes: int
    shared_tasks: int  # (3): stalwart and joblib
    plain_tasks: int  # (3): the stdlib and loky, which copy the array per task

    @property
    def items(self) -> int:
        return self.array_bytes // 8

    def tasks(self, measurement: str, name: str) -> int:
        if measurement in ("arg", "same", "result"):
            return CALLS
        if measurement == "rss":
            return 1
        return self.plain_tasks if name in ("stdlib", "loky") else self.shared_tasks


FULL = Sizes(100 * 2**20, 2**30, 1_000, 50)
QUICK = Sizes(16 * 2**20, 512 * 2**20, 200, 20)


@dataclass
class Run:
    """One contender's run of one measurement."""

    seconds: float = 0.0
    tasks: int = 0
    growth: int = 0  # parent's peak RSS growth, bytes
    wrong: str = ""  # what was wrong with the values; empty when all were right
    stale: bool = False  # (1): some call saw an arr[0] older than its own
    error: str = ""  # the run failed: an exception, a timeout, a leftover process
    skipped: str = ""  # why there is nothing to measure

    @property
    def per_task_ms(self) -> float:
        return self.seconds / self.tasks * 1e3


# -- opening and closing each contender --------------------------------------------


@dataclass
class Opened:
    name: str
    pool: _common.Pool | None  # None for joblib, which has no pool object


def joblib_parallel(**kwargs: Any) -> joblib.Parallel:
    """joblib's defaults but the worker count: the loky backend, max_nbytes='1M'.

    Every call here passes the same executor arguments, so each ``Parallel``
    call reuses the reusable executor that the warm-up started.
    """
    return joblib.Parallel(n_jobs=_common.WORKERS, **kwargs)


def warm_joblib(timeout_s: float = 60.0) -> None:
    """As ``_common.warm``: until every worker of joblib's executor has answered."""
    deadline = time.monotonic() + timeout_s
    seen: set[int] = set()
    delay_s = 0.0
    while len(seen) < _common.WORKERS:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"joblib: only {len(seen)} of {_common.WORKERS} workers answered "
                f"within {timeout_s:.0f} s of warm-up"
            )
        calls = (
            joblib.delayed(_work.worker_pid)(delay_s) for _ in range(_common.WORKERS)
        )
        seen.update(joblib_parallel()(calls))
        delay_s = 0.01
    joblib_parallel()(joblib.delayed(_work.tiny)(i) for i in range(_common.WORKERS))


def close_joblib() -> None:
    """Shut down joblib's reusable executor, which would otherwise keep its
    workers for 300 s after the last ``Parallel`` call."""
    executor = joblib_loky.get_reusable_executor(reuse=True)  # the current one
    executor.shutdown(wait=True, kill_workers=True)


def open_contender(name: str) -> Opened:
    if name == "joblib":
        try:
            warm_joblib()
        except BaseException:
            close_joblib()
            raise
        return Opened(name, None)
    pool = _common.open_pool(POOL_OF.get(name, name))
    try:
        _common.warm(pool)
    except BaseException:
        _common.close_pool(pool)
        raise
    return Opened(name, pool)


def close_contender(opened: Opened) -> None:
    if opened.pool is None:
        close_joblib()
    else:
        _common.close_pool(opened.pool)


# -- the measurements ------------------------------------------------------------


@dataclass
class Data:
    """The parent's array for (1) and (3), made once."""

    arr: np.ndarray
    rest_sum: float  # the sum of arr[1:]: call i must return rest_sum + i


def make_data(sizes: Sizes) -> Data:
    # Integers below 1024: every partial sum is exact in float64, whatever order
    # the summation takes, so the expected sums are exact too.
    arr = (np.arange(sizes.items, dtype=np.int64) % 1024).astype(np.float64)
    return Data(arr, float(arr[1:].sum()))


def mutating_calls(arr: np.ndarray) -> Iterator[Any]:
    """joblib's (1): set ``arr[0] = i`` before handing over call ``i``."""
    for i in range(CALLS):
        arr[0] = i
        yield joblib.delayed(_work.array_sum)(arr)


def measure_arg(opened: Opened, data: Data, sizes: Sizes) -> Run:
    """(1): 10 calls, each sent the whole array, ``arr[0] = i`` before call i."""
    arr = data.arr
    with PeakRSS() as rss:
        start = time.perf_counter()
        if opened.pool is None:
            values = joblib_parallel()(mutating_calls(arr))
        else:
            futures = []
            for i in range(CALLS):
                arr[0] = i
                futures.append(opened.pool.submit(_work.array_sum, arr))
            values = [f.result(timeout=RESULT_TIMEOUT_S) for f in futures]
        elapsed = time.perf_counter() - start
    arr[0] = 0
    seen = [value - data.rest_sum for value in values]
    wrong = ""
    if seen != list(range(CALLS)):
        wrong = f"arr[0] seen by calls 0-{CALLS - 1}: " + ",".join(
            f"{s:g}" for s in seen
        )
    # Stale: some call saw an arr[0] that the caller had replaced before handing
    # that call over (as a cache of the array's first dump gives).
    stale = any(s.is_integer() and 0 <= s < i for i, s in enumerate(seen))
    return Run(elapsed, CALLS, rss.growth, wrong, stale)


def measure_same(opened: Opened, data: Data, sizes: Sizes) -> Run:
    """(1b): 10 calls, each sent the same array, which nobody changes."""
    arr = data.arr
    expected = data.rest_sum + float(arr[0])
    with PeakRSS() as rss:
        start = time.perf_counter()
        if opened.pool is None:
            calls = (joblib.delayed(_work.array_sum)(arr) for _ in range(CALLS))
            values = joblib_parallel()(calls)
        else:
            if opened.name == "stalwart_shared":
                assert SHARE is not None
                x = SHARE(arr)  # timed: it is part of the price
            else:
                x = arr
            futures = [opened.pool.submit(_work.array_sum, x) for _ in range(CALLS)]
            values = [f.result(timeout=RESULT_TIMEOUT_S) for f in futures]
            del x, futures
        elapsed = time.perf_counter() - start
    bad = [i for i, value in enumerate(values) if value != expected]
    wrong = f"calls {bad} returned the wrong sum" if bad else ""
    return Run(elapsed, CALLS, rss.growth, wrong)


def drain(futures: list[Any]) -> Iterator[Any]:
    """The results in order, each future dropped once its result is taken."""
    for k, future in enumerate(futures):
        futures[k] = None
        yield future.result(timeout=RESULT_TIMEOUT_S)


def measure_result(opened: Opened, data: Data, sizes: Sizes) -> Run:
    """(2): 10 calls, each returning a fresh array full of ``i + 1``."""
    items = sizes.items
    bad: list[int] = []
    with PeakRSS() as rss:
        start = time.perf_counter()
        if opened.pool is None:
            calls = (
                joblib.delayed(_work.filled)(items, float(i + 1)) for i in range(CALLS)
            )
            results = joblib_parallel(return_as="generator")(calls)
        else:
            results = drain(
                [
                    opened.pool.submit(_work.filled, items, float(i + 1))
                    for i in range(CALLS)
                ]
            )
        for i, result in enumerate(results):
            if not (
                result.shape == (items,)
                and result.dtype == np.float64
                and result[0] == i + 1
                and result[-1] == i + 1
            ):
                bad.append(i)
            del result  # no more than the pool keeps in flight
        elapsed = time.perf_counter() - start
    wrong = f"calls {bad} returned the wrong array" if bad else ""
    return Run(elapsed, CALLS, rss.growth, wrong)


def measure_shared(opened: Opened, data: Data, sizes: Sizes) -> Run:
    """(3): many tasks each read one element of the same big array."""
    arr = data.arr
    tasks = sizes.tasks("shared", opened.name)
    stride = arr.size // tasks
    indices = [k * stride for k in range(tasks)]
    expected = [float(arr[i]) for i in indices]
    with PeakRSS() as rss:
        start = time.perf_counter()
        if opened.pool is None:
            calls = (joblib.delayed(_work.read_one)(arr, i) for i in indices)
            values = joblib_parallel()(calls)
        else:
            if opened.name == "stalwart":
                assert SHARE is not None
                x = SHARE(arr)  # timed: it is part of the price
            else:
                x = arr
            futures = [opened.pool.submit(_work.read_one, x, i) for i in indices]
            values = [f.result(timeout=RESULT_TIMEOUT_S) for f in futures]
            del x, futures
        elapsed = time.perf_counter() - start
    bad = sum(v != e for v, e in zip(values, expected, strict=True))
    wrong = f"{bad} of {tasks} values wrong" if bad else ""
    return Run(elapsed, tasks, rss.growth, wrong)


MEASURE: dict[str, Callable[[Opened, Data, Sizes], Run]] = {
    "arg": measure_arg,
    "same": measure_same,
    "result": measure_result,
    "shared": measure_shared,
}


def run_once(
    measurement: str, name: str, data: Data, sizes: Sizes, watch: _common.ChildWatch
) -> Run:
    """Open and warm ``name``, run one measurement, close it, check for leftovers."""
    uses_share = (measurement, name) in (
        ("shared", "stalwart"),
        ("same", "stalwart_shared"),
    )
    if uses_share and SHARE is None:
        return Run(tasks=sizes.tasks(measurement, name), skipped=NO_SHARE)
    if measurement == "rss":
        run = run_child(name, sizes.big_result_bytes)
    else:
        try:
            opened = open_contender(name)
            try:
                gc.collect()  # no one pays for the garbage of the run before
                run = MEASURE[measurement](opened, data, sizes)
            finally:
                close_contender(opened)
        except Exception as exc:
            run = Run(tasks=sizes.tasks(measurement, name), error=describe(exc))
    try:
        watch.check(f"{label(name)} ({measurement})")
    except RuntimeError as exc:
        run.error = "; ".join(filter(None, [run.error, str(exc)]))
    return run


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


# -- (4): a 1 GiB result, each run in a fresh interpreter ---------------------------


def measure_big_result(name: str, nbytes: int) -> dict[str, Any]:
    """In the child: one task returning ``nbytes`` of float64 ones; RSS and time."""
    watch = _common.ChildWatch()
    items = nbytes // 8
    opened = open_contender(name)
    pool = opened.pool
    try:
        assert pool is not None  # RSS_CONTENDERS are all pools
        gc.collect()
        with PeakRSS() as rss:
            start = time.perf_counter()
            future = pool.submit(_work.filled, items, 1.0)
            result = future.result(timeout=RESULT_TIMEOUT_S)
            total = float(result.sum())  # touches every page of the result
            elapsed = time.perf_counter() - start
        high_water = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB
        shape_ok = result.shape == (items,) and result.dtype == np.float64
        del result, future
    finally:
        close_contender(opened)
    watch.check(name)
    wrong = "" if shape_ok and total == items else f"sum {total:g}, not {items:,}"
    return asdict(
        Run(
            elapsed,
            1,
            max(rss.peak, high_water) - rss.baseline,
            wrong,
        )
    )


def run_child(name: str, nbytes: int) -> Run:
    """Run ``measure_big_result`` in a fresh interpreter; a failure is recorded."""
    command = [sys.executable, __file__, "--child", name, str(nbytes)]
    try:
        done = subprocess.run(
            command,
            stdout=subprocess.PIPE,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return Run(tasks=1, error=f"timed out after {CHILD_TIMEOUT_S} s")
    if done.returncode != 0:
        why = f"exited with status {done.returncode} (traceback on stderr)"
        return Run(tasks=1, error=why)
    return Run(**json.loads(done.stdout.strip().splitlines()[-1]))


# -- the report -------------------------------------------------------------------


def contenders(measurement: str) -> tuple[str, ...]:
    if measurement == "rss":
        return RSS_CONTENDERS
    return SAME_CONTENDERS if measurement == "same" else CONTENDERS


def label(name: str) -> str:
    return LABELS.get(name, name)


def main() -> None:
    args = _common.parse_args(__doc__, default_reps=3, quick_reps=1)
    sizes = QUICK if args.quick else FULL
    data = make_data(sizes)
    watch = _common.ChildWatch()
    runs: dict[tuple[str, str], list[Run]] = {
        (m, c): [] for m in MEASUREMENTS for c in contenders(m)
    }
    for rep in range(args.reps):
        for measurement in MEASUREMENTS:
            names = contenders(measurement)
            shift = rep % len(names)  # rotate: no contender always goes first
            for name in names[shift:] + names[:shift]:
                run = run_once(measurement, name, data, sizes, watch)
                runs[measurement, name].append(run)
                outcome = (
                    run.error
                    or run.skipped
                    or (
                        f"{run.seconds:.3f} s for {run.tasks:,} tasks "
                        f"({run.per_task_ms:,.2f} ms per task), parent RSS "
                        f"+{run.growth / 1e6:,.0f} MB"
                        + (f"; WRONG: {run.wrong}" if run.wrong else "")
                    )
                )
                _common.progress(
                    f"large-data rep {rep + 1}/{args.reps} {measurement} "
                    f"{label(name)}: "
                    f"{outcome}"
                )
    report = Report(sizes, runs)
    _common.emit(
        args,
        title="Large data: big arrays in and out, shared(), a big result's memory",
        doc=__doc__,
        table=report.table(),
        params=(
            f"(1), (1b) and (3): a {mib(sizes.array_bytes)} float64 array; (2): "
            f"{CALLS} results of {mib(sizes.array_bytes)}; (3): "
            f"{sizes.shared_tasks:,} tasks for stalwart and joblib, "
            f"{sizes.plain_tasks:,} for the stdlib and loky; (4): one "
            f"{mib(sizes.big_result_bytes)} result, each run in a fresh interpreter. "
            f"{_common.WORKERS} workers per pool, {args.reps} interleaved "
            "repetitions."
            + ("" if SHARE is not None else " `stalwart.shared` is missing.")
        ),
        bars=report.bars,
        raw={
            "sizes": asdict(sizes),
            "calls": CALLS,
            "shared_available": SHARE is not None,
            "runs": {
                f"{m}/{c}": [asdict(r) for r in values]
                for (m, c), values in runs.items()
            },
        },
    )
    if any(r.error for values in runs.values() for r in values):
        sys.exit(1)  # a crash, a timeout or a leftover process is a failure


def mib(nbytes: int) -> str:
    return f"{nbytes / 2**30:g} GiB" if nbytes >= 2**30 else f"{nbytes // 2**20} MiB"


class Report:
    """The figures, the bars and the table, from the runs."""

    def __init__(self, sizes: Sizes, runs: dict[tuple[str, str], list[Run]]) -> None:
        self.sizes = sizes
        self.runs = runs
        self.bars: list[dict[str, str]] = []
        self.cells: dict[tuple[str, str], tuple[str, str]] = {}
        self._bars()

    def good(self, key: tuple[str, str]) -> list[Run]:
        """The runs that measured something (wrong values included)."""
        return [r for r in self.runs[key] if not (r.error or r.skipped)]

    def figure(self, key: tuple[str, str]) -> float | None:
        """The median figure a ratio compares: seconds for the 10 calls of (1)
        and (2), ms per task for (3), seconds for (4)."""
        good = self.good(key)
        if not good:
            return None
        if key[0] == "shared":
            return _common.median([r.per_task_ms for r in good])
        return _common.median([r.seconds for r in good])

    def trouble(self, key: tuple[str, str]) -> str:
        """Why a stalwart figure cannot pass: errors, skips, wrong values."""
        reasons = sorted(
            {r.error or r.skipped for r in self.runs[key] if r.error or r.skipped}
        )
        if any(r.wrong for r in self.runs[key]):
            reasons.append("wrong values")
        return "; ".join(reasons)

    def reference(self, measurement: str) -> str:
        """The stalwart contender whose figure the others' are compared with."""
        return REFERENCE.get(measurement, "stalwart")

    def speed_bar(
        self,
        measurement: str,
        other: str,
        bar: float,
        text: str,
        *,
        wrong_is_na: bool = False,
    ) -> None:
        """Time only, unless ``wrong_is_na``: then, if ``other``'s values were
        wrong in any repetition, the verdict is n/a, the figures still shown."""
        ref = self.reference(measurement)
        ours, theirs = (
            self.figure((measurement, ref)),
            self.figure((measurement, other)),
        )
        trouble = self.trouble((measurement, ref))
        verdict = ""
        if ours is None or theirs is None:
            missing = trouble or self.trouble((measurement, other))
            measured, passed = f"n/a ({missing})", False
        else:
            ratio = theirs / ours
            unit = "ms per task" if measurement == "shared" else "s"
            fmt = ".2f" if measurement == "shared" else ".3f"
            measured = f"{ratio:,.2f}x ({theirs:{fmt}} vs {ours:{fmt}} {unit})"
            if trouble:
                measured += f"; {label(ref)}: {trouble}"
            theirs_good = self.good((measurement, other))
            if any(r.wrong for r in theirs_good):
                measured += f"; {other}'s values were wrong (see the table)"
            passed = not trouble and (ratio >= bar if bar > 1 else ratio > 1)
            if wrong_is_na and any(r.wrong for r in theirs_good):
                how = "stale" if any(r.stale for r in theirs_good) else "wrong"
                verdict = f"n/a: {other}'s values were {how}"
        verdict = verdict or _common.verdict(passed)
        cell = f"≥ {bar:g}x" if bar > 1 else "faster"
        self.cells[measurement, other] = (cell, verdict)
        self.bars.append({"bar": text, "measured": measured, "verdict": verdict})

    def _bars(self) -> None:
        size = mib(self.sizes.array_bytes)
        arg = f"{size} float64 array as an argument, {CALLS} calls: stalwart"
        self.speed_bar(
            "arg", "stdlib", SPEED_BAR, f"{arg} ≥ {SPEED_BAR:g}x faster than stdlib"
        )
        self.speed_bar("arg", "loky", 1.0, f"{arg} faster than loky")
        self.speed_bar(
            "arg", "joblib", 1.0, f"{arg} faster than joblib", wrong_is_na=True
        )
        same = (
            f"the same unchanged {size} float64 array as an argument, {CALLS} "
            "calls: stalwart with `x = stalwart.shared(arr)` (timed)"
        )
        self.speed_bar("same", "joblib", 1.0, f"{same} faster than joblib")
        self.speed_bar("same", "loky", 1.0, f"{same} faster than loky")
        self.speed_bar(
            "result",
            "stdlib",
            SPEED_BAR,
            f"{size} result, {CALLS} calls: stalwart ≥ {SPEED_BAR:g}x faster "
            "than stdlib",
        )

        key = ("shared", "stalwart")
        trouble = self.trouble(key)
        ms = self.figure(key)
        passed = ms is not None and not trouble and ms < TASK_MS_BAR
        measured = "n/a" if ms is None else f"{ms:.3f} ms per task"
        if trouble:
            measured = f"{measured} ({trouble})" if ms is not None else trouble
        self.cells[key] = (f"< {TASK_MS_BAR:g} ms per task", _common.verdict(passed))
        self.bars.append(
            {
                "bar": f"one {size} array sent to {self.sizes.shared_tasks:,} tasks "
                f"that each read one element: stalwart < {TASK_MS_BAR:g} ms per "
                "task (`stalwart.shared()` included)",
                "measured": measured,
                "verdict": _common.verdict(passed),
            }
        )

        key = ("rss", "stalwart")
        limit = RSS_BAR_BYTES * self.sizes.big_result_bytes / 2**30
        trouble = self.trouble(key)
        good = self.good(key)
        worst = max((r.growth for r in good), default=None)
        passed = worst is not None and not trouble and worst <= limit
        measured = "n/a" if worst is None else f"{worst / 1e9:,.3f} GB"
        if trouble:
            measured += f" ({trouble})"
        self.cells[key] = (f"≤ {limit / 1e9:.3g} GB", _common.verdict(passed))
        scaled = (
            ""
            if self.sizes.big_result_bytes == 2**30
            else f" (the 1.3 GB for 1 GiB, scaled to {mib(self.sizes.big_result_bytes)})"
        )
        self.bars.append(
            {
                "bar": f"a {mib(self.sizes.big_result_bytes)} result: stalwart's "
                f"parent peak RSS growth ≤ {limit / 1e9:.3g} GB{scaled} "
                "(worst repetition)",
                "measured": measured,
                "verdict": _common.verdict(passed),
            }
        )

    def how(self, measurement: str, name: str) -> str:
        tasks = self.sizes.tasks(measurement, name)
        joblib_call = "one `Parallel()` over "
        if measurement == "arg":
            if name == "joblib":
                return (
                    joblib_call + "a generator that sets `arr[0] = i`, then yields "
                    "`delayed(array_sum)(arr)`"
                )
            return (
                f"{CALLS} times `arr[0] = i; submit(array_sum, arr)`, then the results"
            )
        if measurement == "same":
            if name == "joblib":
                return joblib_call + f"{CALLS} `delayed(array_sum)(arr)`"
            if name == "stalwart_shared":
                return (
                    "`x = stalwart.shared(arr)` (timed), then "
                    f"{CALLS} `submit(array_sum, x)`"
                )
            return f"{CALLS} `submit(array_sum, arr)`: each call copies the array"
        if measurement == "result":
            if name == "joblib":
                return (
                    "`Parallel(return_as='generator')` over "
                    f"{CALLS} `delayed(filled)(n, i + 1)`"
                )
            return f"{CALLS} `submit(filled, n, i + 1)`, results taken in order"
        if measurement == "shared":
            if name == "stalwart":
                return (
                    f"`x = stalwart.shared(arr)` (timed), then "
                    f"{tasks:,} `submit(read_one, x, i)`"
                )
            if name == "joblib":
                return joblib_call + f"{tasks:,} `delayed(read_one)(arr, i)`"
            return (
                f"only {tasks:,} `submit(read_one, arr, i)`, amortised: "
                "each call copies the array"
            )
        return "fresh interpreter; `submit(filled, n, 1.0)`, result summed"

    def correct(self, key: tuple[str, str]) -> str:
        good = self.good(key)
        if not good:
            return "—"
        wrong = [r.wrong for r in good if r.wrong]
        if not wrong:
            return "yes"
        reps = "" if len(good) == 1 else f" in {len(wrong)} of {len(good)} reps"
        return f"no{reps}: {wrong[0]}"

    def row(self, measurement: str, name: str) -> list[str]:
        key = (measurement, name)
        titles = {
            "arg": f"(1) {mib(self.sizes.array_bytes)} argument, {CALLS} calls",
            "same": f"(1b) the same unchanged {mib(self.sizes.array_bytes)} "
            f"argument, {CALLS} calls",
            "result": f"(2) {mib(self.sizes.array_bytes)} result, {CALLS} calls",
            "shared": f"(3) one {mib(self.sizes.array_bytes)} array, many tasks",
            "rss": f"(4) one {mib(self.sizes.big_result_bytes)} result",
        }
        head = [titles[measurement], CLASS_NAMES[name], self.how(measurement, name)]
        bar_text, verdict = self.cells.get(key, ("", ""))
        runs = self.runs[key]
        errors = sorted({r.error for r in runs if r.error})
        skipped = sorted({r.skipped for r in runs if r.skipped})
        good = self.good(key)
        tasks = f"{self.sizes.tasks(measurement, name):,}"
        if not good:
            why = "ERROR: " + "; ".join(errors) if errors else "; ".join(skipped)
            return [*head, tasks, why, *[""] * 5, bar_text, verdict]
        seconds = [r.seconds for r in good]
        growths = [r.growth for r in good]
        ref = self.reference(measurement)
        ours, theirs = self.figure((measurement, ref)), self.figure(key)
        ratio = "—"
        if name != ref and measurement != "rss" and ours and theirs:
            ratio = f"{theirs / ours:,.2f}x"
        note = f" (ERROR in {len(errors)} runs: {'; '.join(errors)})" if errors else ""
        return [
            *head,
            tasks,
            f"{_common.median(seconds):.3f}{note}",
            _common.spread(seconds, ".3f"),
            f"{_common.median([r.per_task_ms for r in good]):,.2f}",
            f"{_common.median(growths) / 1e6:,.0f} (worst {max(growths) / 1e6:,.0f})",
            ratio,
            self.correct(key),
            bar_text,
            verdict,
        ]

    def table(self) -> str:
        rows = [self.row(m, c) for m in MEASUREMENTS for c in contenders(m)]
        return _common.markdown_table(
            [
                "measurement",
                "executor",
                "how",
                "tasks timed",
                "median s",
                "min-max s",
                "ms per task",
                "parent peak RSS growth MB",
                "stalwart faster by",
                "correct",
                "bar",
                "verdict",
            ],
            rows,
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        result = measure_big_result(sys.argv[2], int(sys.argv[3]))
        print(json.dumps(result), flush=True)
    else:
        main()
