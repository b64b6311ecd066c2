"""A worker's ties to its parent: it must not outlive it (contract 9).

Runs in the worker, first thing::

    prctl(PR_SET_PDEATHSIG, SIGKILL)   Linux: the kernel kills this worker the
                                       moment its parent goes, even while a C
                                       call (a regex, a bignum) holds the GIL
    is the parent still the one        it may have died before prctl: then the
    that started us?                   signal will never come, so exit now
    watchdog thread                    polls every poll_interval_s; when the
                                       parent is gone it kills what this worker
                                       started (a task's child processes), then
                                       exits: the only guard where there is no
                                       PDEATHSIG, and a delayed one while the
                                       GIL is held

The kernel's "parent" is the *thread* that started the worker: the signal fires
when that thread ends, even if the parent process lives on. ``_spawn`` therefore
starts every worker from one thread that lives as long as the process.

What remains (quotable): on Linux the kernel kills a worker the moment its
parent dies, however it dies (even by SIGKILL) and whatever the worker is doing
(even a long C call that holds the GIL). The processes that a task started
itself (``subprocess``, a stdlib pool) are not covered: when the parent is
SIGKILLed they are orphaned and live on until they end by themselves. A stalwart
pool opened inside a task is the exception: its workers hold the same lifeline,
so each level dies with the one above it. On other platforms (macOS) a worker
notices its parent's death within a quarter of a second, kills the processes
its task started, and exits, but not before a C call holding the GIL returns.
"""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal this process gets when its parent dies."""

MAX_FREEZE_ROUNDS = 16
"""Passes over this worker's descendants when it ends as an orphan. Frozen
processes cannot fork, so a pass finds new ones only while a task forks faster
than we freeze; the bound keeps a fork bomb from keeping the worker alive."""


def hold_on_to_parent(poll_interval_s: float) -> None:
    """Make this worker die with its parent; exit at once if it is gone already."""
    ask_kernel_to_kill_us_with_parent()
    # The order matters: a parent that died before prctl sends no signal, so
    # look only once the kernel is watching.
    lifeline = _Lifeline()
    if lifeline.parent_is_gone():
        end_orphaned_worker()
    # A bare thread, not threading.Thread: its start() waits until the new
    # thread has run, which on a busy machine delayed a worker's READY by
    # milliseconds (most of a forked worker's start-up). Like a daemon thread
    # it does not hold up the worker's exit.
    _thread.start_new_thread(lifeline.watch, (poll_interval_s,))


class _Lifeline:
    """Who this worker's parent is, and whether it still lives.

    ``parent_pid`` is our parent as the kernel sees it (the starting process, or
    a forkserver); ``creator_pid`` is the process that asked for this worker, as
    multiprocessing recorded it in the process object it sent us. They differ
    under a forkserver, and when the creator died before we could look (then
    ``getppid()`` names whoever adopted the orphan: init, or a subreaper).
    """

    def __init__(self) -> None:
        creator = multiprocessing.parent_process()
        self.creator_pid = creator.pid if creator is not None else None
        self.parent_pid = os.getppid()

    def parent_is_gone(self) -> bool:
        if os.getppid() != self.parent_pid:
            return True  # reparented: the parent died
        creator = self.creator_pid
        return creator not in (None, self.parent_pid) and not _is_running(creator)

    def watch(self, poll_interval_s: float) -> None:
        # The pipe alone cannot tell us: under fork contexts sibling workers
        # inherit copies of the parent's ends, so EOF may never come.
        while True:
            time.sleep(poll_interval_s)
            if self.parent_is_gone():
                end_orphaned_worker()


def end_orphaned_worker() -> None:
    """The parent is gone: kill what this worker's tasks started, then exit."""
    with contextlib.suppress(Exception):  # best effort: the exit must happen
        kill_descendants()
    os._exit(1)


def kill_descendants() -> None:
    """SIGKILL every process this one started, and theirs.

    Freeze first, then kill: a process killed before its children would hand
    them to init, out of our sight, and one still running may fork again.
    """
    frozen: list[int] = []
    for _ in range(MAX_FREEZE_ROUNDS):
        found = [pid for pid in _descendants(os.getpid()) if pid not in frozen]
        if not found:
            break
        for pid in found:
            _send(pid, signal.SIGSTOP)
        frozen += found
    for pid in frozen:
        _send(pid, signal.SIGKILL)


def ask_kernel_to_kill_us_with_parent() -> bool:
    """PR_SET_PDEATHSIG(SIGKILL) on Linux; False where the kernel offers none."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        # prctl is variadic: pass every argument at its full width.
        args = (ctypes.c_ulong(signal.SIGKILL), *[ctypes.c_ulong(0)] * 3)
        return int(libc.prctl(PR_SET_PDEATHSIG, *args)) == 0
    except (OSError, AttributeError):  # no libc to load, or no prctl in it
        return False


def _is_running(pid: int) -> bool:
    """Whether ``pid`` exists and has not exited (a zombie has exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's: it exists
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): os.kill said it exists
    return state not in (b"Z", b"X")


def _descendants(root: int) -> list[int]:
    """Every process below ``root``, parents before their children."""
    children = _children_by_parent()
    found: list[int] = []
    below = [root]
    while below:
        kids = children.get(below.pop(), [])
        found += kids
        below += kids
    return found


def _children_by_parent() -> dict[int, list[int]]:
    """The process table as {ppid: [pid, ...]}: from /proc, else from ``ps``."""
    table: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        names = []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat:
                ppid = int(stat.read().rpartition(b")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        table.setdefault(ppid, []).append(int(name))
    if table:
        return table
    try:
        listing = subprocess.run(
            ["ps", "-A", "-o", "pid=,ppid="],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    for line in listing.splitlines():
        with contextlib.suppress(ValueError):
            pid, ppid = map(int, line.split())
            table.setdefault(ppid, []).append(pid)
    return table


def _send(pid: int, signum: int) -> None:
    with contextlib.suppress(OSError):  # gone already, or not ours to signal
        os.kill(pid, signum)
