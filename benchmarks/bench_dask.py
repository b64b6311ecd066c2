"""Per-task overhead of ``stalwart.DaskExecutor`` on one machine: when does a
dask cluster pay off?

``DaskExecutor`` runs the same code on a dask.distributed cluster, and each task
then travels from the client to the scheduler, to a worker and back over TCP,
with the scheduler's bookkeeping on the way: far more per task than the pipe of
a process pool. This program measures that cost against stalwart's process pool
on the same machine, so that users can tell how long their tasks must be for it
not to matter. Three contenders, each with the same number of workers, one
thread each: ``stalwart.ProcessPoolExecutor(workers)``;
``stalwart.DaskExecutor(max_workers=workers)``, which starts its own
``distributed.LocalCluster``; and, for reference, plain dask on the same kind of
cluster (``LocalCluster(n_workers=workers, threads_per_worker=1,
processes=True)``) driven by ``Client.submit(fn, x, pure=False)`` (a new task
per call, as DaskExecutor sends them) and ``distributed.as_completed(...,
with_results=True)`` (results fetched in batches, as DaskExecutor's results
thread fetches them): the gap between the two dask contenders is what the
stalwart layer costs on top of dask (the pickling check in ``submit()``, the
executor's worker plugin, the thread that resolves ``concurrent.futures``
futures). Each run starts its contender and times it from the constructor to the
first result (start-up; for the dask contenders, the cluster's start), warms it
until every worker has answered a task, then times tiny tasks (``_work.tiny``
returns its argument) submitted one ``submit()`` at a time and collected as they
complete: 20,000 on the process pool, 2,000 on the dask contenders, which run
only hundreds a second; the figures are per task either way. The two stalwart
executors then run ``map(_work.tiny, range(200_000), chunksize="auto")`` and sum
it, the tasks that map sent counted from ``stats()``: chunking is how the
per-task cost is amortized. Then the contender is shut down (timed) and the
program checks with psutil that no child process is left but the start methods'
helpers (resource trackers); a leftover fails the benchmark. The per-task
overhead is workers ÷ tasks/s: how often each worker gets a task while the pool
runs flat out on tasks that do nothing, wherever the bottleneck (the client, the
scheduler or the workers). The "pays off" figure is the task length at which
that overhead is 10% of the task (overhead ÷ 0.1): what a task of real length
would lose if the cost per task stayed the same for longer tasks and none of it
overlapped with their work. A last phase tests that on fresh, warm pools: each
contender first sits idle for a second while the program measures the CPU its
processes use (this one, which runs the client, and for the dask contenders the
scheduler and the nannies; and the workers), then runs tasks that each burn
exactly the pay-off length of CPU time (``_work.burn_cpu``), enough of them to
keep every worker busy for about a second. The table gives the share of the wall
time lost against a perfect split of that work over the workers (an overhead of
10% of each task comes to 9.1%), and the per-task overhead that loss implies,
workers x (wall time - perfect split) ÷ tasks, next to the tiny-task figure:
tiny tasks measure what a pool costs per task when results come back in bulk,
tasks of real length what it costs when they come back one at a time while every
CPU is busy, here with the client and the scheduler sharing the workers' CPUs.
Each timed region starts with the heap collected and frozen (``gc.freeze()``,
undone after it): dask leaves objects behind in this process each time a cluster
closes (the scheduler and the nannies run here), and the garbage collections of
every later contender would otherwise pay for them. Contenders are interleaved
within each repetition, their order rotating; figures are medians over the
repetitions and ratios are ratios of medians.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import gc
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import _common
import _work
import distributed
import psutil

import stalwart

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

TASKS = {"stalwart": 20_000, "dask_executor": 2_000, "dask": 2_000}
QUICK_TASKS = {"stalwart": 4_000, "dask_executor": 500, "dask": 500}
"""Tiny tasks per timed run: dask runs far fewer a second than a process pool."""
MAP_ITEMS, QUICK_MAP_ITEMS = 200_000, 40_000
PAYOFF_SHARE = 0.1
""""Pays off": the task length at which the per-task overhead is this share of it."""
CHECK_BUSY_S, QUICK_CHECK_BUSY_S = 1.0, 0.5
"""How long the check phase keeps every worker busy with tasks of that length."""
IDLE_S, QUICK_IDLE_S = 1.0, 0.5
"""How long the check phase measures the CPU a warm, idle pool uses."""
OVERHEAD_BAR = 1.5
"""Ours: DaskExecutor's per-task overhead <= 1.5x plain dask's."""
RESULT_TIMEOUT_S = 300.0

CONTENDERS = ("stalwart", "dask_executor", "dask")
LABELS = {
    "stalwart": f"`stalwart.ProcessPoolExecutor({_common.WORKERS})`",
    "dask_executor": f"`stalwart.DaskExecutor(max_workers={_common.WORKERS})`",
    "dask": "plain dask: `Client.submit` + `distributed.as_completed`",
}
MAPPING = ("stalwart", "dask_executor")
"""The contenders whose ``map(chunksize="auto")`` is timed: stalwart's executors."""


