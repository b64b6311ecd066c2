"""``map`` over a 10-million-item generator: does ``buffersize`` bound the memory?

The stdlib's ``Executor.map`` reads its whole input and submits every item before
it returns the first result. A future, a work item and the item's arguments then
exist for every element of the input, so a long or endless generator takes memory
in proportion to its length, or all of it. stalwart's ``map(buffersize=n)`` keeps
at most n tasks (items or chunks) in flight. It reads the input only as results
are taken, so memory should stay flat however long the input is. Each contender
maps ``_work.tiny`` (returns its argument) over a generator of integers and sums
the results as they come. We record the parent's peak RSS growth: the peak while
mapping minus the RSS just before, measured after the pool is started and warmed,
from samples every 10 ms and from ``getrusage``'s high-water mark, whichever is
higher. Each run gets its own fresh interpreter, so that memory one contender
freed, but the allocator kept, cannot hide the next one's peak. stalwart with
``buffersize`` and ``chunksize="auto"`` runs the full 10M items. With
``buffersize`` and ``chunksize=1`` it runs a 50,000-item prefix, since 10M single
tasks would take minutes; its memory should be just as flat. The eager contenders
would need minutes and gigabytes for 10M items: the stdlib at its default
``chunksize=1``, the stdlib with a hand-tuned chunksize (which still materialises
every chunk's arguments), and stalwart without ``buffersize`` (the stdlib's eager
semantics, kept by default). They run a prefix of the generator, and their growth
per item, times 10M, is labelled as extrapolated. (Python 3.14's stdlib gains the
same ``buffersize``; the stdlib rows use its default, eager ``map``.) The verdict
takes the worst repetition; the other figures are medians.
"""

from __future__ import annotations

import gc
import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import _common
import _work
from bench_large_args import PeakRSS  # the same 10 ms RSS sampler

if TYPE_CHECKING:
    from collections.abc import Iterator

FULL_ITEMS, QUICK_FULL_ITEMS = 10_000_000, 1_000_000
BUFFERSIZE = 16 * _common.WORKERS
"""Tasks in flight for the bounded runs: a few per worker keeps them all busy."""
STDLIB_CHUNKSIZE = 4096
"""The stdlib's best rung on bench_map's ladder on the 2-core reference machine."""
BAR_BYTES = 100_000_000
"""docs/design.md: map(buffersize=...) over a 10M-item generator: growth < 100 MB."""
CHILD_TIMEOUT_S = 600


@dataclass(frozen=True)
class Contender:
    """One way of mapping over the generator, and how many items it runs."""

    key: str
    executor: str  # a _common contender name
    call: str
    kwargs: dict[str, Any] = field(hash=False)
    items: int
    quick_items: int

    @property
    def bounded(self) -> bool:
        return "buffersize" in self.kwargs


CONTENDERS = (
    Contender(
        "stalwart-buffered",
        "stalwart",
        f'`map(chunksize="auto", buffersize={BUFFERSIZE})`',
        {"chunksize": "auto", "buffersize": BUFFERSIZE},
        FULL_ITEMS,
        QUICK_FULL_ITEMS,
    ),
    Contender(
        "stalwart-buffered-chunksize-1",
        "stalwart",
        f"`map(buffersize={BUFFERSIZE})` (chunksize=1)",
        {"buffersize": BUFFERSIZE},
        50_000,
        10_000,
    ),
    Contender(
        "stalwart-eager",
        "stalwart",
        '`map(chunksize="auto")` (no buffersize)',
        {"chunksize": "auto"},
        1_000_000,
        200_000,
    ),
    Contender(
        "stdlib",
        "stdlib",
        "`map()` (chunksize=1)",
        {},
        20_000,
        5_000,
    ),
    Contender(
        "stdlib-chunked",
        "stdlib",
        f"`map(chunksize={STDLIB_CHUNKSIZE})`",
        {"chunksize": STDLIB_CHUNKSIZE},
        1_000_000,
        200_000,
    ),
)
BY_KEY = {contender.key: contender for contender in CONTENDERS}


def numbers(count: int) -> Iterator[int]:
    """A generator: it has no length, so a map cannot size itself from it."""
    yield from range(count)


def measure(contender: Contender, items: int) -> dict[str, Any]:
    """In the child: one map over ``numbers(items)``; its memory and time."""
    pool = _common.open_pool(contender.executor)
    try:
        _common.warm(pool)
        assert pool.executor is not None
        gc.collect()
        with PeakRSS() as rss:
            start = time.perf_counter()
            results = pool.executor.map(_work.tiny, numbers(items), **contender.kwargs)
            total = sum(results)  # each result as it comes, then dropped
            elapsed = time.perf_counter() - start
            del results
    finally:
        _common.close_pool(pool)
    if total != items * (items - 1) // 2:
        return {
            "items": items,
            "error": f"wrong results: sum {total:,}, expected "
            f"{items * (items - 1) // 2:,}",
        }
    high_water = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB
    return {
        "items": items,
        "seconds": elapsed,
        "growth_bytes": max(rss.peak, high_water) - rss.baseline,
        "sampled_growth_bytes": rss.growth,
    }


