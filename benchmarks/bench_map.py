"""200,000 tiny items through ``map``: does ``chunksize="auto"`` match hand tuning?

A pool's cost per task (pickling, a trip through pipes, resolving a future) dwarfs
a tiny function, so ``map`` over many tiny items is fast only in chunks, and the
right chunk size depends on the task, the machine and the pool: stdlib users find
it by hand. stalwart's ``chunksize="auto"`` times each chunk in the worker and
grows the next ones toward a target duration. Each contender maps ``_work.tiny``
(returns its argument) over ``range(200_000)`` and sums the results. The stdlib
ProcessPoolExecutor, loky and stalwart each run a ladder of chunk sizes, from 64
up to items / (4 x workers) (multiprocessing.Pool's own heuristic), and a
contender's "best hand-tuned" size is the rung with the lowest median time.
stalwart's rungs show what auto costs against tuning by hand. joblib's
``Parallel(n_jobs=workers)`` runs with its default automatic batching. The
default ``chunksize=1`` takes 40-50 s per 200,000 items on two cores, so those
rows (and only those) run 10,000 items; the figure is items/s as everywhere. Every
measurement gets a fresh pool, started and warmed (every worker has answered)
before the clock starts; joblib's reusable workers are warmed the same way. The
figure is items/s over the whole map-and-sum. Repetitions are interleaved, their
order rotating each time, and ratios are ratios of medians. Choosing the best of
several medians slightly favours the reference, so the bars are, if anything,
stricter than stated.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import _common
import _work
import joblib

ITEMS, QUICK_ITEMS = 200_000, 40_000
DEFAULT_ITEMS, QUICK_DEFAULT_ITEMS = 10_000, 2_000
"""Items for the ``chunksize=1`` rows: a pool's default is too slow for the rest."""
LADDER = (64, 256, 1024, 4096)
"""Hand-tuned chunk sizes tried; items / (4 x workers) is added as the top rung."""
AUTO_BAR = 1.2
"""docs/design.md: auto >= 1.2x stdlib with its best hand-tuned chunksize."""
DEFAULT_BAR = 10.0
"""Ours: auto beats stdlib's default chunksize "by a wide margin", read as 10x."""
MAP_TIMEOUT_S = 300.0

LABELS = {
    "stalwart": "stalwart.ProcessPoolExecutor",
    "stdlib": "concurrent.futures.ProcessPoolExecutor",
    "loky": "loky.ProcessPoolExecutor",
    "joblib": f"joblib.Parallel (loky backend, joblib {joblib.__version__})",
}


@dataclass(frozen=True)
class Setting:
    """One timed configuration: a contender, a chunk size and how many items."""

    contender: str
    chunksize: int | str | None  # None: joblib's automatic batching
    items: int

    @property
    def call(self) -> str:
        if self.contender == "joblib":
            return "`Parallel(n_jobs)(delayed(f)(x) ...)`, batch_size='auto'"
        return f"`map(chunksize={self.chunksize!r})`".replace("'", '"')


def ladder(items: int) -> list[int]:
    top = max(1, items // (4 * _common.WORKERS))
    return sorted({*(size for size in LADDER if size < top), top})


def settings(items: int, default_items: int) -> list[Setting]:
    rungs = ladder(items)
    return [
        Setting("stalwart", "auto", items),
        Setting("stalwart", 1, default_items),
        *(Setting("stalwart", size, items) for size in rungs),
        Setting("stdlib", 1, default_items),
        *(Setting("stdlib", size, items) for size in rungs),
        Setting("loky", 1, default_items),
        *(Setting("loky", size, items) for size in rungs),
        Setting("joblib", None, items),
    ]


def run_once(setting: Setting) -> float:
    """Time one map-and-sum of ``setting`` on a fresh, warm pool; return items/s."""
    if setting.contender == "joblib":
        return run_joblib(setting.items)
    pool = _common.open_pool(setting.contender)
    try:
        _common.warm(pool)
        assert pool.executor is not None
        map_, tiny = pool.executor.map, _work.tiny
        start = time.perf_counter()
        total = sum(
            map_(
                tiny,
                range(setting.items),
                chunksize=setting.chunksize,
                timeout=MAP_TIMEOUT_S,
            )
        )
        elapsed = time.perf_counter() - start
    finally:
        _common.close_pool(pool)
    check(setting, total)
    return setting.items / elapsed


def run_joblib(items: int) -> float:
    """joblib's default: its reusable loky workers, batches sized automatically."""
    parallel, delayed, workers = joblib.Parallel, joblib.delayed, _common.WORKERS
    deadline = time.monotonic() + 60.0
    pids: set[int] = set()
    while len(pids) < workers:  # warm, as _common.warm does for the pools
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"joblib: only {len(pids)} of {workers} workers answered"
            )
        calls = (delayed(_work.worker_pid)(0.01) for _ in range(2 * workers))
        pids.update(parallel(n_jobs=workers)(calls))
    start = time.perf_counter()
    calls = (delayed(_work.tiny)(i) for i in range(items))
    total = sum(parallel(n_jobs=workers)(calls))
    elapsed = time.perf_counter() - start
    check(Setting("joblib", None, items), total)
    return items / elapsed


