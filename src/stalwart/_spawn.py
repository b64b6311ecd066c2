"""Process mechanics: start a worker, kill a process tree, name an exit code.

Policy (when to start or kill) lives in ``_process``; this module only knows how,
and leans on loky for the parts loky does well.

Three things about how a worker is started, each for a reason:

* **From one long-lived thread.** Every ``process.start()`` runs on the
  "stalwart-spawner" thread (started on first use; a caller blocks until its
  worker has started). On Linux a worker asks the kernel to kill it when its
  parent dies (``_lifeline``), and to the kernel the parent is the *thread*
  that forked it: a worker started by an executor's I/O thread would be killed
  when that thread ends, although it may live on parked for a minute.
* **Not daemonic**, as the stdlib's workers: a task may open a pool of its own
  (multiprocessing refuses children to daemonic processes). multiprocessing's
  exit handler joins non-daemonic children without a timeout; stalwart's own
  exit hooks stop its workers before that runs, and ``_kill_workers_left_at_exit``
  makes sure none that is stuck can hang the exit.
* **Forgotten by a forked child.** A worker sits in multiprocessing's list of
  children, which a raw ``os.fork()`` child inherits; when that child exits,
  multiprocessing would terminate or join the parent's workers. After a fork the
  child drops them from that list: they are its parent's, not its own.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.process as mp_process
import multiprocessing.util as mp_util
import os
import queue
import signal
import sys
import threading
import weakref
from typing import TYPE_CHECKING

from loky.backend.utils import kill_process_tree

from stalwart import _worker

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import BaseContext
    from multiprocessing.process import BaseProcess

    from stalwart._worker import WorkerConfig

logger = logging.getLogger("stalwart")


def start_worker_process(
    context: BaseContext,
    child_end: Connection,
    config: WorkerConfig,
    *,
    on_spawner_thread: bool = True,
) -> BaseProcess:
    """Start one worker running ``_worker.run_worker`` on its end of a duplex pipe.

    ``on_spawner_thread=False`` starts it in the calling thread: for a fork of
    the caller (the only thread there is) and for the template's workers (the
    template, not this process, is their kernel parent).
    """
    process: BaseProcess = context.Process(  # type: ignore[attr-defined]
        target=_worker.run_worker,
        args=(child_end, config),
        name="stalwart-worker",
        daemon=False,  # a task may start processes of its own (nested pools)
    )
    # Recorded before it starts: a fork in another thread meanwhile must find it.
    _started.add(process)
    if on_spawner_thread:
        _spawner.start(process)
    else:
        process.start()
    _give_kill_to(process)
    return process


def start_helper_process(process: BaseProcess) -> None:
    """Start a process of stalwart's own (the template) from the spawner thread,
    whose life its kernel parent-death signal follows."""
    _spawner.start(process)


def _give_kill_to(process: BaseProcess) -> None:
    """loky's Popen has ``terminate()`` but no ``kill()``, which
    ``Process.kill()`` calls: code that reads ``executor._processes`` (CPython's
    own tests among it) kills workers that way."""
    popen = getattr(process, "_popen", None)
    if popen is None or hasattr(popen, "kill"):
        return

    # By weak reference: a cycle through the Popen would keep the worker's
    # sentinel fd open until the garbage collector ran (loky closes it when
    # the Popen is collected).
    popen_ref = weakref.ref(popen)
    pid = popen.pid

    def kill() -> None:
        alive = popen_ref()
        if alive is not None and alive.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    popen.kill = kill


def kill_worker_tree(process: BaseProcess) -> None:
    """SIGKILL a worker and every process it started (a timed-out task's children)."""
    kill_process_tree(process)


def signal_name(exitcode: int | None) -> str | None:
    """``-11`` -> ``"SIGSEGV"``; None for a normal exit code or an unknown one."""
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


class _StartRequest:
    """One ``process.start()`` asked of the spawner thread, and how it went."""

    def __init__(self, process: BaseProcess) -> None:
        self.process = process
        self.done = threading.Event()
        self.error: BaseException | None = None


class _Spawner:
    """The thread that starts every worker process, and its queue of requests.

    Any thread may call ``start()``; ``lock`` guards ``thread`` (who starts it),
    and the thread alone takes requests off ``requests``.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: queue.SimpleQueue[_StartRequest] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None

    def start(self, process: BaseProcess) -> None:
        """Run ``process.start()`` on the spawner thread; raise what it raised."""
        if threading.current_thread() is self.thread or not self._ensure_thread():
            # No spawner (the interpreter is finalizing, when no thread may
            # start): start here. The worker then dies with this thread on
            # Linux, which at exit is what should happen anyway.
            process.start()
            return
        request = _StartRequest(process)
        self.requests.put(request)
        try:
            request.done.wait()
        except BaseException:
            # Ctrl-C while waiting (main thread): the start is under way and
            # cannot be called back; let it end, and leave no worker behind.
            request.done.wait()
            if request.error is None:
                kill_worker_tree(process)
            raise
        if request.error is not None:
            raise request.error

    def _ensure_thread(self) -> bool:
        if sys.is_finalizing():
            return False  # daemon threads stop running: none would answer
        with self.lock:
            if self.thread is not None:
                return True
            thread = threading.Thread(
                target=self._serve, name="stalwart-spawner", daemon=True
            )
            try:
                thread.start()
            except RuntimeError:  # interpreter shutting down: no new threads
                return False
            self.thread = thread
            return True

    def _serve(self) -> None:
        # Never ends: the workers it started are tied to this thread's life.
        while True:
            request = self.requests.get()
            try:
                request.process.start()
            except BaseException as exc:  # noqa: BLE001 - raised in the caller
                request.error = exc
            finally:
                request.done.set()
                del request  # the process object belongs to the caller


_spawner = _Spawner()
_started: weakref.WeakSet[BaseProcess] = weakref.WeakSet()
"""Worker processes started by this process (the parent's own, after a fork)."""


def _after_fork_in_child() -> None:
    """A forked child has no spawner thread, and owns none of its parent's workers.

    Left in multiprocessing's children, the parent's workers would be
    terminated (daemonic) or joined (not daemonic: an AssertionError) by the
    child's exit handler, however the child exits.
    """
    global _spawner, _started
    _spawner = _Spawner()
    mp_process._children.difference_update(_started)  # type: ignore[attr-defined]
    _started = weakref.WeakSet()


def _kill_workers_left_at_exit() -> None:
    """Last resort at exit: no stuck worker may hang it.

    multiprocessing's exit handler runs its finalizers first, then joins every
    non-daemonic child without a timeout. stalwart's exit hooks (``_process``,
    ``_reuse``) ran before that handler and stopped its workers, waiting for
    them: one still alive here would never end by itself.
    """
    for process in list(_started):
        with contextlib.suppress(ValueError, AssertionError, OSError):
            # ValueError: closed; AssertionError: not our child after all.
            if process.is_alive():
                logger.warning(
                    "worker %s still running at exit; killing it", process.pid
                )
                kill_worker_tree(process)


os.register_at_fork(after_in_child=_after_fork_in_child)
mp_util.Finalize(None, _kill_workers_left_at_exit, exitpriority=0)
