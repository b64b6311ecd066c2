"""Done-callbacks run user code: on the process pool they may call back into the
executor (submit, shutdown) from any future, cancelled or not, without a hang.

The process pool's I/O thread resolves and cancels futures, so their callbacks
run there. Had it held the pool's lock while cancelling, a callback's own
submit() or shutdown() would wait for that lock forever: the I/O thread, every
future and interpreter exit would hang. Each test bounds its waits by HANG_S,
so a hang fails fast. (The thread pool has its own: test_thread_callbacks.py.)
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import stalwart
from tests._scripts import run_for_json
from tests._tasks import block_until
from tests.conftest import returns_within

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Future

pytestmark = pytest.mark.timeout(90)

HANG_S = 15.0
"""How long a step may take before it counts as hung (each takes milliseconds,
once the worker has started)."""


SENT_AHEAD_AT_MOST = 3
"""Calls queued behind the gated one that the I/O thread may hand to the worker
as soon as it answers, before a callback's shutdown(cancel_futures=True) takes
effect; a call the worker has already claimed runs, as in the stdlib's pool.
Queuing this many first makes the next one's cancellation certain."""


class Callback:
    """A done-callback running `action`; `returned` is set once it returned,
    and what it returned or raised is kept."""

    def __init__(self, future: Future[Any], action: Callable[[], Any]) -> None:
        self.returned = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self._action = action
        future.add_done_callback(self)

    def __call__(self, _: Future[Any]) -> None:
        try:
            self.value = self._action()
        except BaseException as exc:  # the test looks at it
            self.error = exc
        finally:
            self.returned.set()


def gated_task(
    ex: stalwart.ProcessPoolExecutor, manager: Any
) -> tuple[Future[str], Any]:
    """A task running in a worker until the test sets the returned gate."""
    started, gate = manager.Event(), manager.Event()
    future = ex.submit(block_until, started, gate, "gated")
    assert started.wait(HANG_S), "the gated task never started"
    return future, gate


def try_submit(ex: stalwart.ProcessPoolExecutor) -> str:
    """What submit() does now, as a word: a hang shows as a callback not returning."""
    try:
        ex.submit(pow, 2, 2)
    except RuntimeError:
        return "refused"
    return "accepted"


def test_callbacks_of_cancelled_futures_may_shut_the_executor_down(
    manager: Any,
) -> None:
    # The reported hang: a's callback cancels what is queued; b's callback, run
    # as b is cancelled, calls shutdown() again.
    ex = stalwart.ProcessPoolExecutor(max_workers=1)
    a, gate = gated_task(ex, manager)
    ahead = [ex.submit(pow, 2, i) for i in range(SENT_AHEAD_AT_MOST)]
    b = ex.submit(pow, 2, 10)
    a_callback = Callback(a, lambda: ex.shutdown(wait=False, cancel_futures=True))
    b_callback = Callback(b, lambda: ex.shutdown(wait=False))
    gate.set()
    assert a_callback.returned.wait(HANG_S), "a's callback (cancel_futures) hung"
    assert b_callback.returned.wait(HANG_S), "b's callback (shutdown) hung"
    assert a_callback.error is None
    assert b_callback.error is None
    assert a.result(timeout=HANG_S) == "gated"
    assert b.cancelled()
    done, _ = wait(ahead, timeout=HANG_S)
    assert len(done) == len(ahead)
    for i, future in enumerate(ahead):
        assert future.cancelled() or future.result() == 2**i
    returns_within(ex.shutdown, "shutdown(wait=True) after the callbacks", HANG_S)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(pow, 2, 2)


def test_callbacks_of_cancelled_futures_may_submit(manager: Any) -> None:
    ex = stalwart.ProcessPoolExecutor(max_workers=1)
    a, gate = gated_task(ex, manager)
    queued = [ex.submit(pow, 2, i) for i in range(20)]
    callbacks = [Callback(f, lambda: try_submit(ex)) for f in queued]
    Callback(a, lambda: ex.shutdown(wait=False, cancel_futures=True))
    gate.set()
    for i, callback in enumerate(callbacks):
        assert callback.returned.wait(HANG_S), f"queued[{i}]'s callback hung"
    # The executor was shut down when they ran: submit() refuses, promptly.
    assert [c.error for c in callbacks] == [None] * len(queued)
    assert [c.value for c in callbacks] == ["refused"] * len(queued)
    assert a.result(timeout=HANG_S) == "gated"
    cancelled = [f for f in queued if f.cancelled()]
    assert len(cancelled) >= len(queued) - SENT_AHEAD_AT_MOST
    returns_within(ex.shutdown, "shutdown(wait=True) after the callbacks", HANG_S)


