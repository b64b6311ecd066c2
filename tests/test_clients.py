"""Real programs written for the stdlib executors run unchanged on stalwart.

Each test runs a third-party client twice in the same process: on the stdlib
executor, then with stalwart swapped in the way a user would (monkeypatching
the name the client looks up), and compares what the user sees: the results,
and the progress a client reports. The functions sent to workers live in this
module, which workers import by name.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
from typing import Any

import pytest
import tqdm
from tqdm.contrib.concurrent import process_map, thread_map

import stalwart

pytestmark = [
    pytest.mark.timeout(120),
    # The stdlib's reference runs fork (its default before 3.14) from this
    # multi-threaded test process, which 3.12+ warns about.
    pytest.mark.filterwarnings(
        "ignore:This process .* use of fork\\(\\):DeprecationWarning"
    ),
]

N = 40  # items per run: several per worker, still far below tqdm's chunking hint
# tqdm passes multiprocessing.RLock() (a 'fork' context lock before Python 3.14)
# to its workers; stalwart replaces it, and says so (tests/test_settings.py).
IGNORE_FORK_LOCK_WARNING = pytest.mark.filterwarnings(
    "ignore:initargs.* made in a 'fork' context:RuntimeWarning"
)


@pytest.fixture(autouse=True)
def no_tqdm_monitor_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """tqdm starts a process-wide monitor thread with its first bar; without it
    the bars draw the same, and each test leaves the threads it found."""
    monkeypatch.setattr(tqdm.tqdm, "monitor_interval", 0)


# ----------------------------------------------------------- run in the workers


def on_stalwart_worker() -> bool:
    """Whether the calling task runs on a stalwart worker (process or thread)."""
    try:
        stalwart.worker_state()
    except RuntimeError:
        return False
    return True


def square(x: int) -> int:
    return x * x


def square_and_where(x: int) -> tuple[int, bool]:
    return x * x, on_stalwart_worker()


def add(a: int, b: int) -> int:
    return a + b


# ------------------------------------------------------------------------ helpers


def swap_in_stalwart(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a user does to run a client on stalwart: replace the stdlib names."""
    monkeypatch.setattr(
        concurrent.futures, "ProcessPoolExecutor", stalwart.ProcessPoolExecutor
    )
    monkeypatch.setattr(
        concurrent.futures, "ThreadPoolExecutor", stalwart.ThreadPoolExecutor
    )


def final_bar(output: io.StringIO) -> str:
    """The last state tqdm drew (it redraws in place with carriage returns)."""
    return output.getvalue().rstrip().rsplit("\r", 1)[-1]


# ------------------------------------------------------------------ tqdm: results


@IGNORE_FORK_LOCK_WARNING
def test_tqdm_process_map_returns_what_the_stdlib_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    items = list(range(N))
    expected = process_map(square_and_where, items, max_workers=2, file=io.StringIO())
    swap_in_stalwart(monkeypatch)
    got = process_map(square_and_where, items, max_workers=2, file=io.StringIO())
    assert [value for value, _ in got] == [value for value, _ in expected]
    assert all(on_stalwart for _, on_stalwart in got)
    assert not any(on_stalwart for _, on_stalwart in expected)


@IGNORE_FORK_LOCK_WARNING
def test_tqdm_process_map_over_several_iterables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    firsts, seconds = range(N), range(100, 100 + N)
    expected = process_map(add, firsts, seconds, max_workers=2, file=io.StringIO())
    swap_in_stalwart(monkeypatch)
    got = process_map(add, firsts, seconds, max_workers=2, file=io.StringIO())
    assert got == expected


@IGNORE_FORK_LOCK_WARNING
def test_tqdm_process_map_with_chunksize(monkeypatch: pytest.MonkeyPatch) -> None:
    items = list(range(N))
    expected = process_map(
        square, items, max_workers=2, chunksize=7, file=io.StringIO()
    )
    swap_in_stalwart(monkeypatch)
    got = process_map(square, items, max_workers=2, chunksize=7, file=io.StringIO())
    assert got == expected