@dataclass
class Opened:
    """One started contender: its pool (warm-up and shutdown go through it), how
    its futures are collected, and for stalwart's executors the executor itself
    (``map`` and ``stats()``)."""

    pool: _common.Pool
    collect: Callable[[list[Any]], Iterable[Any]]  # results, as they complete
    executor: Any  # a stalwart executor; None for plain dask


@dataclass
class Run:
    """The figures of one run of one contender."""

    startup_s: float
    tasks_per_s: float
    close_s: float
    map_items_per_s: float | None = None
    map_tasks: int | None = None  # tasks (chunks) that map() sent, from stats()


def collect_concurrent(futures: list[concurrent.futures.Future[Any]]) -> Iterable[Any]:
    return (
        f.result() for f in concurrent.futures.as_completed(futures, RESULT_TIMEOUT_S)
    )


@contextlib.contextmanager
def heap_frozen() -> Iterator[None]:
    """Keep the garbage collector off what the heap holds now, for a timed region.

    The dask contenders leave objects behind in this process each time a cluster
    closes (its scheduler and nannies run here): thousands per run, and after a
    few runs a full collection takes several times as long. Without this, every
    contender's collections would pay for the dask runs before it.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def open_contender(name: str) -> Opened:
    """Start ``name`` (one of CONTENDERS) with ``_common.WORKERS`` workers."""
    workers = _common.WORKERS
    if name == "stalwart":
        pool = _common.open_pool("stalwart", workers)
        return Opened(pool, collect_concurrent, pool.executor)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    if name == "dask_executor":
        executor = stalwart.DaskExecutor(max_workers=workers)
        pool = _common.Pool(
            name,
            executor.submit,
            lambda: executor.shutdown(wait=True),
            before,
            executor,
        )
        return Opened(pool, collect_concurrent, executor)
    if name == "dask":
        cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
        )
        client = distributed.Client(cluster, set_as_default=False)

        def close_dask() -> None:
            client.close()
            cluster.close()

        def collect_dask(futures: list[Any]) -> Iterable[Any]:
            completed = distributed.as_completed(
                futures, loop=client.loop, with_results=True, timeout=RESULT_TIMEOUT_S
            )
            return (result for _, result in completed)

        # pure=False: a new task per call, as DaskExecutor sends them; with
        # dask's default a repeated call (warm-up's) would be one cached task.
        submit = functools.partial(client.submit, pure=False)
        return Opened(
            _common.Pool(name, submit, close_dask, before), collect_dask, None
        )
    raise ValueError(f"unknown contender {name!r}; expected one of {CONTENDERS}")


def close(opened: Opened, watch: _common.ChildWatch) -> float:
    """Shut ``opened`` down and check that nothing of it is left; return the
    seconds the shutdown took."""
    start = time.perf_counter()
    closed = _common.close_pool(opened.pool)
    elapsed = time.perf_counter() - start
    watch.check(opened.pool.name)
    if not closed:
        raise RuntimeError(
            f"{opened.pool.name}: shutdown hung and its workers were killed; its "
            "figures cannot be trusted. Run the benchmark again; if it hangs again, "
            "report it."
        )
    return elapsed


def run_once(name: str, tasks: int, map_items: int, watch: _common.ChildWatch) -> Run:
    """Start ``name`` (timed to its first result), warm it, time ``tasks`` tiny
    tasks and, for stalwart's executors, a map of ``map_items``; shut it down."""
    start = time.perf_counter()
    opened = open_contender(name)
    try:
        opened.pool.submit(_work.tiny, 0).result(timeout=RESULT_TIMEOUT_S)
        startup_s = time.perf_counter() - start
        _common.warm(opened.pool)
        with heap_frozen():
            submit, tiny = opened.pool.submit, _work.tiny
            start = time.perf_counter()
            futures = [submit(tiny, i) for i in range(tasks)]
            total = sum(opened.collect(futures))
            tasks_per_s = tasks / (time.perf_counter() - start)
            del futures  # dask keeps a result on the cluster while its future lives
        check_sum(name, "submit", total, tasks)
        map_items_per_s = map_tasks = None
        if name in MAPPING:
            executor = opened.executor
            submitted = executor.stats().tasks_submitted
            with heap_frozen():
                start = time.perf_counter()
                total = sum(
                    executor.map(
                        _work.tiny,
                        range(map_items),
                        chunksize="auto",
                        timeout=RESULT_TIMEOUT_S,
                    )
                )
                map_items_per_s = map_items / (time.perf_counter() - start)
            map_tasks = executor.stats().tasks_submitted - submitted
            check_sum(name, "map", total, map_items)
    finally:
        close_s = close(opened, watch)
    return Run(startup_s, tasks_per_s, close_s, map_items_per_s, map_tasks)


