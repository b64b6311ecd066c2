"""Functions both kinds of executor run: module-level, so process workers import them."""

from __future__ import annotations

import os
import threading
from typing import Any

from tests._tasks import TIMEOUT


def square(x: int) -> int:
    return x * x


def fail_on(bad: int, x: int) -> int:
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x


def record(path: str, x: int) -> int:
    """Append ``x`` to the file at ``path``: evidence that the item ran."""
    with open(path, "a") as log:
        log.write(f"{x}\n")
    return x


def wait_for(gate: Any, x: int) -> int:
    """Return ``x`` once ``gate`` (an Event, or None for at once) is set."""
    if gate is not None and not gate.wait(TIMEOUT):
        raise TimeoutError("test gate never opened")
    return x


def record_then_wait(path: str, gate: Any, x: int) -> int:
    record(path, x)
    return wait_for(gate, x)


def worker_name(_: Any) -> str:
    """Which worker ran the item: its pid, and its thread for thread pools."""
    return f"{os.getpid()}-{threading.get_ident()}"


def ran(path: str) -> list[int]:
    """The items ``record`` logged, in the order they ran."""
    try:
        with open(path) as log:
            return [int(line) for line in log]
    except FileNotFoundError:
        return []


def wait_or_fail(gate: Any, x: int) -> int:
    """Item 1 fails at once; every other item waits for ``gate``."""
    if x == 1:
        raise ValueError("item 1 failed first")
    return wait_for(gate, x)


# -- initializer-held state ----------------------------------------------------


def init_counter(path: str) -> dict[str, Any]:
    """An initializer: logs each run to ``path``, returns this worker's state."""
    record(path, 0)
    return {"worker": worker_name(None), "calls": 0, "lock": threading.RLock()}


def count_call(_: Any) -> tuple[str, str, int]:
    """(the worker, the worker its state was built in, calls so far there)."""
    import stalwart

    state = stalwart.worker_state()
    with state["lock"]:  # an unpicklable object, fine: it never leaves the worker
        state["calls"] += 1
        return worker_name(None), state["worker"], state["calls"]
