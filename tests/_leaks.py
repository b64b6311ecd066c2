"""What an executor may leave behind: child processes, threads, file descriptors."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from collections.abc import Collection

PROCESS_WIDE_HELPERS = ("resource_tracker", "forkserver")
"""multiprocessing's and loky's resource trackers and the forkserver: one per
interpreter, started on first use and kept until exit by design."""

TEMPLATE_NAME = "stalwart-tmpl"
"""stalwart's template process (one per interpreter, by design), by the name it
shows in ``ps -o comm``; the workers it forks are not helpers."""


def is_process_wide_helper(process: psutil.Process) -> bool:
    """A zombie, a process already gone, or one of PROCESS_WIDE_HELPERS."""
    try:
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        command = " ".join(process.cmdline())
        name = process.name()
    except psutil.NoSuchProcess:
        return True
    return name == TEMPLATE_NAME or any(h in command for h in PROCESS_WIDE_HELPERS)


def worker_processes(exclude: Collection[int] = ()) -> list[psutil.Process]:
    """Live descendants of this process, other than `exclude` and the helpers."""
    return [
        process
        for process in psutil.Process().children(recursive=True)
        if process.pid not in exclude and not is_process_wide_helper(process)
    ]


def open_fds() -> dict[int, str]:
    """This process's open file descriptors and what they point to (Linux)."""
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # noqa: PERF203 - the fd listdir used is closed by now
            continue
    return fds
