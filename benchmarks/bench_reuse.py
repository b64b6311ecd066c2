"""Warm workers: many short ``with`` blocks in a row, each opening a process pool.

Code that opens a pool where it needs one (a function called in a loop, a request
handler, a notebook cell) pays for starting the workers, and for their
initializer, every time. With ``reuse=True`` stalwart's ``shutdown()`` at the end
of the block parks the idle workers, initializer state and all, and the next
``reuse=True`` executor with the same settings adopts them at once. Each run here
is a sequence of consecutive ``with`` blocks, each submitting 4 tasks of
``_work.tiny`` (returns its argument) and waiting for their results, timed as a
whole; the figure is the time per block. Four contenders, each with the same
number of workers: ``stalwart.ProcessPoolExecutor(reuse=True)``;
``concurrent.futures.ProcessPoolExecutor`` with Python's default start method;
loky's answer to the same problem, ``loky.get_reusable_executor()``, fetched at
the top of each block and never shut down between blocks (a ``with`` would shut
it down), as loky users write it; and ``stalwart.ProcessPoolExecutor`` with the
default ``reuse=False``, which starts fresh workers every block: what reuse
saves. Two scenarios: no initializer, and an initializer that sleeps 0.5 s in
each worker (``_work.load_model``, standing for loading a model), where every
block that starts workers pays at least 0.5 s, so the stdlib and
``reuse=False`` run fewer blocks there and are compared per block. The claim is
about the second and later blocks, so each run of the two reusing contenders
starts with one untimed block in which every worker answers a task: their
workers are then started and initialized before the clock starts. The stdlib and
``reuse=False`` have nothing to warm: each block starts its own workers, which
is the point. The table proves rather than assumes reuse: it shows
``stats().workers_started`` and ``workers_reused`` of stalwart's last timed
block (and for loky, whether every block got the executor warmed before the
clock started). After each run the contender's workers are killed (stalwart: one
more ``reuse=True`` executor with the same settings adopts the parked workers
and is shut down with ``kill_workers=True``; loky: its reusable executor is shut
down with ``kill_workers=True``), and the program checks with psutil that no
child process is left but the start methods' helpers (resource trackers); a
leftover fails the benchmark. Contenders are interleaved within each
repetition, their order rotating; figures are medians over the repetitions and
ratios are ratios of medians, as speed (the contender's time per block over
stalwart ``reuse=True``'s).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import multiprocessing
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import _common
import _work
import loky

import stalwart

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

TASKS_PER_BLOCK = 4
BLOCKS = 20
"""docs/design.md's sequence: 20 consecutive ``with`` blocks of 4 tiny tasks."""
INITIALIZER_S = 0.5
"""What the initializer of the second scenario takes in each worker."""
SPEED_BAR = 10.0
"""docs/design.md: reuse=True >= 10x faster than the stdlib over the 20 blocks."""
WARM_BLOCK_BAR_S = 0.1
"""Ours: with the 0.5 s initializer, a reuse=True block after warm-up < 0.1 s,
i.e. the initializer is paid once, not per block."""
RESULT_TIMEOUT_S = 60.0
CONTENDERS = ("stalwart_reuse", "stdlib", "loky", "stalwart")
REUSING = frozenset({"stalwart_reuse", "loky"})
"""The contenders that keep workers between blocks: warmed before the clock."""
LABELS = {
    "stalwart_reuse": "`stalwart.ProcessPoolExecutor(reuse=True)`, `with` per block",
    "stdlib": "`concurrent.futures.ProcessPoolExecutor`, `with` per block",
    "loky": "`loky.get_reusable_executor()` per block, no `with`",
    "stalwart": "`stalwart.ProcessPoolExecutor` (`reuse=False`), `with` per block",
}


