"""DaskExecutor against real dask processes: a local cluster the executor starts,
the session's cluster through ``client=``, and a ``dask scheduler`` and ``dask
worker`` started as separate programs and reached by address.

The shared behaviour (map, progress, state, errors) runs on dask through the
``kind`` fixture in test_map.py and test_kinds.py; this module covers what is
dask's own: cluster ownership, worker deaths, timeouts, and the install hint.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import stalwart
from tests import _kind_tasks as tasks
from tests import _tasks
from tests._tasks import TIMEOUT
from tests.conftest import wait_until

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]


def worker_pids(ex: stalwart.DaskExecutor) -> set[int]:
    return set(ex.client.run(os.getpid).values())


def test_without_address_it_starts_a_local_cluster_and_closes_it() -> None:
    with stalwart.DaskExecutor(max_workers=2) as ex:
        assert sorted(ex.map(tasks.square, range(20))) == [x * x for x in range(20)]
        pids = worker_pids(ex)
        assert len(pids) == 2
        assert pids <= {p.pid for p in psutil.Process().children(recursive=True)}
    assert ex.stats().workers_started == 2
    wait_until(lambda: not any(psutil.pid_exists(p) for p in pids), "workers to exit")
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(tasks.square, 1)


def test_a_given_client_is_used_and_left_open(dask_client: Any, tmp_path: Path) -> None:
    with stalwart.DaskExecutor(
        client=dask_client,
        initializer=tasks.init_counter,
        initargs=(str(tmp_path / "i"),),
    ) as ex:
        assert ex.client is dask_client
        assert ex.submit(tasks.square, 4).result(TIMEOUT) == 16
    # The executor's plugin (and the state it held) left the workers; the
    # client and its cluster are the user's, still running.
    plugins = dask_client.run(lambda dask_worker: sorted(dask_worker.plugins))
    assert all(
        not name.startswith("stalwart-") for names in plugins.values() for name in names
    )
    assert dask_client.submit(abs, -3).result(TIMEOUT) == 3


def test_it_reaches_a_scheduler_and_worker_started_by_the_dask_cli(
    tmp_path: Path,
) -> None:
    """As a user with a cluster would: `dask scheduler`, `dask worker`, an address."""
    scheduler_file = tmp_path / "scheduler.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    common = {
        "cwd": REPO,
        "env": env,
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.PIPE,
    }
    scheduler = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--dashboard-address",
            ":0",
            "--scheduler-file",
            str(scheduler_file),
        ],
        **common,  # type: ignore[call-overload]
    )
    worker = None
    try:
        wait_until(
            lambda: scheduler_file.exists() and scheduler_file.stat().st_size,
            "the scheduler file",
        )
        import json

        address = json.loads(scheduler_file.read_text())["address"]
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_worker",
                address,
                "--nworkers",
                "1",
                "--nthreads",
                "1",
                "--no-dashboard",
            ],
            **common,  # type: ignore[call-overload]
        )
        with stalwart.DaskExecutor(
            address, initializer=tasks.init_counter, initargs=(str(tmp_path / "inits"),)
        ) as ex:
            ex.client.wait_for_workers(1, timeout=TIMEOUT)
            calls = list(ex.map(tasks.count_call, range(5)))
            assert [count for _, _, count in calls] == [1, 2, 3, 4, 5]
            with pytest.raises(ValueError, match="item 2 is bad"):
                ex.submit(tasks.fail_on, 2, 2).result(TIMEOUT)
        assert len(tasks.ran(str(tmp_path / "inits"))) == 1
        assert scheduler.poll() is None, "the scheduler is not the executor's to stop"
        assert worker.poll() is None, "nor is the worker"
    finally:
        for process in (worker, scheduler):
            if process is not None:
                process.terminate()
        for process in (worker, scheduler):
            if process is not None:
                try:
                    process.communicate(timeout=TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.communicate()


def test_a_task_that_kills_its_workers_fails_alone_with_worker_crashed_error() -> None:
    with stalwart.DaskExecutor(max_workers=2) as ex:
        victim = ex.submit(_tasks.die, "segv")
        others = [ex.submit(tasks.square, i) for i in range(20)]
        with pytest.raises(stalwart.WorkerCrashedError, match="dask gave up") as caught:
            victim.result(TIMEOUT)
        assert [f.result(TIMEOUT) for f in others] == [i * i for i in range(20)]
        assert ex.submit(tasks.square, 5).result(TIMEOUT) == 25
    assert caught.value.task == "die('segv')"
    assert isinstance(caught.value.__cause__, distributed.KilledWorker)
    assert ex.stats().tasks_crashed == 1


def test_retries_submit_again_a_task_dask_gave_up_on(tmp_path: Path) -> None:
    """dask re-runs a task whose worker died (allowed-failures, 3); past that,
    stalwart's retries submit it once more, which succeeds here."""
    log = str(tmp_path / "runs")
    with stalwart.DaskExecutor(max_workers=2, retries=1) as ex:
        allowed = ex.client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.allowed_failures
        )
        runs = ex.submit(_tasks.die_until, log, allowed + 1).result(TIMEOUT * 2)
    assert runs == allowed + 2
    assert ex.stats().tasks_retried == 1