@dataclass
class Check:
    """One run of the check phase: tasks of the pay-off length on a warm pool."""

    tasks: int
    seconds: float
    ideal_s: float  # the tasks' CPU time split perfectly over the workers
    idle_cpu: float  # CPU the idle pool used before, in CPUs (parent and workers)

    @property
    def loss(self) -> float:
        """The share of the wall time lost against the perfect split."""
        return 1.0 - self.ideal_s / self.seconds

    @property
    def overhead_s(self) -> float:
        """Worker time lost per task: workers x (wall - ideal) / tasks."""
        return _common.WORKERS * (self.seconds - self.ideal_s) / self.tasks


def run_check(
    name: str, task_s: float, busy_s: float, idle_s: float, watch: _common.ChildWatch
) -> Check:
    """On a fresh, warm ``name``: measure the CPU its processes use over
    ``idle_s`` with nothing to do, then time tasks that each burn ``task_s`` of
    CPU, enough to keep every worker busy ``busy_s``."""
    workers = _common.WORKERS
    count = max(workers, round(busy_s * workers / task_s))
    opened = open_contender(name)
    try:
        pids = _common.warm(opened.pool)
        # This process runs the client (and for dask the scheduler and nannies).
        processes = [psutil.Process(), *(psutil.Process(pid) for pid in pids)]
        with heap_frozen():
            cpu_before = sum(sum(p.cpu_times()[:2]) for p in processes)
            time.sleep(idle_s)
            cpu_after = sum(sum(p.cpu_times()[:2]) for p in processes)
            submit, burn_cpu = opened.pool.submit, _work.burn_cpu
            start = time.perf_counter()
            futures = [submit(burn_cpu, task_s) for _ in range(count)]
            done = sum(1 for _ in opened.collect(futures))
            elapsed = time.perf_counter() - start
            del futures
        idle_cpu = (cpu_after - cpu_before) / idle_s
    finally:
        close(opened, watch)
    if done != count:
        raise RuntimeError(f"{name}: {done} of {count} check tasks came back")
    return Check(count, elapsed, count * task_s / workers, idle_cpu)


def check_sum(name: str, what: str, total: int, n: int) -> None:
    if total != n * (n - 1) // 2:
        raise RuntimeError(f"{name} {what}: wrong results (sum {total})")


