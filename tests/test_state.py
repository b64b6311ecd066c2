"""Contract 5 and 7: initializer-held state, initializer failures, recycling."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import stalwart
from tests import _tasks
from tests._tasks import TIMEOUT


def test_worker_state_is_what_the_initializer_returned() -> None:
    with stalwart.ProcessPoolExecutor(
        max_workers=1, initializer=_tasks.init_model, initargs=("resnet",)
    ) as ex:
        name, model_pid, doubled = ex.submit(_tasks.use_model, 21).result(
            timeout=TIMEOUT
        )
        assert (name, doubled) == ("resnet", 42)
        assert model_pid == ex.submit(_tasks.pid).result(timeout=TIMEOUT)


def test_the_initializer_runs_once_per_worker_and_state_persists(
    tmp_path: Path,
) -> None:
    log = tmp_path / "init.log"
    with stalwart.ProcessPoolExecutor(
        max_workers=1, initializer=_tasks.init_model, initargs=("m",)
    ) as ex:
        for i in range(10):
            ex.submit(_tasks.use_model, i).result(timeout=TIMEOUT)
        assert ex.submit(_tasks.state_calls).result(timeout=TIMEOUT) == 10
    with stalwart.ProcessPoolExecutor(
        max_workers=2, initializer=_tasks.init_count, initargs=(str(log),)
    ) as ex:
        list(ex.map(_tasks.echo, range(200)))
        started = log.read_text().split()
    assert 1 <= len(started) <= 2
    assert len(set(started)) == len(started)


def test_worker_state_is_none_without_an_initializer() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        assert ex.submit(_tasks.get_worker_state).result(timeout=TIMEOUT) is None


def test_worker_state_outside_a_worker_explains_itself() -> None:
    with pytest.raises(RuntimeError, match="only works inside a task"):
        stalwart.worker_state()


def test_a_failing_initializer_breaks_the_executor_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ex = stalwart.ProcessPoolExecutor(
        max_workers=1, initializer=_tasks.init_fail, initargs=("no GPU found",)
    )
    with caplog.at_level(logging.WARNING, logger="stalwart"):
        future = ex.submit(_tasks.echo, 1)
        with pytest.raises(stalwart.InitializerError) as info:
            future.result(timeout=TIMEOUT)
    error = info.value
    assert "OSError: no GPU found" in str(error)
    assert "3 workers in a row" in str(error)
    assert "raise OSError(message)" in error.remote_traceback
    assert "no GPU found" in str(error.__cause__)
    with pytest.raises(stalwart.InitializerError):
        ex.submit(_tasks.echo, 2)
    ex.shutdown()


def test_a_failing_initializer_is_no_fork_storm_and_fails_every_pending_future(
    tmp_path: Path,
) -> None:
    attempts_log = tmp_path / "attempts.log"
    with stalwart.ProcessPoolExecutor(
        max_workers=4,
        initializer=_tasks.init_log_then_fail,
        initargs=(str(attempts_log),),
    ) as ex:
        futures = [ex.submit(_tasks.echo, i) for i in range(50)]
        errors = [f.exception(timeout=TIMEOUT) for f in futures]
    assert all(isinstance(e, stalwart.InitializerError) for e in errors), errors
    # Up to max_workers may be starting at the moment the third failure lands;
    # none is started after it.
    attempts = len(attempts_log.read_text().splitlines())
    assert 3 <= attempts <= 3 + 4 - 1, attempts


def test_initializer_error_is_a_broken_process_pool() -> None:
    from concurrent.futures.process import BrokenProcessPool

    assert issubclass(stalwart.InitializerError, BrokenProcessPool)


def test_max_tasks_per_child_recycles_and_reruns_the_initializer(
    tmp_path: Path,
) -> None:
    log = tmp_path / "init.log"
    with stalwart.ProcessPoolExecutor(
        max_workers=1,
        initializer=_tasks.init_count,
        initargs=(str(log),),
        max_tasks_per_child=2,
    ) as ex:
        pids = [ex.submit(_tasks.pid).result(timeout=TIMEOUT) for _ in range(6)]
    assert len(set(pids)) == 3
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5]
    assert log.read_text().split() == [str(p) for p in dict.fromkeys(pids)]


def test_max_tasks_per_child_loses_no_task_under_load() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=2, max_tasks_per_child=40) as ex:
        assert list(ex.map(_tasks.add, range(300), range(300))) == [
            2 * i for i in range(300)
        ]


@pytest.mark.parametrize("bad", [0, -1])
def test_max_tasks_per_child_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        stalwart.ProcessPoolExecutor(max_tasks_per_child=bad)
