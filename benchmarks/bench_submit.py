"""Throughput of tiny tasks through ``submit()`` and ``as_completed``.

Each pool runs 20,000 calls of a function that returns its argument, submitted one
``submit()`` at a time and collected with ``concurrent.futures.as_completed``: the
task does nothing, so tasks/s measures only the pool's own per-task cost (pickling,
dispatch, the trip through pipes or queues, resolving the future). That cost is
what decides whether fine-grained work is worth sending to a pool at all, and it is
where stalwart's design (one pipe per worker, batched frames, one I/O thread) is
supposed to pay off. Pools are started and warmed (every worker has answered)
before the clock starts; the figure is tasks/s over the whole submit-and-collect
loop, and the ratios are stalwart's median over each contender's median.
"""

from __future__ import annotations

import concurrent.futures
import time

import _common
import _work

TASKS = 20_000
QUICK_TASKS = 4_000
BARS = {"stdlib": 5.0, "loky": 5.0, "pebble": 3.0}
"""docs/design.md: >= 5x stdlib ProcessPoolExecutor and loky, >= 3x pebble."""


def run_once(name: str, tasks: int) -> float:
    """Open and warm a pool of ``name``, push ``tasks`` tiny tasks; return tasks/s."""
    pool = _common.open_pool(name)
    try:
        _common.warm(pool)
        submit, tiny = pool.submit, _work.tiny
        start = time.perf_counter()
        futures = [submit(tiny, i) for i in range(tasks)]
        total = 0
        for future in concurrent.futures.as_completed(futures, timeout=300):
            total += future.result()
        elapsed = time.perf_counter() - start
    finally:
        _common.close_pool(pool)
    if total != tasks * (tasks - 1) // 2:
        raise RuntimeError(f"{name}: wrong results (sum {total})")
    return tasks / elapsed


def main() -> None:
    args = _common.parse_args(__doc__)
    tasks = QUICK_TASKS if args.quick else TASKS
    rates: dict[str, list[float]] = {name: [] for name in _common.CONTENDERS}
    for rep in range(args.reps):
        for name in _common.CONTENDERS:  # interleaved: noise hits everyone alike
            rates[name].append(run_once(name, tasks))
            _common.progress(
                f"submit rep {rep + 1}/{args.reps} {name}: {rates[name][-1]:,.0f} tasks/s"
            )

    medians = {name: _common.median(values) for name, values in rates.items()}
    rows, bars = [], []
    for name in _common.CONTENDERS:
        ratio = medians["stalwart"] / medians[name]
        bar_text = verdict = ""
        if name in BARS:
            bar_text = f"≥ {BARS[name]}x"
            verdict = _common.verdict(ratio >= BARS[name])
            bars.append(
                {
                    "bar": f"stalwart ≥ {BARS[name]}x {name} tasks/s",
                    "measured": f"{ratio:.2f}x",
                    "verdict": verdict,
                }
            )
        rows.append(
            [
                f"{_common.CLASS_NAMES[name]}",
                f"{medians[name]:,.0f}",
                _common.spread(rates[name], ",.0f"),
                f"{tasks / medians[name]:.2f}",
                "—" if name == "stalwart" else f"{ratio:.2f}x",
                bar_text,
                verdict,
            ]
        )
    table = _common.markdown_table(
        [
            "executor",
            "median tasks/s",
            "min-max tasks/s",
            "s per run",
            "stalwart ÷ this",
            "bar",
            "verdict",
        ],
        rows,
    )
    _common.emit(
        args,
        title="Tiny tasks: submit() + as_completed",
        doc=__doc__,
        table=table,
        params=(
            f"{tasks:,} tasks of `_work.tiny`, {_common.WORKERS} workers per pool, "
            f"median of {args.reps} interleaved repetitions."
        ),
        bars=bars,
        raw={"tasks": tasks, "tasks_per_s": rates},
    )


if __name__ == "__main__":
    main()
