"""ThreadPoolExecutor: the stdlib thread pool, plus task timeouts, recycling,
per-thread initializer state and an optional pickling pre-check.

Data flow::

    submit(fn, *args)                                   caller's thread
      | check_pickle=True: _pickling.serialize_call(), bytes discarded
      v
    _WorkItem --> _Pool.queue (a deque under _Pool.lock)
      |             |  work_ready.notify(); a new thread only when the queue
      |             |  outgrows the idle workers (up to max_workers)
      v             v
    worker thread "<prefix>_<n>": initializer once -> worker_state(),
      then pop, claim the future, run fn, resolve the future; exits after
      max_tasks_per_child tasks, at shutdown once the queue is empty, or
      when the pool breaks.

    watchdog thread "<prefix>_watchdog" (one per pool, started with the first
    task that has a task_timeout): waits on `deadlines_changed` until the
    nearest running task's deadline. An overdue task's future fails with
    TaskTimeoutError, its thread is abandoned, and a replacement starts if
    work is waiting (or on the next submit()).

Every decision that could race (a task finishing just as its deadline passes,
a worker going idle just as work arrives) is taken under ``_Pool.lock``; futures
are resolved outside it, since their callbacks run user code that may submit.

Worker threads are daemon threads, so that an abandoned thread stuck in a task
never blocks interpreter exit; an exit hook still finishes the submitted work,
as the stdlib's non-daemon workers do, by shutting every pool down and waiting
for its (non-abandoned) workers.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import os
import threading
import time
import traceback
import weakref
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor as _StdlibThreadPoolExecutor
from concurrent.futures.thread import BrokenThreadPool
from typing import TYPE_CHECKING, Any, TypeVar

from stalwart import _map, _options, _pickling, _reuse, _state
from stalwart._stats import ExecutorStats
from stalwart.errors import InitializerError, TaskTimeoutError

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.context import BaseContext
    from types import TracebackType

    from typing_extensions import ParamSpec, Self

    P = ParamSpec("P")

R = TypeVar("R")

logger = logging.getLogger("stalwart")

_STDLIB_LOGGER = logging.getLogger("concurrent.futures")
"""Where the stdlib thread pool logs a failed initializer (at CRITICAL); we log
there too, so logging set up for the stdlib pool keeps seeing it."""

_name_counter = itertools.count()


class _ThreadInitializerError(InitializerError, BrokenThreadPool):
    """The initializer raised in a worker thread; the thread pool is broken.

    Both an ``InitializerError`` (what stalwart's process pool raises, so
    ``except stalwart.InitializerError`` works for every executor kind) and a
    ``BrokenThreadPool`` (what the stdlib thread pool raises, so code written
    for it keeps working).
    """


class _WorkItem:
    """One submitted call and its future."""

    __slots__ = ("args", "fn", "future", "kwargs", "timeout")

    def __init__(
        self,
        future: Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.timeout = timeout  # task_timeout, in seconds of running

    def describe(self) -> str:
        return _map.describe(self.fn, self.args, self.kwargs)


class _Worker:
    """One worker thread and the task it is running."""

    __slots__ = ("abandoned", "deadline", "item", "tasks_left", "thread")

    def __init__(self, tasks_left: int | None) -> None:
        self.thread: threading.Thread | None = None
        self.item: _WorkItem | None = None  # running now
        self.deadline: float | None = None  # monotonic; when `item` times out
        self.tasks_left = tasks_left  # None: unlimited
        self.abandoned = False  # timed out: its result is discarded, it exits


class _Breakage:
    """Why a pool broke; builds a fresh exception for each future it fails."""

    __slots__ = ("cause", "message", "remote_traceback")

    def __init__(
        self, message: str, cause: BaseException, remote_traceback: str | None
    ) -> None:
        self.message = message
        self.cause = cause
        self.remote_traceback = remote_traceback  # set: the initializer failed

    def error(self) -> BrokenThreadPool:
        error: BrokenThreadPool
        if self.remote_traceback is not None:
            error = _ThreadInitializerError(
                self.message, remote_traceback=self.remote_traceback
            )
        else:
            error = BrokenThreadPool(self.message)
        error.__cause__ = self.cause
        return error


class _Pool:
    """The queue, the worker threads and the watchdog of one executor.

    Kept apart from the executor so that no thread holds a reference to it: an
    executor dropped without ``shutdown()`` is collected, which shuts the pool
    down here (as the stdlib does).
    """

    def __init__(
        self,
        max_workers: int,
        name_prefix: str,
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
        max_tasks: int | None,
        reuse: _reuse.ReusePolicy | None,
    ) -> None:
        self.max_workers = max_workers
        self.name_prefix = name_prefix
        self.initializer = initializer
        self.initargs = initargs
        self.max_tasks = max_tasks
        self.reuse = reuse
        self.stats = ExecutorStats()
        self.abandoned_to_replace = 0  # abandoned threads not replaced yet

        self.lock = threading.Lock()
        self.work_ready = threading.Condition(self.lock)  # idle workers wait here
        # The watchdog waits here for an earlier deadline; shutdown() waits here
        # for the workers to exit.
        self.deadlines_changed = threading.Condition(self.lock)
        self.queue: collections.deque[_WorkItem] = collections.deque()
        self.workers: set[_Worker] = set()  # started, not exited, not abandoned
        # Workers that will take a queued item without a new thread starting:
        # waiting, starting, or done with a task and about to look again. Counted
        # before a finished task's future resolves, so a caller that submits on
        # seeing the result finds the thread idle (the stdlib reuses it too).
        self.idle = 0
        self.thread_numbers = itertools.count()
        self.exited: list[threading.Thread] = []  # retired, for shutdown to join
        self.watchdog: threading.Thread | None = None
        self.watchdog_wakes_at = math.inf
        self.shutdown_requested = False
        self.broken: _Breakage | None = None
        self.doomed: list[_WorkItem] = []  # queued when the pool broke; to fail
        self.unstarted: list[_Worker] = []  # planned threads, started without lock

    # -- called from user threads (lock held unless said otherwise) -------------

    def enqueue(self, item: _WorkItem) -> None:
        if self.broken is not None:
            raise self.broken.error()
        if self.shutdown_requested:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        self.queue.append(item)
        self.stats.tasks_submitted += 1
        self.work_ready.notify()
        self.plan_workers()

    def plan_workers(self) -> None:
        """Plan threads until the idle ones cover the queue, up to max_workers.

        Lock held. They are started by ``start_planned()`` once the lock is
        released, so that a new thread can take its first task at once (as the
        stdlib's does) instead of waiting for the submitting thread.
        """
        while len(self.queue) > self.idle and len(self.workers) < self.max_workers:
            worker = _Worker(self.max_tasks)
            worker.thread = threading.Thread(
                target=_worker_thread,
                # A list the thread empties: Thread keeps its args until the
                # thread ends, and a parked thread must not keep this pool alive.
                args=([(self, worker)],),
                name=self.next_thread_name(),
                daemon=True,  # abandoned threads must not block exit; see _on_exit
            )
            self.workers.add(worker)
            self.idle += 1
            self.unstarted.append(worker)
            self.stats.workers_started += 1
            if self.abandoned_to_replace:
                self.abandoned_to_replace -= 1
                self.stats.workers_replaced += 1
            _live_pools.add(self)

    def next_thread_name(self) -> str:
        return f"{self.name_prefix}_{next(self.thread_numbers)}"

    def adopt(self, parked: list[_reuse.ParkedThread[Any]]) -> None:
        """Take over warm threads parked by an earlier pool. No lock."""
        with self.lock:
            workers = []
            for handle in parked:
                worker = _Worker(handle.tasks_left)
                worker.thread = handle.thread
                worker.thread.name = self.next_thread_name()
                self.workers.add(worker)
                self.idle += 1
                workers.append(worker)
            self.stats.workers_reused += len(parked)
            if parked:
                _live_pools.add(self)
        for handle, worker in zip(parked, workers, strict=True):
            handle.hand_over((self, worker))

    def start_planned(self) -> Exception | None:
        """Start the planned threads. Lock NOT held.

        Returns why a thread could not start when, as a result, the pool has no
        thread left to run the queue; None otherwise.
        """
        with self.lock:
            planned, self.unstarted = self.unstarted, []
        failure = None
        for worker in planned:
            assert worker.thread is not None
            try:
                worker.thread.start()
            except Exception as exc:  # noqa: BLE001 - handled by the caller
                with self.lock:
                    self.workers.discard(worker)
                    self.idle -= 1
                    self.stats.workers_started -= 1
                    self.deadlines_changed.notify_all()
                    if not self.workers:
                        failure = exc
        return failure

    def discard_queued(self, item: _WorkItem) -> bool:
        """Take back an item no thread could be started for; False if taken."""
        with self.lock:
            try:
                self.queue.remove(item)
            except ValueError:
                return False
            return True

    def settle(self) -> None:
        """Start planned threads and fail what a break left behind. Lock NOT held."""
        failure = self.start_planned()
        if failure is not None:
            with self.lock:
                if not self.workers and self.queue and self.broken is None:
                    self._break(
                        _Breakage(
                            f"no worker thread could be started ({failure!r}), so "
                            "the thread pool is broken and every queued future "
                            "fails with this error. Too many threads run in this "
                            "process, or the interpreter is shutting down.",
                            failure,
                            None,
                        )
                    )
        self.fail_doomed()

    def request_shutdown(self, cancel_futures: bool, park: bool = True) -> None:
        """Refuse new work; the queued work still runs unless cancelled. No lock.

        ``park=False``: idle threads end instead of parking (``reuse=True``).
        """
        with self.lock:
            self.shutdown_requested = True
            if not park:
                self.reuse = None
            cancelled = list(self.queue) if cancel_futures else []
            if cancel_futures:
                self.queue.clear()
            self.work_ready.notify_all()
            self.deadlines_changed.notify_all()
        for item in cancelled:
            item.future.cancel()
            # Moves it to CANCELLED_AND_NOTIFIED: wait() and as_completed() count
            # a cancelled future as done only once the executor said so.
            if not item.future.set_running_or_notify_cancel():
                self.stats.tasks_cancelled += 1

    def join(self) -> None:
        """Wait for every non-abandoned worker, and the watchdog, to exit. No lock."""
        me = threading.current_thread()
        with self.lock:
            # A task calling shutdown() on its own pool waits for the others only.
            while any(worker.thread is not me for worker in self.workers):
                self.deadlines_changed.wait()
            exited, self.exited = self.exited, []
            watchdog = self.watchdog
        for thread in exited:
            if thread is not me:
                thread.join()
        if watchdog is not None and watchdog is not me:
            watchdog.join()

    # -- worker threads -----------------------------------------------------------

    def initialize(self, worker: _Worker) -> bool:
        """Run the initializer in a new worker thread; False if it raised."""
        state = None
        if self.initializer is not None:
            succeeded, state = _call(self.initializer, self.initargs, {})
            if not succeeded:
                self._on_initializer_failure(worker, state)
                # The pool keeps the exception, whose traceback keeps this
                # frame and its callers': none may hold the pool or the thread.
                del self, worker, state
                return False
        _state.set_thread_worker_state(state)
        return True

    def serve(self, worker: _Worker) -> _Parking | None:
        """Run tasks until the pool no longer needs this thread; then either
        where to park it (``reuse=True``) or None: the thread exits."""
        while True:
            with self.lock:
                item = self._next_item(worker)
                if item is None:
                    return self._park_or_retire(worker)
            keep_going = self._run(worker, item)
            # Dropped before waiting for the next item: the caller alone decides
            # how long fn, its arguments and its result stay alive (stdlib).
            del item
            if not keep_going:
                return None

    def _park_or_retire(self, worker: _Worker) -> _Parking | None:
        """The pool is done with this idle thread. Lock held.

        With ``reuse=True`` it goes to the warm set, registered there before
        ``join()`` can return, so the next executor finds it.
        """
        reuse = self.reuse
        if (
            reuse is not None
            and self.broken is None
            and not _interpreter_exiting
            and (worker.tasks_left is None or worker.tasks_left > 0)
        ):
            assert worker.thread is not None
            handle: _reuse.ParkedThread[Any] = _reuse.ParkedThread(
                worker.thread, worker.tasks_left, reuse.keepalive
            )
            if _reuse.THREADS.park(reuse.key, handle):
                self.workers.discard(worker)
                self.stats.workers_parked += 1
                self.deadlines_changed.notify_all()  # join() looks again
                return _Parking(reuse, handle)
        self._retire(worker)
        return None

    def _next_item(self, worker: _Worker) -> _WorkItem | None:
        """The next item to run, claimed (RUNNING); None: time to exit. Lock held."""
        while True:
            while not self.queue and not self._should_exit():
                self.work_ready.wait()
            if self.broken is not None or not self.queue:
                self.idle -= 1
                return None
            item = self.queue.popleft()
            if not item.future.set_running_or_notify_cancel():
                self.stats.tasks_cancelled += 1
                continue  # cancelled while queued
            self.idle -= 1
            worker.item = item
            if item.timeout is not None:
                worker.deadline = deadline = time.monotonic() + item.timeout
                self._watch_deadline(deadline)
            return item

    def _should_exit(self) -> bool:
        return self.shutdown_requested or self.broken is not None

    def _run(self, worker: _Worker, item: _WorkItem) -> bool:
        """Run one item; False when this thread must exit now."""
        succeeded, value = _call(item.fn, item.args, item.kwargs)
        with self.lock:
            if worker.abandoned:
                return False  # timed out: its future failed already; discard this
            worker.item = worker.deadline = None
            recycle = False
            if worker.tasks_left is not None:
                worker.tasks_left -= 1
                recycle = worker.tasks_left == 0
            if recycle:
                self.stats.workers_recycled += 1
                self._retire(worker)
                self.plan_workers()
            else:
                self.idle += 1
            if succeeded:
                self.stats.tasks_completed += 1
            else:
                self.stats.tasks_failed += 1
        if self.unstarted or self.doomed:
            self.settle()
        future = item.future
        # A failure's traceback keeps this frame (the caller of _call) alive:
        # it must not hold the future, or the two would form a reference cycle.
        del item
        if succeeded:
            future.set_result(value)
        else:
            future.set_exception(value)
        del future, value
        return not recycle

    def _retire(self, worker: _Worker) -> None:
        """The worker's thread is exiting by itself. Lock held."""
        self.workers.discard(worker)
        assert worker.thread is not None
        self.exited = [thread for thread in self.exited if thread.is_alive()]
        self.exited.append(worker.thread)
        self.deadlines_changed.notify_all()  # join() and the watchdog look again

    def _on_initializer_failure(self, worker: _Worker, exc: BaseException) -> None:
        assert worker.thread is not None
        name = getattr(self.initializer, "__qualname__", repr(self.initializer))
        message = (
            f"the initializer {name}() raised {exc!r} in worker thread "
            f"{worker.thread.name!r}, so the thread pool is broken: every queued "
            "task fails with this error and submit() refuses new work. Fix the "
            "initializer (its traceback is attached) and create a new executor."
        )
        _STDLIB_LOGGER.critical("%s", message, exc_info=exc)
        remote_traceback = "".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)
        )
        with self.lock:
            self.idle -= 1
            self._retire(worker)
            if self.broken is None:
                self._break(_Breakage(message, exc, remote_traceback))
        self.settle()

    def _break(self, breakage: _Breakage) -> None:
        """Refuse new work; queued futures go to `doomed`. Lock held.

        Running tasks finish; their threads then exit.
        """
        self.broken = breakage
        self.doomed.extend(self.queue)
        self.queue.clear()
        self.work_ready.notify_all()
        self.deadlines_changed.notify_all()

    def fail_doomed(self) -> None:
        """Fail the futures a break left behind. Lock NOT held: callbacks run
        user code, which may call submit()."""
        with self.lock:
            items, self.doomed = self.doomed, []
            breakage = self.broken
        # One lock round for the counts; the futures resolve outside it (their
        # callbacks run user code, which may submit).
        failing = [item for item in items if item.future.set_running_or_notify_cancel()]
        with self.lock:
            self.stats.tasks_failed += len(failing)
            self.stats.tasks_cancelled += len(items) - len(failing)
        for item in failing:
            assert breakage is not None
            item.future.set_exception(breakage.error())

    # -- task timeouts --------------------------------------------------------------

    def _watch_deadline(self, deadline: float) -> None:
        """Make the watchdog wake up by `deadline`. Lock held."""
        if self.watchdog is None:
            self.watchdog = threading.Thread(
                target=self._watch, name=f"{self.name_prefix}_watchdog", daemon=True
            )
            self.watchdog.start()
        elif deadline < self.watchdog_wakes_at:
            self.deadlines_changed.notify_all()

    def _watch(self) -> None:
        """The watchdog: fail each task that runs past its deadline, on time."""
        while True:
            with self.lock:
                overdue = self._abandon_overdue_workers()
                if not overdue:
                    if self._should_exit() and not self.workers:
                        self.watchdog_wakes_at = math.inf
                        return
                    deadlines = [
                        w.deadline for w in self.workers if w.deadline is not None
                    ]
                    self.watchdog_wakes_at = min(deadlines, default=math.inf)
                    wait_s = self.watchdog_wakes_at - time.monotonic()
                    self.deadlines_changed.wait(None if math.isinf(wait_s) else wait_s)
                    continue
            # The overdue futures fail before a replacement can run the next task.
            for worker, item in overdue:
                _fail_overdue(worker, item)
            self.settle()

    def _abandon_overdue_workers(self) -> list[tuple[_Worker, _WorkItem]]:
        now = time.monotonic()
        overdue = []
        for worker in list(self.workers):
            if worker.deadline is None or worker.deadline > now:
                continue
            assert worker.item is not None
            overdue.append((worker, worker.item))
            # Threads cannot be killed: this one runs on until the call returns,
            # then sees `abandoned`, drops the result and exits.
            worker.abandoned = True
            worker.item = worker.deadline = None
            self.workers.discard(worker)
            self.abandoned_to_replace += 1
            self.stats.tasks_failed += 1
            self.stats.tasks_timed_out += 1
        if overdue:
            self.deadlines_changed.notify_all()  # join() need not wait for them
            self.plan_workers()
        return overdue


