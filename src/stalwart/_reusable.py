"""``stalwart.get_reusable_executor()``: one warm process pool for the program.

loky's name and spirit: call it wherever a pool is needed, and the same settings
give back the same running executor, its workers started and initialized once.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from stalwart._process import ProcessPoolExecutor
from stalwart._settings import PoolSettings

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.context import BaseContext

_lock = threading.Lock()
_current: tuple[tuple[Any, ...], ProcessPoolExecutor] | None = None


def get_reusable_executor(
    max_workers: int | None = None,
    mp_context: BaseContext | str | None = None,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple[Any, ...] = (),
    *,
    max_tasks_per_child: int | None = None,
    task_timeout: float | None = None,
    retries: int = 0,
    idle_timeout: float | None = None,
) -> ProcessPoolExecutor:
    """The process-wide warm ``ProcessPoolExecutor`` for these settings.

    The same settings return the same executor, as long as it runs. Its
    workers are kept warm (``reuse=True``): ``shutdown()`` parks them, with
    their initializer state, and the next call adopts them; they exit after
    ``idle_timeout`` seconds unused (default 60), or at once with
    ``shutdown(kill_workers=True)``.

    A call that changes only ``max_workers`` resizes the running executor in
    place, as loky does: more workers start as work needs them, surplus idle
    ones exit. A call that changes anything else gets a new executor; the
    previous one is left running for whoever still holds it (it parks its
    workers when it is shut down or collected). Never is an executor that a
    caller holds shut down behind its back.

    Takes the keywords of ``stalwart.ProcessPoolExecutor`` except ``reuse``,
    which is always on here.
    """
    global _current
    settings = PoolSettings.resolve(
        max_workers,
        mp_context,
        initializer,
        initargs,
        max_tasks_per_child=max_tasks_per_child,
        task_timeout=task_timeout,
        retries=retries,
        reuse=True,
        idle_timeout=idle_timeout,
    )
    signature = settings.signature()
    with _lock:
        if _current is not None:
            current_signature, executor = _current
            if executor._accepts_work():
                if current_signature == signature:
                    return executor
                if current_signature[1:] == signature[1:]:  # only max_workers
                    executor._resize(settings.max_workers)
                    _current = (signature, executor)
                    return executor
        executor = ProcessPoolExecutor._from_settings(settings)
        _current = (signature, executor)
        return executor
