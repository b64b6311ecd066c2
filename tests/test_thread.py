"""stalwart.ThreadPoolExecutor: the stdlib thread pool, plus stalwart's options."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from concurrent.futures.thread import BrokenThreadPool
from typing import Any

import pytest

import stalwart
from stalwart import _options
from tests import _tasks
from tests._tasks import TIMEOUT
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)


def thread_name() -> str:
    return threading.current_thread().name


def name_after(gate: threading.Event, started: list[str]) -> str:
    """Record which thread runs this, then wait for the test to open `gate`."""
    started.append(thread_name())
    if not gate.wait(TIMEOUT):
        raise TimeoutError("test gate never opened")
    return thread_name()


def wait_then_finish(gate: threading.Event, finished: threading.Event) -> str:
    """A task stuck until the test opens `gate`; says when it really returned."""
    try:
        gate.wait(TIMEOUT)
        return "late result"
    finally:
        finished.set()


class CountingInitializer:
    """An initializer whose every run returns a new state object."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, label: str = "state") -> dict[str, Any]:
        with self._lock:
            state = {"label": label, "run": len(self.runs), "thread": thread_name()}
            self.runs.append(state)
        return state


def state_run() -> int:
    run: int = stalwart.worker_state()["run"]
    return run


def distinct_threads_used(ex: concurrent.futures.Executor, expected: int) -> int:
    """Saturate `ex` with blocked tasks; return how many threads ran them.

    Waits until `expected` tasks run at once, then lets them all finish: a pool
    that never runs more than `expected` threads reports exactly that.
    """
    gate = threading.Event()
    started: list[str] = []
    try:
        futures = [ex.submit(name_after, gate, started) for _ in range(3 * expected)]
        wait_until(lambda: len(started) >= expected, f"{expected} tasks to run at once")
    finally:
        gate.set()
    return len({f.result(timeout=TIMEOUT) for f in futures})


# -- drop-in ---------------------------------------------------------------------


def test_is_a_stdlib_thread_pool_with_the_same_surface() -> None:
    with stalwart.ThreadPoolExecutor(max_workers=2) as ex:
        assert isinstance(ex, concurrent.futures.ThreadPoolExecutor)
        future = ex.submit(_tasks.add, 2, b=3)
        assert isinstance(future, concurrent.futures.Future)
        assert future.result(timeout=TIMEOUT) == 5
        futures = [ex.submit(pow, 2, i) for i in range(10)]
        done = {f.result() for f in concurrent.futures.as_completed(futures, TIMEOUT)}
        assert done == {2**i for i in range(10)}
        assert list(ex.map(pow, range(5), range(5))) == [1, 1, 4, 27, 256]
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(pow, 2, 2)


def test_a_task_exception_is_raised_by_result() -> None:
    with stalwart.ThreadPoolExecutor(max_workers=1) as ex:
        future = ex.submit(_tasks.raise_value_error, "bad input")
        with pytest.raises(ValueError, match="bad input"):
            future.result(timeout=TIMEOUT)


def test_no_reference_to_a_finished_call_is_kept() -> None:
    class Payload:
        def method(self) -> None:
            pass

    collected = threading.Event()
    with stalwart.ThreadPoolExecutor(max_workers=1) as ex:
        payload = Payload()
        watcher = weakref.ref(payload, lambda _: collected.set())
        ex.submit(payload.method)  # the future is dropped at once
        del payload
        assert collected.wait(TIMEOUT), "the executor kept the call alive"
        assert watcher() is None


def test_default_max_workers_is_the_stdlib_thread_default() -> None:
    expected = min(32, _options.usable_cpu_count() + 4)
    with stalwart.ThreadPoolExecutor() as ex:
        assert distinct_threads_used(ex, expected) == expected


def test_negative_max_workers_counts_back_from_the_cpu_count() -> None:
    cpus = _options.usable_cpu_count()
    with stalwart.ThreadPoolExecutor(max_workers=-1) as ex:
        assert distinct_threads_used(ex, cpus) == cpus


def test_zero_max_workers_is_refused() -> None:
    with pytest.raises(ValueError, match="max_workers"):
        stalwart.ThreadPoolExecutor(max_workers=0)


def test_threads_start_on_demand_and_idle_ones_are_reused() -> None:
    with stalwart.ThreadPoolExecutor(max_workers=8) as ex:
        names = {ex.submit(thread_name).result(timeout=TIMEOUT) for _ in range(20)}
    assert len(names) == 1


def test_thread_names_use_the_prefix() -> None:
    with stalwart.ThreadPoolExecutor(max_workers=1, thread_name_prefix="io") as ex:
        assert ex.submit(thread_name).result(timeout=TIMEOUT) == "io_0"


