"""DaskExecutor: stalwart's executor surface on a dask.distributed cluster.

When one machine is not enough, the same code runs on dask's workers: the same
``submit``/``map``/``shutdown``, ``concurrent.futures.Future`` results, the same
pickling check and error types. dask is imported only when a DaskExecutor is
created (``pip install 'stalwart[dask]'``).

Data flow::

    submit(fn, *args)                                      caller's thread
      | _pickling.serialize_call(): PicklingError raised here; these bytes go
      v
    client.submit(_dask_worker.run_task, call, plugin, task_timeout)
      --> the scheduler --> a dask worker: the executor's plugin gives the
          initializer's state and watches the task's clock; the call runs and
          its outcome comes back as the same reply a process pool's worker sends
      v
    thread "stalwart-dask-results": distributed.as_completed(with_results=True)
      --> resolves the concurrent.futures.Future (callbacks run there)

How failures map:

* A task that raises: its own exception, the worker's traceback attached (an
  exception that cannot be pickled arrives as ``RemoteError``).
* A worker that dies: dask runs the task again elsewhere, up to the scheduler's
  ``distributed.scheduler.allowed-failures`` (3 by default); when it gives up
  (``KilledWorker``) the task is submitted again ``retries`` times, then fails
  with ``WorkerCrashedError``.
* ``task_timeout``: the worker's watchdog reports a task past its limit; its
  future fails on time with ``TaskTimeoutError`` and dask forgets the task. On a
  cluster this executor started, the worker is restarted (through its nanny) so
  the stuck call really stops; on a cluster it was given, nothing of the user's
  is restarted, and the call runs on until it returns, as on a thread pool.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import threading
import time
import uuid
import weakref
from concurrent.futures import CancelledError, Executor, Future
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any, TypeVar

from stalwart import _forwarding, _map, _options, _pickling, _wire
from stalwart._stats import ExecutorStats
from stalwart.errors import TaskTimeoutError, WorkerCrashedError

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.context import BaseContext
    from types import TracebackType

    from typing_extensions import ParamSpec, Self

    P = ParamSpec("P")

R = TypeVar("R")

logger = logging.getLogger("stalwart")

INSTALL_HINT = "pip install 'stalwart[dask]'"

MAX_LOST_RESUBMITS = 3
"""How often a task that dask dropped unasked (its result lost with a dead
worker) is submitted again before it fails with CancelledError."""

FORGET_TIMEOUT_S = 5.0
"""How long a timed-out task's worker is spared while the scheduler has not yet
dropped the task: killing it sooner would make dask run the task elsewhere."""


def import_distributed() -> Any:
    """dask.distributed, or an ImportError that says how to get it."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            f"stalwart.DaskExecutor needs dask.distributed, which is not installed "
            f"here: {INSTALL_HINT} (or pip install 'dask[distributed]')."
        ) from exc
    return distributed


class _DaskTask:
    """The client's bookkeeping for one submitted call."""

    __slots__ = (
        "args",
        "attempts",
        "call",
        "claimed",
        "dask_future",
        "fn",
        "future",
        "key",
        "kwargs",
        "lost",
        "started",
        "timed_out",
        "timeout",
    )

    def __init__(
        self,
        future: Future[Any],
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        call: bytes,
        timeout: float | None,
    ) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.call = call  # kept: dask may give up on it and it is submitted again
        self.timeout = timeout
        self.attempts = 0  # times dask gave up on it (KilledWorker)
        self.lost = 0  # times dask dropped it unasked (see _resubmit_lost)
        self.timed_out = False
        self.dask_future: Any = None
        self.key = ""
        self.claimed = False  # set_running_or_notify_cancel() was called
        self.started = False  # ... and returned True: not cancelled

    def claim(self) -> bool:
        """``set_running_or_notify_cancel()``, once (the session's lock held):
        the results thread and a user's ``cancel()`` may both get here."""
        if not self.claimed:
            self.claimed = True
            self.started = self.future.set_running_or_notify_cancel()
        return self.started

    def describe(self) -> str:
        return _map.describe(self.fn, self.args, self.kwargs)