@dataclass(frozen=True)
class Scenario:
    """The pools' settings, and how many blocks each kind of contender runs."""

    name: str
    title: str
    initializer_s: float | None
    blocks_reusing: int  # stalwart reuse=True and loky
    blocks_fresh: int  # the stdlib and stalwart reuse=False: workers start per block

    def options(self) -> dict[str, Any]:
        """The keywords every pool of this scenario gets besides its worker count."""
        if self.initializer_s is None:
            return {}
        return {"initializer": _work.load_model, "initargs": (self.initializer_s,)}

    def blocks(self, contender: str) -> int:
        return self.blocks_reusing if contender in REUSING else self.blocks_fresh


def scenarios(quick: bool) -> tuple[Scenario, Scenario]:
    """Without an initializer every contender runs docs/design.md's 20 blocks. With
    the 0.5 s initializer a fresh-workers block costs over 0.5 s, so those
    contenders run fewer blocks (and everyone fewer under ``--quick``)."""
    return (
        Scenario("plain", "no initializer", None, BLOCKS, BLOCKS),
        Scenario(
            "initializer",
            f"`initializer=_work.load_model, initargs=({INITIALIZER_S},)`",
            INITIALIZER_S,
            10 if quick else BLOCKS,
            3 if quick else 8,
        ),
    )


@dataclass
class Run:
    """One timed sequence of blocks, and the evidence of reuse it left."""

    seconds: float
    blocks: int
    started_last: int | None = None  # stalwart: stats() of the last timed block
    reused_last: int | None = None
    started_total: int | None = None  # stalwart: over every timed block
    same_executor: bool | None = None  # loky: every block got the warmed executor

    @property
    def per_block_s(self) -> float:
        return self.seconds / self.blocks


def open_block(
    contender: str, options: dict[str, Any]
) -> AbstractContextManager[concurrent.futures.Executor]:
    """What the top of one block opens: an executor that its end shuts down,
    except for loky's reusable executor, which must outlive the block."""
    workers = _common.WORKERS
    if contender == "stalwart_reuse":
        return stalwart.ProcessPoolExecutor(workers, reuse=True, **options)
    if contender == "stalwart":
        return stalwart.ProcessPoolExecutor(workers, **options)
    if contender == "stdlib":
        return concurrent.futures.ProcessPoolExecutor(workers, **options)
    if contender == "loky":
        # nullcontext, not the executor itself: its __exit__ would shut it down.
        return contextlib.nullcontext(
            loky.get_reusable_executor(max_workers=workers, **options)
        )
    raise ValueError(f"unknown contender {contender!r}; expected one of {CONTENDERS}")


def warm_up(contender: str, options: dict[str, Any]) -> concurrent.futures.Executor:
    """One untimed block in which every worker answers a task (so every worker
    is started and initialized); return its executor."""
    with open_block(contender, options) as executor:
        pool = _common.Pool(contender, executor.submit, lambda: None)
        _common.warm(pool, timeout_s=RESULT_TIMEOUT_S + 2 * (INITIALIZER_S or 0))
    return executor


def kill_kept_workers(contender: str, options: dict[str, Any]) -> None:
    """End the workers a reusing contender keeps after its run, at once.

    stalwart's parked workers would otherwise wait ``idle_timeout`` (a minute)
    and loky's for its own timeout, sharing the CPU with the next contender.
    """
    if contender == "stalwart_reuse":
        # An executor with the same settings adopts them; kill_workers ends them.
        killer = stalwart.ProcessPoolExecutor(_common.WORKERS, reuse=True, **options)
        killer.shutdown(kill_workers=True)
    elif contender == "loky":
        loky.get_reusable_executor(max_workers=_common.WORKERS, **options).shutdown(
            wait=True, kill_workers=True
        )