def test_mp_context_and_retries_are_accepted_and_checked() -> None:
    with stalwart.ThreadPoolExecutor(
        max_workers=1, mp_context="spawn", retries=2
    ) as ex:
        assert ex.submit(pow, 2, 5).result(timeout=TIMEOUT) == 32
    with pytest.raises(ValueError, match="mp_context"):
        stalwart.ThreadPoolExecutor(mp_context="no-such-method")
    with pytest.raises(ValueError, match="retries"):
        stalwart.ThreadPoolExecutor(retries=-1)


def test_asyncio_accepts_it_as_the_default_executor() -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(stalwart.ThreadPoolExecutor(max_workers=2))
        result: int = await loop.run_in_executor(None, pow, 2, 10)
        return result

    assert asyncio.run(main()) == 1024


# -- shutdown --------------------------------------------------------------------


def test_shutdown_waits_for_the_queued_work() -> None:
    ex = stalwart.ThreadPoolExecutor(max_workers=1)
    futures = [ex.submit(_tasks.nap, 0.01, i) for i in range(5)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == list(range(5))


def test_shutdown_cancel_futures_cancels_queued_work_only() -> None:
    gate = threading.Event()
    started: list[str] = []
    ex = stalwart.ThreadPoolExecutor(max_workers=1)
    try:
        running = ex.submit(name_after, gate, started)
        queued = [ex.submit(pow, 2, i) for i in range(3)]
        wait_until(lambda: started, "the first task to start")
        ex.shutdown(wait=False, cancel_futures=True)
        # Cancelled futures count as done for wait() at once, never left pending.
        _, not_done = concurrent.futures.wait(queued, timeout=TIMEOUT)
        assert not not_done
        assert all(f.cancelled() for f in queued)
        assert not running.cancelled()
    finally:
        gate.set()
    assert running.result(timeout=TIMEOUT) == started[0]
    ex.shutdown(wait=True)


def _run_python(script: str) -> subprocess.CompletedProcess[str]:
    """Run `script` in a fresh interpreter, to see what happens at its exit."""
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=True,
    )


def test_interpreter_exit_finishes_queued_work(tmp_path: Any) -> None:
    script = textwrap.dedent(
        """
        import stalwart, time
        ex = stalwart.ThreadPoolExecutor(max_workers=1)
        ex.submit(time.sleep, 0.2)
        ex.submit(print, "queued work ran")
        """
    )
    out = _run_python(script)
    assert out.stdout.strip() == "queued work ran"
    assert not out.stderr


# -- initializer and worker_state ----------------------------------------------------


def test_each_thread_runs_the_initializer_once_and_keeps_its_own_state() -> None:
    init = CountingInitializer()
    barrier = threading.Barrier(3, timeout=TIMEOUT)

    def state_after_barrier() -> tuple[int, str]:
        barrier.wait()
        return id(stalwart.worker_state()), stalwart.worker_state()["thread"]

    with stalwart.ThreadPoolExecutor(
        max_workers=3, initializer=init, initargs=("model",)
    ) as ex:
        seen = [ex.submit(state_after_barrier) for _ in range(3)]
        states = [f.result(timeout=TIMEOUT) for f in seen]
        later = [ex.submit(stalwart.worker_state) for _ in range(30)]
        later_states = {id(f.result(timeout=TIMEOUT)) for f in later}
    assert len(init.runs) == 3
    assert len({state_id for state_id, _ in states}) == 3
    # Each state was built on the thread that uses it.
    assert {thread for _, thread in states} == {run["thread"] for run in init.runs}
    assert later_states <= {id(run) for run in init.runs}
    assert all(run["label"] == "model" for run in init.runs)


def test_worker_state_is_none_without_an_initializer() -> None:
    with stalwart.ThreadPoolExecutor(max_workers=1) as ex:
        assert ex.submit(stalwart.worker_state).result(timeout=TIMEOUT) is None


def test_max_tasks_per_child_replaces_the_thread_and_reruns_the_initializer() -> None:
    init = CountingInitializer()
    with stalwart.ThreadPoolExecutor(
        max_workers=1, initializer=init, max_tasks_per_child=2
    ) as ex:
        runs = [ex.submit(state_run).result(timeout=TIMEOUT) for _ in range(7)]
    assert runs == [0, 0, 1, 1, 2, 2, 3]
    assert len(init.runs) == 4
    assert len({run["thread"] for run in init.runs}) == 4  # a new thread each time


