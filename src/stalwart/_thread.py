"""ThreadPoolExecutor: the stdlib thread pool, plus task timeouts, recycling,
per-thread initializer state and an optional pickling pre-check.

Data flow::

    submit(fn, *args)                                   caller's thread
      | check_pickle=True: _pickling.serialize_call(), bytes discarded
      v
    ThreadFuture (the future returned, carrying the call)
      |
      +--(_Pool.lock)--+--> an idle worker's `next_item` (the last to go idle),
      |                |      woken by releasing its own `wakeup` lock
      |                +--> else _Pool.queue (a deque), and a new thread when
      |                       the queue outgrows the threads still starting
      v                       (up to max_workers)
    worker thread "<prefix>_<n>": initializer once -> worker_state(), then
      per task: claim the future (RUNNING), run fn, then one trip through
      _Pool.lock counts the outcome and takes the next queued future or joins
      the idle workers; the call is dropped and the future resolves after
      that. The thread exits after max_tasks_per_child tasks, at shutdown once
      the queue is empty, or when the pool breaks; with reuse=True it parks in
      _reuse.THREADS instead.

    watchdog thread "<prefix>_watchdog" (one per pool, started with the first
    task that has a task_timeout): waits on `deadlines_changed` until the
    nearest running task's deadline. An overdue task's future fails with
    TaskTimeoutError, its thread is abandoned, and a replacement starts if
    work is waiting (or on the next submit()).

Every decision that could race (a task finishing just as its deadline passes,
a worker going idle just as work arrives) is taken under ``_Pool.lock``. No
future is ever claimed, cancelled or resolved under it: a future's callbacks
run user code, which may submit() or shut the executor down, and would
deadlock on the lock. The idle worker waits on a lock of its own, not on a
``threading.Condition``: one C-level acquire and release per hand-off, and no
trip through ``_Pool.lock`` to wake up.

Worker threads are daemon threads, so that an abandoned thread stuck in a task
never blocks interpreter exit; an exit hook still finishes the submitted work,
as the stdlib's non-daemon workers do, by shutting every pool down and waiting
for its (non-abandoned) workers.

The pool's parts, one module each: ``_thread`` (this one: the executor, and
``_Pool``, the state every thread shares under ``_Pool.lock``, with the
submit, hand-off, thread start and shutdown side of it); ``_thread_worker``
(a worker thread's life and per-task loop); ``_thread_timeouts`` (the
watchdog); ``_thread_breakage`` (a broken pool, and failing its queued work).

A forked child inherits executors whose threads exist only in the parent (and
whose locks a parent thread may have held at the fork): there they are inert.
``shutdown()`` returns at once and touches nothing; ``submit()`` says to create
a new executor in the child.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import weakref
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor as _StdlibThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from stalwart import _map, _options, _pickling, _reuse, _thread_breakage
from stalwart._stats import ExecutorStats
from stalwart._thread_timeouts import Watchdog
from stalwart._thread_worker import Parking, Worker, worker_thread

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.context import BaseContext
    from types import TracebackType

    from typing_extensions import ParamSpec, Self

    P = ParamSpec("P")

R = TypeVar("R")

_name_counter = itertools.count()


class ThreadFuture(Future[Any]):
    """The future ``submit()`` returns, carrying its call until a thread has
    run it (or it was cancelled): then the call is dropped.

    One object, not a future and a work item: ``map()`` over many items keeps
    every one of them alive at once, and the garbage collector's full passes,
    which visit each, are most of what a tiny task costs there.
    """

    __slots__ = ("args", "fn", "kwargs", "timeout")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> None:
        Future.__init__(self)
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.timeout = timeout  # task_timeout, in seconds of running

    def drop_call(self) -> None:
        """Forget fn and its arguments: it ran, or never will. The caller alone
        decides how long they stay alive, as with the stdlib's futures."""
        del self.fn, self.args, self.kwargs

    def describe(self) -> str:
        """The call, for messages; only while it is still attached."""
        return _map.describe(self.fn, self.args, self.kwargs)


