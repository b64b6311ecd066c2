"""The long fault-injection soak, and the same workload put to the stdlib and loky.

``nox -s soak`` runs it and rewrites ``benchmarks/RELIABILITY.md``::

    python benchmarks/soak.py                    # 9 rounds x 2000 tasks, writes the file
    python benchmarks/soak.py --quick            # 3 rounds x 300 tasks, prints only
    python benchmarks/soak.py --seed 7 --rounds 30

The workload and the judge live in ``tests/_soak.py`` (the test suite runs a
short version). Every contender gets the same seeded rounds, one fresh executor
per round, used as its own documentation says: stalwart with ``task_timeout``
and, in every third round, ``retries=1``; the stdlib and loky have neither, so
they are judged by what any executor could deliver (a crash is any
BrokenProcessPool, an overdue task any TimeoutError).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import loky

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the repository: tests._soak holds the workload

from run import machine  # noqa: E402 - benchmarks/ is on sys.path as the script's dir
from tests import _soak  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Executor

DEFAULT_OUTPUT = HERE / "RELIABILITY.md"
WORKERS = 2


OTHERS_DEADLINE_S = 30.0
"""How long the stdlib and loky get to resolve a round's futures. Their tasks
take microseconds (5 s for an overdue one), so a future pending after this is
hung; stalwart's rounds get the default, much longer, deadline."""


