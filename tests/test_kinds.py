"""Swap by one word: state, timeouts, recycling and errors behave alike on threads
and processes (each test runs once per ``kind``)."""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Any

import pytest

import stalwart
from tests import _kind_tasks as tasks
from tests._tasks import TIMEOUT
from tests.conftest import open_executor

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(90)


def test_the_initializer_runs_once_per_worker_and_its_state_stays_there(
    kind: str, tmp_path: Path
) -> None:
    log = str(tmp_path / "inits")
    with open_executor(kind, initializer=tasks.init_counter, initargs=(log,)) as ex:
        calls = [ex.submit(tasks.count_call, i).result(TIMEOUT) for i in range(30)]
    per_worker: dict[str, list[int]] = collections.defaultdict(list)
    for worker, state_built_in, count in calls:
        assert worker == state_built_in, "a task saw another worker's state"
        per_worker[worker].append(count)
    for counts in per_worker.values():
        assert counts == list(range(1, len(counts) + 1))
    assert len(tasks.ran(log)) == len(per_worker)


@pytest.mark.not_on_dask(
    "dask starts and recycles its workers; max_tasks_per_child has no effect"
)
def test_max_tasks_per_child_replaces_the_worker_and_reruns_the_initializer(
    kind: str, tmp_path: Path
) -> None:
    log = str(tmp_path / "inits")
    with open_executor(
        kind,
        max_workers=1,
        initializer=tasks.init_counter,
        initargs=(log,),
        max_tasks_per_child=2,
    ) as ex:
        counts = [ex.submit(tasks.count_call, i).result(TIMEOUT)[2] for i in range(6)]
    assert counts == [1, 2, 1, 2, 1, 2]
    assert len(tasks.ran(log)) == 3


def test_a_task_past_its_timeout_fails_on_time_and_capacity_holds(
    kind: str, manager: Any
) -> None:
    gate = manager.Event()
    try:
        with open_executor(kind, max_workers=1, task_timeout=0.5) as ex:
            stuck = ex.submit(tasks.wait_for, gate, 1)
            after = ex.submit(tasks.square, 3)
            started = time.monotonic()
            with pytest.raises(stalwart.TaskTimeoutError) as caught:
                stuck.result(TIMEOUT)
            assert time.monotonic() - started < 0.5 + 10
            assert isinstance(caught.value, TimeoutError)
            # The only worker was stuck: a replacement ran the next task.
            assert after.result(TIMEOUT) == 9
    finally:
        gate.set()  # a thread cannot be killed: let the abandoned one finish


def test_a_task_exception_comes_back_as_itself(kind: str) -> None:
    with open_executor(kind) as ex:
        future = ex.submit(tasks.fail_on, 4, 4)
        with pytest.raises(ValueError, match="item 4 is bad"):
            future.result(TIMEOUT)


def test_an_unpicklable_argument_is_refused_at_submit(kind: str) -> None:
    import threading

    with open_executor(kind) as ex:
        with pytest.raises(stalwart.PicklingError, match="RLock") as caught:
            ex.submit(tasks.square, {"lock": threading.RLock()})
    assert caught.value.path == "args[0]['lock']"