class _Pool:
    """The queue, the worker threads and the watchdog of one executor: the
    state they share, and the submit, hand-off, start and shutdown side of it.

    What a worker thread does with it is ``_thread_worker.Worker``'s; the
    watchdog is ``_thread_timeouts.Watchdog``; breaking the pool and failing
    what it leaves behind is ``_thread_breakage``'s. They all hold this lock.

    Kept apart from the executor so that no thread holds a reference to it: an
    executor dropped without ``shutdown()`` is collected, which shuts the pool
    down here (as the stdlib does).

    Every attribute below that changes is read and written under ``lock`` by
    whichever thread (submitter, worker, watchdog, shutdown) holds it. Read
    without it: ``owner_pid`` (set once); ``unstarted`` and ``doomed``, which a
    worker peeks at after each task (a stale look only defers ``settle()`` to
    the next); ``shutdown_requested`` and ``broken``, for the stdlib's
    ``_shutdown`` and ``_broken``; everything, in a forked child, where no
    thread of the pool runs and the lock may have been held at the fork.
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
        # The process whose threads serve this pool; in a forked child the
        # pool is inert (see _current_pid).
        self.owner_pid = _current_pid

        self.lock = threading.Lock()
        # The watchdog waits here for an earlier deadline; shutdown() waits here
        # for the workers to exit.
        self.deadlines_changed = threading.Condition(self.lock)
        # Holds items only while no worker is idle: a worker looks here before
        # going idle, and submit() hands work to an idle worker before queueing.
        self.queue: collections.deque[ThreadFuture] = collections.deque()
        self.idle_workers: list[Worker] = []  # waiting on `wakeup`; last in, first out
        self.workers: set[Worker] = set()  # started, not exited, not abandoned
        # Threads planned, started or adopted that have not yet looked at the
        # queue: each will take an item from it, so no further thread is needed
        # for the first `starting` items queued.
        self.starting = 0
        self.thread_numbers = itertools.count()
        self.exited: list[threading.Thread] = []  # retired, for shutdown to join
        self.watchdog = Watchdog()  # its thread and wake-up time, under `lock`
        self.shutdown_requested = False
        self.broken: _thread_breakage.Breakage | None = None
        self.doomed: list[ThreadFuture] = []  # queued when the pool broke; to fail
        self.unstarted: list[Worker] = []  # planned threads, started without lock

    # -- called from user threads (lock held unless said otherwise) -------------

    def enqueue(self, item: ThreadFuture) -> Worker | None:
        """Hand ``item`` to an idle worker, returned for the caller to wake once
        the lock is released; or queue it, planning a thread if none will take it."""
        if self.broken is not None:
            raise self.broken.error()
        if self.shutdown_requested:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _interpreter_exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        self.stats.tasks_submitted += 1
        if self.idle_workers:
            worker = self.idle_workers.pop()
            worker.next_item = item
            return worker
        self.queue.append(item)
        if len(self.queue) > self.starting and len(self.workers) < self.max_workers:
            self.plan_workers()
        return None

    def plan_workers(self) -> None:
        """Plan threads until those starting cover the queue, up to max_workers.

        Lock held. They are started by ``start_planned()`` once the lock is
        released, so that a new thread can take its first task at once (as the
        stdlib's does) instead of waiting for the submitting thread.
        """
        while len(self.queue) > self.starting and len(self.workers) < self.max_workers:
            worker = Worker(self.max_tasks)
            worker.thread = threading.Thread(
                target=worker_thread,
                # A list the thread empties: Thread keeps its args until the
                # thread ends, and a parked thread must not keep this pool alive.
                args=([(self, worker)],),
                name=self.next_thread_name(),
                daemon=True,  # abandoned threads must not block exit; see _on_interpreter_exit
            )
            self.workers.add(worker)
            self.starting += 1
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
                worker = Worker(handle.tasks_left)
                worker.thread = handle.thread
                worker.thread.name = self.next_thread_name()
                self.workers.add(worker)
                self.starting += 1
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
                    self.starting -= 1
                    self.stats.workers_started -= 1
                    self.deadlines_changed.notify_all()
                    if not self.workers:
                        failure = exc
        return failure

    def discard_queued(self, item: ThreadFuture) -> bool:
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
                    _thread_breakage.break_pool(
                        self, _thread_breakage.no_thread_started(failure)
                    )
        _thread_breakage.fail_doomed(self)

    def request_shutdown(self, cancel_futures: bool, park: bool = True) -> None:
        """Refuse new work; the queued work still runs unless cancelled. No lock.

        ``park=False``: idle threads end instead of parking (``reuse=True``).
        Does nothing in a forked child (see ``ThreadPoolExecutor.shutdown``).
        """
        if self.owner_pid != _current_pid:
            return
        with self.lock:
            self.shutdown_requested = True
            if not park:
                self.reuse = None
            queued: list[ThreadFuture] = []
            taken: list[ThreadFuture] = []
            if cancel_futures:
                queued = list(self.queue)
                self.queue.clear()
                # One read each: the worker clears it without the lock.
                maybe_taken = [worker.next_item for worker in self.workers]
                taken = [item for item in maybe_taken if item is not None]
            self.wake_idle_workers()
            self.deadlines_changed.notify_all()
        # Cancelled outside the lock: cancel() runs the done-callbacks, user
        # code that may call submit() or shutdown() on this very executor.
        cancelled = 0
        for item in queued:
            item.cancel()
            # Moves it to CANCELLED_AND_NOTIFIED: wait() and as_completed() count
            # a cancelled future as done only once the executor said so.
            if not item.set_running_or_notify_cancel():
                cancelled += 1
            item.drop_call()
        for item in taken:
            # The worker that took it claims it next: it finds it cancelled (and
            # notifies and counts it), unless it started running it first.
            item.cancel()
        if cancelled:
            with self.lock:
                self.stats.tasks_cancelled += cancelled

    def wake_idle_workers(self) -> None:
        """Wake every idle worker to look again (shutdown, break). Lock held."""
        for worker in self.idle_workers:
            worker.next_item = None
            worker.wakeup.release()
        self.idle_workers.clear()

    def join(self) -> None:
        """Wait for every non-abandoned worker, and the watchdog, to exit. No lock."""
        if self.owner_pid != _current_pid:
            return  # a forked child: those threads run in the parent only
        me = threading.current_thread()
        with self.lock:
            # A task calling shutdown() on its own pool waits for the others only.
            while any(worker.thread is not me for worker in self.workers):
                self.deadlines_changed.wait()
            exited, self.exited = self.exited, []
            watchdog = self.watchdog.thread
        for thread in exited:
            if thread is not me:
                thread.join()
        if watchdog is not None and watchdog is not me:
            watchdog.join()

    def park_or_retire(self, worker: Worker) -> Parking | None:
        """The pool is done with this thread, idle, its last future resolved. Lock held.

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
                return Parking(reuse, handle)
        self.retire(worker)
        return None

    def should_exit(self) -> bool:
        return self.shutdown_requested or self.broken is not None

    def retire(self, worker: Worker) -> None:
        """The worker's thread is exiting by itself. Lock held."""
        self.workers.discard(worker)
        assert worker.thread is not None
        self.exited = [thread for thread in self.exited if thread.is_alive()]
        self.exited.append(worker.thread)
        self.deadlines_changed.notify_all()  # join() and the watchdog look again


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
        initializer: called once in each worker thread, as
            ``initializer(*initargs)``; its return value is what
            ``stalwart.worker_state()`` returns there.
        initargs: the initializer's arguments.
        mp_context: accepted and validated, with no effect on threads (there
            is no process to start).
        retries: accepted and validated, with no effect on threads (no worker
            can crash on its own).
        max_tasks_per_child: a thread exits after this many tasks; a new thread,
            running the initializer again, takes over.
        task_timeout: seconds a task may run (counted from when a thread starts
            running it, not from submit()); see above.
        reuse: at ``shutdown()``, park the idle threads, ``worker_state()``
            and all, for the next ``reuse=True`` thread pool with the same
            initializer, initargs and ``max_tasks_per_child`` to adopt at once.
            The same: values that pickle alike (``1`` and ``True`` do not), and
            the very objects where identity counts (a list, a lock, a closure).
        idle_timeout: seconds a parked thread waits to be adopted before it
            exits (default 60); no effect without ``reuse=True``.
        check_pickle: pre-check every call's picklability in ``submit()``.
        forward_output: accepted and validated, with no effect on threads:
            their prints and log records are this process's own already.
        prefix_output: accepted and validated, with no effect on threads.
        max_memory_per_child: accepted and validated, with no effect on
            threads: they share this process's memory.
    """

    _pickles_for_threads = True  # check_pickle: a check, not a send

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
        forward_output: bool = True,
        prefix_output: bool = False,
        max_memory_per_child: int | str | None = None,
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
        # Accepted and checked so that the one-word swap keeps working: threads
        # print to this process's own streams, and share its memory.
        _options.check_output_options(forward_output, prefix_output)
        _options.resolve_max_memory(max_memory_per_child)
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
            RuntimeError: the executor was shut down, or this is a child forked
                from the process that created it (create one in the child).
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
        pool = self._pool
        if pool.owner_pid != _current_pid:
            raise _inherited_error(pool, action)
        if self._check_pickle:
            _pickling.serialize_call(
                fn, args, kwargs, action=action, by_value=False, for_threads=True
            )
        item = ThreadFuture(fn, args, kwargs, task_timeout)
        future: Future[R] = item
        with pool.lock:
            idle_worker = pool.enqueue(item)
            must_start = bool(pool.unstarted)
        if idle_worker is not None:
            # Woken once the lock is free: it runs the task without it, but
            # would otherwise find it held at its next step.
            idle_worker.wakeup.release()
            return future
        # Most submits find a thread idle or starting: no second trip through
        # the lock.
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

        With ``reuse=True`` the idle threads are then parked, not ended. In a
        child forked from the process that created the executor, where its
        threads do not exist, this returns at once and does nothing.

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
        pool = self._pool
        if pool.owner_pid != _current_pid:
            # A forked child: no thread of its changes these, and the lock may
            # have been held by a parent thread at the fork.
            return pool.stats.snapshot()
        with pool.lock:
            return pool.stats.snapshot()

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
        pool = self._pool
        if pool.owner_pid != _current_pid:
            return frozenset()  # a forked child: they run in the parent only
        with pool.lock:
            return frozenset(w.thread for w in pool.workers if w.thread is not None)

    def __repr__(self) -> str:
        pool = self._pool
        if pool.owner_pid != _current_pid:
            state = f"inherited from process {pool.owner_pid}"
        elif pool.broken:
            state = "broken"
        else:
            state = "shut down" if pool.shutdown_requested else "running"
        return (
            f"<stalwart.ThreadPoolExecutor max_workers={self._max_workers} "
            f"prefix={self._thread_name_prefix!r} {state}>"
        )


def _inherited_error(pool: _Pool, action: str) -> RuntimeError:
    return RuntimeError(
        f"cannot {action}() on this ThreadPoolExecutor: it belongs to the parent "
        f"process {pool.owner_pid}, and this process ({_current_pid}) is a child "
        "forked from it, which has none of its worker threads. Create a new "
        "executor in the child (inherited executors are inert here: shutdown() "
        "returns at once)."
    )


# -- interpreter exit and fork ------------------------------------------------------

_live_pools: weakref.WeakSet[_Pool] = weakref.WeakSet()
_interpreter_exiting = False
_current_pid = os.getpid()
"""This process's pid, updated in a forked child. A pool whose ``owner_pid``
differs was inherited through fork: compared on every submit(), a module global
costs less than the os.getpid() system call."""


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
    a pool's lock may have been held by a parent thread at the fork. Every
    inherited pool becomes inert, as its ``owner_pid`` is no longer ours."""
    global _live_pools, _current_pid
    _live_pools = weakref.WeakSet()
    _current_pid = os.getpid()


os.register_at_fork(after_in_child=_forget_inherited_pools)
threading._register_atexit(_on_interpreter_exit)  # type: ignore[attr-defined]
