"""A process pool's constructor arguments, checked and resolved once.

``PoolSettings.resolve`` raises what the constructor documents (bad counts,
unknown start methods, an initializer that cannot reach a worker) before any
process starts; the executor and ``get_reusable_executor`` then work from the
resolved record, and its ``reuse`` key decides which warm workers fit.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stalwart import _options, _pickling, _reuse
from stalwart._worker import WorkerConfig
from stalwart.errors import PicklingError

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.context import BaseContext


@dataclass(frozen=True)
class PoolSettings:
    """A process pool's constructor arguments, checked and resolved."""

    max_workers: int
    context: BaseContext
    config: WorkerConfig
    retries: int
    task_timeout: float | None
    reuse: _reuse.ReusePolicy | None

    @classmethod
    def resolve(
        cls,
        max_workers: int | None = None,
        mp_context: BaseContext | str | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        task_timeout: float | None = None,
        retries: int = 0,
        reuse: bool = False,
        idle_timeout: float | None = None,
    ) -> PoolSettings:
        """Check every argument (raising as the constructor documents)."""
        workers = _options.resolve_max_workers(max_workers)
        context = _options.resolve_context(mp_context)
        _options.check_initializer(initializer, initargs)
        _options.check_max_tasks_per_child(max_tasks_per_child)
        _options.check_retries(retries)
        timeout = _options.check_task_timeout(task_timeout)
        parked_for_s = _options.check_reuse(reuse, idle_timeout)
        # Spawn-style contexts re-import the main script in the worker, so its
        # functions can travel by reference; plain "loky" does not (by value then).
        by_value = context.get_start_method() == "loky"
        initializer_call = None
        inherited: tuple[Any, ...] = ()
        if initializer is not None:
            try:
                initializer_call = _pickling.serialize_call(
                    initializer, initargs, {}, action="initializer", by_value=by_value
                )
            except PicklingError as error:
                if not _is_shared_by_inheritance(error.unpicklable_type):
                    raise
                # A multiprocessing Queue/Lock/Event in initargs (the stdlib's
                # own pattern) can only reach a worker as it starts: hand it to
                # the start method, as the stdlib does.
                inherited = (initializer, initargs)
        main_path = None if by_value else _main_script_path()
        config = WorkerConfig(
            initializer_call, max_tasks_per_child, by_value, main_path, inherited
        )
        policy = None
        if parked_for_s is not None:
            policy = _reuse_policy(context, config, parked_for_s)
        return cls(workers, context, config, retries, timeout, policy)

    def signature(self) -> tuple[Any, ...]:
        """Equal for settings that make equal executors (reuse=True only)."""
        assert self.reuse is not None
        return (
            self.max_workers,
            self.reuse.key,
            self.reuse.idle_timeout,
            self.retries,
            self.task_timeout,
        )


def _reuse_policy(
    context: BaseContext, config: WorkerConfig, idle_timeout: float
) -> _reuse.ReusePolicy:
    """Park under everything that shapes a worker process, so that an executor
    only ever adopts workers identical to those it would have started."""
    inherited = config.inherited_initializer
    keepalive = (inherited[0], *inherited[1]) if inherited else ()
    key = (
        "process",
        context.get_start_method(),
        config.initializer_call,
        _reuse.identity_key(keepalive),
        config.max_tasks,
        config.by_value,
        config.main_path,
        _reuse.environment_fingerprint(),
    )
    return _reuse.ReusePolicy(key, idle_timeout, keepalive)


def _is_shared_by_inheritance(culprit: type | None) -> bool:
    """multiprocessing's queues, locks, events, shared values: sent only at start."""
    module = getattr(culprit, "__module__", "") or ""
    return module.startswith(("multiprocessing.", "loky.backend."))


def _main_script_path() -> str | None:
    """The main script's path, recorded now for workers started later.

    CPython deletes ``__main__.__file__`` once the script body has run, so a
    worker started after that (``shutdown(wait=False)`` at the end of a script)
    would otherwise not import the script its tasks refer to.
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        return None  # run with -m: loky and spawn find it by module name
    path = getattr(main, "__file__", None)
    return os.path.abspath(path) if isinstance(path, str) else None
