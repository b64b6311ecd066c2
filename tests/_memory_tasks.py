"""Tasks that use memory, for tests/test_worker_memory.py (importable by workers)."""

from __future__ import annotations

import os
import signal

from stalwart import _memory

_leaked: list[bytearray] = []


def leak(megabytes: int) -> int:
    """Keep ``megabytes`` more (touched), as a leaking library would; return
    this worker's resident memory after."""
    _leaked.append(bytearray(megabytes * 1_000_000))  # zero-filled: touched
    return _memory.own_resident_bytes()


def resident() -> int:
    return _memory.own_resident_bytes()


def allocate_inside(cgroup: str, megabytes: int) -> None:
    """Move this worker into the memory cgroup ``cgroup``, then allocate past
    its limit: the kernel's OOM killer ends the worker."""
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
        procs.write(str(os.getpid()))
    hog = bytearray(megabytes * 2**20)
    for offset in range(0, len(hog), 4096):
        hog[offset] = 1


def kill_myself() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