class _Parking:
    """Where a worker thread waits for its next pool, and for how long."""

    __slots__ = ("handle", "reuse")

    def __init__(
        self, reuse: _reuse.ReusePolicy, handle: _reuse.ParkedThread[Any]
    ) -> None:
        self.reuse = reuse
        self.handle = handle

    def wait_for_adoption(self) -> tuple[_Pool, _Worker] | None:
        assignment: tuple[_Pool, _Worker] | None = _reuse.THREADS.wait_for_adoption(
            self.reuse.key, self.handle, self.reuse.idle_timeout
        )
        return assignment


def _worker_thread(start: list[tuple[_Pool, _Worker]]) -> None:
    """A worker thread's life: initialize once, serve its pool; with
    ``reuse=True``, park when that pool shuts down and serve the next pool that
    adopts it, ``worker_state()`` and all."""
    pool, worker = start.pop()
    if not pool.initialize(worker):
        del pool, worker  # see initialize(): this frame outlives the thread
        return
    while True:
        parking = pool.serve(worker)
        del pool, worker  # a parked thread keeps no pool alive
        if parking is None:
            return
        assignment = parking.wait_for_adoption()
        del parking
        if assignment is None:
            return  # idle for too long, or the interpreter is exiting
        pool, worker = assignment


def _call(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[bool, Any]:
    """``(True, fn(*args, **kwargs))``, or ``(False, the exception it raised)``.

    A frame of its own: the exception's traceback keeps the frame that caught
    it alive, and this one holds no worker, pool or future, so a failed task
    creates no reference cycle that would keep a finished thread or its pool
    alive until the next garbage collection.
    """
    try:
        return True, fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - the call's outcome, reported
        return False, exc


def _fail_overdue(worker: _Worker, item: _WorkItem) -> None:
    assert worker.thread is not None
    message = (
        f"{item.describe()} ran longer than its task_timeout of {item.timeout:g} s "
        f"in worker thread {worker.thread.name!r}, so its future failed. A thread "
        "cannot be killed: it was abandoned (the call runs on in the background "
        "and its result will be discarded) and a replacement thread takes its "
        "place. Raise task_timeout if the task needs more time, or have the task "
        "check a deadline of its own; use stalwart.ProcessPoolExecutor to have "
        "overdue tasks killed."
    )
    logger.warning("%s", message)
    item.future.set_exception(
        TaskTimeoutError(message, timeout=item.timeout, pid=None, task=item.describe())
    )


class ThreadPoolExecutor(_map.MapMixin, _StdlibThreadPoolExecutor):
    """A drop-in ``concurrent.futures.ThreadPoolExecutor`` with stalwart's options.

    It subclasses the stdlib class, so ``asyncio``'s ``loop.set_default_executor()``
    accepts it, and takes every keyword ``stalwart.ProcessPoolExecutor`` takes, so
    switching between threads and processes is a change of class name::

        with stalwart.ThreadPoolExecutor(initializer=connect, task_timeout=30) as ex:
            rows = list(ex.map(query, sql_statements))

    * ``initializer(*initargs)`` runs once in each worker thread; what it returns
      is ``stalwart.worker_state()`` inside tasks on that thread.
    * ``task_timeout``: a task running longer fails on time with
      ``stalwart.TaskTimeoutError``. Python cannot kill a thread, so that thread is
      *abandoned*, not stopped: the call runs on in the background until it
      returns (its result is then discarded and the thread exits) and a new
      thread takes its place, keeping ``max_workers`` threads available.
      Abandoned threads never delay interpreter exit. If the task holds locks or
      keeps writing somewhere, it goes on doing so; use the process pool when a
      stuck task must really be stopped.
    * An initializer that raises breaks the pool, as in the stdlib: queued tasks
      fail, ``submit()`` refuses new work, and the failure is logged on the
      ``concurrent.futures`` logger. The error is both a ``BrokenThreadPool``
      (what stdlib code catches) and a ``stalwart.InitializerError`` (what code
      written for stalwart's process pool catches), with the initializer's
      exception as ``__cause__`` and its traceback in ``.remote_traceback``.
    * ``check_pickle=True`` makes ``submit()`` and ``map()`` pickle each call as
      the process pool would and raise ``stalwart.PicklingError`` on failure, so
      code can be proven process-ready while it runs (unpickled) on threads.

    Args:
        max_workers: ``None`` for the stdlib's thread default,
            ``min(32, cpus + 4)`` with cpus the usable CPUs (cgroup and affinity
            aware); a negative ``n`` means ``cpus + 1 + n`` as in the process pool.
            Threads start on demand, up to this many.
        thread_name_prefix: worker thread names are ``f"{prefix}_{n}"``.
        initializer, initargs: run once in each worker thread.
        mp_context, retries: accepted and validated, with no effect on threads
            (there is no process to start, and no worker can crash on its own).
        max_tasks_per_child: a thread exits after this many tasks; a new thread,
            running the initializer again, takes over.
        task_timeout: seconds a task may run (counted from when a thread starts
            running it, not from submit()); see above.
        reuse: at ``shutdown()``, park the idle threads, ``worker_state()``
            and all, for the next ``reuse=True`` thread pool with the same
            initializer, initargs (equal, or the same objects when they cannot
            be hashed) and ``max_tasks_per_child`` to adopt at once.
        idle_timeout: seconds a parked thread waits to be adopted before it
            exits (default 60); no effect without ``reuse=True``.
        check_pickle: pre-check every call's picklability in ``submit()``.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        mp_context: BaseContext | str | None = None,
        max_tasks_per_child: int | None = None,
        task_timeout: float | None = None,
        retries: int = 0,
        reuse: bool = False,
        idle_timeout: float | None = None,
        check_pickle: bool = False,
    ) -> None:
        # The stdlib's __init__ is deliberately not called: it builds the work
        # queue and thread bookkeeping that _Pool replaces. The private attributes
        # that code written against the stdlib reads are kept below, or as
        # read-only properties.
        if max_workers is None:
            workers = min(32, _options.usable_cpu_count() + 4)
        else:
            workers = _options.resolve_max_workers(max_workers)
        _options.check_initializer(initializer, initargs)
        _options.check_max_tasks_per_child(max_tasks_per_child)
        _options.check_retries(retries)
        _options.resolve_context(mp_context)
        if not isinstance(check_pickle, bool):
            raise TypeError(f"check_pickle must be True or False, got {check_pickle!r}")
        self._task_timeout = _options.check_task_timeout(task_timeout)
        parked_for_s = _options.check_reuse(reuse, idle_timeout)
        policy = None
        if parked_for_s is not None:
            key, keepalive = _reuse.thread_key(initializer, initargs)
            policy = _reuse.ReusePolicy(
                ("thread", max_tasks_per_child, key), parked_for_s, keepalive
            )
        self._check_pickle = check_pickle
        self._max_workers = workers
        self._thread_name_prefix = (
            thread_name_prefix or f"ThreadPoolExecutor-{next(_name_counter)}"
        )
        self._pool = pool = _Pool(
            workers,
            self._thread_name_prefix,
            initializer,
            initargs,
            max_tasks_per_child,
            policy,
        )
        if policy is not None:
            pool.adopt(_reuse.THREADS.adopt(policy.key, workers))
        # Dropped without shutdown(): finish the submitted work, then stop (stdlib).
        self._finalizer = weakref.finalize(self, pool.request_shutdown, False)
        self._finalizer.atexit = False

    def submit(
        self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Future[R]:
        """Schedule ``fn(*args, **kwargs)`` on a worker thread; return its Future.

        Raises:
            RuntimeError: the executor was shut down.
            BrokenThreadPool: the initializer failed (``stalwart.InitializerError``).
            stalwart.PicklingError: with ``check_pickle=True``, the call could not
                be sent to a worker process.
        """
        return self._submit(fn, args, kwargs, "submit", self._task_timeout)

    def _submit(
        self,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        action: str,
        task_timeout: float | None,
    ) -> Future[R]:
        if self._check_pickle:
            _pickling.serialize_call(fn, args, kwargs, action=action, by_value=False)
        future: Future[R] = Future()
        item = _WorkItem(future, fn, args, kwargs, task_timeout)
        pool = self._pool
        with pool.lock:
            pool.enqueue(item)
            must_start = bool(pool.unstarted)
        # Most submits find a thread idle: no second trip through the lock.
        failure = pool.start_planned() if must_start else None
        if failure is not None and pool.discard_queued(item):
            raise RuntimeError(
                f"cannot schedule new futures: no worker thread could be started "
                f"({failure!r}); too many threads run in this process, or the "
                "interpreter is shutting down"
            ) from failure
        return future

    def shutdown(
        self,
        wait: bool = True,
        *,
        cancel_futures: bool = False,
        kill_workers: bool = False,
    ) -> None:
        """Stop accepting work; running and queued work still completes.

        With ``reuse=True`` the idle threads are then parked, not ended.

        Args:
            wait: block until the submitted work is done and the threads exited
                or were parked (abandoned threads, see ``task_timeout``, are not
                waited for).
            cancel_futures: cancel every future that has not started running.
            kill_workers: the process pool's option, as near as threads allow:
                queued work is cancelled and no thread is parked, but a running
                task cannot be stopped, so it finishes.
        """
        self._pool.request_shutdown(
            cancel_futures or kill_workers, park=not kill_workers
        )
        if wait:
            self._pool.join()

    def stats(self) -> ExecutorStats:
        """What this executor did so far: tasks by outcome, threads by origin.

        ``tasks_crashed`` and ``tasks_retried`` stay 0: a thread cannot die on
        its own. ``workers_replaced`` counts threads started in place of
        abandoned ones (``task_timeout``).
        """
        with self._pool.lock:
            return self._pool.stats.snapshot()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        # Ctrl-C: the user wants out, not to wait for the queued work as well.
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        self.shutdown(wait=True, cancel_futures=interrupted)

    def __enter__(self) -> Self:
        return self

    @property
    def _broken(self) -> str | bool:  # type: ignore[override]
        """The stdlib's flag: a message once the pool is broken, else False."""
        broken = self._pool.broken
        return False if broken is None else broken.message

    @property
    def _shutdown(self) -> bool:  # type: ignore[override]
        """The stdlib's flag: shutdown() was called."""
        return self._pool.shutdown_requested

    @property
    def _threads(self) -> frozenset[threading.Thread]:  # type: ignore[override]
        """The stdlib's view of the worker threads: those running or idle now."""
        with self._pool.lock:
            return frozenset(
                w.thread for w in self._pool.workers if w.thread is not None
            )

    def __repr__(self) -> str:
        pool = self._pool
        state = (
            "broken"
            if pool.broken
            else ("shut down" if pool.shutdown_requested else "running")
        )
        return (
            f"<stalwart.ThreadPoolExecutor max_workers={self._max_workers} "
            f"prefix={self._thread_name_prefix!r} {state}>"
        )


# -- interpreter exit -----------------------------------------------------------

_live_pools: weakref.WeakSet[_Pool] = weakref.WeakSet()
_interpreter_exiting = False


def _on_interpreter_exit() -> None:
    """Finish the submitted work before exit, as the stdlib's workers do.

    The workers are daemon threads (an abandoned one may never return), so the
    interpreter would not wait for them by itself.
    """
    global _interpreter_exiting
    _interpreter_exiting = True
    pools = list(_live_pools)
    for pool in pools:
        pool.request_shutdown(cancel_futures=False)
    for pool in pools:
        pool.join()


def _forget_inherited_pools() -> None:
    """A forked child has none of its parent's threads: nothing to wait for, and
    a pool's lock may have been held by a parent thread at the fork."""
    global _live_pools
    _live_pools = weakref.WeakSet()


os.register_at_fork(after_in_child=_forget_inherited_pools)
threading._register_atexit(_on_interpreter_exit)  # type: ignore[attr-defined]