def duration(seconds: float) -> str:
    """A short duration in the unit that suits it: µs, ms or s."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.2f} s"


def median_spread(values: Sequence[float], fmt: str) -> str:
    return f"{_common.median(values):{fmt}} ({_common.spread(values, fmt)})"


def rotated(rep: int) -> tuple[str, ...]:
    """CONTENDERS, rotated by the repetition: no contender always goes first."""
    shift = rep % len(CONTENDERS)
    return CONTENDERS[shift:] + CONTENDERS[:shift]


def main() -> None:
    args = _common.parse_args(__doc__)
    tasks = QUICK_TASKS if args.quick else TASKS
    map_items = QUICK_MAP_ITEMS if args.quick else MAP_ITEMS
    busy_s = QUICK_CHECK_BUSY_S if args.quick else CHECK_BUSY_S
    idle_s = QUICK_IDLE_S if args.quick else IDLE_S
    workers = _common.WORKERS
    watch = _common.ChildWatch()

    runs: dict[str, list[Run]] = {name: [] for name in CONTENDERS}
    for rep in range(args.reps):
        for name in rotated(rep):
            run = run_once(name, tasks[name], map_items, watch)
            runs[name].append(run)
            map_note = ""
            if run.map_items_per_s is not None:
                map_note = f", map {run.map_items_per_s:,.0f} items/s in {run.map_tasks:,} tasks"
            _common.progress(
                f"dask rep {rep + 1}/{args.reps} {name}: start-up "
                f"{run.startup_s:.2f} s, {run.tasks_per_s:,.0f} tasks/s{map_note}, "
                f"shutdown {run.close_s:.2f} s"
            )

    def median_of(name: str, field: str) -> float:
        return _common.median([getattr(run, field) for run in runs[name]])

    rate = {name: median_of(name, "tasks_per_s") for name in CONTENDERS}
    overhead_s = {name: workers / rate[name] for name in CONTENDERS}
    payoff_s = {name: overhead_s[name] / PAYOFF_SHARE for name in CONTENDERS}
    versus_dask = {name: overhead_s[name] / overhead_s["dask"] for name in CONTENDERS}

    checks: dict[str, list[Check]] = {name: [] for name in CONTENDERS}
    for rep in range(args.reps):
        for name in rotated(rep):
            check = run_check(name, payoff_s[name], busy_s, idle_s, watch)
            checks[name].append(check)
            _common.progress(
                f"dask check rep {rep + 1}/{args.reps} {name}: idle "
                f"{check.idle_cpu:.3f} CPUs; {check.tasks:,} tasks of "
                f"{duration(payoff_s[name])} lose {check.loss:.1%} "
                f"({duration(check.overhead_s)} per task)"
            )

    check_overhead_s = {
        name: _common.median([c.overhead_s for c in checks[name]])
        for name in CONTENDERS
    }

    def check_spread(name: str, figure: Callable[[Check], float], fmt: str) -> str:
        return median_spread([figure(c) for c in checks[name]], fmt)

    layer_ratio = versus_dask["dask_executor"]
    passed = layer_ratio <= OVERHEAD_BAR
    bar_text = (
        f"DaskExecutor's per-task overhead on tiny tasks ≤ {OVERHEAD_BAR:g}x plain "
        "dask's (`Client.submit` + `as_completed`, same cluster size) (ours)"
    )
    bars = [
        {
            "bar": bar_text,
            "measured": f"{layer_ratio:.2f}x ({duration(overhead_s['dask_executor'])} "
            f"vs {duration(overhead_s['dask'])} per task)",
            "verdict": _common.verdict(passed),
        }
    ]

    def cells(make: Callable[[str], str]) -> list[str]:
        return [make(name) for name in CONTENDERS]

    def stalwart_only(make: Callable[[str], str]) -> Callable[[str], str]:
        return lambda name: make(name) if name in MAPPING else "—"

    def spread_of(name: str, field: str, fmt: str) -> str:
        return median_spread([getattr(run, field) for run in runs[name]], fmt)

    rows = [
        [
            "start-up: constructor to first result, s",
            *cells(lambda n: spread_of(n, "startup_s", ".2f")),
            "",
            "",
        ],
        [
            "tiny tasks per timed run (`submit()`, collected as completed)",
            *cells(lambda n: f"{tasks[n]:,}"),
            "",
            "",
        ],
        [
            "tasks/s",
            *cells(lambda n: spread_of(n, "tasks_per_s", ",.0f")),
            "",
            "",
        ],
        [
            "per-task overhead (workers ÷ tasks/s)",
            *cells(lambda n: duration(overhead_s[n])),
            "",
            "",
        ],
        [
            "per-task overhead ÷ plain dask's",
            *cells(lambda n: f"{versus_dask[n]:.2f}x"),
            f"DaskExecutor ≤ {OVERHEAD_BAR:g}x (ours)",
            _common.verdict(passed),
        ],
        [
            f'`map(chunksize="auto")` of {map_items:,} tiny items: items/s',
            *cells(stalwart_only(lambda n: spread_of(n, "map_items_per_s", ",.0f"))),
            "",
            "",
        ],
        [
            "tasks that map sent (`stats()`), median",
            *cells(
                stalwart_only(
                    lambda n: (
                        f"{median_of(n, 'map_tasks'):,.0f} "
                        f"({map_items / median_of(n, 'map_tasks'):,.0f} items each)"
                    )
                )
            ),
            "",
            "",
        ],
        [
            "what chunking gains: map items/s ÷ submit tasks/s",
            *cells(
                stalwart_only(
                    lambda n: f"{median_of(n, 'map_items_per_s') / rate[n]:,.0f}x"
                )
            ),
            "",
            "",
        ],
        [
            f"pays off, from the tiny-task overhead: the task length it is "
            f"{PAYOFF_SHARE:.0%} of (overhead ÷ {PAYOFF_SHARE:g})",
            *cells(lambda n: duration(payoff_s[n])),
            "",
            "",
        ],
        [
            f"check, first idle for {idle_s:g} s: CPU the warm pool uses doing "
            "nothing (this process and the workers), in CPUs",
            *cells(lambda n: check_spread(n, lambda c: c.idle_cpu, ".3f")),
            "",
            "",
        ],
        [
            "check: tasks of the pay-off length, each burning that much CPU "
            "(`_work.burn_cpu`): wall time lost vs a perfect split over the workers",
            *cells(
                lambda n: (
                    f"{check_spread(n, lambda c: c.loss, '.1%')}, "
                    f"{checks[n][0].tasks:,} tasks"
                )
            ),
            "",
            "",
        ],
        [
            "check: per-task overhead at that length, workers x (wall - ideal) ÷ "
            "tasks; and ÷ the tiny-task figure",
            *cells(
                lambda n: (
                    f"{duration(check_overhead_s[n])}; "
                    f"{check_overhead_s[n] / overhead_s[n]:.1f}x"
                )
            ),
            "",
            "",
        ],
        [
            "shutdown, s",
            *cells(lambda n: spread_of(n, "close_s", ".2f")),
            "",
            "",
        ],
    ]
    table = _common.markdown_table(
        [
            "figure (median, min-max)",
            *(LABELS[n] for n in CONTENDERS),
            "bar",
            "verdict",
        ],
        rows,
    )
    _common.emit(
        args,
        title="DaskExecutor's per-task overhead on one machine",
        doc=__doc__,
        table=table,
        params=(
            f"{workers} workers per contender (one thread each); dask "
            f"{distributed.__version__}, its workers started by LocalCluster "
            f"(`processes=True`). Tiny tasks per run: {tasks['stalwart']:,} on the "
            f"process pool, {tasks['dask']:,} on each dask contender; map of "
            f"{map_items:,} items; check tasks keep every worker busy about "
            f"{busy_s:g} s, after {idle_s:g} s idle. Median of {args.reps} "
            "interleaved repetitions of each phase, every run on a fresh pool."
        ),
        bars=bars,
        raw={
            "workers": workers,
            "dask_version": distributed.__version__,
            "tasks": tasks,
            "map_items": map_items,
            "payoff_share": PAYOFF_SHARE,
            "check_busy_s": busy_s,
            "check_idle_s": idle_s,
            "overhead_s": overhead_s,
            "payoff_task_s": payoff_s,
            "runs": {
                name: {
                    "startup_s": [r.startup_s for r in values],
                    "tasks_per_s": [r.tasks_per_s for r in values],
                    "close_s": [r.close_s for r in values],
                    "map_items_per_s": [r.map_items_per_s for r in values],
                    "map_tasks": [r.map_tasks for r in values],
                    "check_tasks": [c.tasks for c in checks[name]],
                    "check_s": [c.seconds for c in checks[name]],
                    "check_ideal_s": [c.ideal_s for c in checks[name]],
                    "check_idle_cpu": [c.idle_cpu for c in checks[name]],
                }
                for name, values in runs.items()
            },
        },
    )


if __name__ == "__main__":
    main()