def test_task_timeout_fails_the_task_on_time_and_stops_it(tmp_path: Path) -> None:
    log = str(tmp_path / "runs")
    with stalwart.DaskExecutor(max_workers=2, task_timeout=1.0) as ex:
        started = time.monotonic()
        stuck = ex.submit(_tasks.log_run_then_hang, log)
        with pytest.raises(
            stalwart.TaskTimeoutError, match="task_timeout of 1 s"
        ) as caught:
            stuck.result(TIMEOUT)
        assert time.monotonic() - started < 1.0 + 10
        # Both workers run tasks again: the stuck one was replaced, not waited for.
        wait_until(lambda: ex.stats().workers_replaced == 1, "the worker's replacement")
        ex.client.wait_for_workers(2, timeout=TIMEOUT)
        assert sorted(ex.map(tasks.square, range(40))) == [i * i for i in range(40)]
    assert caught.value.timeout == 1.0
    assert isinstance(caught.value.pid, int)
    assert not psutil.pid_exists(caught.value.pid)
    assert len(tasks.ran(log)) == 1, "dask ran the timed-out task again"
    assert ex.stats().tasks_timed_out == 1


def test_a_failing_initializer_fails_the_tasks_with_its_traceback() -> None:
    with stalwart.DaskExecutor(
        max_workers=1, initializer=_tasks.init_fail, initargs=("no GPU found",)
    ) as ex:
        for _ in range(2):  # the initializer is not run again for the next task
            with pytest.raises(
                stalwart.InitializerError, match="no GPU found"
            ) as caught:
                ex.submit(tasks.square, 2).result(TIMEOUT)
    assert "init_fail" in caught.value.remote_traceback
    assert "no GPU found" in str(caught.value.__cause__)


def test_a_cancelled_future_is_done_and_its_result_never_delivered(
    dask_client: Any, tmp_path: Path, manager: Any
) -> None:
    """DaskExecutor.cancel() is not exact (its documented limit): dask forwards
    a cancel to its workers asynchronously, so a call cancelled just as a worker
    frees up can still start there. What holds: cancel() succeeds on a queued
    call, wait() counts it done at once, its result is never delivered, and
    the other calls are untouched."""
    log, gate = str(tmp_path / "ran"), manager.Event()
    started = str(tmp_path / "started")
    with stalwart.DaskExecutor(client=dask_client) as ex:
        busy = []
        for i in range(2):  # one at a time: both workers surely run one
            busy.append(ex.submit(tasks.record_then_wait, started, gate, i))
            wait_until(lambda n=i + 1: len(tasks.ran(started)) == n, "a busy call")
        queued = ex.submit(tasks.record, log, 99)
        assert queued.cancel()
        _, not_done = cf.wait([queued], timeout=TIMEOUT)
        assert not not_done, "wait() never saw the cancelled future as done"
        gate.set()
        assert [f.result(TIMEOUT) for f in busy] == [0, 1]
    assert queued.cancelled()
    with pytest.raises(cf.CancelledError):
        queued.result(0)
    assert ex.stats().tasks_cancelled == 1


def test_shutdown_with_cancel_futures_cancels_the_queue(
    dask_client: Any, manager: Any
) -> None:
    gate = manager.Event()
    ex = stalwart.DaskExecutor(client=dask_client)
    busy = [ex.submit(tasks.wait_for, gate, i) for i in range(2)]
    queued = [ex.submit(tasks.square, i) for i in range(10)]
    ex.shutdown(wait=False, cancel_futures=True)
    gate.set()
    ex.shutdown(wait=True)
    assert all(f.done() for f in busy + queued)
    assert all(f.cancelled() for f in queued)


def test_asyncio_awaits_its_futures(dask_client: Any) -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        with stalwart.DaskExecutor(client=dask_client) as ex:
            return sum(
                await asyncio.gather(
                    *(loop.run_in_executor(ex, tasks.square, i) for i in range(5))
                )
            )

    assert asyncio.run(main()) == 30


def test_without_dask_installed_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)  # import -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'stalwart\[dask\]'"):
        stalwart.DaskExecutor()
    with pytest.raises(ImportError, match="dask"):
        stalwart.executor("dask")


def test_address_and_client_together_are_refused(dask_client: Any) -> None:
    with pytest.raises(ValueError, match="not both"):
        stalwart.DaskExecutor("tcp://127.0.0.1:8786", client=dask_client)
