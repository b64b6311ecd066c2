"""A seeded fault-injection soak: every future must get exactly its expected outcome.

One round plans a few hundred to thousands of tasks from a seed, mixing normal
returns, raised exceptions, worker deaths (``os._exit``, SIGKILL, segfault),
tasks past ``task_timeout``, unpicklable results and large arguments, with
random ``cancel()`` calls and, in some rounds, ``shutdown(cancel_futures=True)``
partway through. Each task appends a line to a run log when it starts, so the
judge also sees how many times every task really ran.

The plan depends on the seed alone, never on what an executor did, so the same
workload can be put to stalwart, the stdlib's ProcessPoolExecutor and loky
(``benchmarks/soak.py``); ``tests/test_soak.py`` runs a short version.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import os
import pickle
import random
import tempfile
import threading
import time
import zlib
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

import stalwart
from tests import _leaks, _tasks

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from concurrent.futures import Executor, Future

KIND_WEIGHTS = {
    "value": 80,
    "raise": 6,
    "large": 4,
    "unpicklable": 2,
    "exit": 2,
    "sigkill": 2,
    "segv": 2,
    "timeout": 1,
}
"""How often each kind of task is planned, relative to the others."""

CRASHES = {"exit": None, "sigkill": "SIGKILL", "segv": "SIGSEGV"}
"""Task kinds that kill their worker, and the signal stalwart must report."""

TASK_TIMEOUT_S = 0.5
"""The limit given to stalwart. Normal tasks take microseconds, so only the
"timeout" kind can reach it, even on a machine that is badly overloaded."""

OVERDUE_S = 5.0
"""How long a "timeout" task sleeps: far past TASK_TIMEOUT_S, yet finite, so an
executor without task timeouts still finishes the round."""

MAX_EXAMPLES = 20
"""Wrong outcomes described in a report, at most (all are counted)."""

CANCEL_PROBABILITY = 0.03
LARGE_BYTES = (64 << 10, 1 << 20)


class SoakError(ValueError):
    """What a "raise" task raises: the user's own exception, delivered as is."""


def soak_task(kind: str, index: int, payload: Any, log_path: str) -> Any:
    """The task every round submits; runs in a worker."""
    with open(log_path, "a") as log:  # one short O_APPEND write: atomic
        log.write(f"{index}\n")
    if kind in ("value", "large"):
        return expected_value(kind, index, payload)
    if kind == "raise":
        raise SoakError(f"task {index}")
    if kind == "unpicklable":
        return {"index": index, "lock": threading.Lock()}
    if kind == "timeout":
        time.sleep(OVERDUE_S)
        return index
    _tasks.die("sigkill" if kind == "sigkill" else kind)
    return None  # not reached


def expected_value(kind: str, index: int, payload: Any) -> Any:
    if kind == "large":
        return (index, len(payload), zlib.crc32(payload))
    return index * 3 + payload


@dataclasses.dataclass(frozen=True)
class TaskPlan:
    index: int
    kind: str
    payload: Any
    cancel_target: int | None  # after submitting this task, cancel() that one


@dataclasses.dataclass(frozen=True)
class RoundPlan:
    seed: str
    tasks: list[TaskPlan]
    retries: int
    max_tasks_per_child: int | None
    shutdown_at: int | None  # shutdown(cancel_futures=True) before this task


