"""Contract 10: a task's exception arrives with the worker's traceback."""

from __future__ import annotations

from concurrent.futures.process import _RemoteTraceback

import pytest

import stalwart
from tests import _tasks
from tests._tasks import TIMEOUT


def test_exception_carries_the_worker_traceback_as_its_cause() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        with pytest.raises(ValueError, match="boom") as info:
            ex.submit(_tasks.raise_value_error, "boom").result(timeout=TIMEOUT)
    cause = info.value.__cause__
    assert isinstance(cause, _RemoteTraceback)  # the stdlib's own type
    assert "raise ValueError(message)" in str(cause)


def test_unpicklable_exception_arrives_as_remote_error() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        with pytest.raises(stalwart.RemoteError) as info:
            ex.submit(_tasks.raise_unpicklable_error).result(timeout=TIMEOUT)
    error = info.value
    assert error.type_name == "tests._tasks.UnpicklableError"
    assert error.message == "carries a lock"
    assert "raise UnpicklableError" in error.remote_traceback
    assert "UnpicklableError: carries a lock" in str(error)


def test_exception_that_cannot_be_rebuilt_arrives_as_remote_error() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        with pytest.raises(stalwart.RemoteError) as info:
            ex.submit(_tasks.raise_needs_two_args).result(timeout=TIMEOUT)
    assert info.value.type_name == "tests._tasks.NeedsTwoArgsError"
    assert info.value.message == "first second"


def test_the_worker_survives_a_raising_task() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        pid = ex.submit(_tasks.pid).result(timeout=TIMEOUT)
        with pytest.raises(ValueError, match="x"):
            ex.submit(_tasks.raise_value_error, "x").result(timeout=TIMEOUT)
        assert ex.submit(_tasks.pid).result(timeout=TIMEOUT) == pid


class _FailsToUnpickle:
    def __reduce__(self) -> tuple[object, ...]:
        return (_tasks.raise_value_error, ("cannot rebuild me",))


def return_fails_to_unpickle() -> _FailsToUnpickle:
    return _FailsToUnpickle()


def test_a_result_that_cannot_be_unpickled_fails_only_that_task() -> None:
    from concurrent.futures.process import BrokenProcessPool

    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        with pytest.raises(BrokenProcessPool, match="could not be unpickled") as info:
            ex.submit(return_fails_to_unpickle).result(timeout=TIMEOUT)
        assert "cannot rebuild me" in str(info.value.__cause__)
        assert (
            ex.submit(_tasks.echo, "still fine").result(timeout=TIMEOUT) == "still fine"
        )
