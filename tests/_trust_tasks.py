"""Functions the dispatcher's regression tests submit (importable by workers)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any


def ident(x: Any) -> Any:
    return x


def nap_and_mark(directory: str, index: int, seconds: float) -> int:
    """Leave a marker saying when call `index` started, then nap."""
    Path(directory, str(index)).write_text(repr(time.time()))
    time.sleep(seconds)
    return index


class RebuildsAsInt(Exception):
    """An exception whose pickle rebuilds something that is no exception."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (int, (5,))


def raise_rebuilds_as_int() -> None:
    raise RebuildsAsInt("odd")


def fork_and_return() -> str:
    """os.fork() in a task: the child returns into the worker loop too."""
    pid = os.fork()
    if pid == 0:
        return "child"
    os.waitpid(pid, 0)
    return "parent"


def big_bytes(size: int) -> bytes:
    return b"x" * size


def change_environment() -> int:
    """What a careless task does to a worker: cwd, environment and sys.path."""
    os.chdir("/")
    os.environ["STALWART_TASK_WAS_HERE"] = "1"
    sys.path.insert(0, "/nonexistent-task-path")
    return os.getpid()


def environment_seen() -> tuple[int, str, str | None, bool]:
    return (
        os.getpid(),
        os.getcwd(),
        os.environ.get("STALWART_TASK_WAS_HERE"),
        "/nonexistent-task-path" in sys.path,
    )
