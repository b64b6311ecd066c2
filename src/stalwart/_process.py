"""ProcessPoolExecutor: a process pool that owns its dispatch, so it never breaks.

Data flow::

    submit(fn, *args)                                        caller's thread
      | _pickling.pack_call(): pickled once, here; PicklingError raised here;
      |   big buffers copied into shared memory (_outofband): the snapshot
      v
    _inbox.Inbox: pending deque, pool state ---(wake-up pipe)---+
                                                                 |
    I/O thread "stalwart-dispatcher" (_dispatcher) <-------------+
      | _scheduler.plan(): idle workers first, batches sized by measured task
      | time, nothing queued behind a long call; idle workers steal backlogs
      v
    _slot.WorkerSlot: in_flight deque ==pipe==> worker (_worker): for each call,
      ^      ^                                     claim it in the shared
      |      +--- _claims.ClaimTable (memfd) <---- table, run it, answer it
      +======================= answers, parsed in bulk <=======+
      | future.set_result() / set_exception(exc from worker traceback)
      v
    Future resolved: as_completed, wait, asyncio all see it

    cancel() on a call sent ahead: revoked in the claim table unless started

Because every worker has its own pipe and claims each call in a table the
parent can read, the parent always knows which calls a worker holds and which
one it is running. That is what a shared-queue pool (the stdlib's, loky's)
cannot know, and why one dead worker breaks their whole pool.

How workers end, and what follows (``_dispatcher``, words from ``_outcomes``):

* Death while running a call (segfault, ``os._exit``, SIGKILL/OOM, abort): the
  sentinel fires; whatever the worker sent before dying is read first; the call
  it had claimed fails with ``WorkerCrashedError`` (or is re-run, ``retries``);
  the calls it had not claimed go back to the front of the pending queue; a
  replacement worker starts.
* Death while idle: replaced, silently.
* ``task_timeout``: the parent knows when each call started, so once the running
  call is overdue the I/O thread kills the worker's process tree; the call fails
  with ``TaskTimeoutError``, the rest run elsewhere, a replacement starts.
* ``max_tasks_per_child``: a worker is sent exactly that many calls, exits by
  itself after answering them, and is replaced (re-running the initializer).
* Initializer raised: the worker reports INIT_FAILED and exits; it is replaced;
  after ``MAX_CONSECUTIVE_START_FAILURES`` failed starts in a row no more are
  started, the executor is broken and every waiting future fails with
  ``InitializerError``.
* Shutdown: once nothing is pending or in flight the workers are sent STOP
  (or, ``reuse=True``, RESET and parked), and stragglers are killed after
  ``WORKER_EXIT_GRACE_S``.
* Parent death: the kernel kills the workers (``_lifeline``: Linux's
  parent-death signal, from the spawner thread that started them), and a
  watchdog in each worker covers the rest.

Who may touch what: user threads only the inbox (``submit``, ``shutdown``,
callbacks) and, through ``cancel()``, a claim table; the I/O thread everything
else. No future is resolved or cancelled while a lock is held.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import weakref
from concurrent.futures import Executor
from multiprocessing import process as mp_process
from typing import TYPE_CHECKING, Any, TypeVar

from stalwart import _claims, _dispatcher, _map, _pickling, _reuse, _startup
from stalwart._dispatcher import Dispatcher
from stalwart._inbox import Abort, Inbox, PoolState
from stalwart._settings import PoolSettings
from stalwart._slot import Task

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Future
    from multiprocessing.context import BaseContext
    from multiprocessing.process import BaseProcess
    from types import TracebackType

    from typing_extensions import ParamSpec, Self

    from stalwart._stats import ExecutorStats

    P = ParamSpec("P")

R = TypeVar("R")


class ProcessPoolExecutor(_map.MapMixin, Executor):
    """A drop-in ``concurrent.futures.ProcessPoolExecutor`` that never breaks.

    * ``submit()`` pickles the call once, in the caller: an unpicklable argument
      raises ``stalwart.PicklingError`` right there, naming the culprit's path.
    * A worker that dies fails only the task it was running
      (``stalwart.WorkerCrashedError``, with ``.pid``, ``.exitcode``, ``.signal``);
      ``retries=n`` re-runs such a task up to n times first. The executor replaces
      the worker and stays usable.
    * ``initializer``'s return value is what ``stalwart.worker_state()`` returns
      inside tasks on that worker, so models and connections are built once per
      worker and never pickled.
    * ``cancel()`` succeeds on every call that has not started in a worker.

    Args:
        max_workers: ``None`` for every usable CPU (cgroup and affinity aware);
            a negative ``n`` means ``cpus + 1 + n`` (``-1`` all, ``-2`` all but one).
        mp_context: a multiprocessing context or a start-method name. The
            default, ``"stalwart"``, forks the caller where that is provably
            safe (one thread, no accelerator device open) and otherwise forks a
            template interpreter that imported your ``__main__`` as spawn does:
            fork's speed, safe with threads and CUDA in the parent.
            ``"template"``, ``"loky_init_main"``, ``"loky"``, ``"spawn"``,
            ``"forkserver"`` and ``"fork"`` force a way.
        initializer: called once in each worker, as ``initializer(*initargs)``;
            its return value is what ``stalwart.worker_state()`` returns there.
        initargs: the initializer's arguments.
        max_tasks_per_child: replace a worker after this many tasks.
        task_timeout: seconds a task may run in a worker (counted from when it
            starts, not from submit()); past that its worker is killed, with any
            processes the task started, the task fails with
            ``stalwart.TaskTimeoutError`` and a replacement worker starts.
            A timed-out task is not retried.
        retries: re-run a task whose worker died up to this many times.
        reuse: at ``shutdown()``, park the idle workers, initializer state and
            all, for the next ``reuse=True`` executor with the same settings to
            adopt at once (see ``stalwart.get_reusable_executor``). Workers are
            shared only between executors whose workers would be identical:
            same start method, initializer and initargs (as pickled),
            ``max_tasks_per_child``, working directory, ``sys.path`` and
            environment variables; a parked worker first restores the working
            directory, environment and ``sys.path`` its tasks may have changed.
        idle_timeout: seconds a parked worker waits to be adopted before it
            exits (default 60); no effect without ``reuse=True``.
        check_pickle: accepted so that every executor takes the same keywords;
            a process pool always pickles the call in ``submit()``, so the check
            is always on here (``ThreadPoolExecutor`` makes it optional).
        forward_output: what tasks (and the initializer) print to
            ``sys.stdout`` / ``sys.stderr`` appears on the parent's current
            ``sys.stdout`` / ``sys.stderr``, line by line, and what they log is
            handled by the parent's ``logging`` handlers (the record carries
            the worker's pid in ``process`` and ``worker_pid``, and the call in
            ``stalwart_task``). ``False``: prints go to the file descriptors
            the worker inherited, and logging is left as the worker has it.
            Output written to file descriptors 1 and 2 directly (C
            extensions, subprocesses) is never forwarded.
        prefix_output: start each forwarded line with ``[worker <pid>] ``.
        max_memory_per_child: bytes, or a size such as ``"2GiB"`` or
            ``"300MB"``: a worker whose resident memory is above it after a
            task exits and is replaced (initializer re-run), counted in
            ``stats().workers_over_memory``. Checked between tasks, so a single
            task can still go past it.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: BaseContext | str | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        task_timeout: float | None = None,
        retries: int = 0,
        reuse: bool = False,
        idle_timeout: float | None = None,
        check_pickle: bool = True,
        forward_output: bool = True,
        prefix_output: bool = False,
        max_memory_per_child: int | str | None = None,
    ) -> None:
        _refuse_while_bootstrapping()
        settings = PoolSettings.resolve(
            max_workers,
            mp_context,
            initializer,
            initargs,
            max_tasks_per_child=max_tasks_per_child,
            task_timeout=task_timeout,
            retries=retries,
            reuse=reuse,
            idle_timeout=idle_timeout,
            forward_output=forward_output,
            prefix_output=prefix_output,
            max_memory_per_child=max_memory_per_child,
        )
        self._open(settings)

    @classmethod
    def _from_settings(cls, settings: PoolSettings) -> Self:
        """An executor for settings already resolved (get_reusable_executor)."""
        _refuse_while_bootstrapping()
        executor = cls.__new__(cls)
        executor._open(settings)
        return executor

    def _open(self, settings: PoolSettings) -> None:
        self._settings = settings
        self._mp_context = settings.context
        self._task_timeout = settings.task_timeout
        self._by_value = settings.config.by_value
        self._owner_pid = os.getpid()
        self._inbox = inbox = Inbox(settings.max_workers)
        self._dispatcher = dispatcher = Dispatcher(
            inbox, settings.context, settings.config, settings.retries, settings.reuse
        )
        dispatcher.replies.prefix_output = settings.prefix_output
        warm = []
        if settings.reuse is not None:
            warm = _reuse.PROCESSES.adopt(settings.reuse.key, settings.max_workers)
            dispatcher.adopt(warm)
        if not warm:
            _startup.prepare(settings.context)  # the template, if it will be needed
        # Dropped without shutdown(): finish the submitted work, then stop (stdlib).
        self._finalizer = weakref.finalize(
            self, _request_shutdown, inbox, dispatcher, os.getpid(), False, None
        )
        self._finalizer.atexit = False

    def submit(
        self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Future[R]:
        """Schedule ``fn(*args, **kwargs)`` in a worker; return its Future.

        Raises:
            stalwart.PicklingError: the call cannot be pickled (raised here, with
                the path to the unpicklable object).
            RuntimeError: the executor was shut down.
            BrokenProcessPool: the executor is broken (initializer keeps failing).
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
        self._refuse_if_inherited("submit()")
        inbox = self._inbox
        # The one pickling: the check, and the snapshot the worker will see.
        call = _pickling.pack_call(
            fn, args, kwargs, action=action, by_value=self._by_value
        )
        dispatcher = self._dispatcher
        with inbox.lock:
            if inbox.broken is not None:
                raise type(inbox.broken)(*inbox.broken.args)
            if inbox.state is not PoolState.RUNNING:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _dispatcher.interpreter_exiting():
                raise RuntimeError(
                    "cannot schedule new futures after interpreter shutdown"
                )
            future: Future[R] = _claims.TaskFuture()
            task = Task(
                next(dispatcher.ids), future, call, fn, args, kwargs, task_timeout
            )
            dispatcher.ensure_thread()
            dispatcher.stats.tasks_submitted += 1
            inbox.pending.append(task)
            inbox.wake()
        return future

    def shutdown(
        self,
        wait: bool = True,
        *,
        cancel_futures: bool = False,
        kill_workers: bool = False,
    ) -> None:
        """Stop accepting work; running and queued work still completes.

        With ``reuse=True`` the idle workers are then parked, not stopped.

        Args:
            wait: block until all submitted work is done and the workers exited
                (or, with ``reuse=True``, were parked).
            cancel_futures: cancel every future that has not started running,
                including calls already sent ahead to a worker.
            kill_workers: kill the workers now, with any processes their tasks
                started: running tasks fail with ``CancelledError``, queued ones
                are cancelled, and nothing is parked.
        """
        if os.getpid() != self._owner_pid:
            return  # inherited through os.fork(): the parent's, not ours to stop
        abort = Abort("shutdown(kill_workers=True)") if kill_workers else None
        _request_shutdown(
            self._inbox,
            self._dispatcher,
            self._owner_pid,
            cancel_futures or kill_workers,
            abort,
        )
        if wait:
            self._dispatcher.join()

    def terminate_workers(self) -> None:
        """Python 3.14's API: SIGTERM every worker now and shut down; calls they
        were running fail with ``CancelledError``, queued ones are cancelled."""
        self._force_shutdown(Abort("terminate_workers()", signal.SIGTERM))

    def kill_workers(self) -> None:
        """Python 3.14's API: SIGKILL every worker (and what its task started)
        now and shut down, as ``terminate_workers()`` otherwise."""
        self._force_shutdown(Abort("kill_workers()", signal.SIGKILL))

    def _force_shutdown(self, abort: Abort) -> None:
        if os.getpid() != self._owner_pid:
            return
        _request_shutdown(self._inbox, self._dispatcher, self._owner_pid, True, abort)

    def stats(self) -> ExecutorStats:
        """What this executor did so far: tasks by outcome, workers by origin."""
        return self._dispatcher.stats.snapshot()

    def _accepts_work(self) -> bool:
        return self._inbox.accepting

    def _resize(self, max_workers: int) -> None:
        """Change the number of workers in place (get_reusable_executor): more
        start as work needs them, surplus idle ones exit."""
        inbox = self._inbox
        with inbox.lock:
            inbox.max_workers = max_workers
            inbox.wake()

    @property
    def _max_workers(self) -> int:
        """The stdlib's attribute: the most workers this executor runs."""
        return self._inbox.max_workers

    @property
    def _processes(self) -> dict[int, BaseProcess]:
        """The stdlib's attribute: pid -> worker process, for those alive now
        (each has ``pid``, ``is_alive()``, ``exitcode``, ``terminate()``,
        ``kill()`` and ``join()``). A snapshot; the pool replaces workers."""
        slots = list(self._dispatcher.slots)
        return {slot.process.pid: slot.process for slot in slots if slot.process.pid}

    @property
    def _broken(self) -> str | bool:
        """The stdlib's flag: a message once the executor is broken, else False."""
        broken = self._inbox.broken
        return False if broken is None else str(broken)

    def _refuse_if_inherited(self, what: str) -> None:
        if _current_pid != self._owner_pid:
            raise RuntimeError(
                f"{what} on a stalwart executor inherited through os.fork(): it "
                f"belongs to process {self._owner_pid}, and its workers and threads "
                "are not in this one. Create a new executor in the child process."
            )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        if (
            exc_type is not None
            and issubclass(exc_type, KeyboardInterrupt)
            and os.getpid() == self._owner_pid
        ):
            # Ctrl-C: the user wants out now, not after the queued work.
            _request_shutdown(
                self._inbox,
                self._dispatcher,
                self._owner_pid,
                True,
                Abort("KeyboardInterrupt"),
            )
        self.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __repr__(self) -> str:
        state = self._inbox.state
        shown = "broken" if state is PoolState.BROKEN else "running"
        if state in (PoolState.DRAINING, PoolState.CLOSED):
            shown = "shut down"
        return (
            f"<stalwart.ProcessPoolExecutor max_workers={self._max_workers} "
            f"start_method={self._mp_context.get_start_method()!r} {shown}>"
        )


def _request_shutdown(
    inbox: Inbox,
    dispatcher: Dispatcher,
    owner_pid: int,
    cancel_futures: bool,
    abort: Abort | None,
) -> None:
    """Ask the I/O thread to finish (and cancel, or abort); with
    ``cancel_futures`` wait until it has cancelled the calls not started.

    Nothing is cancelled here, under the lock: a cancelled future's callbacks
    may call submit() or shutdown() again (the I/O thread does it, lock-free).
    """
    if os.getpid() != owner_pid:
        return  # a forked child: the parent's locks may be held forever here
    with inbox.lock:
        if inbox.state is PoolState.RUNNING:
            inbox.state = PoolState.DRAINING
        if abort is not None and inbox.abort is None:
            inbox.abort = abort
        thread = dispatcher.thread
        if cancel_futures and thread is not None:
            inbox.cancel_done.clear()
            inbox.cancel_asked = True
        inbox.wake()
    if (
        cancel_futures
        and thread is not None
        and thread is not threading.current_thread()
    ):
        # shutdown() returns once the futures not started are cancelled.
        while not inbox.cancel_done.wait(0.1) and not dispatcher.finished.is_set():
            pass


class ExecutorAtImportError(RuntimeError):
    """An executor was created while a worker imported the main script."""


def _refuse_while_bootstrapping() -> None:
    if getattr(mp_process.current_process(), "_inheriting", False):
        raise ExecutorAtImportError(
            "a stalwart executor was created while a worker process was importing "
            "the main module. Workers import your main script the way "
            "multiprocessing's spawn does, so code that starts executors must sit "
            "under `if __name__ == '__main__':`."
        )


# -- interpreter exit ------------------------------------------------------------


def _on_interpreter_exit() -> None:
    """Finish submitted work before exit, as the stdlib does; on Ctrl-C, don't."""
    _dispatcher.mark_interpreter_exiting()
    interrupted = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    dispatchers = list(_dispatcher.live_dispatchers)
    pid = os.getpid()
    for dispatcher in dispatchers:
        abort = Abort("KeyboardInterrupt") if interrupted else None
        _request_shutdown(dispatcher.inbox, dispatcher, pid, interrupted, abort)
    try:
        for dispatcher in dispatchers:
            dispatcher.join()
    except KeyboardInterrupt:
        # Ctrl-C while exit waits for the submitted work: stop waiting, as
        # inside a `with` block (queued work cancelled, workers killed).
        for dispatcher in dispatchers:
            _request_shutdown(
                dispatcher.inbox, dispatcher, pid, True, Abort("KeyboardInterrupt")
            )
        for dispatcher in dispatchers:
            dispatcher.join()
        raise


_current_pid = os.getpid()
"""This process's pid, kept up to date across os.fork(): submit() compares it
with the executor's owner on every call, and getpid() is a system call."""


def _note_pid_after_fork() -> None:
    global _current_pid
    _current_pid = os.getpid()


os.register_at_fork(after_in_child=_note_pid_after_fork)
threading._register_atexit(_on_interpreter_exit)  # type: ignore[attr-defined]
