"""Shared fixtures: bounded waits, gates that work across processes, leak checks."""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import TYPE_CHECKING, Any

import psutil
import pytest

import stalwart
from tests._leaks import worker_processes
from tests._tasks import TIMEOUT

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from concurrent.futures import Executor


def wait_until(
    predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT
) -> Any:
    """Poll `predicate` until it is truthy; fail naming `what` after `timeout` s.

    For OS state that offers no event to wait on (a pid that must vanish); the
    poll interval changes only latency, never the outcome.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


@pytest.fixture(params=["process", "thread"])
def kind(request: pytest.FixtureRequest) -> str:
    """Run the test once per executor kind: the swap must change nothing."""
    return str(request.param)


def open_executor(kind: str, **kwargs: Any) -> Executor:
    """``stalwart.executor(kind)`` with two workers; threads check pickling too,
    so that they refuse exactly what a process pool would."""
    kwargs.setdefault("max_workers", 2)
    if kind == "thread":
        kwargs.setdefault("check_pickle", True)
    return stalwart.executor(kind, **kwargs)


@pytest.fixture(scope="session")
def manager() -> Iterator[Any]:
    """A multiprocessing Manager: its Event proxies can be passed to tasks."""
    with multiprocessing.get_context("spawn").Manager() as manager:
        yield manager


@pytest.fixture(autouse=True)
def no_leaked_workers_or_threads() -> Iterator[None]:
    """Every test must leave no worker process and no executor thread behind."""
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    threads_before = set(threading.enumerate())
    yield

    def leaked_children() -> list[psutil.Process]:
        return worker_processes(exclude=children_before)

    def leaked_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t not in threads_before]

    try:
        wait_until(lambda: not leaked_children(), "worker processes to exit", 10)
    except AssertionError:
        leaked = leaked_children()
        for process in leaked:
            process.kill()
        pytest.fail(f"leaked worker processes: {[p.pid for p in leaked]}")
    try:
        wait_until(lambda: not leaked_threads(), "executor threads to exit", 10)
    except AssertionError:
        pytest.fail(f"leaked threads: {leaked_threads()}")
