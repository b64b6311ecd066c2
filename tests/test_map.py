"""map(), as_completed and executor(kind): the same behaviour on every executor.

Each test runs against the process pool and the thread pool (the ``kind``
fixture), so swapping one word in ``stalwart.executor(kind)`` is proven safe.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

import pytest

import stalwart
from tests import _kind_tasks as tasks
from tests._tasks import TIMEOUT, block_until
from tests.conftest import open_executor as pool
from tests.conftest import wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.timeout(90)


class CountingBar:
    """A user's tqdm-like bar: anything with update(n)."""

    def __init__(self) -> None:
        self.updates: list[int] = []
        self.closed = False

    def update(self, n: int) -> None:
        self.updates.append(n)

    def close(self) -> None:
        self.closed = True


def counted(n: int | None, pulled: list[int]) -> Iterator[int]:
    """A generator that notes how many items map() has read from it."""
    for i in itertools.count() if n is None else range(n):
        pulled[0] = i + 1
        yield i


def press_ctrl_c_once_waiting(main: threading.Thread, armed: threading.Event) -> None:
    """Once ``armed``, send SIGINT to ``main`` as soon as it blocks waiting on a
    lock, as a user's Ctrl-C reaches a program waiting for a result."""
    ident = main.ident
    assert ident is not None
    if not armed.wait(TIMEOUT):
        return

    def waiting() -> bool:
        frame = sys._current_frames().get(ident)
        return frame is not None and (
            frame.f_code.co_name == "wait"
            and frame.f_code.co_filename == threading.__file__
        )

    wait_until(waiting, "the main thread to wait for a result")
    signal.pthread_kill(ident, signal.SIGINT)


# -- the stdlib's semantics by default ------------------------------------------


@pytest.mark.parametrize("chunksize", [1, 3, "auto"])
def test_results_come_in_input_order(kind: str, chunksize: int | str) -> None:
    with pool(kind) as ex:
        assert list(ex.map(tasks.square, range(100), chunksize=chunksize)) == [
            x * x for x in range(100)
        ]


def test_several_iterables_are_zipped_to_the_shortest(kind: str) -> None:
    with pool(kind) as ex:
        assert list(ex.map(pow, [2, 3, 4], [5, 2])) == [32, 9]


def test_every_item_is_submitted_before_map_returns(kind: str, tmp_path: Path) -> None:
    """As in the stdlib: the work runs even if the results are never read."""
    log = str(tmp_path / "ran")
    with pool(kind) as ex:
        ex.map(tasks.record, itertools.repeat(log), range(20), chunksize="auto")
    assert sorted(tasks.ran(log)) == list(range(20))


def test_results_read_after_the_with_block_are_all_there(kind: str) -> None:
    with pool(kind) as ex:
        results = ex.map(tasks.square, range(50), chunksize="auto")
    assert list(results) == [x * x for x in range(50)]


def test_an_unpicklable_item_is_refused_by_map_itself(kind: str) -> None:
    import threading

    items = [1, 2, threading.RLock(), 4]
    with pool(kind) as ex:
        for chunksize in (1, "auto", 4):
            with pytest.raises(stalwart.PicklingError) as caught:
                ex.map(tasks.square, items, chunksize=chunksize)
            assert caught.value.path == "args[0]", chunksize
            assert "map(" in str(caught.value)


# -- errors -----------------------------------------------------------------------


@pytest.mark.parametrize("chunksize", [1, 4, "auto"])
def test_a_failing_item_raises_when_reached_after_the_items_before_it(
    kind: str, chunksize: int | str
) -> None:
    with pool(kind) as ex:
        results = ex.map(
            tasks.fail_on, itertools.repeat(6), range(10), chunksize=chunksize
        )
        delivered = [next(results) for _ in range(6)]
        with pytest.raises(ValueError, match="item 6 is bad") as caught:
            next(results)
    assert delivered == [0, 1, 2, 3, 4, 5]
    if kind != "thread":  # the worker's traceback rides along, as in the stdlib
        assert "fail_on" in str(caught.value.__cause__)


def test_unordered_raises_a_failure_as_it_comes(kind: str, manager: Any) -> None:
    gate = manager.Event()
    with pool(kind) as ex:
        results = ex.map(tasks.wait_or_fail, [gate, gate], [0, 1], ordered=False)
        with pytest.raises(ValueError, match="item 1 failed first"):
            next(results)  # item 0 is still waiting
        gate.set()


@pytest.mark.not_on_dask("max_workers=1 cannot shrink a cluster the executor was given")
def test_closing_the_results_cancels_what_has_not_started(
    kind: str, tmp_path: Path, manager: Any
) -> None:
    log, gate = str(tmp_path / "ran"), manager.Event()
    with pool(kind, max_workers=1) as ex:
        gates = [None, gate, *[None] * 98]
        results = ex.map(
            tasks.record_then_wait, itertools.repeat(log), gates, range(100)
        )
        assert next(results) == 0
        wait_until(lambda: 1 in tasks.ran(log), "item 1 to start")
        results.close()
        gate.set()
    assert len(tasks.ran(log)) < 50, "closing map's iterator cancelled nothing"


