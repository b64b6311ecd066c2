"""Drop-in behaviour: code written for concurrent.futures runs unchanged."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import gc
import multiprocessing
import os
import threading
import time
from typing import Any

import loky
import pytest

import stalwart
from tests import _tasks
from tests._tasks import TIMEOUT


def test_submit_returns_a_stdlib_future() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        future = ex.submit(_tasks.add, 2, b=3)
        assert isinstance(future, cf.Future)
        assert future.result(timeout=TIMEOUT) == 5


def test_map_returns_results_in_input_order_for_every_chunksize() -> None:
    expected = [x + x for x in range(103)]
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        for chunksize in (1, 7, 200):
            got = ex.map(_tasks.add, range(103), range(103), chunksize=chunksize)
            assert list(got) == expected


def test_map_rejects_a_chunksize_below_one() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        with pytest.raises(ValueError, match="chunksize"):
            ex.map(_tasks.echo, [1], chunksize=0)


def test_map_timeout_raises_timeout_error(manager: Any) -> None:
    started, gate = manager.Event(), manager.Event()
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        results = ex.map(_tasks.block_until, [started], [gate], ["late"], timeout=0.2)
        with pytest.raises(cf.TimeoutError):
            next(results)
        gate.set()


def test_map_raises_the_first_failing_items_exception_in_order() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        results = ex.map(_tasks.raise_value_error, ["first", "second"])
        with pytest.raises(ValueError, match="first"):
            next(results)


def test_as_completed_and_wait_see_every_future() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        futures = [ex.submit(_tasks.echo, i) for i in range(50)]
        done = {f.result() for f in cf.as_completed(futures, timeout=TIMEOUT)}
        assert done == set(range(50))
        finished, not_done = cf.wait(futures, timeout=TIMEOUT)
        assert len(finished) == 50
        assert not not_done


def test_asyncio_run_in_executor_awaits_results() -> None:
    async def main(ex: stalwart.ProcessPoolExecutor) -> list[int]:
        loop = asyncio.get_running_loop()
        calls = [loop.run_in_executor(ex, _tasks.add, i, 1) for i in range(10)]
        return await asyncio.wait_for(asyncio.gather(*calls), TIMEOUT)

    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        assert asyncio.run(main(ex)) == list(range(1, 11))


def test_lambdas_closures_and_local_functions_run_in_workers() -> None:
    factor = 3

    def local(x: int) -> int:
        return x * factor

    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        assert ex.submit(lambda x: x + 1, 1).result(timeout=TIMEOUT) == 2
        assert ex.submit(local, 5).result(timeout=TIMEOUT) == 15
        assert list(ex.map(lambda x: -x, [1, 2])) == [-1, -2]


def test_ten_thousand_tiny_tasks_are_all_delivered_once() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        futures = [ex.submit(_tasks.add, i, 1) for i in range(10_000)]
        results = [f.result(timeout=TIMEOUT) for f in futures]
    assert results == list(range(1, 10_001))


def test_large_arguments_and_results_cross_intact() -> None:
    blob = os.urandom(1 << 20) * 40  # 40 MB: far beyond any pipe buffer
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        futures = [ex.submit(_tasks.echo, blob) for _ in range(3)]
        assert all(f.result(timeout=TIMEOUT) == blob for f in futures)


def test_a_done_callback_may_submit_more_work() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        chained: cf.Future[cf.Future[int]] = cf.Future()

        def submit_next(done: cf.Future[int]) -> None:
            chained.set_result(ex.submit(_tasks.add, done.result(), 1))

        ex.submit(_tasks.echo, 41).add_done_callback(submit_next)
        assert chained.result(timeout=TIMEOUT).result(timeout=TIMEOUT) == 42


# -- max_workers ------------------------------------------------------------------


def test_one_worker_runs_everything_in_one_process() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        pids = {
            f.result(timeout=TIMEOUT)
            for f in [ex.submit(_tasks.pid) for _ in range(20)]
        }
    assert len(pids) == 1
    assert os.getpid() not in pids


def test_minus_one_means_every_usable_cpu(manager: Any) -> None:
    cpus = loky.cpu_count()
    barrier = manager.Barrier(cpus, timeout=TIMEOUT)
    with stalwart.ProcessPoolExecutor(max_workers=-1) as ex:
        # cpus tasks that each wait for all the others: only cpus workers pass.
        futures = [ex.submit(_tasks.pid_after_barrier, barrier) for _ in range(cpus)]
        pids = {f.result(timeout=TIMEOUT) for f in futures}
    assert len(pids) == cpus


def test_max_workers_zero_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="max_workers must be None, a positive int"):
        stalwart.ProcessPoolExecutor(max_workers=0)


def test_a_negative_max_workers_never_gives_fewer_than_one_worker() -> None:
    """joblib's rule: -2 on a single CPU is one worker, not an error."""
    with stalwart.ProcessPoolExecutor(max_workers=-(os.cpu_count() or 1) - 100) as ex:
        assert ex.submit(_tasks.pid).result(timeout=TIMEOUT) > 0
        assert ex._max_workers == 1


