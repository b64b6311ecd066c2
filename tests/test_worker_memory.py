"""Memory-aware workers: ``max_memory_per_child`` replaces a worker grown too
big, and a worker the kernel's OOM killer ended is named as such.

The OOM kill is real: the task moves its worker into a fresh memory cgroup
limited to 64 MiB (``memory_cgroup_of_64_mib``, skipped where the machine
refuses one) and allocates past it.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any

import pytest

import stalwart
from tests import _memory_tasks as tasks
from tests._tasks import TIMEOUT

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

LIMIT = 300_000_000  # "300MB"
LEAK = 50  # MB a call


@pytest.mark.timeout(120)
def test_a_leaking_task_s_workers_are_replaced_before_they_grow_past_the_limit() -> (
    None
):
    """100 calls that each keep 50 MB more: they all complete, every worker
    stays within the limit plus one call's leak, and the replacements are
    counted."""
    with stalwart.ProcessPoolExecutor(2, max_memory_per_child="300MB") as ex:
        baseline = ex.submit(tasks.resident).result(timeout=TIMEOUT)
        if baseline > LIMIT - 2 * LEAK * 1_000_000:
            pytest.skip(f"a fresh worker already holds {baseline / 1e6:.0f} MB")
        after_each = list(ex.map(tasks.leak, [LEAK] * 100, timeout=TIMEOUT))
        stats = ex.stats()
    assert len(after_each) == 100
    assert max(after_each) <= LIMIT + LEAK * 1_000_000 * 1.1
    per_worker = (LIMIT - baseline) // (LEAK * 1_000_000) + 1  # calls until over
    assert stats.workers_over_memory >= 100 // per_worker - 2
    over = [w for w in stats.workers if w.ended_because == "max_memory_per_child"]
    assert len(over) == min(stats.workers_over_memory, len(over))
    assert all(w.peak_memory is not None and w.peak_memory > LIMIT for w in over)
    successor = "replaces a worker past max_memory_per_child"
    successors = [w for w in stats.workers if w.started_because == successor]
    assert successors, "replacements say why they started"


def test_max_memory_per_child_takes_sizes_and_refuses_nonsense() -> None:
    for size in ("2GiB", "300MB", 10**9, "1.5G"):
        stalwart.ProcessPoolExecutor(1, max_memory_per_child=size).shutdown()
    with pytest.raises(ValueError, match="2GiB"):
        stalwart.ProcessPoolExecutor(1, max_memory_per_child="2 gigs")
    with pytest.raises(ValueError, match="more than 0"):
        stalwart.ProcessPoolExecutor(1, max_memory_per_child=0)
    with pytest.raises(TypeError):
        stalwart.ProcessPoolExecutor(1, max_memory_per_child=1.5)  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_a_worker_the_oom_killer_ended_is_named_with_the_figures(
    memory_cgroup_of_64_mib: Path,
) -> None:
    with stalwart.ProcessPoolExecutor(1) as ex:
        future = ex.submit(tasks.allocate_inside, str(memory_cgroup_of_64_mib), 256)
        with pytest.raises(stalwart.WorkerCrashedError) as info:
            future.result(timeout=TIMEOUT)
        assert ex.submit(tasks.resident).result(timeout=TIMEOUT) > 0  # carries on
    message = str(info.value)
    assert info.value.signal == "SIGKILL"
    assert "out of memory" in message
    assert "limit 64.0 MiB" in message
    assert str(memory_cgroup_of_64_mib) in message


def test_a_plain_sigkill_is_not_blamed_on_memory() -> None:
    with stalwart.ProcessPoolExecutor(1) as ex:
        with pytest.raises(stalwart.WorkerCrashedError) as info:
            ex.submit(tasks.kill_myself).result(timeout=TIMEOUT)
    message = str(info.value)
    assert info.value.signal == "SIGKILL"
    assert "out of memory" not in message
    assert "No OOM kill was counted" in message


@contextlib.contextmanager
def _executor_adopting_a_worker() -> Iterator[tuple[stalwart.ProcessPoolExecutor, int]]:
    """A ``reuse=True`` executor that adopted the worker an earlier one parked,
    and that worker's pid. Its workers are killed at the end: nothing is left
    parked for later tests."""
    with stalwart.ProcessPoolExecutor(1, reuse=True) as first:
        pid = first.submit(os.getpid).result(timeout=TIMEOUT)
    ex = stalwart.ProcessPoolExecutor(1, reuse=True)
    try:
        yield ex, pid
    finally:
        ex.shutdown(kill_workers=True)


def _crash_in_an_adopted_worker(fn: Any, *args: Any) -> stalwart.WorkerCrashedError:
    """Run ``fn(*args)``, which kills its worker, in an adopted worker."""
    with _executor_adopting_a_worker() as (ex, _):
        with pytest.raises(stalwart.WorkerCrashedError) as info:
            ex.submit(fn, *args).result(timeout=TIMEOUT)
        assert ex.stats().workers_reused == 1
    return info.value


def test_an_adopted_worker_s_memory_is_still_followed() -> None:
    with _executor_adopting_a_worker() as (ex, pid):
        assert ex.submit(os.getpid).result(timeout=TIMEOUT) == pid
    (adopted,) = [w for w in ex.stats().workers if w.pid == pid]
    assert adopted.started_because == "adopted"
    assert adopted.peak_memory is not None
    assert adopted.peak_memory > 1_000_000


@pytest.mark.timeout(60)
def test_an_adopted_worker_the_oom_killer_ended_is_named_too(
    memory_cgroup_of_64_mib: Path,
) -> None:
    """The OOM baseline and memory figures taken when the worker started go
    with it through the warm set."""
    error = _crash_in_an_adopted_worker(
        tasks.allocate_inside, str(memory_cgroup_of_64_mib), 256
    )
    assert "out of memory" in str(error)
    assert "limit 64.0 MiB" in str(error)


@pytest.mark.timeout(60)
def test_an_adopted_worker_s_plain_sigkill_is_not_blamed_on_memory() -> None:
    error = _crash_in_an_adopted_worker(tasks.kill_myself)
    assert "out of memory" not in str(error)
    assert "No OOM kill was counted" in str(error)


def test_a_thread_pool_accepts_the_keyword_for_the_one_word_swap() -> None:
    with stalwart.executor("thread", max_memory_per_child="1GiB") as ex:
        assert ex.submit(tasks.resident).result(timeout=TIMEOUT) > 0