class _Session:
    """One executor's client, cluster, plugin and threads.

    Kept apart from the executor, so that nothing dask holds (the topic handler,
    the threads) keeps the executor alive: an executor dropped without
    ``shutdown()`` is collected, which shuts the session down (as the stdlib
    does).
    """

    def __init__(
        self,
        distributed: Any,
        client: Any,
        owns_client: bool,
        cluster: Any,
        initializer_call: bytes | None,
        retries: int,
        stats: ExecutorStats,
    ) -> None:
        from stalwart import _dask_worker

        self.distributed = distributed
        self.client = client
        self.owns_client = owns_client  # we connected it: ours to close
        self.cluster = cluster  # started by us, to close; None: not ours
        self.retries = retries
        self.stats = stats
        self.name = f"stalwart-{uuid.uuid4().hex[:16]}"  # the plugin's, and the topic's
        self.run_task = _dask_worker.run_task
        self.forward_output = True  # (DaskExecutor's keywords of that name)
        self.prefix_output = False

        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.tasks: dict[str, _DaskTask] = {}  # by dask key
        self.submitting = 0  # submit() calls between their check and their task
        self.shutdown_requested = False
        self.timeouts: list[dict[str, Any]] = []  # reports from the watchdogs
        self.timeout_thread: threading.Thread | None = None

        client.register_plugin(
            _dask_worker.ExecutorPlugin(initializer_call, topic=self.name),
            name=self.name,
        )
        client.subscribe_topic(self.name, self._on_timeout_report)
        self.completed = distributed.as_completed(
            loop=client.loop, with_results=True, raise_errors=False
        )
        self.collector = threading.Thread(
            target=self._collect, name="stalwart-dask-results", daemon=True
        )
        self.collector.start()
        _live_sessions.add(self)

    # -- called from user threads -------------------------------------------------

    def submit(self, task: _DaskTask) -> None:
        with self.lock:
            if self.shutdown_requested:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _interpreter_exiting:
                raise RuntimeError(
                    "cannot schedule new futures after interpreter shutdown"
                )
            self.stats.tasks_submitted += 1
            self.submitting += 1  # the results thread waits for this task too
        try:
            self._send(task)
        finally:
            with self.lock:
                self.submitting -= 1
                self.changed.notify_all()
        task.future.add_done_callback(functools.partial(self._on_future_done, task))

    def request_shutdown(self, cancel_futures: bool) -> None:
        with self.lock:
            self.shutdown_requested = True
            doomed = [t.future for t in self.tasks.values()] if cancel_futures else []
            self.changed.notify_all()
        for future in doomed:
            future.cancel()  # its done-callback tells dask

    def join(self) -> None:
        if self.collector is not threading.current_thread():
            self.collector.join()

    # -- dask's side ------------------------------------------------------------------

    def _send(self, task: _DaskTask) -> None:
        """Submit ``task`` to dask under a new key (lock NOT held: the client's
        event loop thread takes it too)."""
        key = f"{_key_prefix(task)}-{uuid.uuid4().hex}"
        dask_future = self.client.submit(
            self.run_task,
            task.call,
            self.name,
            task.timeout,
            self.forward_output,
            key=key,
            pure=False,
        )
        with self.lock:
            task.key, task.dask_future = key, dask_future
            self.tasks[key] = task
            self.completed.add(dask_future)
            self.changed.notify_all()

    def _on_future_done(self, task: _DaskTask, future: Future[Any]) -> None:
        """Our future's done-callback: a cancelled one is cancelled in dask too."""
        if not future.cancelled():
            return
        with self.lock:
            # wait() and as_completed() count a cancelled future as done only
            # once its executor says so: claim() does.
            if task.claim():
                return  # cannot happen: a cancelled future does not start
            self.stats.tasks_cancelled += 1
            dask_future = task.dask_future
        with contextlib.suppress(Exception):  # the client may be closing
            self.client.cancel([dask_future])

    def _collect(self) -> None:
        """The results thread: resolve each future as dask completes its task;
        once shut down and drained, release what the session holds."""
        try:
            while True:
                with self.lock:
                    while self.submitting or (
                        self.completed.is_empty() and not self.shutdown_requested
                    ):
                        self.changed.wait()
                    if self.completed.is_empty():
                        break
                batch = self.completed.next_batch(block=True)
                while batch:
                    # Popped, so that no local keeps a dask future alive (and its
                    # result on the cluster) while this thread waits for more.
                    self._resolve(*batch.pop(0))
        except BaseException:
            logger.exception("stalwart's dask results thread failed")
            self._fail_all(
                BrokenProcessPool(
                    "stalwart's dask results thread failed; this is a bug in "
                    "stalwart, please report it with the traceback logged by "
                    "'stalwart'. Create a new executor."
                )
            )
        finally:
            self._close()

    def _resolve(self, dask_future: Any, outcome: Any) -> None:
        key, status = dask_future.key, dask_future.status
        with self.lock:
            task = self.tasks.pop(key, None)
            if task is not None and task.dask_future is dask_future:
                task.dask_future = None
        # The last reference, even should an exception's traceback keep this
        # frame: dask frees the result on the cluster, and will not recompute it
        # should the worker holding it die.
        del dask_future
        if task is None or task.timed_out:
            return  # timed out, already failed
        if status == "finished":
            self._settle_reply(task, outcome)
        elif status == "error":
            error = outcome[1]
            if isinstance(error, self.distributed.KilledWorker):
                self._on_killed_worker(task, error)
            else:
                self._fail(task, error)
        elif not task.future.cancelled():
            if self._resubmit_lost(task):
                return
            self._fail(
                task,
                CancelledError(
                    f"dask cancelled {task.describe()} without being asked to by "
                    "this executor: its client closed, or the cluster restarted. "
                    "Submit it again to an executor whose cluster is running."
                ),
            )

    def _settle_reply(
        self,
        task: _DaskTask,
        reply_bytes: bytes | tuple[bytes, list[tuple[Any, ...]], int],
    ) -> None:
        """The reply ``_worker.run_call`` made on the dask worker, after what
        the task printed and logged there (``_dask_worker.run_task``)."""
        if isinstance(reply_bytes, tuple):
            reply_bytes, events, pid = reply_bytes
            prefix = f"[worker {pid}] " if self.prefix_output else None
            _forwarding.deliver_events(events, prefix, pid)
        try:
            succeeded, value = _wire.outcome(pickle.loads(reply_bytes))
        except BaseException as exc:  # noqa: BLE001 - fails that task only
            unreadable = BrokenProcessPool(
                f"the result of {task.describe()} came back from dask but could not "
                f"be unpickled here: {exc!r}. Return types this process can "
                "import and rebuild; the executor carries on."
            )
            unreadable.__cause__ = exc
            self._fail(task, unreadable)
            return
        if succeeded:
            self._succeed(task, value)
        else:
            self._fail(task, value)

    def _resubmit_lost(self, task: _DaskTask) -> bool:
        """dask cancelled ``task`` though nobody asked: submit it again, while
        the client runs, at most ``MAX_LOST_RESUBMITS`` times.

        When a worker dies holding a finished task's result, the scheduler
        computes the key again, but a client gathering it at that moment can
        drop its future as cancelled ("Couldn't gather keys"). The result is
        lost, not refused: dask itself would compute it again.
        """
        if task.lost >= MAX_LOST_RESUBMITS or self.client.status != "running":
            return False
        task.lost += 1
        logger.debug("dask dropped %s unasked; submitting it again", task.describe())
        self._send(task)
        return True

    def _on_killed_worker(self, task: _DaskTask, error: BaseException) -> None:
        task.attempts += 1
        if task.attempts <= self.retries:
            with self.lock:
                self.stats.tasks_retried += 1
            self._send(task)
            return
        last = getattr(getattr(error, "last_worker", None), "address", "a worker")
        tries = getattr(error, "allowed_failures", 0) + 1
        crash = WorkerCrashedError(
            f"dask gave up on {task.describe()}: the {tries} workers that ran it "
            f"died while running it, the last one {last}"
            + (f", and so did it {task.attempts} times" if task.attempts > 1 else "")
            + ". Only this task failed. A task that kills its worker (a segfault "
            "in a C extension, running out of memory) is the usual cause.",
            task=task.describe(),
            attempts=task.attempts * tries,
        )
        crash.__cause__ = error
        self._fail(task, crash)

    def _succeed(self, task: _DaskTask, value: Any) -> None:
        with self.lock:
            task.call = b""  # no retry can need it now
            if not task.claim():
                return  # cancelled meanwhile
            self.stats.tasks_completed += 1
        task.future.set_result(value)

    def _fail(self, task: _DaskTask, error: BaseException) -> None:
        with self.lock:
            if not task.claim():
                return  # cancelled meanwhile
            self.stats.count_failure(error)
        task.future.set_exception(error)

    def _fail_all(self, error: BaseException) -> None:
        with self.lock:
            self.shutdown_requested = True
            tasks = list(self.tasks.values())
            self.tasks.clear()
        for task in tasks:
            self._fail(task, error)

    # -- task timeouts -------------------------------------------------------------------

    def _on_timeout_report(self, event: tuple[float, dict[str, Any]]) -> None:
        """A worker's watchdog reported an overdue task (dask's event loop)."""
        with self.lock:
            self.timeouts.append(event[1])
            if self.timeout_thread is None:
                self.timeout_thread = threading.Thread(
                    target=self._handle_timeouts,
                    name="stalwart-dask-timeouts",
                    daemon=True,
                )
                self.timeout_thread.start()
            self.changed.notify_all()

    def _handle_timeouts(self) -> None:
        """Fail overdue tasks on time; restart the worker, if it is ours."""
        while True:
            with self.lock:
                while not self.timeouts and not self.shutdown_requested:
                    self.changed.wait()
                if not self.timeouts:
                    self.timeout_thread = None
                    return
                report = self.timeouts.pop(0)
                task = self.tasks.get(report["key"])
                if task is None or task.future.done():
                    continue
                task.timed_out = True
            self._fail_overdue(task, report)

    def _fail_overdue(self, task: _DaskTask, report: dict[str, Any]) -> None:
        worker = report["worker"]
        restarts = self.cluster is not None
        message = (
            f"{task.describe()} ran longer than its task_timeout of "
            f"{report['timeout']:g} s on dask worker {worker} (pid {report['pid']}), "
            "so its future failed and dask dropped the task. "
            + (
                "Its worker was killed, which stops the call, and a fresh one "
                "takes its place. "
                if restarts
                else "That worker belongs to a cluster this executor did not start, "
                "so it is not restarted: the call runs on there until it returns. "
            )
            + "Raise task_timeout if the task needs more time."
        )
        logger.warning("%s", message)
        self._fail(
            task,
            TaskTimeoutError(
                message,
                timeout=report["timeout"],
                pid=report["pid"],
                task=task.describe(),
            ),
        )
        with contextlib.suppress(Exception):
            self.client.cancel([task.dask_future])
        # Once the scheduler runs the task nowhere, killing its worker cannot
        # make dask run it again elsewhere; the worker's nanny (in this process)
        # then starts a fresh one in its place.
        if (
            restarts
            and self._await_forgotten(task.key)
            and _kill_local_worker_tree(report["pid"])
        ):
            with self.lock:
                self.stats.workers_replaced += 1

    def _await_forgotten(self, key: str) -> bool:
        """Wait (boundedly) until the scheduler has acted on our cancel of ``key``.

        ``client.cancel`` only sends the request; there is no event to wait on,
        so the scheduler is asked, every few milliseconds.
        """
        deadline = time.monotonic() + FORGET_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if self.client.run_on_scheduler(_is_not_processing, key=key):
                    return True
            except Exception:
                logger.debug("could not ask the scheduler about %s", key, exc_info=True)
                return False
            time.sleep(0.01)
        logger.warning(
            "dask's scheduler did not drop the overdue task %s within %g s; its "
            "worker is left running it",
            key,
            FORGET_TIMEOUT_S,
        )
        return False

    # -- the end ---------------------------------------------------------------------------

    def _close(self) -> None:
        """Release what this session holds: its plugin and topic on the cluster,
        and the client and cluster if it started them. Never the user's."""
        _live_sessions.discard(self)
        with self.lock:
            self.shutdown_requested = True
            self.changed.notify_all()
            timeout_thread = self.timeout_thread
        if (
            timeout_thread is not None
            and timeout_thread is not threading.current_thread()
        ):
            timeout_thread.join()
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("unsubscribe", lambda: self.client.unsubscribe_topic(self.name)),
            ("unregister", lambda: self.client.unregister_worker_plugin(self.name)),
        ]
        if self.owns_client:
            steps += [("close client", self.client.close)]
        if self.cluster is not None:
            steps += [("close cluster", self.cluster.close)]
        for what, step in steps:
            _quietly(self.name, what, step)