def contenders(
    workers: int,
) -> dict[str, tuple[Callable[[_soak.RoundPlan], Executor], bool, float]]:
    """name -> (executor factory, judged strictly by stalwart's contract, deadline)."""
    return {
        "stalwart": (lambda plan: _soak.stalwart_executor(plan, workers), True, 300.0),
        "stdlib": (
            lambda plan: concurrent.futures.ProcessPoolExecutor(workers),
            False,
            OTHERS_DEADLINE_S,
        ),
        "loky": (
            lambda plan: loky.ProcessPoolExecutor(workers),
            False,
            OTHERS_DEADLINE_S,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per round")
    parser.add_argument("--seed", type=int, default=20261123)
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--quick", action="store_true", help="3 x 300, print only")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.tasks = 3, 300

    pools = contenders(args.workers)
    for make_executor, _, _ in pools.values():
        _soak.warm_up(make_executor)
    reports: dict[str, list[_soak.RoundReport]] = collections.defaultdict(list)
    started = time.perf_counter()
    for round_number in range(args.rounds):
        plan = _soak.plan_round(args.seed, round_number, args.tasks)
        for name, (make_executor, strict, deadline_s) in pools.items():
            report = _soak.run_round(
                name, make_executor, plan, strict=strict, deadline_s=deadline_s
            )
            reports[name].append(report)
            print(
                f"round {round_number} {name:8} {report.correct}/{report.planned} correct, "
                f"{len(report.wrong_by_kind) and sum(report.wrong_by_kind.values())} wrong, "
                f"{report.hung} hung, {report.wall_s:.1f} s",
                file=sys.stderr,
                flush=True,
            )
    text = render(args, reports, time.perf_counter() - started)
    print(text)
    if not args.quick:
        args.output.write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    stalwart_ok = all(
        not r.wrong
        and not r.hung
        and not r.leaked_processes
        and r.fds_after <= r.fds_before
        for r in reports["stalwart"]
    )
    sys.stdout.flush()
    sys.stderr.flush()
    # A hung stdlib or loky executor keeps threads that interpreter exit would
    # wait on forever; its figures are written, so leave without waiting.
    os._exit(0 if stalwart_ok else 1)


def render(
    args: argparse.Namespace,
    reports: dict[str, list[_soak.RoundReport]],
    total_s: float,
) -> str:
    names = list(reports)

    def total(name: str, field: str) -> int:
        return sum(getattr(r, field) for r in reports[name])

    def row(label: str, cells: list[str]) -> str:
        return f"| {label} | " + " | ".join(cells) + " |"

    lines = [
        "# Reliability: the seeded fault-injection soak",
        "",
        f"`nox -s soak` (`python benchmarks/soak.py --rounds {args.rounds} --tasks "
        f"{args.tasks} --seed {args.seed} --workers {args.workers}`), "
        f"{total_s / 60:.1f} minutes in all.",
        "",
        "Each round plans its tasks from the seed alone: normal returns, raised "
        "exceptions, `os._exit`, SIGKILL, segfaults, tasks that sleep "
        f"{_soak.OVERDUE_S:g} s against a {_soak.TASK_TIMEOUT_S:g} s `task_timeout`, "
        "unpicklable results, 64 KiB-1 MiB arguments, random `cancel()` calls, and "
        "in every third round `shutdown(cancel_futures=True)` partway. Every round "
        "is put to each executor, a fresh one per round, with "
        f"{args.workers} workers. A future is *correct* when it holds exactly the "
        "expected value or exception (or was cancelled, and only if asked), and "
        "the per-task run log shows it ran exactly as often as it should.",
        "",
        "stalwart is judged by its own contract (`WorkerCrashedError` with the "
        "right signal and attempt count, `TaskTimeoutError`, `stalwart.PicklingError` "
        "naming `result['lock']`). The stdlib and loky have no task timeout and no "
        "retries, so they are judged leniently: any `BrokenProcessPool` for a "
        "crash, any `TimeoutError` for an overdue task.",
        "",
        row("", names),
        row("---", ["---:"] * len(names)),
    ]
    planned = {n: total(n, "planned") for n in names}
    correct = {n: total(n, "correct") for n in names}
    lines += [
        row("tasks planned", [f"{planned[n]:,}" for n in names]),
        row(
            "**correct outcomes**",
            [
                f"**{correct[n]:,}** ({100 * correct[n] / max(1, planned[n]):.2f}%)"
                for n in names
            ],
        ),
        row("wrong outcomes", [f"{planned[n] - correct[n]:,}" for n in names]),
        row(
            "... refused by `submit()` (pool broken)",
            [f"{total(n, 'refused'):,}" for n in names],
        ),
        row("cancelled (as asked)", [f"{total(n, 'cancelled'):,}" for n in names]),
        row(
            "hung (future or shutdown never resolved)",
            [f"{total(n, 'hung'):,}" for n in names],
        ),
        row(
            "ran more often than it should",
            [f"{total(n, 'ran_twice'):,}" for n in names],
        ),
        row(
            "leaked processes after shutdown",
            [f"{total(n, 'leaked_processes'):,}" for n in names],
        ),
        row(
            "open fds before → after each round (max)",
            [
                f"{max(r.fds_before for r in reports[n])} → "
                f"{max(r.fds_after for r in reports[n])}"
                for n in names
            ],
        ),
        row(
            "wall time (s)", [f"{sum(r.wall_s for r in reports[n]):.1f}" for n in names]
        ),
        "",
        "Faults that fired (task runs, counting retries) and wrong outcomes, by kind:",
        "",
        row("kind", [f"{n}: fired / wrong" for n in names]),
        row("---", ["---:"] * len(names)),
    ]
    kinds = [k for k in _soak.KIND_WEIGHTS if k != "value"]
    for kind in ["value", *kinds]:
        cells = []
        for n in names:
            fired = sum(r.faults[kind] for r in reports[n])
            wrong = sum(r.wrong_by_kind[kind] for r in reports[n])
            cells.append(
                f"{fired:,} / {wrong:,}" if kind != "value" else f"- / {wrong:,}"
            )
        lines.append(row(f"`{kind}`", cells))
    examples = [
        f"{n}: {w}"
        for n in names
        if n != "stalwart"
        for r in reports[n][:1]
        for w in r.wrong[:3]
    ]
    lines += ["", "What went wrong elsewhere, for example (first round):", ""]
    lines += [f"- {w}" for w in examples] or ["- nothing"]
    lines += ["", "## Reading the figures", "", *reading_notes(reports), ""]
    lines += ["## Machine", "", *machine(), ""]
    return "\n".join(lines)


def reading_notes(reports: dict[str, list[_soak.RoundReport]]) -> list[str]:
    """What explains the other executors' figures, where we know it."""
    notes = [
        "- A shared-queue pool (the stdlib's, loky's) cannot tell which task a dead "
        "worker held, so the first crash of a round fails every pending future and "
        "breaks the pool; the rest of the round is refused or fails. stalwart fails "
        "only the crashed task.",
    ]
    if sys.version_info < (3, 12) and any(r.hung for r in reports.get("stdlib", [])):
        notes.append(
            "- The stdlib's hung futures on this Python come from CPython gh-107219 "
            "(fixed in 3.12): when a crash breaks the pool while a queued future is "
            "cancelled, the pool's manager thread dies of `InvalidStateError` in "
            "`terminate_broken()`, and every other future stays pending forever, "
            "while `submit()` keeps accepting work that never runs."
        )
    for name in (name for name in reports if name != "stalwart"):
        hung = sum(r.hung for r in reports[name])
        cancelled = sum(r.hung_cancelled for r in reports[name])
        if hung and cancelled:
            notes.append(
                f"- {cancelled:,} of the {hung:,} futures {name} left pending were "
                "ones the soak had cancelled: `cancel()` returned True, yet "
                "`wait()` and `as_completed()` count a cancelled future as done only "
                "once its executor calls `set_running_or_notify_cancel()` on it, "
                "which a broken pool never does. (stalwart had the same bug on rarer "
                "paths; every task now leaves it through one call that does this.)"
            )
    return notes


if __name__ == "__main__":
    main()
