"""The dispatch policy on its own, with fake workers and a fake clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from stalwart import _scheduler
from stalwart._scheduler import (
    IDLE_RESTART_S,
    MAX_DEPTH,
    TARGET_BACKLOG_S,
    depth,
    plan,
    room,
)

pytestmark = pytest.mark.timeout(10)


@dataclass(eq=False)
class FakeWorker:
    """What the scheduler reads of a worker; each field set by the test."""

    accepting: bool = True
    starting: bool = False
    in_flight_count: int = 0
    unstarted_count: int = 0
    running_since: float | None = None
    window: int = MAX_DEPTH
    idle_since: float = 0.0
    tasks_left: int | None = None
    unacknowledged_bytes: int = 0
    capacity: int = 1024


def busy(unstarted: int, running_since: float = 0.0, **fields: object) -> FakeWorker:
    """A worker running one call (since `running_since`) with a backlog."""
    return FakeWorker(
        in_flight_count=unstarted + 1,
        unstarted_count=unstarted,
        running_since=running_since,
        **fields,  # type: ignore[arg-type]
    )


def test_unknown_task_time_sends_one_call_at_a_time() -> None:
    assert depth(None) == 1


def test_tiny_tasks_travel_in_batches_bounded_by_max_depth() -> None:
    assert depth(1e-6) == MAX_DEPTH
    assert 5 < depth(TARGET_BACKLOG_S / 10) <= 10


def test_long_tasks_go_one_per_worker() -> None:
    assert depth(1.0) == 1


def test_pending_calls_are_spread_evenly_over_idle_workers() -> None:
    workers = [FakeWorker(), FakeWorker()]
    decided = plan(workers, pending=100, avg_busy_s=1e-6, now=0.0)
    assert sorted(count for _, count, _ in decided.sends) == [50, 50]


def test_idle_workers_are_served_before_busy_ones() -> None:
    idle, loaded = FakeWorker(), busy(3, running_since=0.0)
    decided = plan([loaded, idle], pending=1, avg_busy_s=1e-4, now=0.0)
    assert [worker for worker, _, _ in decided.sends] == [idle]


def test_a_worker_idle_for_a_while_starts_again_from_one_call() -> None:
    worker = FakeWorker(window=64, idle_since=0.0)
    assert room(worker, avg_busy_s=1e-6, now=IDLE_RESTART_S * 2) == 1
    assert room(worker, avg_busy_s=1e-6, now=IDLE_RESTART_S / 2) == 64


def test_a_starting_worker_gets_one_reserved_call() -> None:
    starting = FakeWorker(accepting=False, starting=True)
    assert room(starting, avg_busy_s=None, now=0.0) == 1
    starting.in_flight_count = 1
    assert room(starting, avg_busy_s=None, now=0.0) == 0


def test_nothing_is_queued_behind_a_call_that_runs_long() -> None:
    # Average 1 ms; a call running for a second is far past STALLED_FACTOR.
    stalled = busy(0, running_since=0.0, window=8)
    assert room(stalled, avg_busy_s=0.001, now=1.0) == 0
    assert room(stalled, avg_busy_s=0.001, now=0.001) > 0


def test_a_worker_is_never_sent_more_than_its_task_budget_or_ring() -> None:
    assert room(FakeWorker(tasks_left=2), avg_busy_s=1e-6, now=0.0) == 2
    assert room(FakeWorker(capacity=3), avg_busy_s=1e-6, now=0.0) == 3


def test_a_stopping_or_killed_worker_gets_nothing() -> None:
    assert room(FakeWorker(accepting=False), avg_busy_s=1e-6, now=0.0) == 0


def test_tiny_tasks_then_long_ones_do_not_leave_a_worker_idle() -> None:
    """Depth learnt on tiny tasks put ten long calls behind a 3 s one; the idle
    worker takes back the backlog (defect 5: work hoarded)."""
    hoarder = busy(10, running_since=0.0)
    idle = FakeWorker()
    # Long calls measured meanwhile: 0.25 s each on average.
    decided = plan([hoarder, idle], pending=0, avg_busy_s=0.25, now=2.5)
    assert decided.steals == [(hoarder, 10)]  # stalled: all of its backlog


def test_an_idle_worker_takes_half_of_a_long_backlog() -> None:
    worker = busy(6, running_since=0.0)
    decided = plan([worker, FakeWorker()], pending=0, avg_busy_s=0.25, now=0.1)
    assert decided.steals == [(worker, 3)]


def test_a_backlog_of_tiny_tasks_is_not_worth_taking_back() -> None:
    # 200 calls of 10 us: 2 ms of work, less than TARGET_BACKLOG_S.
    worker = busy(200, running_since=0.0)
    decided = plan([worker, FakeWorker()], pending=0, avg_busy_s=1e-5, now=0.0001)
    assert decided.steals == []


def test_the_call_reserved_for_a_starting_worker_goes_to_an_idle_one() -> None:
    starting = FakeWorker(
        accepting=False, starting=True, in_flight_count=1, unstarted_count=1
    )
    decided = plan([starting, FakeWorker()], pending=0, avg_busy_s=None, now=0.0)
    assert decided.steals == [(starting, 1)]


def test_no_stealing_while_pending_calls_keep_idle_workers_busy() -> None:
    worker = busy(6, running_since=0.0)
    decided = plan([worker, FakeWorker()], pending=5, avg_busy_s=0.25, now=10.0)
    assert decided.steals == []


def test_one_steal_per_idle_worker_from_the_largest_backlogs() -> None:
    small, large = busy(4, running_since=9.99), busy(40, running_since=9.99)
    thief = FakeWorker()
    decided = plan([small, large, thief], pending=0, avg_busy_s=0.01, now=10.0)
    assert decided.steals == [(large, 20)]


def test_the_stall_threshold_grows_with_the_task_time() -> None:
    assert _scheduler.stalled_after_s(None) == TARGET_BACKLOG_S
    assert _scheduler.stalled_after_s(1.0) == _scheduler.STALLED_FACTOR