def run_once(scenario: Scenario, contender: str, watch: _common.ChildWatch) -> Run:
    """Time ``scenario.blocks(contender)`` consecutive blocks of ``contender``."""
    options = scenario.options()
    blocks = scenario.blocks(contender)
    warmed: concurrent.futures.Executor | None = None
    executors: list[concurrent.futures.Executor] = []
    total = 0
    try:
        if contender in REUSING:
            warmed = warm_up(contender, options)
        gc.collect()  # no one pays for the garbage of the run before
        submit_timeout = RESULT_TIMEOUT_S + 2 * (scenario.initializer_s or 0)
        start = time.perf_counter()
        for _ in range(blocks):
            with open_block(contender, options) as executor:
                futures = [
                    executor.submit(_work.tiny, i) for i in range(TASKS_PER_BLOCK)
                ]
                total += sum(f.result(timeout=submit_timeout) for f in futures)
            executors.append(executor)
        elapsed = time.perf_counter() - start
    finally:
        kill_kept_workers(contender, options)
        watch.check(f"{contender} ({scenario.name})")
    expected = blocks * TASKS_PER_BLOCK * (TASKS_PER_BLOCK - 1) // 2
    if total != expected:
        raise RuntimeError(f"{contender}: wrong results (sum {total}, not {expected})")
    run = Run(elapsed, blocks)
    if contender in ("stalwart_reuse", "stalwart"):
        stats = [
            e.stats() for e in executors if isinstance(e, stalwart.ProcessPoolExecutor)
        ]
        run.started_last = stats[-1].workers_started
        run.reused_last = stats[-1].workers_reused
        run.started_total = sum(s.workers_started for s in stats)
    elif contender == "loky":
        run.same_executor = all(e is warmed for e in executors)
    return run


def evidence(contender: str, runs: list[Run]) -> str:
    """The table's proof (or disproof) of reuse, over every run of a contender."""
    if contender == "stdlib":
        return "— (new pool each block; no stats)"
    if contender == "loky":
        same = sum(bool(r.same_executor) for r in runs)
        if same == len(runs):
            return "— (the warmed executor in every block)"
        return f"— (a new executor in {len(runs) - same} of {len(runs)} runs)"
    pairs = sorted({(r.started_last, r.reused_last) for r in runs}, key=str)
    text = ", ".join(f"{started} / {reused}" for started, reused in pairs)
    if contender == "stalwart_reuse":
        started_total = max(r.started_total or 0 for r in runs)
        if started_total:
            text += f" (up to {started_total} started over a run's timed blocks)"
    return text + (" in every run" if len(pairs) == 1 else " (varied)")


