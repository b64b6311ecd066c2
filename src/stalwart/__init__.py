"""stalwart: concurrent.futures executors you can trust.

Change one import and keep your code::

    import stalwart as cf          # instead of: import concurrent.futures as cf

    with cf.ProcessPoolExecutor() as ex:
        for future in cf.as_completed([ex.submit(work, x) for x in xs]):
            print(future.result())

A worker that segfaults fails only its own task, an unpicklable argument is
refused at ``submit()`` with the path to the culprit, and an initializer's
result (a model, a connection) lives in each worker: ``stalwart.worker_state()``.
"""

from __future__ import annotations

import logging
from concurrent.futures import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    BrokenExecutor,
    CancelledError,
    Executor,
    Future,
    InvalidStateError,
    TimeoutError,
    wait,
)

# joblib's backend="stalwart": registered now if joblib is loaded, else as it is.
from stalwart import _joblib_registration
from stalwart._dask import DaskExecutor
from stalwart._kind import executor
from stalwart._process import ProcessPoolExecutor
from stalwart._progress import as_completed
from stalwart._reusable import get_reusable_executor
from stalwart._shared import shared
from stalwart._state import worker_state
from stalwart._thread import ThreadPoolExecutor
from stalwart.errors import (
    InitializerError,
    PicklingError,
    RemoteError,
    TaskTimeoutError,
    WorkerCrashedError,
)

__version__ = "0.1.0"  # the one place it is written: pyproject reads it from here

_joblib_registration.install()

# A library logs, the application decides where it goes (crash and start-up
# decisions are logged at WARNING on "stalwart"; the exceptions carry them too).
logging.getLogger("stalwart").addHandler(logging.NullHandler())

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "BrokenExecutor",
    "CancelledError",
    "DaskExecutor",
    "Executor",
    "Future",
    "InitializerError",
    "InvalidStateError",
    "PicklingError",
    "ProcessPoolExecutor",
    "RemoteError",
    "TaskTimeoutError",
    "ThreadPoolExecutor",
    "TimeoutError",
    "WorkerCrashedError",
    "as_completed",
    "executor",
    "get_reusable_executor",
    "shared",
    "wait",
    "worker_state",
]
