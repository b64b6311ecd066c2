"""The warm set: idle workers parked by ``reuse=True`` executors, state and all.

An executor created with ``reuse=True`` parks its idle workers here when it
shuts down, under a key made of everything that shapes a worker; the next
``reuse=True`` executor with the same key adopts them at once, so a ``with``
block inside a loop pays for worker start-up and the initializer only once::

    shutdown() --park(key, worker)--> warm set --adopt(key, n)--> next executor
                                         |
                                         +-- idle_timeout passed: the worker exits
                                         +-- it died while parked: forgotten
                                         +-- interpreter exit: every worker exits

* Process workers stay what they were: a process and its pipe. One reaper
  thread ("stalwart-warm-reaper", running only while something is parked)
  waits on their sentinels and the nearest deadline, stops expired workers
  (the worker's own STOP message, then a kill after a grace period) and forgets
  dead ones. Parked workers still watch their parent, so a parent killed with
  SIGKILL leaves no orphan.
* Thread workers park themselves: the thread waits, its ``worker_state()``
  intact, until an executor adopts it or its idle timeout passes.

Keys compare the initializer call as pickled, for processes and threads alike:
``(1,)``, ``(True,)`` and ``(1.0,)`` are equal by ``==`` but may build other
state. A thread gets the very objects, so for threads what compares only by
identity (a list, a model, a closure) must also be the same object. Objects
known by identity (a multiprocessing queue in ``initargs``) are held by the
parked entry, so their ids cannot be reused while it is parked.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import math
import os
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from multiprocessing.connection import wait as wait_for_sentinels
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from stalwart import _pickling, _spawn, _wire

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from stalwart._memory import MemoryWatch

logger = logging.getLogger("stalwart")

REAPER_LINGER_S = 1.0
"""How long the reaper thread waits, with nothing parked, before it ends: with
blocks in a loop adopt everything and park it again a moment later, and a new
thread (and wake-up pipe) for each block would cost more than the block."""

STOP_GRACE_S = 5.0
"""How long a parked process worker may take to exit after STOP before a kill."""

A = TypeVar("A")


@dataclass(frozen=True)
class ReusePolicy:
    """How a ``reuse=True`` executor parks its workers: under which key, for how
    long, holding which objects (those its key knows only by identity)."""

    key: Hashable
    idle_timeout: float
    keepalive: tuple[Any, ...] = ()


def environment_fingerprint() -> tuple[Any, ...]:
    """What a new worker process inherits besides its start method and config:
    the working directory, ``sys.path`` and the environment variables. A worker
    started under other values (``CUDA_VISIBLE_DEVICES`` changed since) is not
    adopted."""
    return (os.getcwd(), tuple(sys.path), tuple(sorted(os.environ.items())))


def identity_key(objects: tuple[Any, ...]) -> tuple[int, ...]:
    """A key for objects that only compare by identity; hold them while keyed."""
    return tuple(id(obj) for obj in objects)


# -- process workers --------------------------------------------------------------


@dataclass
class ParkedProcess:
    """A worker process parked between executors, and what it still may do."""

    process: BaseProcess
    conn: Connection  # the parent's end; non-blocking
    tasks_left: int | None  # max_tasks_per_child budget left; None: unlimited
    claims: Any  # its _claims.ClaimTable, shared with it
    keepalive: tuple[Any, ...] = ()  # objects whose ids are part of its key
    # What its last executor had learnt, so the next one need not start over:
    # its dispatch window, when it went idle, and the measured task time.
    window: int = 1
    idle_since: float = 0.0
    avg_busy_s: float | None = None
    next_seq: int = 1  # the sequence number its next call gets (see _claims)
    # Its memory and OOM baseline, followed since it started: the adopter goes
    # on with it rather than reading the cgroup again for every with block.
    memory: MemoryWatch | None = None
    expires_at: float = 0.0  # monotonic
    stop_deadline: float = math.inf  # set once STOP was sent

    @property
    def alive(self) -> bool:
        return self.process.exitcode is None


class _ProcessWarmSet:
    """Parked worker processes by key, and the reaper thread that ends them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.parked: dict[Hashable, list[ParkedProcess]] = {}
        self.stopping: list[ParkedProcess] = []  # STOP sent, not yet exited
        self.closed = False  # interpreter exit: nothing is parked any more
        self.reaper: threading.Thread | None = None
        self.reaper_wakes_at = -math.inf  # when its current wait ends (monotonic)
        self.wake_r = self.wake_w = -1  # the reaper's wake-up pipe, while it runs

    def park(self, key: Hashable, worker: ParkedProcess, idle_timeout: float) -> bool:
        """Keep ``worker`` for ``idle_timeout`` s; False if it must be stopped now."""
        with self.lock:
            if self.closed:
                return False
            worker.expires_at = time.monotonic() + idle_timeout
            self.parked.setdefault(key, []).append(worker)
            if not self._ensure_reaper():
                self.parked[key].remove(worker)
                return False
            if worker.expires_at < self.reaper_wakes_at:
                # Otherwise the reaper sees this worker when it next wakes; with
                # blocks in a loop, the next block adopts it well before that.
                self._wake()
        return True

    def adopt(self, key: Hashable, n: int) -> list[ParkedProcess]:
        """Up to ``n`` live workers parked under ``key``, most recently parked first."""
        adopted: list[ParkedProcess] = []
        dead: list[ParkedProcess] = []
        with self.lock:
            workers = self.parked.get(key, [])
            while workers and len(adopted) < n:
                worker = workers.pop()
                (adopted if worker.alive else dead).append(worker)
            if not workers:
                self.parked.pop(key, None)
            # No need to wake the reaper: an adopted worker's sentinel or
            # deadline in its wait can only make it look again, sooner.
        for worker in dead:
            _release(worker)
        return adopted

    def close(self) -> None:
        """Interpreter exit: stop every parked worker and wait (boundedly) for it."""
        with self.lock:
            self.closed = True
            reaper = self.reaper
            for workers in self.parked.values():
                for worker in workers:
                    _send_stop(worker)
                    self.stopping.append(worker)
            self.parked.clear()
            self._wake()
        if reaper is not None:
            reaper.join(STOP_GRACE_S + 1.0)

    # -- the reaper -----------------------------------------------------------------

    def _ensure_reaper(self) -> bool:
        """Start the reaper thread if it is not running (lock held)."""
        if self.reaper is not None:
            return True
        self.reaper_wakes_at = -math.inf  # it looks at everything when it starts
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        reaper = threading.Thread(
            target=self._reap, name="stalwart-warm-reaper", daemon=True
        )
        try:
            reaper.start()
        except RuntimeError:  # interpreter finalizing: no new threads
            self._close_wake_pipe()
            return False
        self.reaper = reaper
        return True

    def _wake(self) -> None:
        if self.wake_w >= 0:
            with contextlib.suppress(OSError):  # full: awake already
                os.write(self.wake_w, b"\0")

    def _close_wake_pipe(self) -> None:
        os.close(self.wake_r)
        os.close(self.wake_w)
        self.wake_r = self.wake_w = -1

    def _reap(self) -> None:
        last_busy = time.monotonic()
        while True:
            with self.lock:
                self._end_expired_and_dead()
                everyone = [w for ws in self.parked.values() for w in ws]
                everyone += self.stopping
                now = time.monotonic()
                if everyone:
                    last_busy = now
                elif self.closed or now - last_busy >= REAPER_LINGER_S:
                    self.reaper = None
                    self._close_wake_pipe()
                    return
                deadlines = [w.expires_at for ws in self.parked.values() for w in ws]
                deadlines += [w.stop_deadline for w in self.stopping]
                deadlines.append(last_busy + REAPER_LINGER_S)
                sentinels = [w.process.sentinel for w in everyone]
                wake_r = self.wake_r
                self.reaper_wakes_at = min(deadlines)
            wait_s = max(0.0, self.reaper_wakes_at - time.monotonic())
            try:
                ready = wait_for_sentinels([wake_r, *sentinels], wait_s)
            except (OSError, ValueError):
                # A worker adopted meanwhile may have died and had its sentinel
                # closed by its new executor: look again at what is still here.
                continue
            if wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 4096):
                        pass

    def _end_expired_and_dead(self) -> None:
        """STOP the expired, kill the overdue, forget the dead (lock held)."""
        now = time.monotonic()
        for key, workers in list(self.parked.items()):
            for worker in list(workers):
                if not worker.alive:
                    workers.remove(worker)
                    logger.debug("parked worker %s died", worker.process.pid)
                    _release(worker)
                elif worker.expires_at <= now:
                    workers.remove(worker)
                    logger.debug("parked worker %s idle: stopping", worker.process.pid)
                    _send_stop(worker)
                    self.stopping.append(worker)
            if not workers:
                del self.parked[key]
        for worker in list(self.stopping):
            if not worker.alive:
                self.stopping.remove(worker)
                _release(worker)
            elif worker.stop_deadline <= now:
                logger.warning(
                    "parked worker %s did not exit; killing it", worker.process.pid
                )
                _spawn.kill_worker_tree(worker.process)
                worker.stop_deadline = now + STOP_GRACE_S  # look again later


