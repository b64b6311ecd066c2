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

    Changed settings replace the executor: the previous one is shut down
    first, *waiting for the work already submitted to it* (its futures stay
    valid), then a new one is created. Its idle workers are adopted by the new
    one when nothing that shapes a worker changed (only ``max_workers``,
    ``task_timeout``, ``retries`` or ``idle_timeout``); otherwise they are
    parked for ``idle_timeout`` under their own settings.

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
            if current_signature == signature and executor._accepts_work():
                return executor
            executor.shutdown(wait=True)  # parks its workers for the next one
        executor = ProcessPoolExecutor._from_settings(settings)
        _current = (signature, executor)
        return executor
