"""``stats()`` figures per worker and the slowest tasks; failed and retried
counts next to a progress bar. What a user reads when a long run misbehaves."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

import stalwart
from stalwart._stats import ExecutorStats
from tests import _tasks as tasks
from tests._tasks import TIMEOUT

if TYPE_CHECKING:
    from pathlib import Path


def test_each_worker_s_tasks_and_busy_time_are_counted() -> None:
    with stalwart.ProcessPoolExecutor(2) as ex:
        pids = [ex.submit(tasks.nap_then_pid, 0.05) for _ in range(6)]
        ran = [future.result(timeout=TIMEOUT) for future in pids]
        stats = ex.stats()
    by_pid = {worker.pid: worker for worker in stats.workers}
    assert set(ran) <= set(by_pid)
    for pid in set(ran):
        assert by_pid[pid].tasks == ran.count(pid)
        assert by_pid[pid].busy_s >= 0.05 * ran.count(pid)
        assert by_pid[pid].started_because == "start"
        assert by_pid[pid].ended_because is None  # still running at stats()
    assert sum(worker.tasks for worker in stats.workers) == 6


def test_a_crashed_worker_and_its_replacement_say_why(tmp_path: Path) -> None:
    marker = str(tmp_path / "died")
    with stalwart.ProcessPoolExecutor(1, retries=1) as ex:
        assert ex.submit(tasks.die_once, marker).result(timeout=TIMEOUT)
        stats = ex.stats()
    reasons = [(w.started_because, w.ended_because) for w in stats.workers]
    assert reasons == [("start", "crashed"), ("replaces a crashed worker", None)]


def test_recycled_workers_say_so() -> None:
    with stalwart.ProcessPoolExecutor(1, max_tasks_per_child=1) as ex:
        for _ in range(3):
            ex.submit(tasks.pid).result(timeout=TIMEOUT)
    workers = ex.stats().workers
    assert [w.ended_because for w in workers][:2] == ["max_tasks_per_child"] * 2
    successor = "replaces a worker at max_tasks_per_child"
    assert [w.started_because for w in workers][1:] == [successor] * 2
    assert workers[-1].ended_because in ("max_tasks_per_child", "shut down")


def test_parked_and_adopted_workers_say_so() -> None:
    with stalwart.ProcessPoolExecutor(1, reuse=True, idle_timeout=2) as first:
        pid = first.submit(tasks.pid).result(timeout=TIMEOUT)
    assert [w.ended_because for w in first.stats().workers] == ["parked"]
    second = stalwart.ProcessPoolExecutor(1, reuse=True, idle_timeout=2)
    assert second.submit(tasks.pid).result(timeout=TIMEOUT) == pid
    (adopted,) = second.stats().workers
    assert adopted.started_because == "adopted"
    assert adopted.pid == pid
    second.shutdown(kill_workers=True)  # not parked again: the test leaves none


def test_the_slowest_tasks_are_named_slowest_first() -> None:
    with stalwart.ProcessPoolExecutor(2) as ex:
        futures = [ex.submit(tasks.echo, i) for i in range(20)]
        futures.append(ex.submit(tasks.nap, 0.3, "slow"))
        futures.append(ex.submit(tasks.nap, 0.15, "slower than the rest"))
        for future in futures:
            future.result(timeout=TIMEOUT)
        slowest = ex.stats().slowest_tasks
    assert len(slowest) == 5
    assert [seconds for seconds, _ in slowest] == sorted(
        (seconds for seconds, _ in slowest), reverse=True
    )
    assert "nap(0.3, 'slow')" in slowest[0][1]
    assert slowest[0][0] >= 0.3
    assert "nap(0.15" in slowest[1][1]


def test_str_of_stats_is_a_readable_summary(tmp_path: Path) -> None:
    with stalwart.ProcessPoolExecutor(1, retries=1) as ex:
        ex.submit(tasks.die_once, str(tmp_path / "died")).result(timeout=TIMEOUT)
        ex.submit(tasks.nap, 0.1, "x").result(timeout=TIMEOUT)
        text = str(ex.stats())
    assert "tasks: 2 submitted, 2 completed, 0 failed" in text
    assert "1 retried" in text
    assert "replaces a crashed worker" in text
    assert "slowest tasks:" in text
    assert "nap(0.1, 'x')" in text


def test_ended_workers_kept_in_stats_are_bounded() -> None:
    stats = ExecutorStats()
    for pid in range(100):
        worker = stalwart._stats.WorkerStats(pid, "start")
        stats.workers.append(worker)
        stats.worker_ended(worker, "max_tasks_per_child")
    assert len(stats.workers) == stalwart._stats.ENDED_WORKERS_KEPT
    assert stats.workers[-1].pid == 99


def test_a_plain_progress_line_counts_failed_and_retried_tasks(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "tqdm.auto", None)  # no tqdm
    with stalwart.ProcessPoolExecutor(1, retries=1) as ex:
        futures = [
            ex.submit(tasks.die_once, str(tmp_path / "died")),
            ex.submit(tasks.raise_value_error, "no"),
            ex.submit(tasks.echo, 1),
        ]
        done = list(stalwart.as_completed(futures, timeout=TIMEOUT, progress=True))
    assert len(done) == 3
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == "done 3/3 (1 failed, 1 retried)"


def test_a_tqdm_bar_shows_failed_tasks_next_to_done(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tqdm = pytest.importorskip("tqdm")
    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)  # no monitor thread
    with stalwart.ProcessPoolExecutor(1) as ex:
        futures = [ex.submit(tasks.raise_value_error, "no"), ex.submit(tasks.pid)]
        list(stalwart.as_completed(futures, timeout=TIMEOUT, progress=True))
    assert "1 failed, 0 retried" in capsys.readouterr().err


def test_a_thread_pool_s_stats_print_too() -> None:
    with stalwart.ThreadPoolExecutor(1) as ex:
        ex.submit(os.getpid).result(timeout=TIMEOUT)
        assert "tasks: 1 submitted, 1 completed" in str(ex.stats())