def test_a_failing_initializer_breaks_the_pool_with_a_clear_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = threading.Event()

    def fail_after_gate() -> None:
        gate.wait(TIMEOUT)
        raise OSError("no GPU found")

    ex = stalwart.ThreadPoolExecutor(max_workers=2, initializer=fail_after_gate)
    with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
        futures = [ex.submit(pow, 2, i) for i in range(4)]
        gate.set()
        for future in futures:
            error = future.exception(timeout=TIMEOUT)
            # What stdlib code catches, and what stalwart code catches.
            assert isinstance(error, BrokenThreadPool)
            assert isinstance(error, stalwart.InitializerError)
            assert isinstance(error.__cause__, OSError)
            assert "fail_after_gate" in str(error)
            assert "no GPU found" in error.remote_traceback
        with pytest.raises(BrokenThreadPool, match="initializer"):
            ex.submit(pow, 2, 2)
    ex.shutdown(wait=True)
    assert any("no GPU found" in record.getMessage() for record in caplog.records)
    assert any(record.exc_info for record in caplog.records)


# -- task_timeout ------------------------------------------------------------------


def test_task_timeout_fails_the_future_on_time() -> None:
    gate, finished = threading.Event(), threading.Event()
    ex = stalwart.ThreadPoolExecutor(max_workers=1, task_timeout=0.5)
    try:
        started = time.monotonic()
        future = ex.submit(wait_then_finish, gate, finished)
        with pytest.raises(stalwart.TaskTimeoutError) as caught:
            future.result(timeout=TIMEOUT)
        elapsed = time.monotonic() - started
        assert 0.5 <= elapsed < 0.5 + 5
        assert isinstance(caught.value, TimeoutError)
        assert caught.value.timeout == 0.5
        assert caught.value.pid is None
        assert "wait_then_finish" in (caught.value.task or "")
        assert "abandoned" in str(caught.value)
        assert not finished.is_set()  # it failed on time, not when the task returned
    finally:
        gate.set()
    ex.shutdown(wait=True)


def test_a_timed_out_thread_is_replaced_while_it_is_still_stuck() -> None:
    gate, finished = threading.Event(), threading.Event()
    ex = stalwart.ThreadPoolExecutor(max_workers=1, task_timeout=0.3)
    try:
        stuck = ex.submit(wait_then_finish, gate, finished)
        queued = ex.submit(pow, 2, 8)  # waits behind the stuck task
        assert queued.result(timeout=TIMEOUT) == 256
        assert ex.submit(pow, 3, 3).result(timeout=TIMEOUT) == 27
        assert isinstance(stuck.exception(timeout=0), stalwart.TaskTimeoutError)
        assert not finished.is_set()
        # shutdown() does not wait for an abandoned thread.
        ex.shutdown(wait=True)
        assert not finished.is_set()
    finally:
        gate.set()
    # The stuck call returns at last: its result is discarded.
    assert finished.wait(TIMEOUT)
    assert isinstance(stuck.exception(timeout=0), stalwart.TaskTimeoutError)


def test_task_timeout_counts_from_when_the_task_starts() -> None:
    # Each task needs 0.6 s of a 1 s limit; the second waits 0.6 s in the queue
    # first, and must not have that counted.
    with stalwart.ThreadPoolExecutor(max_workers=1, task_timeout=1.0) as ex:
        futures = [ex.submit(_tasks.nap, 0.6, i) for i in range(2)]
        assert [f.result(timeout=TIMEOUT) for f in futures] == [0, 1]


def test_tasks_without_overrun_are_untouched_by_task_timeout() -> None:
    with stalwart.ThreadPoolExecutor(max_workers=2, task_timeout=5) as ex:
        futures = [ex.submit(pow, 2, i) for i in range(200)]
        assert [f.result(timeout=TIMEOUT) for f in futures] == [
            2**i for i in range(200)
        ]


def test_map_task_timeout_overrides_the_executors() -> None:
    gate, finished = threading.Event(), threading.Event()
    with stalwart.ThreadPoolExecutor(max_workers=2) as ex:
        try:
            results = ex.map(wait_then_finish, [gate], [finished], task_timeout=0.3)
            with pytest.raises(stalwart.TaskTimeoutError):
                next(results)
        finally:
            gate.set()


@pytest.mark.timeout(30)
def test_an_abandoned_thread_does_not_block_interpreter_exit() -> None:
    script = textwrap.dedent(
        """
        import threading, stalwart
        ex = stalwart.ThreadPoolExecutor(max_workers=1, task_timeout=0.2)
        stuck = ex.submit(threading.Event().wait)   # never returns
        print(type(stuck.exception()).__name__, flush=True)
        ex.submit(print, "queued work ran")   # run at exit, by a replacement
        """
    )
    out = _run_python(script)
    assert out.stdout.splitlines() == ["TaskTimeoutError", "queued work ran"]