@pytest.mark.parametrize("ordered", [True, False])
def test_timeout_bounds_the_whole_iteration(
    kind: str, ordered: bool, manager: Any
) -> None:
    gate = manager.Event()
    with pool(kind) as ex:
        results = ex.map(
            tasks.wait_for, [gate, gate], [1, 2], timeout=0.2, ordered=ordered
        )
        with pytest.raises(cf.TimeoutError):
            list(results)
        gate.set()


@pytest.mark.not_on_dask("max_workers=1 cannot shrink a cluster the executor was given")
@pytest.mark.parametrize(("chunksize", "buffersize"), [(2, None), (2, 1), (1, 1)])
def test_a_timeout_cancels_the_task_it_waited_on_and_submits_no_more(
    kind: str,
    chunksize: int,
    buffersize: int | None,
    tmp_path: Path,
    manager: Any,
) -> None:
    """As in the stdlib: once the timeout has passed, no item of the map runs."""
    log, started, gate = str(tmp_path / "ran"), manager.Event(), manager.Event()
    with pool(kind, max_workers=1) as ex:
        busy = ex.submit(block_until, started, gate, "busy")
        assert started.wait(TIMEOUT)
        results = ex.map(
            tasks.record,
            itertools.repeat(log),
            [1, 2, 3, 4],
            timeout=0.2,
            chunksize=chunksize,
            buffersize=buffersize,
        )
        with pytest.raises(cf.TimeoutError):
            next(results)
        gate.set()
        assert busy.result(TIMEOUT) == "busy"
    # shutdown(wait=True) has run whatever was not cancelled.
    assert tasks.ran(log) == [], "items of a map that timed out ran afterwards"


@pytest.mark.not_on_dask("max_workers=1 cannot shrink a cluster the executor was given")
def test_ctrl_c_while_waiting_cancels_the_map_and_submits_no_more(
    kind: str, tmp_path: Path, manager: Any
) -> None:
    log, started, gate = str(tmp_path / "ran"), manager.Event(), manager.Event()
    with pool(kind, max_workers=1) as ex:
        busy = ex.submit(block_until, started, gate, "busy")
        assert started.wait(TIMEOUT)
        results = ex.map(
            tasks.record,
            itertools.repeat(log),
            [1, 2, 3, 4],
            timeout=TIMEOUT,  # a failed interrupt fails the test, never hangs it
            chunksize=2,
            buffersize=1,
        )
        armed = threading.Event()
        ctrl_c = threading.Thread(
            target=press_ctrl_c_once_waiting, args=(threading.current_thread(), armed)
        )
        ctrl_c.start()
        try:
            armed.set()  # from here, the only wait is next()'s, for the result
            with pytest.raises(KeyboardInterrupt):
                next(results)
        finally:
            ctrl_c.join(TIMEOUT)
            gate.set()
        # What this test is about is below; the busy call only held the worker
        # (on a loaded machine its gate may have timed out meanwhile).
        assert not cf.wait([busy], TIMEOUT).not_done
    assert tasks.ran(log) == [], "items of an interrupted map ran afterwards"


# -- ordered=False, buffersize, chunksize="auto" ---------------------------------


def test_unordered_yields_results_as_they_finish(kind: str, manager: Any) -> None:
    gate = manager.Event()
    with pool(kind) as ex:
        results = ex.map(
            tasks.wait_for, [gate, None, None, None], range(4), ordered=False
        )
        first_three = [next(results) for _ in range(3)]
        gate.set()
        assert sorted(first_three) == [1, 2, 3]
        assert list(results) == [0]


@pytest.mark.parametrize("ordered", [True, False])
def test_buffersize_reads_the_input_only_as_results_are_taken(
    kind: str, ordered: bool
) -> None:
    pulled = [0]
    with pool(kind) as ex:
        results = ex.map(
            tasks.square, counted(None, pulled), buffersize=4, ordered=ordered
        )
        assert pulled[0] == 4  # the first window, before any result is read
        taken = list(itertools.islice(results, 100))
        assert pulled[0] <= 100 + 4
        results.close()
    if ordered:
        assert taken == [x * x for x in range(100)]
    else:
        assert len(set(taken)) == 100
        assert set(taken) <= {x * x for x in range(104)}


@pytest.mark.parametrize("chunksize", [3, "auto"])
def test_buffersize_counts_chunks_and_still_delivers_everything(
    kind: str, chunksize: int | str
) -> None:
    pulled = [0]
    with pool(kind) as ex:
        results = ex.map(
            tasks.square, counted(1000, pulled), chunksize=chunksize, buffersize=2
        )
        assert list(results) == [x * x for x in range(1000)]


def test_an_endless_generator_runs_in_a_bounded_window(kind: str) -> None:
    with pool(kind) as ex:
        results = ex.map(
            tasks.square, itertools.count(), buffersize=8, chunksize="auto"
        )
        assert list(itertools.islice(results, 5000)) == [x * x for x in range(5000)]
        results.close()  # the rest is cancelled; shutdown does not wait on it