def run_child(contender: Contender, items: int) -> dict[str, Any]:
    """Run ``measure`` in a fresh interpreter; return what it printed.

    A run that fails (wrong results, an exception, a hang) comes back as
    ``{"error": why}``: the other contenders are still measured and reported.
    """
    command = [sys.executable, __file__, "--child", contender.key, str(items)]
    try:
        done = subprocess.run(
            command,
            stdout=subprocess.PIPE,
            text=True,
            timeout=CHILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"items": items, "error": f"timed out after {CHILD_TIMEOUT_S} s"}
    if done.returncode != 0:
        why = f"exited with status {done.returncode} (traceback on stderr)"
        return {"items": items, "error": why}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def megabytes(size: float) -> str:
    return f"{size / 1e6:,.1f}"


def main() -> None:
    args = _common.parse_args(__doc__, default_reps=3, quick_reps=1)
    full_items = QUICK_FULL_ITEMS if args.quick else FULL_ITEMS
    runs: dict[str, list[dict[str, Any]]] = {c.key: [] for c in CONTENDERS}
    for rep in range(args.reps):
        for contender in CONTENDERS:  # interleaved: noise hits everyone alike
            items = contender.quick_items if args.quick else contender.items
            run = run_child(contender, items)
            runs[contender.key].append(run)
            outcome = run.get("error") or (
                f"{run['seconds']:.2f} s, parent RSS +{run['growth_bytes'] / 1e6:,.1f} MB"
            )
            _common.progress(
                f"map-memory rep {rep + 1}/{args.reps} {contender.key}: "
                f"{items:,} items: {outcome}"
            )

    rows, bars = [], []
    for contender in CONTENDERS:
        reps = runs[contender.key]
        items = reps[0]["items"]
        errors = sorted({r["error"] for r in reps if "error" in r})
        bar_text = verdict = ""
        if contender.key == "stalwart-buffered":
            bar_text = "< 100 MB"
            worst = max((r.get("growth_bytes", 0) for r in reps), default=0)
            verdict = _common.verdict(not errors and worst < BAR_BYTES)
            bars.append(
                {
                    "bar": f"stalwart `map(buffersize=...)` over a {items:,}-item "
                    "generator: parent peak RSS growth < 100 MB (worst repetition)",
                    "measured": "; ".join(errors) or f"{worst / 1e6:,.1f} MB",
                    "verdict": verdict,
                }
            )
        head = [_common.CLASS_NAMES[contender.executor], contender.call, f"{items:,}"]
        if errors:
            rows.append(
                [*head, "ERROR: " + "; ".join(errors), *[""] * 5, bar_text, verdict]
            )
            continue
        seconds = _common.median([r["seconds"] for r in reps])
        growths = [r["growth_bytes"] for r in reps]
        growth = _common.median(growths)
        if contender.bounded:  # flat: a figure per item would shrink with the input
            per_item, at_full = "—", "— (bounded)"
        else:
            per_item = f"{growth / items:,.1f}"
            at_full = f"{growth / items * FULL_ITEMS / 1e9:,.1f} GB (extrapolated)"
        rows.append(
            [
                *head,
                f"{seconds:.2f}",
                f"{items / seconds:,.0f}",
                megabytes(growth),
                megabytes(max(growths)),
                per_item,
                at_full,
                bar_text,
                verdict,
            ]
        )
    table = _common.markdown_table(
        [
            "executor",
            "call",
            "items run",
            "median s",
            "items/s",
            "peak RSS growth MB (median)",
            "(worst)",
            "bytes per item",
            f"growth at {FULL_ITEMS:,} items",
            "bar",
            "verdict",
        ],
        rows,
    )
    _common.emit(
        args,
        title="map over a 10M-item generator: bounded memory",
        doc=__doc__,
        table=table,
        params=(
            f"`_work.tiny` over a generator of {full_items:,} integers for the "
            f'buffered `chunksize="auto"` run, over prefixes (column "items run") '
            f"for the others; MB = 10^6 bytes. {_common.WORKERS} workers per pool, "
            f"each run in a fresh interpreter, {args.reps} interleaved repetitions."
        ),
        bars=bars,
        raw={"buffersize": BUFFERSIZE, "runs": runs},
    )
    if any("error" in r for reps in runs.values() for r in reps):
        sys.exit(1)  # wrong results or a crash is a failure, not a figure


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        print(json.dumps(measure(BY_KEY[sys.argv[2]], int(sys.argv[3]))), flush=True)
    else:
        main()
