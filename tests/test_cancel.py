"""cancel() is exact, and nothing waits behind another worker's backlog.

Calls are sent ahead to workers in batches, yet a call that has not started is
as cancellable as one still queued in the parent, and an idle worker takes back
a busy worker's backlog.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import CancelledError, wait
from typing import TYPE_CHECKING

import pytest

import stalwart
from tests import _tasks, _trust_tasks
from tests._tasks import TIMEOUT

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)


def _warm_up(ex: stalwart.ProcessPoolExecutor) -> None:
    """Thousands of tiny calls: the dispatcher learns to send deep batches."""
    assert list(ex.map(_trust_tasks.ident, range(3000))) == list(range(3000))


def _started(directory: Path) -> dict[int, float]:
    return {int(p.name): float(p.read_text()) for p in directory.iterdir()}


def test_a_call_whose_cancel_succeeded_never_runs_and_one_that_failed_did(
    tmp_path: Path,
) -> None:
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        _warm_up(ex)
        futures = [
            ex.submit(_trust_tasks.nap_and_mark, str(tmp_path), i, 0.02)
            for i in range(200)
        ]
        futures[0].result(TIMEOUT)  # the workers are well into their backlogs
        cancelled = {i for i, future in enumerate(futures) if future.cancel()}
        wait(futures, TIMEOUT)
    ran = set(_started(tmp_path))
    assert cancelled, "nothing was cancellable: the backlog was all marked running"
    assert ran.isdisjoint(cancelled)
    assert ran | cancelled == set(range(200))
    for i, future in enumerate(futures):
        assert future.cancelled() == (i in cancelled)


def test_shutdown_cancel_futures_lets_at_most_max_workers_plus_one_escape(
    tmp_path: Path,
) -> None:
    """After a warm-up that taught deep batches, as the stdlib's call queue."""
    workers = 2
    ex = stalwart.ProcessPoolExecutor(max_workers=workers)
    _warm_up(ex)
    futures = [
        ex.submit(_trust_tasks.nap_and_mark, str(tmp_path), i, 0.01)
        for i in range(3000)
    ]
    futures[0].result(TIMEOUT)
    running_before = sum(future.running() for future in futures)
    asked_at = time.time()
    ex.shutdown(wait=True, cancel_futures=True)
    started = _started(tmp_path)
    escaped = [i for i, at in started.items() if at > asked_at]
    assert running_before <= workers
    assert len(escaped) <= workers + 1, escaped
    for i, future in enumerate(futures):
        assert future.cancelled() == (i not in started)
        if not future.cancelled():
            assert future.result(0) == i


def test_running_is_true_only_for_calls_a_worker_has_started(tmp_path: Path) -> None:
    """A call sent ahead in a batch is not running: when running() says True,
    the call has started (its marker is at most a moment younger: the worker
    claims a call just before it unpickles and runs it)."""
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        _warm_up(ex)
        futures = [
            ex.submit(_trust_tasks.nap_and_mark, str(tmp_path), i, 0.01)
            for i in range(300)
        ]
        seen_running: dict[int, float] = {}
        deadline = time.monotonic() + TIMEOUT
        while not futures[-1].done() and time.monotonic() < deadline:
            for i, future in enumerate(futures):
                if i not in seen_running and future.running():
                    seen_running[i] = time.time()
        wait(futures, TIMEOUT)
    started = _started(tmp_path)
    assert seen_running
    late = {
        i: started[i] - at for i, at in seen_running.items() if started[i] > at + 0.1
    }
    assert not late, f"running() long before the call started: {late}"


def test_a_long_task_does_not_hold_the_short_ones_queued_behind_it() -> None:
    """One 3 s call and twenty 0.25 s calls on two warm workers: 4 s of work
    each, ideally. The stdlib takes 4.0 s; before work stealing, 5.5 s."""
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        _warm_up(ex)
        started = time.perf_counter()
        futures = [ex.submit(time.sleep, 3.0)]
        futures += [ex.submit(time.sleep, 0.25) for _ in range(20)]
        wait(futures, TIMEOUT)
        elapsed = time.perf_counter() - started
    assert all(f.exception() is None for f in futures)
    assert elapsed < 4.0 * 1.1, f"took {elapsed:.2f} s; the ideal is 4.0 s"
    assert ex.stats().tasks_rebalanced > 0


def test_cancelled_futures_count_as_done_for_wait_and_as_completed() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        _warm_up(ex)
        futures = [ex.submit(time.sleep, 0.05) for _ in range(50)]
        for future in futures[5:]:
            future.cancel()
        not_done = wait(futures, TIMEOUT).not_done
        assert not not_done
        for future in futures[5:]:
            if future.cancelled():
                with pytest.raises(CancelledError):
                    future.result(0)
    assert ex.stats().tasks_cancelled >= 1
    assert os.getpid()  # the parent carries on


def test_cancels_racing_a_workers_answers_lose_no_result() -> None:
    """cancel() revokes calls sent ahead while the worker is answering the
    ones after them: the answer can reach the parent before the revocation
    does, and must still find its call (no result lost, nothing hangs)."""
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        for _ in range(20):
            futures = [ex.submit(_tasks.echo, i) for i in range(2000)]
            futures[0].result(timeout=TIMEOUT)  # a backlog is sent ahead now
            cancelled = {i for i in range(1, 2000, 2) if futures[i].cancel()}
            for i, future in enumerate(futures):
                if i in cancelled:
                    assert future.cancelled()
                else:
                    assert future.result(timeout=TIMEOUT) == i
