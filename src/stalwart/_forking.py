"""When forking the caller is provably safe, and when it is not.

``fork()`` copies one thread and all of memory. It is safe only where no other
thread could hold a lock that the copy inherits taken, where no accelerator
driver keeps state that a copy breaks, and where no open connection would be
shared by two processes speaking one protocol. ``fork_hazard()`` checks exactly
that, from the kernel's point of view (``/proc/self``), so that native threads
(OpenBLAS, a CUDA runtime, gRPC) count as well as Python's:

- exactly one thread in ``/proc/self/task``;
- no file descriptor open on an accelerator device (``/dev/nvidia*``, AMD's
  ``/dev/kfd`` and ``/dev/dri/*``, ``/dev/accel/*``): a CUDA or ROCm runtime that
  was initialised keeps them open;
- no socket that is a connection or an endpoint: a TCP/UDP socket (a database,
  an HTTP client, ZeroMQ), a listening socket, or a Unix socket with a name at
  either end. Anonymous socket pairs (asyncio's self-pipe, multiprocessing's
  duplex pipes) are plumbing inside this process, and do not count.

Anything else (or no ``/proc``: macOS) is a hazard, and the caller is not forked.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterable

PROC_SELF = "/proc/self"

ACCELERATOR_DEVICES = ("/dev/nvidia", "/dev/kfd", "/dev/dri/", "/dev/accel/")
"""Device paths an initialised GPU/accelerator runtime keeps open."""

THREAD_EXIT_WAIT_S = 0.05
"""How long to wait for a thread stalwart has just joined to leave the kernel's
thread list (CPython's join() returns a moment before the thread is gone)."""


def fork_hazard(
    ignore_fds: Collection[int] = (),
    proc: str = PROC_SELF,
    is_connection: Callable[[int], bool] | None = None,
) -> str | None:
    """Why forking this process now could hurt the child, or None if it cannot.

    ``ignore_fds``: descriptors the caller knows to be its own (the template's
    socket to its parent). ``proc`` and ``is_connection`` stand in for
    ``/proc/self`` and the socket check in tests.
    """
    if is_connection is None:
        is_connection = socket_is_connection
    if not sys.platform.startswith("linux") or not os.path.isdir(proc):
        return "no /proc/self to prove this process single-threaded"
    if threading.current_thread() is not threading.main_thread():
        return "called from a thread other than the main thread"
    threads = _count(f"{proc}/task")
    if threads != 1:
        return f"{threads} threads are running (fork copies only the caller)"
    fds = _open_files(f"{proc}/fd", ignore_fds)
    if fds is None:
        return "its file descriptors cannot be listed"
    for fd, target in fds:
        if target.startswith(ACCELERATOR_DEVICES):
            return f"an accelerator runtime holds {target} open"
        if target.startswith("socket:") and is_connection(fd):
            return f"a connection is open (fd {fd}), which must not be shared"
    return None


def socket_is_connection(fd: int) -> bool:
    """Whether socket ``fd`` reaches beyond this process: not an anonymous pair."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return True  # cannot tell: a hazard
    with sock:
        if sock.family != socket.AF_UNIX:
            return True  # TCP, UDP, netlink...: a connection or an endpoint
        try:
            local = sock.getsockname()
        except OSError:
            return True
        try:
            peer = sock.getpeername()
        except OSError:
            peer = ""  # not connected (a bound or listening socket has a name)
        return bool(local) or bool(peer)


def wait_until_gone(native_ids: Iterable[int], proc: str = PROC_SELF) -> None:
    """Wait (briefly) until threads that have just ended leave ``/proc``."""
    paths = [f"{proc}/task/{tid}" for tid in native_ids]
    deadline = time.monotonic() + THREAD_EXIT_WAIT_S
    while any(os.path.exists(path) for path in paths):
        if time.monotonic() > deadline:
            return
        os.sched_yield()


def _count(directory: str) -> int:
    try:
        return len(os.listdir(directory))
    except OSError:
        return 0  # unreadable: counts as a hazard (not exactly one)


def _open_files(
    directory: str, ignore_fds: Collection[int]
) -> list[tuple[int, str]] | None:
    """(fd, what it points at: ``socket:[...]``, a path) for each open fd;
    None if the table cannot be read."""
    try:
        names = os.listdir(directory)
    except OSError:
        return None
    targets = []
    for name in names:
        fd = int(name)
        if fd in ignore_fds:
            continue
        try:
            targets.append((fd, os.readlink(f"{directory}/{name}")))
        except OSError:
            continue  # closed meanwhile (the listing's own fd among them)
    return targets
