"""map(chunksize>1) when an item raises: the results before it, then its exception.

A chunk's results travel with that chunk, never on the exception: two chunks may
raise the very same exception instance.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest

import stalwart
from tests import _tasks
from tests.conftest import open_executor as pool
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(90)

STOP = ValueError("stop")
"""One exception instance that every failing item raises, as code raising a
module-level constant (or re-raising a stored error) does."""

_ran: list[int] = []
_ran_lock = threading.Lock()


def stop_on(bad: int, x: int) -> int:
    """Return ``x``, or raise the shared ``STOP`` when ``x == bad``."""
    with _ran_lock:
        _ran.append(x)
    if x == bad:
        raise STOP
    return x


def raise_on(bad: int, error: str, x: int) -> int:
    """Return ``x``, or raise an exception that cannot come back as it is."""
    if x == bad:
        if error == "unpicklable":
            raise _tasks.UnpicklableError(f"item {x}")
        raise _tasks.NeedsTwoArgsError(f"item {x}", "b")
    return x


def lock_then_fail(x: int) -> Any:
    """Item 0 returns what cannot be pickled; item 1 raises."""
    if x == 1:
        raise ValueError(f"item {x} is bad")
    return threading.Lock()


def test_chunks_raising_one_shared_exception_keep_their_own_results() -> None:
    """Many chunks, run on several threads at once, each raise the same STOP."""
    _ran.clear()
    maps = 60
    # Map k is one chunk of three items, k*3 to k*3+2, failing at its (k % 3)-th
    # item: it must deliver exactly the items before that one, then raise STOP.
    bad = [3 * k + k % 3 for k in range(maps)]
    with pool("thread", max_workers=4) as ex:
        results = [
            ex.map(
                stop_on, itertools.repeat(bad[k]), range(3 * k, 3 * k + 3), chunksize=3
            )
            for k in range(maps)
        ]
        # Every chunk has raised before any result is read: the widest window
        # for one chunk's results to end up with another's.
        runs = sum(k % 3 + 1 for k in range(maps))
        wait_until(lambda: len(_ran) == runs, "every chunk to have raised")
        for k, result in enumerate(results):
            delivered: list[int] = []
            with pytest.raises(ValueError, match="stop") as caught:
                delivered.extend(result)  # keeps what came before the raise
            assert caught.value is STOP, "the exception is the one the item raised"
            assert delivered == list(range(3 * k, bad[k])), f"map {k}"


def test_chunks_of_one_map_sharing_an_exception_deliver_their_own() -> None:
    _ran.clear()
    with pool("thread", max_workers=4) as ex:
        # Every chunk of three fails at its third item, all on the same STOP.
        results = ex.map(stop_on, [2] * 300, range(300), chunksize=3)
        wait_until(lambda: len(_ran) == 300, "every chunk to have raised")
        delivered: list[int] = []
        with pytest.raises(ValueError, match="stop") as caught:
            delivered.extend(results)  # keeps what came before the raise
    assert caught.value is STOP
    assert delivered == [0, 1]


@pytest.mark.parametrize("error", ["unpicklable", "not_unpicklable"])
def test_an_exception_that_cannot_come_back_still_follows_the_items_before_it(
    kind: str, error: str
) -> None:
    with pool(kind) as ex:
        results = ex.map(raise_on, [2] * 6, [error] * 6, range(6), chunksize=3)
        delivered = [next(results), next(results)]
        with pytest.raises(Exception, match="item 2") as caught:
            next(results)
    assert delivered == [0, 1]
    expected = {
        "unpicklable": _tasks.UnpicklableError,
        "not_unpicklable": _tasks.NeedsTwoArgsError,
    }[error]
    if kind == "thread":  # nothing is pickled: the exception itself
        assert type(caught.value) is expected
    else:
        assert isinstance(caught.value, stalwart.RemoteError)
        assert caught.value.type_name == f"{expected.__module__}.{expected.__name__}"
        assert "raise_on" in caught.value.remote_traceback


def test_the_items_exception_arrives_when_the_results_before_it_cannot(
    kind: str,
) -> None:
    with pool(kind) as ex:
        results = ex.map(lock_then_fail, range(2), chunksize=2)
        with pytest.raises(ValueError, match="item 1 is bad") as caught:
            list(results)
    if kind != "thread":  # the worker's traceback rides along, as in the stdlib
        assert "lock_then_fail" in str(caught.value.__cause__)


def test_a_timed_out_chunk_says_all_its_calls_failed_and_how_its_limit_grew() -> None:
    with stalwart.ProcessPoolExecutor(1) as ex:
        results = ex.map(
            _tasks.nap, [0.0, 0.0, 30.0, 0.0], chunksize=4, task_timeout=0.5
        )
        with pytest.raises(stalwart.TaskTimeoutError) as info:
            list(results)
    message = str(info.value)
    assert message.startswith("a map chunk of 4 calls to nap(...) ran longer")
    assert "(4 calls x the map's 0.5 s)" in message
    assert "Only the 4 calls of this chunk failed" in message
    assert "task 0" not in message  # no internal counter


def test_a_pickling_error_in_map_names_the_item() -> None:
    items = [1, 2, threading.RLock(), 4]
    for chunksize in (1, 2):
        with stalwart.ProcessPoolExecutor(1) as ex:
            with pytest.raises(stalwart.PicklingError) as info:
                list(ex.map(_tasks.echo, items, chunksize=chunksize))
        assert str(info.value).startswith("cannot send item 2 of map(echo, ")
        assert info.value.path == "args[0]"


def test_a_thread_pool_s_pickling_check_does_not_advise_threads() -> None:
    with stalwart.ThreadPoolExecutor(1, check_pickle=True) as ex:
        with pytest.raises(stalwart.PicklingError) as info:
            list(ex.map(_tasks.echo, [1, threading.RLock()]))
    message = str(info.value)
    assert message.startswith("cannot pickle item 1 of map(echo, ")
    assert "check_pickle=True" in message
    assert "use stalwart.ThreadPoolExecutor" not in message
    assert "worker process" not in message