def test_shutdown_with_cancel_futures_from_a_callback_ends_a_long_queue(
    manager: Any,
) -> None:
    """Each cancelled future's callback asks for the same again: the I/O thread
    is cancelling when they run, and must neither hang nor lose any."""
    ex = stalwart.ProcessPoolExecutor(max_workers=1)
    a, gate = gated_task(ex, manager)
    queued = [ex.submit(pow, 3, i) for i in range(500)]
    again = [
        Callback(f, lambda: ex.shutdown(wait=False, cancel_futures=True))
        for f in queued
    ]
    shut = Callback(a, lambda: ex.shutdown(wait=False, cancel_futures=True))
    gate.set()
    assert shut.returned.wait(HANG_S), "the callback's shutdown() hung"
    assert shut.error is None
    _, not_done = wait(queued, timeout=HANG_S)
    assert not not_done, f"{len(not_done)} queued futures never ended"
    for i, callback in enumerate(again):
        assert callback.returned.wait(HANG_S), f"queued[{i}]'s callback hung"
        assert callback.error is None
    assert sum(f.cancelled() for f in queued) >= len(queued) - SENT_AHEAD_AT_MOST
    for i, future in enumerate(queued):
        assert future.cancelled() or future.result() == 3**i
    assert a.result(timeout=HANG_S) == "gated"
    returns_within(ex.shutdown, "shutdown(wait=True) after the callbacks", HANG_S)


def test_callback_may_submit_while_the_executor_runs() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        first = ex.submit(pow, 2, 5)
        chained = Callback(first, lambda: ex.submit(pow, first.result(), 2))
        assert chained.returned.wait(HANG_S), "a callback's submit() hung"
        assert chained.error is None
        assert chained.value.result(timeout=HANG_S) == 32**2
        # Chains of callbacks that submit, many deep, all from the I/O thread.
        results: list[int] = []
        finished = threading.Event()

        def submit_next(future: Future[int]) -> None:
            results.append(future.result())
            if len(results) < 50:
                ex.submit(pow, 2, len(results)).add_done_callback(submit_next)
            else:
                finished.set()

        ex.submit(pow, 2, 0).add_done_callback(submit_next)
        assert finished.wait(HANG_S), "a chain of submitting callbacks stalled"
        assert results == [2**i for i in range(50)]


def test_a_raising_callback_breaks_nothing(
    manager: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def boom() -> None:
        raise ValueError("callback bug")

    ex = stalwart.ProcessPoolExecutor(max_workers=1)
    with caplog.at_level(logging.ERROR, logger="concurrent.futures"):
        # On a result: the next callback still runs, the executor still works.
        first = ex.submit(pow, 2, 3)
        first.add_done_callback(lambda _: boom())
        after = Callback(first, lambda: "ran")
        assert after.returned.wait(HANG_S)
        assert first.result(timeout=HANG_S) == 8
        assert ex.submit(pow, 2, 4).result(timeout=HANG_S) == 16
        # On a cancelled future, cancelled by the I/O thread.
        a, gate = gated_task(ex, manager)
        queued = [ex.submit(pow, 2, i) for i in range(10)]
        afters = []
        for future in queued:
            future.add_done_callback(lambda _: boom())
            afters.append(Callback(future, lambda: "ran"))
        shut = Callback(a, lambda: ex.shutdown(wait=False, cancel_futures=True))
        gate.set()
        assert shut.returned.wait(HANG_S)
        assert all(c.returned.wait(HANG_S) for c in afters), "later callbacks lost"
        assert a.result(timeout=HANG_S) == "gated"
        returns_within(
            ex.shutdown, "shutdown(wait=True) after raising callbacks", HANG_S
        )
    raised = [r for r in caplog.records if "exception calling callback" in r.message]
    assert len(raised) == 1 + len(queued)
    assert all("callback bug" in str(r.exc_info[1]) for r in raised if r.exc_info)


def test_interpreter_exit_after_a_shutdown_from_callbacks_does_not_hang(
    tmp_path: Path,
) -> None:
    """The reported hang reached exit too: it waits for the I/O thread."""
    code = f"""
            import json, multiprocessing, sys
            import stalwart
            from tests._tasks import block_until

            if __name__ == "__main__":
                with multiprocessing.get_context("spawn").Manager() as manager:
                    started, gate = manager.Event(), manager.Event()
                    ex = stalwart.ProcessPoolExecutor(1)
                    a = ex.submit(block_until, started, gate, "a")
                    if not started.wait(60):
                        sys.exit("the gated task never started")
                    ahead = [ex.submit(pow, 2, i) for i in range({SENT_AHEAD_AT_MOST})]
                    b = ex.submit(pow, 2, 10)
                    a.add_done_callback(
                        lambda f: ex.shutdown(wait=False, cancel_futures=True)
                    )
                    b.add_done_callback(lambda f: ex.shutdown(wait=False))
                    gate.set()
                    print(json.dumps({{"a": a.result(timeout=60)}}), flush=True)
                print(json.dumps({{"leaving": True}}), flush=True)
    """
    lines = run_for_json(tmp_path, code, timeout=HANG_S * 3)
    assert lines == [{"a": "a"}, {"leaving": True}]
