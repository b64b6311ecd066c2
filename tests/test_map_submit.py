"""map() goes through an overridden submit(), as the stdlib's map does.

Clients rely on it: tqdm's ``thread_map`` and ``process_map`` replace ``submit``
on the executor to advance their bar as each future finishes, and a subclass
may override ``submit`` to log or account for its tasks.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
from typing import TYPE_CHECKING, Any

import pytest

import stalwart
from tests import _kind_tasks as tasks
from tests import _tasks
from tests._tasks import TIMEOUT
from tests.conftest import open_executor as pool
from tests.conftest import wait_until

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.timeout(90)

CLASSES = {
    "process": stalwart.ProcessPoolExecutor,
    "thread": stalwart.ThreadPoolExecutor,
    "dask": stalwart.DaskExecutor,
}


def open_counting(kind: str, request: pytest.FixtureRequest, **kwargs: Any) -> Any:
    """An executor of ``kind`` whose subclass's submit() notes each call's fn."""

    class CountingSubmits(CLASSES[kind]):  # type: ignore[misc, valid-type]
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.submitted: list[Callable[..., Any]] = []

        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
            self.submitted.append(fn)
            future: cf.Future[Any] = super().submit(fn, *args, **kwargs)
            return future

    if kind == "dask":
        kwargs["client"] = request.getfixturevalue("dask_client")
    else:
        kwargs.setdefault("max_workers", 2)
    return CountingSubmits(**kwargs)


@pytest.mark.parametrize(
    ("options", "tasks_submitted"),
    [
        ({}, 10),
        ({"chunksize": 3}, 4),  # one call a chunk, as the stdlib's process pool
        ({"buffersize": 2}, 10),
        ({"ordered": False}, 10),
        ({"chunksize": 3, "buffersize": 1, "progress": False}, 4),
    ],
)
def test_map_calls_a_subclass_submit_for_every_task(
    kind: str,
    request: pytest.FixtureRequest,
    options: dict[str, Any],
    tasks_submitted: int,
) -> None:
    with open_counting(kind, request) as ex:
        results = list(ex.map(tasks.square, range(10), **options))
        assert len(ex.submitted) == tasks_submitted
    assert sorted(results) == [x * x for x in range(10)]


def test_map_calls_a_submit_replaced_on_the_instance_for_every_item(kind: str) -> None:
    """What tqdm's thread_map/process_map do: wrap submit, count finished futures."""
    submitted: list[tuple[Any, ...]] = []
    finished: list[cf.Future[Any]] = []
    with pool(kind) as ex:
        original = ex.submit

        def counting_submit(fn: Any, /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
            future = original(fn, *args, **kwargs)
            future.add_done_callback(finished.append)
            submitted.append(args)
            return future

        ex.submit = counting_submit  # type: ignore[method-assign]
        assert list(ex.map(tasks.square, range(20))) == [x * x for x in range(20)]
    assert sorted(submitted) == [(x,) for x in range(20)]
    # A future's callbacks run just after its waiter wakes: poll, do not assume.
    wait_until(lambda: len(finished) == 20, "every future's done-callback")


@pytest.mark.not_on_dask("its task_timeout restarts a worker of the shared cluster")
def test_map_task_timeout_applies_through_an_overridden_submit(
    kind: str, request: pytest.FixtureRequest, manager: Any
) -> None:
    gate = manager.Event()
    with open_counting(kind, request) as ex:
        try:
            results = ex.map(tasks.wait_for, [None, gate], [1, 2], task_timeout=0.5)
            assert next(results) == 1
            with pytest.raises(stalwart.TaskTimeoutError):
                next(results)
        finally:
            gate.set()  # an abandoned thread finishes
        assert len(ex.submitted) == 2
        # The map's limit was lent to its own calls only: the executor has none.
        assert ex.submit(tasks.wait_for, None, "free").result(TIMEOUT) == "free"
        assert ex.submit(_tasks.nap, 0.6, "slow").result(TIMEOUT) == "slow"


@pytest.mark.not_on_dask("its task_timeout restarts a worker of the shared cluster")
def test_task_timeout_scales_with_the_chunk_through_an_overridden_submit(
    kind: str, request: pytest.FixtureRequest
) -> None:
    # Three 0.3 s items per chunk take 0.9 s: more than the 0.5 s per item limit
    # on any one call, within the chunk's 1.5 s.
    with open_counting(kind, request, max_workers=1, task_timeout=0.5) as ex:
        results = ex.map(_tasks.nap, [0.3] * 3, range(3), chunksize=3)
        assert list(results) == [0, 1, 2]
        assert len(ex.submitted) == 1


def test_tqdm_thread_map_counts_every_item_on_stalwarts_thread_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tqdm_std = pytest.importorskip("tqdm.std")
    tqdm_concurrent = pytest.importorskip("tqdm.contrib.concurrent")
    # tqdm's monitor is a process-wide thread of its own, not the executor's.
    monkeypatch.setattr(tqdm_std.tqdm, "monitor_interval", 0)
    monkeypatch.setattr(cf, "ThreadPoolExecutor", stalwart.ThreadPoolExecutor)
    out = io.StringIO()
    results = tqdm_concurrent.thread_map(
        tasks.square, range(40), max_workers=2, tqdm_class=tqdm_std.tqdm, file=out
    )
    assert results == [x * x for x in range(40)]
    assert "40/40" in out.getvalue(), out.getvalue()
