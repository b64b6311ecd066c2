"""Contract 2: an unpicklable call is refused by submit()/map(), naming the culprit."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import stalwart
from tests import _tasks
from tests._tasks import TIMEOUT


class Model:
    def __init__(self) -> None:
        self._lock = threading.RLock()


class Validator:
    def __init__(self, model: Model) -> None:
        self.model = model


def run_model(validator: Validator) -> str:
    return "ran"


def test_rlock_deep_in_an_argument_fails_at_submit_with_its_path() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        with pytest.raises(stalwart.PicklingError) as info:
            ex.submit(run_model, Validator(Model()))
    error = info.value
    assert error.path == "args[0].model._lock"
    assert error.unpicklable_type is type(threading.RLock())
    assert "cannot send submit(run_model" in str(error)
    assert "_thread.RLock" in str(error)
    assert "stalwart.worker_state()" in str(error)
    assert "stalwart.ThreadPoolExecutor" in str(error)


def test_pickling_error_is_the_stdlib_pickling_error() -> None:
    import pickle

    assert issubclass(stalwart.PicklingError, pickle.PicklingError)


def test_map_refuses_an_unpicklable_item_and_runs_none_of_the_map() -> None:
    items: list[Any] = [1, 2, threading.Lock(), 4]
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        with pytest.raises(
            stalwart.PicklingError, match="cannot send item 2 of map"
        ) as info:
            ex.map(_tasks.echo, items)
        assert info.value.path == "args[0]"
        assert ex.submit(_tasks.echo, "still usable").result(timeout=TIMEOUT)


def test_unpicklable_initargs_fail_at_construction() -> None:
    with pytest.raises(stalwart.PicklingError, match="initializer"):
        stalwart.ProcessPoolExecutor(
            max_workers=1, initializer=_tasks.echo, initargs=(threading.Lock(),)
        )


def test_an_unpicklable_result_fails_only_that_task() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        bad = ex.submit(_tasks.return_lock)
        with pytest.raises(stalwart.PicklingError) as info:
            bad.result(timeout=TIMEOUT)
        assert info.value.path == "result['lock']"
        assert "cannot send the result of return_lock" in str(info.value)
        pid_before = ex.submit(_tasks.pid).result(timeout=TIMEOUT)
        assert ex.submit(_tasks.pid).result(timeout=TIMEOUT) == pid_before


def test_a_result_that_needs_cloudpickle_arrives() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        increment = ex.submit(_tasks.return_lambda).result(timeout=TIMEOUT)
    assert increment(1) == 2


def test_with_many_large_calls_queued_the_check_still_happens_at_submit(
    manager: Any,
) -> None:
    """Past a budget of queued pickled bytes, calls are checked in submit() but
    pickled when sent (memory stays bounded): the contract must not change."""
    started, gate = manager.Event(), manager.Event()
    blob = bytes(range(256)) * 4096  # 1 MiB
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        blocker = ex.submit(_tasks.block_until, started, gate, "blocker")
        assert started.wait(TIMEOUT)  # nothing below starts before the gate opens
        queued = [ex.submit(_tasks.echo, blob + bytes([i])) for i in range(100)]
        with pytest.raises(stalwart.PicklingError) as info:
            ex.submit(run_model, Validator(Model()))
        assert info.value.path == "args[0].model._lock"
        local = 7
        closure = ex.submit(lambda: local * 6)  # the by-value path, checked too
        gate.set()
        assert blocker.result(TIMEOUT) == "blocker"
        assert all(f.result(TIMEOUT) == blob + bytes([i]) for i, f in enumerate(queued))
        assert closure.result(TIMEOUT) == 42