def _quietly(session: str, what: str, step: Callable[[], Any]) -> None:
    """Run one clean-up step; the cluster may be gone already."""
    try:
        step()
    except Exception:
        logger.debug("dask session %s: %s failed", session, what, exc_info=True)


def _is_not_processing(dask_scheduler: Any, key: str) -> bool:
    """Runs on the scheduler: whether no worker is assigned ``key`` any more."""
    task = dask_scheduler.tasks.get(key)
    return task is None or task.processing_on is None


def _kill_local_worker_tree(pid: int) -> bool:
    """SIGKILL a worker of this process's local cluster and what it started.

    Its nanny runs in this process, so the worker is our child: a nanny's own
    restart would first wait seconds for a graceful close that a stuck task
    never allows. psutil comes with distributed.
    """
    import psutil

    try:
        worker = psutil.Process(pid)
        if worker.ppid() != os.getpid():
            return False  # not one of ours (already replaced, or pid reused)
        for child in reversed(worker.children(recursive=True)):
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        worker.kill()
    except psutil.NoSuchProcess:
        return False
    return True


def _start_local_cluster(distributed: Any, workers: int | None) -> Any:
    """A ``LocalCluster`` of ``workers`` one-thread processes; a clear error if
    its workers cannot start (dask's own says "Nanny failed to start")."""
    try:
        return distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.CRITICAL,  # its failures are told below, once
        )
    except Exception as exc:  # noqa: BLE001 - any failure to start: said below
        raise RuntimeError(
            f"the local dask cluster could not start its workers ({exc}). dask "
            "starts them with spawn, which imports your main script: a script "
            "that creates the executor when imported must keep that code under "
            "`if __name__ == '__main__':` (each worker's traceback above says "
            "whether that was it: stalwart's 'executor was created while a "
            "worker process was importing the main module')."
        ) from None  # dask's own chain: three tracebacks of its internals