def plan_round(seed: int, round_number: int, n_tasks: int) -> RoundPlan:
    """The workload of one round; a pure function of its arguments.

    Rounds cycle through three shapes so even a short soak covers each:
    plain, ``retries=1`` with worker recycling, and a shutdown partway.
    """
    rng = random.Random(f"{seed}-{round_number}")
    kinds = list(KIND_WEIGHTS)
    weights = list(KIND_WEIGHTS.values())
    tasks = []
    for index in range(n_tasks):
        kind = rng.choices(kinds, weights)[0]
        payload: Any = rng.randrange(1000)
        if kind == "large":
            payload = rng.randbytes(rng.randrange(*LARGE_BYTES))
        cancel_target = None
        if index and rng.random() < CANCEL_PROBABILITY:
            cancel_target = rng.randrange(max(0, index - 50), index + 1)
        tasks.append(TaskPlan(index, kind, payload, cancel_target))
    shape = round_number % 3
    return RoundPlan(
        seed=f"{seed}-{round_number}",
        tasks=tasks,
        retries=1 if shape == 1 else 0,
        max_tasks_per_child=rng.randrange(20, 60) if shape == 1 else None,
        shutdown_at=rng.randrange(n_tasks // 3, n_tasks) if shape == 2 else None,
    )


@dataclasses.dataclass
class RoundReport:
    """What one executor delivered on one round."""

    executor: str
    seed: str
    planned: int
    submitted: int = 0
    refused: int = 0  # submit() raised: a broken pool refuses new work
    correct: int = 0
    cancelled: int = 0
    faults: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    wrong: list[str] = dataclasses.field(default_factory=list)
    wrong_by_kind: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    ran_twice: int = 0
    hung: int = 0
    hung_cancelled: int = 0  # of those, futures cancel() had cancelled
    leaked_processes: int = 0
    fds_before: int = 0
    fds_after: int = 0
    wall_s: float = 0.0


def stalwart_executor(plan: RoundPlan, workers: int = 2) -> Executor:
    return stalwart.ProcessPoolExecutor(
        workers,
        task_timeout=TASK_TIMEOUT_S,
        retries=plan.retries,
        max_tasks_per_child=plan.max_tasks_per_child,
    )


def warm_up(make_executor: Callable[[RoundPlan], Executor]) -> None:
    """Let an executor start its process-wide helpers (resource trackers, and
    stalwart's template process, which replacement workers come from: they stay
    until exit by design) before a round counts file descriptors."""
    executor = make_executor(plan_round(0, 0, 0))
    executor.submit(abs, -1).result(timeout=60)
    with contextlib.suppress(Exception):  # the stdlib's pool breaks: that is all
        executor.submit(os._exit, 1).result(timeout=60)
        executor.submit(abs, -1).result(timeout=60)
    executor.shutdown(wait=True)


def run_round(
    name: str,
    make_executor: Callable[[RoundPlan], Executor],
    plan: RoundPlan,
    *,
    strict: bool,
    deadline_s: float = 120.0,
) -> RoundReport:
    """Put one round to an executor and judge every future.

    ``strict`` judges by stalwart's contract (exact error types and attributes);
    otherwise by what any executor could deliver (a crash is any
    BrokenProcessPool, an overdue task any TimeoutError). Futures still pending
    after ``deadline_s`` count as hung; processes left alive after shutdown are
    counted, then killed, so that rounds stay independent.
    """
    report = RoundReport(name, plan.seed, len(plan.tasks))
    children_before = {p.pid for p in _leaks.worker_processes()}
    report.fds_before = len(_leaks.open_fds())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stalwart-soak-") as tmp:
        log_path = os.path.join(tmp, "runs.log")
        Path(log_path).touch()
        futures: dict[int, Future[Any]] = {}
        refused: dict[int, BaseException] = {}
        cancel_succeeded: set[int] = set()
        executor = make_executor(plan)
        shutdown_partway = False
        for task in plan.tasks:
            if task.index == plan.shutdown_at:
                _shutdown_cancelling_futures(executor, futures.values())
                shutdown_partway = True
                break
            try:
                futures[task.index] = executor.submit(
                    soak_task, task.kind, task.index, task.payload, log_path
                )
            except Exception as exc:  # a broken pool refuses new work
                refused[task.index] = exc
            target = task.cancel_target
            if target in futures and futures[target].cancel():
                cancel_succeeded.add(target)
        report.submitted = len(futures)
        report.refused = len(refused)
        _, not_done = concurrent.futures.wait(futures.values(), timeout=deadline_s)
        report.hung = len(not_done)
        hung = {index for index, future in futures.items() if future in not_done}
        report.hung_cancelled = len(hung & cancel_succeeded)
        # A pool with hung futures will not shut down either: do not wait long.
        _shutdown_or_report(executor, report, 5.0 if not_done else deadline_s)
        runs = collections.Counter(
            int(line) for line in Path(log_path).read_text().split()
        )
    report.wall_s = time.perf_counter() - started

    considered = plan.tasks[: plan.shutdown_at] if shutdown_partway else plan.tasks
    report.planned = len(considered)
    for task in considered:
        future = futures.get(task.index)
        if task.kind != "value":
            report.faults[task.kind] += runs[task.index]
        if future is not None and future.cancelled():
            report.cancelled += 1
        if task.index in hung:  # even if it resolved later, during shutdown
            problem: str | None = "still pending after the deadline: hung"
        else:
            problem = _judge(
                task,
                future,
                refused.get(task.index),
                runs[task.index],
                retries=plan.retries,
                cancel_asked=task.index in cancel_succeeded or shutdown_partway,
                strict=strict,
            )
        if runs[task.index] > _expected_runs(task, plan.retries):
            report.ran_twice += 1
        if problem is None:
            report.correct += 1
        else:
            report.wrong_by_kind[task.kind] += 1
            if len(report.wrong) < MAX_EXAMPLES:
                report.wrong.append(f"task {task.index} ({task.kind}): {problem}")

    report.leaked_processes = _count_leaked_processes(children_before)
    report.fds_after = _settled_fd_count(report.fds_before)
    return report


def _shutdown_cancelling_futures(
    executor: Executor, futures: Iterable[Future[Any]]
) -> None:
    """``shutdown(wait=False, cancel_futures=True)``, or for an executor that
    lacks the keyword (loky), what it does: cancel every future not yet running."""
    try:
        executor.shutdown(wait=False, cancel_futures=True)
    except TypeError:
        for future in futures:
            future.cancel()
        executor.shutdown(wait=False)


def _shutdown_or_report(
    executor: Executor, report: RoundReport, limit_s: float
) -> None:
    """shutdown(wait=True) in a helper thread: a hang is reported, not suffered."""
    done = threading.Event()

    def shutdown() -> None:
        executor.shutdown(wait=True)
        done.set()

    threading.Thread(target=shutdown, name="soak-shutdown", daemon=True).start()
    if not done.wait(limit_s):
        report.wrong.append(f"shutdown(wait=True) did not return within {limit_s} s")
        report.hung += 1


def _expected_runs(task: TaskPlan, retries: int) -> int:
    return retries + 1 if task.kind in CRASHES else 1


def _judge(
    task: TaskPlan,
    future: Future[Any] | None,
    refused: BaseException | None,
    runs: int,
    *,
    retries: int,
    cancel_asked: bool,
    strict: bool,
) -> str | None:
    """None if the future's outcome is exactly right; else what went wrong."""
    if future is None:
        return f"submit() refused it: {refused!r}"
    if not future.done():
        return "still pending: hung"
    if future.cancelled():
        if not cancel_asked:
            return "cancelled, though nobody cancelled it"
        return f"cancelled, yet it ran {runs} time(s)" if runs else None
    expected_runs = _expected_runs(task, retries)
    if runs != expected_runs:
        outcome = future.exception() or future.result()
        return f"ran {runs} time(s), expected {expected_runs}; outcome {outcome!r:.200}"
    error = future.exception()
    if task.kind in ("value", "large"):
        if error is not None:
            return f"raised {error!r:.200}"
        wanted = expected_value(task.kind, task.index, task.payload)
        return (
            None if future.result() == wanted else f"returned {future.result()!r:.200}"
        )
    if error is None:
        return f"returned {future.result()!r:.200}, expected an exception"
    return _judge_error(task, error, retries, strict)


def _judge_error(
    task: TaskPlan, error: BaseException, retries: int, strict: bool
) -> str | None:
    if task.kind == "raise":
        ok = type(error) is SoakError and str(error) == f"task {task.index}"
    elif task.kind in CRASHES:
        ok = isinstance(error, BrokenProcessPool)
        if strict:
            ok = (
                isinstance(error, stalwart.WorkerCrashedError)
                and error.signal == CRASHES[task.kind]
                and error.attempts == retries + 1
            )
    elif task.kind == "timeout":
        ok = isinstance(error, stalwart.TaskTimeoutError if strict else TimeoutError)
    elif task.kind == "unpicklable":
        if strict:
            ok = (
                isinstance(error, stalwart.PicklingError)
                and error.path == "result['lock']"
            )
        else:
            ok = isinstance(error, (pickle.PicklingError, TypeError)) and (
                "pickle" in str(error).lower()
            )
    else:
        ok = False
    return None if ok else f"raised {error!r:.300}"


def _count_leaked_processes(children_before: set[int]) -> int:
    """Worker processes still alive once shutdown() returned (allowing 5 s to
    exit); they are killed once counted."""
    deadline = time.monotonic() + 5.0
    while True:
        leaked = _leaks.worker_processes(exclude=children_before)
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for process in leaked:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    return len(leaked)


def _settled_fd_count(before: int) -> int:
    """Open fds once the executor has released its own (allowing 5 s)."""
    deadline = time.monotonic() + 5.0
    while True:
        now = len(_leaks.open_fds())
        if now <= before or time.monotonic() > deadline:
            return now
        time.sleep(0.05)