def main() -> None:
    args = _common.parse_args(__doc__)
    plan = scenarios(args.quick)
    watch = _common.ChildWatch()
    runs: dict[tuple[str, str], list[Run]] = {
        (s.name, c): [] for s in plan for c in CONTENDERS
    }
    for rep in range(args.reps):
        for scenario in plan:
            shift = rep % len(CONTENDERS)  # rotate: no contender always goes first
            for contender in CONTENDERS[shift:] + CONTENDERS[:shift]:
                run = run_once(scenario, contender, watch)
                runs[scenario.name, contender].append(run)
                _common.progress(
                    f"reuse rep {rep + 1}/{args.reps} {scenario.name} {contender}: "
                    f"{run.seconds:.3f} s for {run.blocks} blocks "
                    f"({run.per_block_s * 1e3:.1f} ms per block)"
                )

    per_block = {
        key: _common.median([r.per_block_s for r in values])
        for key, values in runs.items()
    }

    def speedup(scenario: Scenario, contender: str) -> float:
        """stalwart reuse=True's speed over the contender's, per block."""
        return (
            per_block[scenario.name, contender]
            / per_block[scenario.name, "stalwart_reuse"]
        )

    plain, init = plan
    ours = " (ours)"
    plain_ratio = speedup(plain, "stdlib")
    init_ratio = speedup(init, "stdlib")
    init_block_s = per_block[init.name, "stalwart_reuse"]
    bar_cells = {
        (plain.name, "stdlib"): (f"≥ {SPEED_BAR:g}x", plain_ratio >= SPEED_BAR),
        (init.name, "stdlib"): (f"≥ {SPEED_BAR:g}x", init_ratio >= SPEED_BAR),
        (init.name, "stalwart_reuse"): (
            f"< {WARM_BLOCK_BAR_S:g} s per block",
            init_block_s < WARM_BLOCK_BAR_S,
        ),
    }
    bars = [
        {
            "bar": f"{BLOCKS} consecutive `with` blocks of {TASKS_PER_BLOCK} tiny "
            f"tasks, `reuse=True`: ≥ {SPEED_BAR:g}x faster than stdlib",
            "measured": f"{plain_ratio:.2f}x ({per_block[plain.name, 'stdlib'] * 1e3:.1f}"
            f" vs {per_block[plain.name, 'stalwart_reuse'] * 1e3:.1f} ms per block)",
            "verdict": _common.verdict(bar_cells[plain.name, "stdlib"][1]),
        },
        {
            "bar": f"with a {INITIALIZER_S} s initializer, `reuse=True` pays it once: "
            f"< {WARM_BLOCK_BAR_S:g} s per block after warm-up" + ours,
            "measured": f"{init_block_s * 1e3:.1f} ms per block",
            "verdict": _common.verdict(bar_cells[init.name, "stalwart_reuse"][1]),
        },
        {
            "bar": f"with a {INITIALIZER_S} s initializer, `reuse=True`: "
            f"≥ {SPEED_BAR:g}x faster than stdlib" + ours,
            "measured": f"{init_ratio:.2f}x ({per_block[init.name, 'stdlib'] * 1e3:.0f}"
            f" vs {init_block_s * 1e3:.1f} ms per block)",
            "verdict": _common.verdict(bar_cells[init.name, "stdlib"][1]),
        },
    ]

    rows = []
    for scenario in plan:
        for contender in CONTENDERS:
            key = (scenario.name, contender)
            seconds = [r.seconds for r in runs[key]]
            bar_text, passed = bar_cells.get(key, ("", None))
            rows.append(
                [
                    scenario.title,
                    LABELS[contender],
                    scenario.blocks(contender),
                    f"{_common.median(seconds):.3f}",
                    _common.spread(seconds, ".3f"),
                    f"{per_block[key] * 1e3:.1f}",
                    "—"
                    if contender == "stalwart_reuse"
                    else f"{speedup(scenario, contender):,.2f}x",
                    evidence(contender, runs[key]),
                    bar_text,
                    "" if passed is None else _common.verdict(passed),
                ]
            )
    table = _common.markdown_table(
        [
            "scenario",
            "executor",
            "blocks timed",
            "median s",
            "min-max s",
            "median ms per block",
            "stalwart reuse ÷ this (speed, per block)",
            "workers started / adopted in the last block (`stats()`)",
            "bar",
            "verdict",
        ],
        rows,
    )
    _common.emit(
        args,
        title="Warm workers: consecutive `with` blocks (`reuse=True`)",
        doc=__doc__,
        table=table,
        params=(
            f"Blocks of {TASKS_PER_BLOCK} tasks of `_work.tiny`, {_common.WORKERS} "
            f"workers per pool; the stdlib with Python's default start method "
            f"(`{multiprocessing.get_start_method()}`), stalwart and loky with "
            f"loky's fork+exec. No initializer: {plain.blocks_fresh} blocks per run "
            f"for every contender. With the {INITIALIZER_S} s initializer: "
            f"{init.blocks_reusing} blocks for stalwart `reuse=True` and loky, "
            f"{init.blocks_fresh} for the stdlib and stalwart `reuse=False` (which "
            "pay the initializer every block), compared per block. stalwart "
            "`reuse=True` and loky get one untimed warm-up block per run. Median of "
            f"{args.reps} interleaved repetitions."
        ),
        bars=bars,
        raw={
            "workers": _common.WORKERS,
            "tasks_per_block": TASKS_PER_BLOCK,
            "initializer_s": INITIALIZER_S,
            "stdlib_start_method": multiprocessing.get_start_method(),
            "runs": [
                {
                    "scenario": scenario_name,
                    "contender": contender,
                    "blocks": [r.blocks for r in values],
                    "seconds": [r.seconds for r in values],
                    "workers_started_last_block": [r.started_last for r in values],
                    "workers_reused_last_block": [r.reused_last for r in values],
                    "workers_started_all_blocks": [r.started_total for r in values],
                    "loky_same_executor": [r.same_executor for r in values],
                }
                for (scenario_name, contender), values in runs.items()
            ],
        },
    )


if __name__ == "__main__":
    main()