def _key_prefix(task: _DaskTask) -> str:
    """The dask key's prefix, what the dashboard groups by: the function's name."""
    fn = task.args[0] if task.fn is _map.run_chunk else task.fn
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name) or "task"


class DaskExecutor(_map.MapMixin, Executor):
    """stalwart's executor on a dask.distributed cluster: the same code, more machines.

    ::

        with stalwart.DaskExecutor("tcp://scheduler:8786", initializer=load_model) as ex:
            labels = list(ex.map(predict, images, chunksize="auto", progress=True))

    * ``submit()`` pickles the call in the caller, as the process pool does: an
      unpicklable argument raises ``stalwart.PicklingError`` there, naming it.
    * ``initializer(*initargs)`` runs once in each dask worker, on the first task
      this executor sends there; ``stalwart.worker_state()`` returns its result in
      tasks on that worker. The state is dropped at ``shutdown()``.
    * Futures are ``concurrent.futures.Future``: ``as_completed``, ``wait`` and
      asyncio work unchanged. A future stays pending until its task finishes, so
      ``cancel()`` succeeds until then (dask drops the task; one already running
      on a worker finishes there, its result discarded).

    Args:
        address: a running scheduler to connect to, e.g. ``"tcp://host:8786"``.
            With neither ``address`` nor ``client``, the executor starts a local
            cluster of worker processes (one thread each) and closes it at
            ``shutdown()``.
        max_workers: the local cluster's worker count (``None``: every usable
            CPU; negative ``n``: ``cpus + 1 + n``). A cluster given by ``address``
            or ``client`` keeps its own size.
        initializer: called once per dask worker, as ``initializer(*initargs)``;
            its return value is what ``stalwart.worker_state()`` returns there.
        initargs: the initializer's arguments.
        task_timeout: seconds a task may run on a worker; past that its future
            fails with ``stalwart.TaskTimeoutError``. On the local cluster the
            worker is then restarted, which stops the call; on a cluster the
            executor was given, the call runs on until it returns.
        retries: after dask gives up on a task whose workers kept dying
            (``KilledWorker``; dask itself re-runs such a task up to its
            ``allowed-failures`` setting first), submit it again up to this many
            times before failing it with ``stalwart.WorkerCrashedError``. A task
            that raises is never retried.
        client: a ``distributed.Client`` to use as it is; it is not closed.
        mp_context: accepted and checked so that every executor takes the same
            keywords; no effect here: dask starts its workers itself.
        max_tasks_per_child: accepted and checked; no effect here: dask
            recycles its workers itself.
        reuse: accepted and checked; no effect here.
        idle_timeout: accepted and checked; no effect here.
        check_pickle: accepted and checked; the pickling check is always on.
        forward_output: what a task prints to ``sys.stdout`` / ``sys.stderr``
            and logs on its dask worker is shown here (the parent's current
            streams, its logging handlers), when the task ends, as the process
            pool's ``forward_output`` does. Only the task's own thread is
            captured; the worker's other output stays the worker's.
        prefix_output: start each forwarded line with ``[worker <pid>] ``.
        max_memory_per_child: accepted and checked; no effect here: dask's
            nanny restarts a worker past its ``memory_limit`` itself.
    """

    def __init__(
        self,
        address: str | None = None,
        max_workers: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        task_timeout: float | None = None,
        retries: int = 0,
        client: Any = None,
        mp_context: BaseContext | str | None = None,
        max_tasks_per_child: int | None = None,
        reuse: bool = False,
        idle_timeout: float | None = None,
        check_pickle: bool = True,
        forward_output: bool = True,
        prefix_output: bool = False,
        max_memory_per_child: int | str | None = None,
    ) -> None:
        from stalwart._process import _refuse_while_bootstrapping

        # A dask worker of a local cluster imports the main script (spawn): an
        # unguarded script would start a cluster inside each of them.
        _refuse_while_bootstrapping()
        if address is not None and client is not None:
            raise ValueError(
                "pass address= (a scheduler to connect to) or client= (a "
                "distributed.Client to use), not both"
            )
        if address is not None and not isinstance(address, str):
            raise TypeError(
                f"address must be a scheduler address such as 'tcp://host:8786', "
                f"got {type(address).__name__} {address!r}"
            )
        workers = None
        if max_workers is not None or (address is None and client is None):
            workers = _options.resolve_max_workers(max_workers)
        _options.check_initializer(initializer, initargs)
        _options.check_max_tasks_per_child(max_tasks_per_child)
        _options.check_retries(retries)
        _options.resolve_context(mp_context)
        _options.check_reuse(reuse, idle_timeout)
        _options.check_output_options(forward_output, prefix_output)
        _options.resolve_max_memory(max_memory_per_child)
        self._task_timeout = _options.check_task_timeout(task_timeout)
        initializer_call = None
        if initializer is not None:
            initializer_call = _pickling.serialize_call(
                initializer, initargs, {}, action="initializer", by_value=True
            )
        distributed = import_distributed()
        self._stats = stats = ExecutorStats()
        cluster = None
        owns_client = client is None
        if client is None:
            if address is None:
                cluster = _start_local_cluster(distributed, workers)
                stats.workers_started = len(cluster.workers)
                address = cluster.scheduler_address
            try:
                client = distributed.Client(address, set_as_default=False)
            except BaseException:
                if cluster is not None:
                    cluster.close()
                raise
        self._session = session = _Session(
            distributed, client, owns_client, cluster, initializer_call, retries, stats
        )
        session.forward_output, session.prefix_output = forward_output, prefix_output
        self._finalizer = weakref.finalize(self, session.request_shutdown, False)
        self._finalizer.atexit = False

    @property
    def client(self) -> Any:
        """The ``distributed.Client`` this executor submits through."""
        return self._session.client

    def submit(
        self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Future[R]:
        """Schedule ``fn(*args, **kwargs)`` on a dask worker; return its Future.

        Raises:
            stalwart.PicklingError: the call cannot be pickled (raised here).
            RuntimeError: the executor was shut down.
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
        call = _pickling.serialize_call(fn, args, kwargs, action=action, by_value=True)
        future: Future[R] = Future()
        self._session.submit(_DaskTask(future, fn, args, kwargs, call, task_timeout))
        return future

    def shutdown(
        self,
        wait: bool = True,
        *,
        cancel_futures: bool = False,
        kill_workers: bool = False,
    ) -> None:
        """Stop accepting work; submitted work still completes, unless cancelled.

        Then the executor's plugin is removed from the workers (their
        initializer state with it), and the client and cluster are closed if
        this executor started them.

        Args:
            wait: block until the submitted work is done and all is released.
            cancel_futures: cancel every future that has not finished.
            kill_workers: cancel every future, and close the local cluster at
                once, which ends the running tasks too. A cluster given by
                ``address`` or ``client`` is left running.
        """
        self._session.request_shutdown(cancel_futures or kill_workers)
        if wait:
            self._session.join()

    def stats(self) -> ExecutorStats:
        """What this executor did so far: tasks by outcome; the local cluster's
        workers as started, and those restarted after a ``task_timeout``."""
        with self._session.lock:
            return self._stats.snapshot()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        # Ctrl-C: the user wants out now, not after the queued work.
        interrupted = exc_type is not None and issubclass(exc_type, KeyboardInterrupt)
        self.shutdown(wait=True, cancel_futures=interrupted)

    def __repr__(self) -> str:
        session = self._session
        state = "shut down" if session.shutdown_requested else "running"
        where = "a local cluster" if session.cluster is not None else "a given cluster"
        address = getattr(getattr(session.client, "scheduler", None), "address", "?")
        return f"<stalwart.DaskExecutor on {where} {address} {state}>"


# -- interpreter exit -----------------------------------------------------------

_live_sessions: weakref.WeakSet[_Session] = weakref.WeakSet()
_interpreter_exiting = False


def _on_interpreter_exit() -> None:
    """Finish the submitted work before exit, as the other executors do, and
    close what the executors started before dask's own exit hooks run."""
    global _interpreter_exiting
    _interpreter_exiting = True
    sessions = list(_live_sessions)
    for session in sessions:
        session.request_shutdown(cancel_futures=False)
    for session in sessions:
        session.join()


threading._register_atexit(_on_interpreter_exit)  # type: ignore[attr-defined]