def test_tqdm_thread_map_returns_what_the_stdlib_returns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    items = list(range(N))
    expected = thread_map(square_and_where, items, max_workers=2, file=io.StringIO())
    swap_in_stalwart(monkeypatch)
    got = thread_map(square_and_where, items, max_workers=2, file=io.StringIO())
    assert [value for value, _ in got] == [value for value, _ in expected]
    assert all(on_stalwart for _, on_stalwart in got)
    assert not any(on_stalwart for _, on_stalwart in expected)


# -------------------------------------------------------------- tqdm: the bar


# tqdm counts progress in a done-callback added by its own submit() wrapper,
# which it sets on the executor instance before calling map(): the bar moves
# only if map() goes through the instance's submit() (docs/design.md, contract 12).


@IGNORE_FORK_LOCK_WARNING
def test_tqdm_process_map_bar_reaches_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    stdlib_bar, stalwart_bar = io.StringIO(), io.StringIO()
    process_map(square, range(N), max_workers=2, file=stdlib_bar)
    swap_in_stalwart(monkeypatch)
    process_map(square, range(N), max_workers=2, file=stalwart_bar)
    assert f"{N}/{N}" in final_bar(stdlib_bar)
    assert f"{N}/{N}" in final_bar(stalwart_bar), final_bar(stalwart_bar)


def test_tqdm_thread_map_bar_reaches_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    stdlib_bar, stalwart_bar = io.StringIO(), io.StringIO()
    thread_map(square, range(N), max_workers=2, file=stdlib_bar)
    swap_in_stalwart(monkeypatch)
    thread_map(square, range(N), max_workers=2, file=stalwart_bar)
    assert f"{N}/{N}" in final_bar(stdlib_bar)
    assert f"{N}/{N}" in final_bar(stalwart_bar), final_bar(stalwart_bar)


# ------------------------------------------ dask's local multiprocessing scheduler


def test_dask_multiprocessing_scheduler_computes_what_the_stdlib_computes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``dask.multiprocessing.get`` builds its own ProcessPoolExecutor (spawn
    context, its own initializer) for each compute, sizes its work from
    ``pool._max_workers`` and shuts the pool down itself.

    dask binds the name at import (``from concurrent.futures import
    ProcessPoolExecutor``), so patching ``concurrent.futures`` alone would not
    reach it: a user patches the name in ``dask.multiprocessing``.
    """
    bag = pytest.importorskip("dask.bag")
    dask_multiprocessing = pytest.importorskip("dask.multiprocessing")
    # dask sets PYTHONHASHSEED for its workers when unset; keep it test-local.
    monkeypatch.setenv("PYTHONHASHSEED", os.environ.get("PYTHONHASHSEED") or "6640")

    def compute() -> tuple[list[tuple[int, bool]], int]:
        squares = bag.from_sequence(range(N), npartitions=4).map(square_and_where)
        total = squares.map(lambda pair: pair[0]).sum()
        return squares.compute(scheduler="processes", num_workers=2), total.compute(
            scheduler="processes", num_workers=2
        )

    expected_items, expected_total = compute()
    swap_in_stalwart(monkeypatch)
    monkeypatch.setattr(
        dask_multiprocessing, "ProcessPoolExecutor", stalwart.ProcessPoolExecutor
    )
    got_items, got_total = compute()
    assert got_total == expected_total == sum(x * x for x in range(N))
    assert [value for value, _ in got_items] == [value for value, _ in expected_items]
    assert all(on_stalwart for _, on_stalwart in got_items)
    assert not any(on_stalwart for _, on_stalwart in expected_items)


def test_dask_multiprocessing_get_on_a_raw_graph(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scheduler function itself, on a hand-written task graph."""
    dask_multiprocessing = pytest.importorskip("dask.multiprocessing")
    monkeypatch.setenv("PYTHONHASHSEED", os.environ.get("PYTHONHASHSEED") or "6640")
    graph: dict[str, Any] = {
        "a": (square, 3),
        "b": (square, 4),
        "c": (add, "a", "b"),
        "d": (add, "c", 1),
    }
    expected = dask_multiprocessing.get(graph, ["c", "d"], num_workers=2)
    monkeypatch.setattr(
        dask_multiprocessing, "ProcessPoolExecutor", stalwart.ProcessPoolExecutor
    )
    got = dask_multiprocessing.get(graph, ["c", "d"], num_workers=2)
    assert got == expected == (25, 26)
