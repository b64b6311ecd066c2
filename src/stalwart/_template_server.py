"""The template process's side: preload the parent's modules, then fork workers.

The template is a fresh interpreter (started with the ``spawn`` method, so it
imported the parent's ``__main__`` as spawn does) that imports the modules the
parent had imported, checks that it is still fit to fork (one thread, no
accelerator runtime), says so, and then waits. For each worker the parent sends
the file descriptors of a new process over a Unix socket; the template forks,
and the child reads the worker's process object from its own pipe and runs it.
The same protocol as the stdlib's forkserver, whose ``read_signed`` and
``write_signed`` it uses: the parent's *status pipe* carries the child's pid,
then its exit code, which the template learns from ``waitpid`` on SIGCHLD.

The template never unpickles what the parent sends (the child does), runs no
thread, ignores Ctrl-C (the parent decides), and ends when the parent closes
the socket; the kernel kills it if the parent dies first (PR_SET_PDEATHSIG).
Every worker it forked has the template as its kernel parent: the workers die
with it, which is what makes an orphan impossible even if the parent is
SIGKILLed.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import pickle
import selectors
import signal
import struct
import sys
import traceback
from multiprocessing import process, reduction, util
from multiprocessing.forkserver import read_signed, write_signed
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import socket

MAX_FDS = 64
"""File descriptors one worker may need: its pipes, its claim page, the
multiprocessing objects its initializer inherits."""

PROCESS_NAME = b"stalwart-tmpl"
"""The template's name in ``ps -o comm``, ``top`` and ``/proc/PID/comm`` (the
kernel keeps 15 bytes); the workers it forks take back the interpreter's."""

PR_SET_NAME = 15
"""prctl(2) option: this thread's name, which for a single thread is the
process's."""

READY = "ready"
UNFIT = "unfit"
_LENGTH = struct.Struct("!Q")

_inherited_fds: list[int] = []
"""In a worker forked by the template: the descriptors the parent sent it."""

__all__ = ["InheritedFd", "read_signed", "write_signed"]


class InheritedFd:
    """A descriptor in a pickled worker, by its place in the fds sent along."""

    def __init__(self, index: int) -> None:
        self.index = index

    def detach(self) -> int:
        return _inherited_fds[self.index]


# -- messages on the control socket -----------------------------------------------


def send_message(sock: socket.socket, message: Any) -> None:
    data = pickle.dumps(message)
    sock.sendall(_LENGTH.pack(len(data)) + data)