def _send_stop(worker: ParkedProcess) -> None:
    """Ask a parked worker to exit: its STOP message (EOF alone is not enough
    under fork, where the worker may hold a copy of our end of its pipe)."""
    worker.stop_deadline = time.monotonic() + STOP_GRACE_S
    with contextlib.suppress(OSError):  # already gone: its sentinel will say so
        os.write(worker.conn.fileno(), _wire.frame_header(0))
    worker.conn.close()


def _release(worker: ParkedProcess) -> None:
    """Reap an exited worker and drop its pipe and process object (and fds)."""
    worker.process.join()
    if not worker.conn.closed:
        worker.conn.close()
    worker.claims.close()
    if worker.memory is not None:
        worker.memory.close()


# -- thread workers -----------------------------------------------------------------


@dataclass
class ParkedThread(Generic[A]):
    """A worker thread waiting to be adopted; ``assignment`` is its next pool."""

    thread: threading.Thread
    tasks_left: int | None
    keepalive: tuple[Any, ...] = ()
    adopted: threading.Event = field(default_factory=threading.Event)
    assignment: A | None = None

    def hand_over(self, assignment: A | None) -> None:
        """Give the thread its next pool (None: exit)."""
        self.assignment = assignment
        self.adopted.set()


class _ThreadWarmSet(Generic[A]):
    """Parked worker threads by key; each waits for adoption on its own."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.parked: dict[Hashable, collections.deque[ParkedThread[A]]] = {}
        self.closed = False

    def park(self, key: Hashable, worker: ParkedThread[A]) -> bool:
        """Register the calling worker thread; False if it must exit instead."""
        with self.lock:
            if self.closed:
                return False
            self.parked.setdefault(key, collections.deque()).append(worker)
        return True

    def wait_for_adoption(
        self, key: Hashable, worker: ParkedThread[A], idle_timeout: float
    ) -> A | None:
        """Run by the parked thread: its next assignment, or None to exit."""
        if worker.adopted.wait(idle_timeout):
            return worker.assignment
        with self.lock:
            workers = self.parked.get(key)
            if workers is not None and worker in workers:
                workers.remove(worker)
                if not workers:
                    del self.parked[key]
                return None
        # Adopted just as it expired: the adopter hands it over at once.
        worker.adopted.wait()
        return worker.assignment

    def adopt(self, key: Hashable, n: int) -> list[ParkedThread[A]]:
        """Up to ``n`` threads parked under ``key``; the caller must hand each over."""
        with self.lock:
            workers = self.parked.get(key)
            adopted: list[ParkedThread[A]] = []
            while workers and len(adopted) < n:
                adopted.append(workers.pop())
            if workers is not None and not workers:
                del self.parked[key]
        return adopted

    def close(self) -> None:
        """Interpreter exit: every parked thread exits."""
        with self.lock:
            self.closed = True
            parked = [w for ws in self.parked.values() for w in ws]
            self.parked.clear()
        for worker in parked:
            worker.hand_over(None)


PROCESSES = _ProcessWarmSet()
THREADS: _ThreadWarmSet[Any] = _ThreadWarmSet()


def thread_key(
    initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]
) -> tuple[Hashable, tuple[Any, ...]]:
    """(key, keepalive) for a thread pool's initializer: only calls that would
    build the same state share a key.

    By the call as pickled, as the process pool compares it: ``(1,)``,
    ``(True,)`` and ``(1.0,)`` are equal by ``==``, yet an initializer may
    build different state from each, and their pickles differ. And unlike a
    worker process, a thread's initializer gets the very objects, so what
    compares by identity (a list, a model, a closure: no hash, or the default
    one) must also be the same object; those are held alive while keyed. What
    cannot be pickled at all is known by identity alone. The key holds a
    digest, not the pickle, so a large initarg is not kept twice meanwhile.
    """

    def by_identity(obj: Any) -> tuple[Any, ...]:
        if isinstance(obj, types.MethodType):
            # A new object at each attribute access: its instance is what counts.
            return (obj.__self__, obj.__func__)
        try:
            hash(obj)
        except TypeError:
            return (obj,)
        hasher: object = type(obj).__hash__
        return (obj,) if hasher is object.__hash__ else ()

    objects = (initializer, *initargs)
    try:
        call = _pickling.dumps((initializer, initargs))
    except MemoryError:
        raise
    except Exception:  # noqa: BLE001 - whatever pickling raises: not picklable
        return ("identity", identity_key(objects)), objects
    shared = tuple(part for obj in objects for part in by_identity(obj))
    return ("pickled", hashlib.sha256(call).digest(), identity_key(shared)), shared


def _on_interpreter_exit() -> None:
    THREADS.close()
    PROCESSES.close()


def _forget_inherited_warm_sets() -> None:
    """A forked child owns none of its parent's parked workers, and the warm
    sets' locks may have been held by a parent thread at the fork."""
    global PROCESSES, THREADS
    PROCESSES = _ProcessWarmSet()
    THREADS = _ThreadWarmSet()


os.register_at_fork(after_in_child=_forget_inherited_warm_sets)
threading._register_atexit(_on_interpreter_exit)  # type: ignore[attr-defined]