def test_auto_chunks_grow_for_tiny_tasks(kind: str) -> None:
    bar = CountingBar()
    with pool(kind) as ex:
        list(ex.map(tasks.square, range(1000), chunksize="auto"))  # warm workers
        list(ex.map(tasks.square, range(20_000), chunksize="auto", progress=bar))
    assert sum(bar.updates) == 20_000
    assert max(bar.updates) >= 64, "auto chunking never grew past a few items"


def test_auto_chunks_start_with_single_items(kind: str, manager: Any) -> None:
    """Before any task has come back its duration is unknown: one item a task."""
    gate = manager.Event()
    bar = CountingBar()
    with pool(kind) as ex:
        results = ex.map(
            tasks.wait_for, [gate] * 6, range(6), chunksize="auto", progress=bar
        )
        gate.set()
        assert list(results) == list(range(6))
    assert bar.updates == [1] * 6


# -- progress -------------------------------------------------------------------


@pytest.mark.parametrize("ordered", [True, False])
def test_progress_counts_every_item_on_the_users_bar(kind: str, ordered: bool) -> None:
    bar = CountingBar()
    with pool(kind) as ex:
        results = list(
            ex.map(
                tasks.square,
                range(300),
                chunksize="auto",
                ordered=ordered,
                progress=bar,
            )
        )
    assert sorted(results) == [x * x for x in range(300)]
    assert sum(bar.updates) == 300
    assert not bar.closed, "the user's bar is the user's to close"


def test_progress_without_tqdm_prints_done_lines(
    kind: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm -> ImportError
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pool(kind) as ex:
        assert len(list(ex.map(tasks.square, range(10), progress=True))) == 10
        list(ex.map(tasks.square, iter(range(7)), buffersize=2, progress=True))
    lines = capsys.readouterr().err.splitlines()
    assert "done 10/10" in lines
    assert "done 7" in lines  # a generator's length is unknown


def test_progress_uses_tqdm_when_installed(
    kind: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    tqdm = pytest.importorskip("tqdm")
    # tqdm's monitor is a process-wide thread of its own, not the executor's.
    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)
    with pool(kind) as ex:
        list(ex.map(tasks.square, range(10), progress=True))
    assert "10/10" in capsys.readouterr().err


def test_as_completed_counts_on_the_users_bar(kind: str) -> None:
    bar = CountingBar()
    with pool(kind) as ex:
        futures = [ex.submit(tasks.square, x) for x in range(20)]
        done = list(stalwart.as_completed(futures, timeout=TIMEOUT, progress=bar))
    assert set(done) == set(futures)
    assert sum(bar.updates) == 20


def test_as_completed_without_progress_is_the_stdlibs(kind: str, manager: Any) -> None:
    gate = manager.Event()
    with pool(kind) as ex:
        futures = [ex.submit(tasks.wait_for, gate, 1), ex.submit(tasks.square, 3)]
        first = next(stalwart.as_completed(futures, timeout=TIMEOUT))
        assert first.result() == 9
        with pytest.raises(cf.TimeoutError):
            list(stalwart.as_completed(futures, timeout=0.1))
        gate.set()


@pytest.mark.parametrize(
    ("options", "error", "text"),
    [
        ({"chunksize": 0}, ValueError, "chunksize must be >= 1"),
        ({"chunksize": "big"}, TypeError, "chunksize must be"),
        ({"buffersize": 0}, ValueError, "buffersize must be"),
        ({"progress": 5}, TypeError, "update"),
    ],
)
def test_bad_map_options_are_refused_at_the_call(
    kind: str, options: dict[str, Any], error: type[Exception], text: str
) -> None:
    with pool(kind) as ex:
        with pytest.raises(error, match=text):
            ex.map(tasks.square, range(3), **options)


# -- executor(kind) -----------------------------------------------------------------


def test_executor_kind_picks_the_pool(kind: str) -> None:
    expected = {
        "process": stalwart.ProcessPoolExecutor,
        "thread": stalwart.ThreadPoolExecutor,
        "dask": stalwart.DaskExecutor,  # here with a local cluster of its own
    }[kind]
    with stalwart.executor(kind, max_workers=1) as ex:
        assert isinstance(ex, expected)
        assert ex.submit(tasks.square, 7).result(TIMEOUT) == 49


def test_the_environment_overrides_the_kind_in_the_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STALWART_EXECUTOR", "thread")
    with stalwart.executor("process", max_workers=2) as ex:
        assert isinstance(ex, stalwart.ThreadPoolExecutor)
        names = set(ex.map(tasks.worker_name, range(4)))
    assert {name.split("-")[0] for name in names} == {str(os.getpid())}


def test_an_unknown_kind_is_refused_with_the_choices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValueError, match="'process', 'thread' or 'dask'"):
        stalwart.executor("gpu")
    monkeypatch.setenv("STALWART_EXECUTOR", "proces")
    with pytest.raises(ValueError, match="STALWART_EXECUTOR='proces'"):
        stalwart.executor("thread")