def check(setting: Setting, total: int) -> None:
    n = setting.items
    if total != n * (n - 1) // 2:
        raise RuntimeError(f"{setting}: wrong results (sum {total})")


def best_rung(contender: str, medians: dict[Setting, float], items: int) -> Setting:
    """The hand-tuned chunk size with the highest median items/s."""
    rungs = [
        setting
        for setting in medians
        if setting.contender == contender
        and setting.items == items
        and isinstance(setting.chunksize, int)
        and setting.chunksize > 1
    ]
    return max(rungs, key=medians.__getitem__)


def main() -> None:
    args = _common.parse_args(__doc__, default_reps=5, quick_reps=3)
    items = QUICK_ITEMS if args.quick else ITEMS
    default_items = QUICK_DEFAULT_ITEMS if args.quick else DEFAULT_ITEMS
    plan = settings(items, default_items)
    rates: dict[Setting, list[float]] = {setting: [] for setting in plan}
    for rep in range(args.reps):
        shift = rep * len(plan) // args.reps  # rotate: no setting always goes first
        for setting in plan[shift:] + plan[:shift]:
            rates[setting].append(run_once(setting))
            _common.progress(
                f"map rep {rep + 1}/{args.reps} {setting.contender} "
                f"chunksize={setting.chunksize}: {rates[setting][-1]:,.0f} items/s"
            )

    medians = {setting: _common.median(values) for setting, values in rates.items()}
    auto = Setting("stalwart", "auto", items)
    stdlib_best = best_rung("stdlib", medians, items)
    stalwart_best = best_rung("stalwart", medians, items)
    loky_best = best_rung("loky", medians, items)
    stdlib_default = Setting("stdlib", 1, default_items)
    versus_best = medians[auto] / medians[stdlib_best]
    versus_default = medians[auto] / medians[stdlib_default]
    bar_cells = {
        stdlib_best: (f"≥ {AUTO_BAR}x", _common.verdict(versus_best >= AUTO_BAR)),
        stdlib_default: (
            f"≥ {DEFAULT_BAR:.0f}x",
            _common.verdict(versus_default >= DEFAULT_BAR),
        ),
    }
    bars = [
        {
            "bar": f'stalwart `chunksize="auto"` ≥ {AUTO_BAR}x stdlib at its best '
            f"hand-tuned chunksize ({stdlib_best.chunksize}) items/s",
            "measured": f"{versus_best:.2f}x",
            "verdict": bar_cells[stdlib_best][1],
        },
        {
            "bar": f'stalwart `chunksize="auto"` ≥ {DEFAULT_BAR:.0f}x stdlib\'s default '
            'chunksize=1 items/s (ours: "by a wide margin", read as 10x)',
            "measured": f"{versus_default:,.0f}x",
            "verdict": bar_cells[stdlib_default][1],
        },
    ]

    shown = [auto, Setting("stalwart", stdlib_best.chunksize, items)]
    if stalwart_best not in shown:
        shown.append(stalwart_best)
    shown.append(Setting("stalwart", 1, default_items))
    shown += [s for s in plan if s.contender == "stdlib" and s.items == items]
    shown += [stdlib_default, loky_best, Setting("loky", 1, default_items)]
    shown.append(Setting("joblib", None, items))
    best_of = {stdlib_best, stalwart_best, loky_best}
    rows = []
    for setting in shown:
        note = " (best rung)" if setting in best_of else ""
        bar_text, verdict = bar_cells.get(setting, ("", ""))
        rows.append(
            [
                LABELS[setting.contender],
                setting.call + note,
                f"{setting.items:,}",
                f"{medians[setting]:,.0f}",
                _common.spread(rates[setting], ",.0f"),
                f"{setting.items / medians[setting]:.3f}",
                "—" if setting == auto else f"{medians[auto] / medians[setting]:,.2f}x",
                bar_text,
                verdict,
            ]
        )
    table = _common.markdown_table(
        [
            "executor",
            "call",
            "items",
            "median items/s",
            "min-max items/s",
            "s per run",
            "auto ÷ this",
            "bar",
            "verdict",
        ],
        rows,
    )
    rungs = ", ".join(str(size) for size in ladder(items))
    _common.emit(
        args,
        title='Tiny items through map(chunksize="auto")',
        doc=__doc__,
        table=table,
        params=(
            f"{items:,} items of `_work.tiny` per map ({default_items:,} for the "
            f"`chunksize=1` rows), chunk-size ladder {rungs}; best rungs: stdlib "
            f"{stdlib_best.chunksize}, loky {loky_best.chunksize}, stalwart "
            f"{stalwart_best.chunksize}. {_common.WORKERS} workers per pool, median "
            f"of {args.reps} interleaved repetitions."
        ),
        bars=bars,
        raw={
            "items": items,
            "default_items": default_items,
            "best_chunksize": {
                "stdlib": stdlib_best.chunksize,
                "loky": loky_best.chunksize,
                "stalwart": stalwart_best.chunksize,
            },
            "items_per_s": [
                {
                    "contender": s.contender,
                    "chunksize": s.chunksize,
                    "items": s.items,
                    "items_per_s": values,
                }
                for s, values in rates.items()
            ],
        },
    )


if __name__ == "__main__":
    main()
