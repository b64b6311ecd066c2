"""2,000 tasks each carrying a 1 MB argument: the price of serialising in ``submit()``.

stalwart pickles every call in the caller's thread, inside ``submit()``, so that an
unpicklable argument is refused there and then; the stdlib and loky pickle later,
in a feeder thread, a few calls ahead of the workers. This benchmark checks that
checking early costs nothing in total time when the arguments are big. Every task
gets the same 1 MiB ``bytes`` object (random content, so nothing compresses) and
returns its length: each call still pickles and ships its own 1 MiB copy, about
2 GB per run, while the caller's own memory holds a single object, so the parent's
peak RSS growth shows what a pool itself keeps in flight. All tasks are submitted
at once, then all results awaited; the figure is the wall time of that, and the
ratio is stalwart's median time over each contender's median time (below 1 is
faster).
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time

import _common
import _work
import psutil

TASKS = 2_000
QUICK_TASKS = 300
ARG_BYTES = 1 << 20
CONTENDERS = ("stalwart", "stdlib", "loky")
BAR = "stdlib"
"""docs/design.md: 2k tasks carrying ~1 MB arguments: no slower than stdlib."""


class PeakRSS:
    """Samples this process's RSS every 10 ms in a thread; ``growth`` in bytes."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.baseline = self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


def run_once(name: str, tasks: int, data: bytes) -> tuple[float, int]:
    """Open and warm a pool, run ``tasks`` calls on ``data``; (seconds, RSS growth)."""
    pool = _common.open_pool(name)
    try:
        _common.warm(pool)
        with PeakRSS() as rss:
            start = time.perf_counter()
            futures = [pool.submit(_work.length, data) for _ in range(tasks)]
            done, not_done = concurrent.futures.wait(futures, timeout=600)
            elapsed = time.perf_counter() - start
        if not_done or any(f.result() != len(data) for f in done):
            raise RuntimeError(f"{name}: {len(not_done)} tasks unfinished or wrong")
    finally:
        _common.close_pool(pool)
    return elapsed, rss.growth


def main() -> None:
    args = _common.parse_args(__doc__)
    tasks = QUICK_TASKS if args.quick else TASKS
    data = os.urandom(ARG_BYTES)
    seconds: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    growth: dict[str, list[int]] = {name: [] for name in CONTENDERS}
    for rep in range(args.reps):
        for name in CONTENDERS:  # interleaved: noise hits everyone alike
            elapsed, grew = run_once(name, tasks, data)
            seconds[name].append(elapsed)
            growth[name].append(grew)
            _common.progress(
                f"large-args rep {rep + 1}/{args.reps} {name}: {elapsed:.2f} s, "
                f"parent RSS +{grew / 2**20:,.0f} MiB"
            )

    medians = {name: _common.median(values) for name, values in seconds.items()}
    mib = tasks * ARG_BYTES / 2**20
    rows, bars = [], []
    for name in CONTENDERS:
        ratio = medians["stalwart"] / medians[name]
        bar_text = verdict = ""
        if name == BAR:
            bar_text = "≤ 1.00"
            verdict = _common.verdict(medians["stalwart"] <= medians[name])
            bars.append(
                {
                    "bar": "stalwart's time ≤ stdlib's (ratio of medians ≤ 1.00)",
                    "measured": f"{ratio:.3f}",
                    "verdict": verdict,
                }
            )
        rows.append(
            [
                _common.CLASS_NAMES[name],
                f"{medians[name]:.2f}",
                _common.spread(seconds[name], ".2f"),
                f"{mib / medians[name]:,.0f}",
                f"{_common.median(growth[name]) / 2**20:,.0f}",
                "—" if name == "stalwart" else f"{ratio:.3f}",
                bar_text,
                verdict,
            ]
        )
    table = _common.markdown_table(
        [
            "executor",
            "median s",
            "min-max s",
            "MiB/s",
            "parent peak RSS growth MiB",
            "stalwart time ÷ this",
            "bar",
            "verdict",
        ],
        rows,
    )
    _common.emit(
        args,
        title="Large arguments: 1 MiB per task",
        doc=__doc__,
        table=table,
        params=(
            f"{tasks:,} tasks, each passed the same {ARG_BYTES // 2**20} MiB `bytes` "
            f"object, {_common.WORKERS} workers per pool, median of {args.reps} "
            "interleaved repetitions."
        ),
        bars=bars,
        raw={"tasks": tasks, "arg_bytes": ARG_BYTES, "seconds": seconds, "rss": growth},
    )


if __name__ == "__main__":
    main()
