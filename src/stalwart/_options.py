"""Validation of the keywords every stalwart executor accepts.

The contract is "every executor takes the same keywords", so their checks and
their "must be ..., got ..." messages live here, once.
"""

from __future__ import annotations

import multiprocessing
from typing import TYPE_CHECKING, Any

import loky

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.context import BaseContext

DEFAULT_IDLE_TIMEOUT_S = 60.0
"""How long a worker parked by a ``reuse=True`` executor waits to be adopted."""

DEFAULT_START_METHOD = "stalwart"
"""Fork the caller where that is provably safe, else fork a template interpreter
that preloaded the parent's modules (``_startup``): fork's speed, spawn's safety
when the parent runs threads or has initialised CUDA (plain ``fork`` is not)."""


def usable_cpu_count() -> int:
    """CPUs this process may use: affinity and cgroup quota aware (loky)."""
    return max(1, int(loky.cpu_count()))


def resolve_max_workers(max_workers: int | None) -> int:
    """Turn ``None``, ``n`` or joblib's negative ``-1``/``-2`` into a worker count."""
    if max_workers is None:
        return usable_cpu_count()
    if isinstance(max_workers, bool) or not isinstance(max_workers, int):
        raise TypeError(
            f"max_workers must be None or an int, got {type(max_workers).__name__} "
            f"{max_workers!r}"
        )
    if max_workers > 0:
        return max_workers  # no CPU count needed: it reads cgroup files (~0.3 ms)
    if max_workers == 0:
        raise ValueError(
            "max_workers must be None, a positive int, or a negative int counted "
            "back from the CPU count (-1: all CPUs, -2: all but one); got 0"
        )
    # joblib's rule: never fewer than one (-2 on a single CPU is one worker).
    return max(usable_cpu_count() + 1 + max_workers, 1)


def resolve_context(mp_context: BaseContext | str | None) -> BaseContext:
    """Accept a multiprocessing context, a start-method name, or None (stalwart's)."""
    if mp_context is None:
        mp_context = DEFAULT_START_METHOD
    if isinstance(mp_context, str):
        from stalwart import _startup  # imports the template machinery

        if mp_context in _startup.START_METHODS:
            return _startup.START_METHODS[mp_context]
        if mp_context.startswith("loky"):
            context: BaseContext = loky.backend.get_context(mp_context)
            return context
        try:
            return multiprocessing.get_context(mp_context)
        except ValueError:
            methods = [
                "stalwart",
                "template",
                "loky",
                "loky_init_main",
                *multiprocessing.get_all_start_methods(),
            ]
            raise ValueError(
                f"mp_context must be a multiprocessing context or one of the start "
                f"methods {methods}; got {mp_context!r}"
            ) from None
    if not hasattr(mp_context, "Process") or not hasattr(
        mp_context, "get_start_method"
    ):
        raise TypeError(
            "mp_context must be a multiprocessing context (multiprocessing.get_context"
            f"(...)) or a start-method name such as 'spawn'; got {mp_context!r}"
        )
    return mp_context


def check_initializer(
    initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]
) -> None:
    if initializer is not None and not callable(initializer):
        raise TypeError(
            f"initializer must be a callable or None, got {type(initializer).__name__}"
        )
    if not isinstance(initargs, tuple):
        raise TypeError(
            f"initargs must be a tuple, got {type(initargs).__name__} {initargs!r}"
        )


def check_max_tasks_per_child(max_tasks_per_child: object) -> None:
    if max_tasks_per_child is None:
        return
    if isinstance(max_tasks_per_child, bool) or not isinstance(
        max_tasks_per_child, int
    ):
        raise TypeError(
            "max_tasks_per_child must be None or a positive int, got "
            f"{type(max_tasks_per_child).__name__}"
        )
    if max_tasks_per_child < 1:
        raise ValueError(
            f"max_tasks_per_child must be >= 1 (or None), got {max_tasks_per_child}"
        )


def check_output_options(forward_output: object, prefix_output: object) -> None:
    for name, value in (
        ("forward_output", forward_output),
        ("prefix_output", prefix_output),
    ):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")


def resolve_max_memory(max_memory_per_child: object) -> int | None:
    """``max_memory_per_child`` in bytes (it may be a string such as "2GiB")."""
    if max_memory_per_child is None:
        return None
    from stalwart import _memory

    if isinstance(max_memory_per_child, bool) or not isinstance(
        max_memory_per_child, int | str
    ):
        raise TypeError(
            "max_memory_per_child must be None, a number of bytes, or a size "
            f"such as '2GiB', got {type(max_memory_per_child).__name__}"
        )
    return _memory.parse_size(max_memory_per_child)


def check_retries(retries: object) -> None:
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")


def check_task_timeout(task_timeout: object) -> float | None:
    """``task_timeout``: None (no limit) or a positive number of seconds."""
    if task_timeout is None:
        return None
    return _positive_seconds("task_timeout", task_timeout, "(or None for no limit)")


def check_reuse(reuse: object, idle_timeout: object) -> float | None:
    """``reuse`` and ``idle_timeout``: how long parked workers wait, or None when
    the executor does not park its workers (``reuse=False``, where a valid
    ``idle_timeout`` has no effect, so that ``reuse=flag`` can be toggled alone)."""
    if not isinstance(reuse, bool):
        raise TypeError(f"reuse must be True or False, got {reuse!r}")
    parked_for_s = DEFAULT_IDLE_TIMEOUT_S
    if idle_timeout is not None:
        parked_for_s = _positive_seconds("idle_timeout", idle_timeout, "(None: 60)")
    return parked_for_s if reuse else None


def _positive_seconds(name: str, value: object, default_hint: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be None or a number of seconds, got "
            f"{type(value).__name__} {value!r}"
        )
    if not value > 0:  # also refuses NaN
        raise ValueError(f"{name} must be > 0 seconds {default_hint}, got {value}")
    return float(value)