# -- check_pickle ------------------------------------------------------------------


class Model:
    def __init__(self) -> None:
        self._lock = threading.RLock()


def uses_model(model: Model) -> str:
    with model._lock:
        return "ran"


def test_check_pickle_refuses_an_unpicklable_call_in_submit() -> None:
    with stalwart.ThreadPoolExecutor(max_workers=1, check_pickle=True) as ex:
        with pytest.raises(stalwart.PicklingError) as caught:
            ex.submit(uses_model, Model())
        assert caught.value.path == "args[0]._lock"
        assert "RLock" in str(caught.value)
        with pytest.raises(stalwart.PicklingError, match="map"):
            ex.map(uses_model, [Model()])
        assert ex.submit(pow, 2, 3).result(timeout=TIMEOUT) == 8


def test_without_check_pickle_the_same_call_runs() -> None:
    with stalwart.ThreadPoolExecutor(max_workers=1) as ex:
        assert ex.submit(uses_model, Model()).result(timeout=TIMEOUT) == "ran"
        assert list(ex.map(uses_model, [Model(), Model()])) == ["ran", "ran"]


def test_check_pickle_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="check_pickle"):
        stalwart.ThreadPoolExecutor(check_pickle="yes")  # type: ignore[arg-type]


# -- reuse: whose state a thread carries ------------------------------------------


def echo_state(_: str, value: Any) -> Any:
    """An initializer whose state is its second argument, the very object."""
    return value


def state_after_each_block(token: str, values: list[Any]) -> list[tuple[Any, int]]:
    """One ``reuse=True`` block of one thread per value, in turn, each built with
    ``initargs=(token, value)``; what worker_state() was in each, and how many
    threads it adopted. The threads parked are ended before returning."""
    seen = []
    settings: dict[str, Any] = {
        "max_workers": 1,
        "initializer": echo_state,
        "reuse": True,
        "idle_timeout": TIMEOUT,  # only adoption, never a timeout, decides
    }
    try:
        for value in values:
            with stalwart.ThreadPoolExecutor(initargs=(token, value), **settings) as ex:
                state = ex.submit(stalwart.worker_state).result(timeout=TIMEOUT)
            seen.append((state, ex.stats().workers_reused))
    finally:
        for value in values:  # adopt what is parked and end it: nothing leaks
            stalwart.ThreadPoolExecutor(initargs=(token, value), **settings).shutdown(
                kill_workers=True
            )
    return seen


def test_reuse_gives_equal_but_different_initargs_each_their_own_state(
    tmp_path: Any,
) -> None:
    # 1 == True == 1.0, but an initializer may well build different state from
    # each: none may adopt the thread another one parked.
    seen = state_after_each_block(str(tmp_path), [1, True, 1.0, 1])
    assert [(type(state), reused) for state, reused in seen] == [
        (int, 0),
        (bool, 0),
        (float, 0),
        (int, 1),  # the same initargs again: the first block's thread
    ]


def test_reuse_gives_a_distinct_but_equal_mutable_initarg_its_own_state(
    tmp_path: Any,
) -> None:
    # The thread's state is the list itself: adopting the first block's thread
    # would hand the second block a list it never passed.
    first: list[str] = []
    second: list[str] = []
    seen = state_after_each_block(str(tmp_path), [first, second, first])
    assert [(state is first, reused) for state, reused in seen] == [
        (True, 0),
        (False, 0),
        (True, 1),
    ]
    assert seen[1][0] is second


def test_reuse_knows_an_unpicklable_initarg_by_identity(tmp_path: Any) -> None:
    first, second = threading.Lock(), threading.Lock()
    seen = state_after_each_block(str(tmp_path), [first, second, first])
    assert [(state, reused) for state, reused in seen] == [
        (first, 0),
        (second, 0),
        (first, 1),
    ]


# -- many at once ------------------------------------------------------------------


@pytest.mark.parametrize("max_tasks_per_child", [None, 3])
def test_every_future_resolves_under_load(max_tasks_per_child: int | None) -> None:
    with stalwart.ThreadPoolExecutor(
        max_workers=4, max_tasks_per_child=max_tasks_per_child
    ) as ex:
        futures = [ex.submit(_tasks.add, i, 1) for i in range(2000)]
        for future in itertools.islice(futures, 0, None, 7):
            future.cancel()
        _, not_done = concurrent.futures.wait(futures, timeout=TIMEOUT)
    assert not not_done
    assert all(f.cancelled() or f.result() == i + 1 for i, f in enumerate(futures))
