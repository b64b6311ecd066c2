"""joblib's ``backend="stalwart"``: ``Parallel`` and scikit-learn's ``n_jobs=``
on stalwart's process pool.

::

    import joblib, stalwart
    with joblib.parallel_config(backend="stalwart", n_jobs=-1, retries=1,
                                task_timeout=3600):
        search.fit(X, y)          # a fold's worker OOM-killed: re-run, not lost

What joblib's loky backend does, this does too, and in the same way (its
``ParallelBackendBase`` interface): automatic batching of tiny calls, results
through ``retrieve_result_callback``, workers kept warm between ``Parallel``
calls (``reuse=True``), BLAS and OpenMP pools in each worker limited to
``cpus // n_jobs`` threads (``inner_max_num_threads`` to choose), nested
``Parallel`` calls on threads. What it adds is stalwart's: a worker that dies
fails its batch alone with ``WorkerCrashedError`` (or runs it again, with
``retries``), ``task_timeout`` kills a hung batch's worker and its children,
``initializer`` state reaches batches through ``stalwart.worker_state()``.

Backend keywords (``parallel_config(backend="stalwart", **these)``):
``task_timeout``, ``retries``, ``initializer``, ``initargs``,
``max_tasks_per_child``, ``reuse`` (default True), ``idle_timeout``,
``mp_context``. A timeout applies to a batch: with tiny calls, joblib groups
several into one.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from joblib._parallel_backends import (
    AutoBatchingMixin,
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
)

from stalwart import _pickling, _process, _shared
from stalwart._options import usable_cpu_count

if TYPE_CHECKING:
    from collections.abc import Callable
    from concurrent.futures import Future

NAME = "stalwart"

EXECUTOR_OPTIONS = frozenset(
    {
        "task_timeout",
        "retries",
        "initializer",
        "initargs",
        "max_tasks_per_child",
        "reuse",
        "idle_timeout",
        "mp_context",
    }
)


PARALLEL_SETTINGS = frozenset(
    {"max_nbytes", "temp_folder", "mmap_mode", "verbose", "context"}
)
"""What ``Parallel`` hands every backend's ``configure``; ours has no use for it."""


def _checked(options: dict[str, Any]) -> dict[str, Any]:
    unknown = set(options) - EXECUTOR_OPTIONS
    if unknown:
        raise TypeError(
            f"the 'stalwart' joblib backend does not take {sorted(unknown)}; "
            f"it takes {sorted(EXECUTOR_OPTIONS)} (stalwart.ProcessPoolExecutor's "
            "keywords), e.g. parallel_config(backend='stalwart', retries=1)"
        )
    return options


def register() -> None:
    """Make ``backend="stalwart"`` known to joblib. (From ``joblib.parallel``:
    this may run while ``joblib/__init__`` is still importing it.)"""
    from joblib.parallel import register_parallel_backend

    register_parallel_backend(NAME, StalwartBackend)


class StalwartBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's backend interface on a ``stalwart.ProcessPoolExecutor``."""

    supports_retrieve_callback = True
    supports_inner_max_num_threads = True

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(
            nesting_level=nesting_level,
            inner_max_num_threads=inner_max_num_threads,
            **_checked(options),
        )
        self._executor: _process.ProcessPoolExecutor | None = None
        self._arrays = _shared.CopyOnce()
        self.parallel: Any = None

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """As loky's backend: -1 all CPUs, -2 all but one; 1 inside a daemon
        process or below a thread of a nested call."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        import multiprocessing

        if multiprocessing.current_process().daemon:
            return 1
        if not (self.in_main_thread() or self.nesting_level == 0):
            return 1
        if n_jobs < 0:
            return max(usable_cpu_count() + 1 + n_jobs, 1)
        return n_jobs

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **options: Any,
    ) -> int:
        """Open (or, with ``reuse``, adopt warm) workers; return how many."""
        n_jobs = self.effective_n_jobs(n_jobs)
        if n_jobs == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        # Parallel passes its memmapping settings and multiprocessing context
        # to every backend: large arrays cross in shared memory here anyway.
        for name in PARALLEL_SETTINGS:
            options.pop(name, None)
        options = {**self.backend_kwargs, **_checked(options)}
        options.setdefault("reuse", True)  # warm between Parallel calls, as loky
        initializer = options.pop("initializer", None)
        initargs = tuple(options.pop("initargs", ()))
        limits = self._prepare_worker_env(n_jobs=n_jobs)
        self._executor = _process.ProcessPoolExecutor(
            max_workers=n_jobs,
            initializer=limit_threads_then,
            initargs=(limits, initializer, initargs),
            **options,
        )
        self.parallel = parallel
        return n_jobs

    def submit(
        self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None
    ) -> Future[Any]:
        executor = self._executor
        if executor is None:
            raise RuntimeError("the 'stalwart' joblib backend is not configured")
        # scikit-learn passes the same X to every fit: copied once per
        # Parallel call (checked unchanged each time), as loky's backend
        # memmaps it once.
        with _shared.copying_once(self._arrays):
            future = executor.submit(Batch(func))
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future: Future[Any]) -> Any:
        return future.result()

    def terminate(self) -> None:
        """The ``Parallel`` call is over: hand the workers back (parked warm,
        with ``reuse``, ready for the next call), cancelling calls it no longer
        wants (a generator dropped half-way); a call still running finishes."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        self._arrays = _shared.CopyOnce()
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A call failed: kill the workers (with what their calls started) and,
        if asked, open fresh ones for the next ``Parallel`` call."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.kill_workers()
        if ensure_ready and self.parallel is not None:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)


class Batch:
    """A joblib batch of calls, as a task that names its calls in errors."""

    __slots__ = ("calls",)

    def __init__(self, calls: Callable[[], Any]) -> None:
        self.calls = calls

    def __call__(self) -> Any:
        return self.calls()

    def describe_task(self) -> str:
        items = getattr(self.calls, "items", None)
        if not items:
            return _pickling.describe_task(self.calls, (), {})
        fn, args, kwargs = items[0]
        first = _pickling.describe_task(fn, tuple(args), kwargs)
        if len(items) == 1:
            return f"a joblib batch of 1 call: {first}"
        return (
            f"a joblib batch of {len(items)} calls: {first} and {len(items) - 1} more"
        )


def limit_threads_then(
    limits: dict[str, str],
    initializer: Callable[..., Any] | None,
    initargs: tuple[Any, ...],
) -> Any:
    """A worker's initializer: cap BLAS/OpenMP thread pools (for libraries
    loaded later, by environment; for those loaded already, through
    threadpoolctl when it is installed), then run the user's initializer and
    return its result (``stalwart.worker_state()``)."""
    os.environ.update(limits)
    threads = limits.get("OMP_NUM_THREADS")
    if threads is not None:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            threadpool_limits(limits=int(threads))
    return None if initializer is None else initializer(*initargs)