def test_max_workers_of_the_wrong_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="max_workers"):
        stalwart.ProcessPoolExecutor(max_workers="4")  # type: ignore[arg-type]


# -- start methods -------------------------------------------------------------------


@pytest.mark.parametrize(
    "mp_context", ["loky", "loky_init_main", "spawn", "forkserver", "fork"]
)
def test_mp_context_accepts_a_start_method_name(mp_context: str) -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1, mp_context=mp_context) as ex:
        assert ex.submit(_tasks.add, 1, 1).result(timeout=TIMEOUT) == 2
        assert ex.submit(lambda: 7).result(timeout=TIMEOUT) == 7


def test_mp_context_accepts_a_context_object() -> None:
    context = multiprocessing.get_context("spawn")
    with stalwart.ProcessPoolExecutor(max_workers=1, mp_context=context) as ex:
        assert ex.submit(_tasks.add, 1, 1).result(timeout=TIMEOUT) == 2


def test_an_unknown_start_method_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"start methods.*spawn"):
        stalwart.ProcessPoolExecutor(mp_context="teleport")


def test_default_workers_are_fresh_interpreters_not_forks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default never plain-forks: parent memory (and CUDA state) is not inherited."""
    monkeypatch.setattr(_tasks, "_initialized_pid", -1)
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        assert ex.submit(_tasks.read_initialized_pid).result(timeout=TIMEOUT) is None


# -- shutdown -------------------------------------------------------------------------


def test_submit_after_shutdown_raises_runtime_error() -> None:
    ex = stalwart.ProcessPoolExecutor(max_workers=1)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(_tasks.echo, 1)


def test_shutdown_without_wait_still_completes_submitted_work() -> None:
    ex = stalwart.ProcessPoolExecutor(max_workers=2)
    futures = [ex.submit(_tasks.add, i, i) for i in range(100)]
    ex.shutdown(wait=False)
    assert [f.result(timeout=TIMEOUT) for f in futures] == [2 * i for i in range(100)]


def test_cancel_futures_spares_the_running_task(manager: Any) -> None:
    started, gate = manager.Event(), manager.Event()
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        running = ex.submit(_tasks.block_until, started, gate, "ran")
        queued = [ex.submit(_tasks.echo, i) for i in range(8)]
        assert started.wait(TIMEOUT)  # the only worker is busy now
        ex.shutdown(wait=False, cancel_futures=True)
        gate.set()
        assert running.result(timeout=TIMEOUT) == "ran"
    assert all(f.cancelled() for f in queued)


def test_cancel_before_dispatch_prevents_the_run(manager: Any) -> None:
    started, gate = manager.Event(), manager.Event()
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        ex.submit(_tasks.block_until, started, gate, None)
        queued = ex.submit(_tasks.echo, "never")
        assert started.wait(TIMEOUT)
        assert queued.cancel()
        gate.set()
    assert queued.cancelled()


def test_dropped_executor_finishes_its_work_and_stops() -> None:
    ex = stalwart.ProcessPoolExecutor(max_workers=1)
    future = ex.submit(_tasks.add, 20, 22)
    del ex
    gc.collect()
    assert future.result(timeout=TIMEOUT) == 42
    # the autouse leak check then proves the worker and the I/O thread ended


def test_shutdown_from_a_done_callback_does_not_deadlock() -> None:
    ex = stalwart.ProcessPoolExecutor(max_workers=1)
    stopped = threading.Event()

    def stop(_: cf.Future[Any]) -> None:
        ex.shutdown(wait=True)  # runs on the executor's own I/O thread
        stopped.set()

    ex.submit(_tasks.echo, 1).add_done_callback(stop)
    assert stopped.wait(TIMEOUT)
    ex.shutdown()


def test_star_import_swap_exposes_the_stdlib_helpers() -> None:
    for name in ("wait", "FIRST_COMPLETED", "ALL_COMPLETED", "Future"):
        assert getattr(stalwart, name) is getattr(cf, name)
    # stalwart.as_completed is the stdlib's plus progress=; same signature otherwise.
    assert callable(stalwart.as_completed)


def test_work_from_a_slow_producer_is_spread_over_the_workers() -> None:
    """Tasks that trickle in one by one go to the least loaded worker, not the first."""
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        list(ex.map(abs, range(4)))  # measured task time: tiny, so depth is high
        futures = []
        for _ in range(100):
            futures.append(ex.submit(_tasks.nap_then_pid, 0.02))
            time.sleep(1e-5)  # the producer's own pace (the workload, not a wait)
        per_worker = collections.Counter(f.result(timeout=TIMEOUT) for f in futures)
    assert min(per_worker.values()) >= 25, per_worker


def test_wait_sees_a_cancelled_future_that_never_reached_a_worker(manager: Any) -> None:
    """cf.wait() counts a cancelled future as done only once the executor has
    acknowledged it (set_running_or_notify_cancel); a dropped one hangs wait()."""
    started, gate = manager.Event(), manager.Event()
    ex = stalwart.ProcessPoolExecutor(max_workers=1, max_tasks_per_child=1)
    running = ex.submit(_tasks.block_until, started, gate, "ran")
    queued = ex.submit(_tasks.echo, "never")
    assert started.wait(TIMEOUT)
    assert queued.cancel()
    ex.shutdown(wait=False)
    gate.set()
    _, not_done = cf.wait([running, queued], timeout=TIMEOUT)
    assert not not_done, "wait() never saw the cancelled future as done"
    assert running.result() == "ran"
    assert queued.cancelled()
    ex.shutdown(wait=True)


def test_tasks_do_not_queue_behind_a_long_running_one(manager: Any) -> None:
    """A worker busy with a long task is sent nothing more: whatever waited behind
    it would wait for all of it, while the other worker runs everything."""
    started, gate = manager.Event(), manager.Event()
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        list(ex.map(abs, range(200)))  # measured task time: tiny, so depth is high
        long = ex.submit(_tasks.block_until, started, gate, "long")
        assert started.wait(TIMEOUT)
        # The dispatcher can only judge a task long by how long it has run so far
        # (a few ms here): this is the precondition, not a synchronisation.
        running_since = time.monotonic()
        assert stalwart.wait([long], timeout=0.05).not_done
        assert time.monotonic() - running_since >= 0.05
        tiny = [ex.submit(abs, -i) for i in range(500)]
        _, not_done = cf.wait(tiny, timeout=TIMEOUT)
        gate.set()
        assert not not_done, f"{len(not_done)} tasks waited behind the long one"
        assert long.result(timeout=TIMEOUT) == "long"
