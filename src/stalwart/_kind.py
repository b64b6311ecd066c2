"""``stalwart.executor(kind)``: choose processes or threads by one word.

CPU-bound work wants processes, IO-bound work threads; both executors take the
same keywords, so the choice is one string, and ``STALWART_EXECUTOR`` changes it
without touching the code (to debug on threads, or to compare the two).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from concurrent.futures import Executor

ENV_VAR = "STALWART_EXECUTOR"
KINDS = ("process", "thread", "dask")


def executor(kind: str = "process", **kwargs: Any) -> Executor:
    """A new executor of ``kind``: ``"process"``, ``"thread"`` or ``"dask"``.

    ``kwargs`` go to the executor's constructor unchanged; both take the same
    keywords (``max_workers``, ``initializer``, ``task_timeout``, ...). When the
    environment variable ``STALWART_EXECUTOR`` is set, it overrides ``kind``::

        with stalwart.executor("process", initializer=load_model) as ex:
            labels = list(ex.map(predict, images))

        $ STALWART_EXECUTOR=thread python train.py   # same code, on threads

    Raises:
        ValueError: ``kind`` (or ``STALWART_EXECUTOR``) names no executor kind.
    """
    chosen = os.environ.get(ENV_VAR, "").strip().lower()
    source = f"the environment variable {ENV_VAR}={chosen!r}"
    if not chosen:
        chosen, source = kind, f"kind={kind!r}"
    if chosen == "process":
        from stalwart._process import ProcessPoolExecutor

        return ProcessPoolExecutor(**kwargs)
    if chosen == "thread":
        from stalwart._thread import ThreadPoolExecutor

        return ThreadPoolExecutor(**kwargs)
    if chosen == "dask":
        from stalwart._dask import DaskExecutor

        return DaskExecutor(**kwargs)
    raise ValueError(
        f"{source} names no executor kind; use "
        f"{', '.join(repr(k) for k in KINDS[:-1])} or {KINDS[-1]!r}."
    )