def receive_message(sock: socket.socket) -> Any:
    size = _LENGTH.unpack(_receive_exactly(sock, _LENGTH.size))[0]
    return pickle.loads(_receive_exactly(sock, size))


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise EOFError("the other end of the template's socket closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# -- the template's life ------------------------------------------------------------


def serve(sock: socket.socket, modules: list[str]) -> None:
    """Entry point of the template process (its ``Process`` target)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from stalwart import _forking, _lifeline

    _lifeline.ask_kernel_to_kill_us_with_parent()
    parent = process.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        return  # the parent died before the kernel was watching
    interpreter_name = _set_process_name(PROCESS_NAME)
    skipped = _preload(modules)
    hazard = _forking.fork_hazard(ignore_fds={sock.fileno()})
    try:
        if hazard is not None:
            send_message(sock, (UNFIT, f"after preloading, {hazard}"))
            return
        send_message(sock, (READY, os.getpid(), skipped))
    except (BrokenPipeError, ConnectionResetError):
        return  # the parent no longer wants us (it shut down, or is exiting)
    util._close_stdin()  # type: ignore[attr-defined]
    _fork_on_request(sock, interpreter_name)


def _set_process_name(name: bytes) -> bytes:
    """Rename this process (Linux); return its previous name."""
    try:
        with open("/proc/self/comm", "rb") as comm:
            previous = comm.read().strip()
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name), *[ctypes.c_ulong(0)] * 3)
    except (OSError, AttributeError):  # no /proc, no libc, no prctl: keep it
        return name
    return previous


BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
"""OpenBLAS (NumPy's, SciPy's) starts its thread pool as it is imported, and a
process running threads is not forked. Unless the user set them, the template
imports with these at 1: no pool starts, and the workers forked from it run
BLAS single-threaded, as joblib's loky backend runs one worker per CPU."""


def single_threaded_blas() -> dict[str, str]:
    """The template's own environment additions: BLAS_THREAD_VARIABLES at 1,
    those the user has not set (the template drops them again once it has
    imported everything; each worker takes the parent's environment)."""
    return {name: "1" for name in BLAS_THREAD_VARIABLES if name not in os.environ}


def _preload(modules: list[str]) -> list[tuple[str, str]]:
    """Import each module; return the ones that failed, with why."""
    skipped = []
    for name in modules:
        if name in sys.modules:
            continue
        try:
            __import__(name)
        except BaseException as exc:  # noqa: BLE001 - reported, imported on demand
            skipped.append((name, f"{type(exc).__name__}: {exc}"))
    return skipped


def _fork_on_request(sock: socket.socket, worker_name: bytes) -> None:
    """Fork a worker per request until the parent closes the socket."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    handlers = {
        signal.SIGCHLD: signal.signal(signal.SIGCHLD, lambda *_: None),
        signal.SIGINT: signal.SIG_DFL,
    }
    signal.set_wakeup_fd(wake_w)  # a write in a handler would be racy
    status_fds: dict[int, int] = {}  # worker pid -> its status pipe
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        selector.register(wake_r, selectors.EVENT_READ)
        while True:
            ready = [key.fileobj for key, _ in selector.select()]
            if wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                _report_exits(status_fds)
            if sock in ready:
                try:
                    fds = reduction.recvfds(sock, MAX_FDS + 2)
                except (EOFError, OSError, RuntimeError):
                    return  # the parent is gone or closed us: the workers go too
                if not fds:
                    return
                data_r, status_w, *worker_fds = fds
                pid = os.fork()
                if pid == 0:
                    unused = [
                        sock.fileno(),
                        wake_r,
                        wake_w,
                        status_w,
                        *status_fds.values(),
                    ]
                    _set_process_name(worker_name)
                    _run_child(data_r, worker_fds, unused, handlers)
                with contextlib.suppress(BrokenPipeError):  # the parent gave up
                    write_signed(status_w, pid)
                status_fds[pid] = status_w
                for fd in (data_r, *worker_fds):
                    os.close(fd)


def _report_exits(status_fds: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        status_w = status_fds.pop(pid, None)
        if status_w is None:
            continue
        with contextlib.suppress(BrokenPipeError):
            write_signed(status_w, os.waitstatus_to_exitcode(status))
        os.close(status_w)


def _run_child(
    data_r: int, fds: list[int], unused: list[int], handlers: dict[Any, Any]
) -> None:
    """In the forked child: become the worker the parent described; never return."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        for fd in unused:
            os.close(fd)
        _inherited_fds[:] = fds
        parent_sentinel = os.dup(data_r)  # EOF once the parent is gone
        with os.fdopen(data_r, "rb", closefd=True) as from_parent:
            current = process.current_process()
            current._inheriting = True  # type: ignore[attr-defined]
            try:
                _take_on_environment(pickle.load(from_parent))
                worker = pickle.load(from_parent)
            finally:
                del current._inheriting  # type: ignore[attr-defined]
        code = worker._bootstrap(parent_sentinel)
    except BaseException:  # noqa: BLE001 - the worker could not start: say why
        with contextlib.suppress(Exception):
            traceback.print_exc()
            sys.stderr.flush()
    finally:
        os._exit(code)


def _take_on_environment(prepared: dict[str, Any]) -> None:
    """The parent's working directory, ``sys.path`` and environment, as of now."""
    os.chdir(prepared["cwd"])
    sys.path[:] = prepared["sys_path"]
    environ = prepared["environ"]
    for name in set(os.environ) - set(environ):
        del os.environ[name]
    os.environ.update(environ)


def prepared_environment() -> bytes:
    """The parent's side of ``_take_on_environment``: pickled, ready to send."""
    buffer = io.BytesIO()
    reduction.dump(
        {"cwd": os.getcwd(), "sys_path": list(sys.path), "environ": dict(os.environ)},
        buffer,
    )
    return buffer.getvalue()
