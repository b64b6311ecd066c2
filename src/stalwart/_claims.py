"""Claims: who decides that a call sent ahead to a worker runs, or is taken back.

A worker is sent a few calls ahead, so that tiny tasks travel in batches. Yet a
call that has not started must stay cancellable (``cancel()`` is exact), and
must be revocable when another worker sits idle. So the parent and each
worker share one small page (a memfd) and a process-shared lock (a semaphore
of the executor's own start method), and change the page only under the lock::

    word 0                   sequence number of the last call the worker started
    word 1 + seq % RING      holds ``seq`` once the parent revoked call ``seq``

    worker, before call seq:   lock; revoked? skip it : word 0 = seq;   unlock
    parent, to take seq back:  lock; word 0 >= seq? too late : revoke;  unlock

Exactly one side wins: a call whose ``cancel()`` returned True never runs, and
one that started is never reported cancelled. An uncontended semaphore costs
the worker a tenth of a microsecond per call (no system call). A worker killed
inside its three lines would leave the lock taken: the parent waits for it at
most ``_LOCK_WAIT_S`` and then counts the call as started (it may yet run),
and once the worker's end is settled its table answers without the lock.

``TaskFuture`` is the other half: a ``concurrent.futures.Future`` whose
``cancel()`` asks the worker's page first while its call sits in a worker's
backlog. It stays PENDING until the worker has started the call, so
``running()``, ``cancel()`` and ``shutdown(cancel_futures=True)`` mean what
they mean for the stdlib's pool.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import tempfile
import threading
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED, PENDING, RUNNING
from multiprocessing import reduction
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable

RING = 1024
"""Revocation words per worker. The parent never has more than this many calls
sent to one worker and not yet passed by it (see ``ClaimTable.capacity``)."""

_WORD = 8
_SIZE = _WORD * (1 + RING)
_LOCK_WAIT_S = 1.0
"""How long the parent waits for a worker's lock: the worker holds it for three
lines, so only a worker stopped (SIGSTOP) or killed inside them makes this run
out; the call then counts as started (it may yet run)."""


class ClaimTable:
    """The page one worker and its parent share; see the module docstring."""

    def __init__(self, context: Any = None, fd: int | None = None, lock: Any = None):
        if fd is None:
            fd = _anonymous_file()
            os.ftruncate(fd, _SIZE)
        if lock is None:
            lock = (context or multiprocessing.get_context("spawn")).Lock()
        self.fd = fd
        self._lock = lock  # process-shared: the worker's and the parent's
        self._map = mmap.mmap(fd, _SIZE)
        self._words = memoryview(self._map).cast("q")
        self._thread_lock = threading.Lock()  # the parent's threads, and close()

    def __reduce__(self) -> tuple[Callable[..., ClaimTable], tuple[Any, ...]]:
        # Only ever pickled to start a worker: the start method passes the fd,
        # and pickles the lock its own way.
        return _attach, (reduction.DupFd(self.fd), self._lock)

    # -- the worker's side ---------------------------------------------------------

    def start(self, seq: int) -> bool:
        """Worker: may call ``seq`` run? True marks it started; False: revoked."""
        lock = self._lock
        lock.acquire()
        try:
            words = self._words
            if words[1 + seq % RING] == seq:
                return False
            words[0] = seq
            return True
        finally:
            lock.release()

    # -- the parent's side ---------------------------------------------------------

    def started(self) -> int:
        """The last sequence number the worker started (0: none yet). Read
        without the lock: a word is written atomically, and a stale value only
        makes the caller look again later."""
        return int(self._words[0])

    def revoke(self, seq: int) -> bool:
        """Take call ``seq`` back; False if the worker has already started it."""
        with self._thread_lock:
            if self.fd < 0:
                return False  # closed: its worker has ended and been settled
            if not self._lock.acquire(timeout=_LOCK_WAIT_S):
                return False  # held by a worker that died or was stopped in it
            try:
                if self._words[0] >= seq:
                    return False
                self._words[1 + seq % RING] = seq
                return True
            finally:
                self._lock.release()

    def close(self) -> None:
        """Unmap and close (idempotent); the worker keeps its own mapping."""
        with self._thread_lock:
            if self.fd < 0:
                return
            self._words.release()
            self._map.close()
            os.close(self.fd)
            self.fd = -1
            self._lock = None


def _attach(fd: Any, lock: Any) -> ClaimTable:
    """Rebuild the table in the worker from what the start method passed."""
    return ClaimTable(fd=fd.detach() if hasattr(fd, "detach") else int(fd), lock=lock)


def _anonymous_file() -> int:
    if hasattr(os, "memfd_create"):
        return os.memfd_create("stalwart-claims", os.MFD_CLOEXEC)
    with tempfile.TemporaryFile() as file:  # unlinked at once; the fd survives
        return os.dup(file.fileno())


class SentAhead(Protocol):
    """What a future sent ahead to a worker knows of its call."""

    seq: int

    def take_back(self) -> bool:
        """Revoke the call in its worker; False if it has started there."""


class TaskFuture(Future[Any]):
    """A ``Future`` whose ``cancel()`` can take its call back from a worker.

    Between ``mark_sent_ahead`` and ``claim_started`` the call sits in a
    worker's backlog: ``cancel()`` then revokes it there first, and succeeds
    exactly when the worker had not started it.
    """

    _sent_ahead: SentAhead | None = None
    retries = 0  # times its call was run again because its worker died

    def cancel(self) -> bool:
        with self._condition:
            sent = self._sent_ahead
            if sent is None or self._state != PENDING:
                cancel_here = False
            elif sent.take_back():
                # Cancelled in the same hold of the lock as the revocation, so
                # the dispatcher, told by take_back(), finds it cancelled.
                self._sent_ahead = None
                self._state = CANCELLED
                self._condition.notify_all()
                cancel_here = True
            else:
                # It started in the worker: it is running, as the stdlib's
                # future of a call its worker has picked up.
                self._sent_ahead = None
                self.set_running_or_notify_cancel()
                return False
        if cancel_here:
            self._invoke_callbacks()  # type: ignore[attr-defined]
            return True
        return super().cancel()


def _lock_of(future: Future[Any]) -> Any:
    """The lock under the future's Condition: the same lock its methods take,
    taken here without the Condition's Python-level ``__enter__`` (this runs
    twice per call)."""
    return future._condition._lock  # type: ignore[attr-defined]


def mark_sent_ahead(future: Future[Any], sent: SentAhead) -> bool:
    """Before a call is written to a worker: from now on ``cancel()`` revokes it
    there. False if the future was cancelled: do not send it. (A retried call
    is RUNNING already, and stays so.)"""
    with _lock_of(future):
        state = future._state
        if state == PENDING:
            future._sent_ahead = sent  # type: ignore[attr-defined]
            return True
        return bool(state == RUNNING)


def withdraw(future: Future[Any]) -> bool:
    """The call left its worker's backlog unstarted (its worker died): from now
    on ``cancel()`` is plain again. False if the future was cancelled."""
    with future._condition:
        future._sent_ahead = None  # type: ignore[attr-defined]
        return not future.cancelled()


def take_back(future: Future[Any], claims: ClaimTable, seq: int) -> bool | None:
    """The dispatcher revokes call ``seq`` to run it elsewhere: None if the
    worker has started it; else whether it is still wanted (False: cancelled).
    Under the future's lock, so a concurrent ``cancel()`` sees one outcome."""
    with future._condition:
        if not claims.revoke(seq):
            return None
        future._sent_ahead = None  # type: ignore[attr-defined]
        return not future.cancelled()


def claim_started(future: Future[Any]) -> bool:
    """The worker started (or answered) the call: move the future to RUNNING.

    False only if it was cancelled before it was ever sent ahead (then its
    waiters are notified, as ``set_running_or_notify_cancel`` does).
    """
    with _lock_of(future):
        future._sent_ahead = None  # type: ignore[attr-defined]
        state = future._state
        if state == PENDING:
            future._state = RUNNING  # what set_running_or_notify_cancel does
            return True
        if state == RUNNING:
            return True
        return future.set_running_or_notify_cancel()
