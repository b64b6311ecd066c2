"""Done-callbacks run user code: on the thread pool they may call back into the
executor (submit, shutdown) from any future, cancelled or not, without a hang.

A future's callbacks run wherever it is resolved or cancelled; had any of those
places held the pool's lock, the callback's own submit() or shutdown() would
wait for it forever. Each test bounds its waits by HANG_S, so a hang fails fast.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pytest

import stalwart
from tests.conftest import returns_within

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Future

pytestmark = pytest.mark.timeout(60)

HANG_S = 10.0
"""How long a step may take before it counts as hung (each takes milliseconds)."""


def on_done(future: Future[Any], action: Callable[[], Any]) -> threading.Event:
    """Add a done-callback running `action`; the event is set once it returned."""
    returned = threading.Event()

    def callback(_: Future[Any]) -> None:
        try:
            action()
        finally:
            returned.set()

    future.add_done_callback(callback)
    return returned


def blocked(ex: stalwart.ThreadPoolExecutor) -> tuple[Future[Any], threading.Event]:
    """A task that occupies a thread until the test sets the returned event."""
    gate = threading.Event()
    return ex.submit(gate.wait, HANG_S), gate


def test_callbacks_of_cancelled_futures_may_shut_the_executor_down() -> None:
    # The process pool's hang: a's callback cancels b; b's callback, run right
    # there by cancel(), calls shutdown() again.
    ex = stalwart.ThreadPoolExecutor(max_workers=1)
    a, gate = blocked(ex)
    b = ex.submit(pow, 2, 3)
    a_done = on_done(a, lambda: ex.shutdown(wait=False, cancel_futures=True))
    b_done = on_done(b, lambda: ex.shutdown(wait=False))
    gate.set()
    assert a_done.wait(HANG_S), "a's callback (shutdown, cancel_futures) hung"
    assert b_done.wait(HANG_S), "b's callback (shutdown) hung"
    assert a.result(timeout=HANG_S) is True
    assert b.cancelled()
    returns_within(ex.shutdown, "shutdown(wait=True) after the callbacks", HANG_S)


def test_a_done_callback_may_submit() -> None:
    ex = stalwart.ThreadPoolExecutor(max_workers=1)
    follow_ups: list[Future[int]] = []
    a = ex.submit(pow, 2, 3)
    returned = on_done(a, lambda: follow_ups.append(ex.submit(pow, 2, 4)))
    assert returned.wait(HANG_S), "a's callback (submit) hung"
    assert follow_ups[0].result(timeout=HANG_S) == 16
    returns_within(ex.shutdown, "shutdown(wait=True)", HANG_S)


def test_the_callback_of_a_cancelled_queued_future_may_submit() -> None:
    ex = stalwart.ThreadPoolExecutor(max_workers=1)
    running, gate = blocked(ex)
    queued = ex.submit(pow, 2, 3)
    follow_ups: list[Future[int]] = []
    returned = on_done(queued, lambda: follow_ups.append(ex.submit(pow, 2, 5)))
    try:
        assert queued.cancel()
        assert returned.wait(HANG_S), "the cancelled future's callback hung"
    finally:
        gate.set()
    assert follow_ups[0].result(timeout=HANG_S) == 32
    assert running.result(timeout=HANG_S) is True
    returns_within(ex.shutdown, "shutdown(wait=True)", HANG_S)


def test_shutdown_cancel_futures_from_a_done_callback_cancels_all_queued_work() -> None:
    ex = stalwart.ThreadPoolExecutor(max_workers=1)
    running, gate = blocked(ex)
    queued = [ex.submit(pow, 2, i) for i in range(4)]
    returned = on_done(running, lambda: ex.shutdown(wait=False, cancel_futures=True))
    gate.set()
    assert returned.wait(HANG_S), "the callback (shutdown, cancel_futures) hung"
    returns_within(ex.shutdown, "shutdown(wait=True)", HANG_S)
    # Every future still queued when the callback ran is cancelled, the one the
    # thread would have run next included; none ran, none was counted twice.
    assert [f.cancelled() for f in queued] == [True] * 4
    stats = ex.stats()
    assert (stats.tasks_completed, stats.tasks_cancelled) == (1, 4)


def test_shutdown_wait_from_a_done_callback_on_a_worker_thread_returns() -> None:
    # The callback runs on the worker thread that resolved the future: waiting
    # for every thread would include itself.
    ex = stalwart.ThreadPoolExecutor(max_workers=2)
    a = ex.submit(pow, 2, 3)
    returned = on_done(a, lambda: ex.shutdown(wait=True))
    assert returned.wait(HANG_S), "shutdown(wait=True) in a's callback hung"
    returns_within(ex.shutdown, "shutdown(wait=True) after it", HANG_S)


@pytest.mark.parametrize("reuse", [False, True], ids=["ends", "parks"])
def test_shutdown_wait_returns_only_after_the_last_callbacks_ran(
    reuse: bool,
) -> None:
    # As in the stdlib, whose shutdown(wait=True) joins the threads that run
    # the callbacks. A thread that parks (reuse=True) is not joined: it must
    # leave the pool only once its last future is resolved.
    ex = stalwart.ThreadPoolExecutor(max_workers=1, reuse=reuse, idle_timeout=0.1)
    last, gate = blocked(ex)
    release = threading.Event()
    returned = on_done(last, lambda: release.wait(HANG_S))
    closer = threading.Thread(target=ex.shutdown, name="test-closer", daemon=True)
    closer.start()
    gate.set()
    # A bounded look for what must not happen: shutdown() returning while the
    # callback still waits (it cannot finish before `release`).
    closer.join(0.3)
    early = closer.is_alive() is False and not returned.is_set()
    release.set()
    closer.join(HANG_S)
    assert not closer.is_alive(), "shutdown(wait=True) hung"
    assert not early, "shutdown(wait=True) returned before the last callback ran"
