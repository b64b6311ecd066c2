"""``map()`` for every stalwart executor: chunking, ordering, buffering, progress.

Every executor inherits ``MapMixin.map``, which needs only the executor's
``_submit()`` (or its overridden ``submit()``, below): ``map_results`` gets a
``submit(call_fn, call_args, n_items)`` that schedules one task standing for
``n_items`` map items (its ``task_timeout`` is ``n_items`` times the per-item
one) and raises as ``submit()`` does. Everything else about ``map`` lives here,
once::

    zip(*iterables) --chunks--> submit() --> futures, oldest first (the window)
          ^                                        |
          | buffersize: one more task each time    | chunksize="auto": each chunk
          | a task's results are taken             | is timed in the worker, and
          +----------------------------------------+ the next chunks sized to it
    results: oldest first (ordered) or as each task finishes (ordered=False)
      --> progress display --> the caller

* ``submit`` overridden (by a subclass, or on the instance, as tqdm's
  ``process_map`` and ``thread_map`` do to count finished futures): every task
  goes through ``self.submit(fn, *args)``, a chunk as
  ``self.submit(run_chunk, fn, chunk)``, as the stdlib's map does. The map's
  ``task_timeout`` still applies: ``MapMixin._task_timeout``, which every
  executor's ``submit()`` passes on, answers with it while map submits.
* ``buffersize=None`` (the default): every item is read and submitted before
  ``map()`` returns, as in the stdlib, so an unpicklable item is refused by
  ``map()`` itself and the work goes on whether or not the results are read.
* ``buffersize=n``: n tasks are submitted up front and one more each time a
  task's results are taken (the stdlib's own ``buffersize``, 3.14), so an endless
  generator runs in bounded memory. The input is read in the caller's thread,
  only while the results are read, and so only while the executor is open.
* ``chunksize="auto"``: chunks start at one item; each chunk reports how long its
  items ran in the worker, and later chunks grow (at most doubling) toward
  ``AUTO_TARGET_CHUNK_S`` of work, up to ``AUTO_MAX_CHUNK`` items.
* An item that raises: ``run_chunk`` fails its chunk with a ``_ChunkFailure``
  holding the results of the items before it and the exception; the items'
  results are delivered, then the exception itself is raised when the
  iteration reaches it (ordered) or as it comes (unordered).
* The iteration ends early (the ``timeout`` passes, Ctrl-C while waiting, an
  item's exception, the iterator closed or abandoned): every task of the map
  not yet started is cancelled, the one being waited on included, and nothing
  more is submitted, as the stdlib does.
"""

from __future__ import annotations

import collections
import contextvars
import itertools
import pickle
import queue
import threading
import time
import traceback
from concurrent.futures import TimeoutError as FuturesTimeoutError
from concurrent.futures.process import _RemoteTraceback
from typing import TYPE_CHECKING, Any, TypeVar

from stalwart import _options, _pickling, _wire
from stalwart._progress import Tally, check_progress, open_progress
from stalwart.errors import PicklingError, RemoteError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from concurrent.futures import Future

    from stalwart._progress import Progress

    SubmitTask = Callable[[Callable[..., Any], tuple[Any, ...], int], Future[Any]]

R = TypeVar("R")

AUTO_TARGET_CHUNK_S = 0.01
"""Work per chunk that ``chunksize="auto"`` aims for: two orders of magnitude
above a task's overhead in the pool, small enough that a chunk is no coarser a
unit of load balancing, progress or failure than ~10 ms of work."""

AUTO_MAX_CHUNK = 2048
"""Items per auto chunk at most: for tasks too tiny to time, past this size the
pipes and pickling gain nothing more and a chunk only delays the first results."""

_MAP_SUBMITTING: contextvars.ContextVar[tuple[object, float | None] | None] = (
    contextvars.ContextVar("stalwart_map_submitting", default=None)
)
"""(executor, task_timeout) while ``map()`` submits one task through that
executor's overridden ``submit()`` in this thread: what ``MapMixin._task_timeout``
answers then, so the override's call reaches ``_submit()`` with the map's limit."""


class MapMixin:
    """``map()`` for an executor with ``submit()``, ``_submit()`` and ``_task_timeout``.

    Every stalwart executor inherits its ``map`` from here, so they cannot drift.

    ``_task_timeout`` is the limit the executor's ``submit()`` applies. It is a
    property so that a map going through an overridden ``submit()`` can lend its
    own limit (its ``task_timeout=``, times the chunk's items) to the one call it
    is making: the override ends in the executor's ``submit()``, which reads it.
    Only that thread, while that call runs, sees the lent value.
    """

    _executor_task_timeout: float | None = None
    _pickles_for_threads = False  # a thread pool's pickling is only a check

    @property
    def _task_timeout(self) -> float | None:
        submitting = _MAP_SUBMITTING.get()
        if submitting is not None and submitting[0] is self:
            return submitting[1]
        return self._executor_task_timeout

    @_task_timeout.setter
    def _task_timeout(self, value: float | None) -> None:
        self._executor_task_timeout = value

    def _submit(
        self,
        fn: Callable[..., R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        action: str,
        task_timeout: float | None,
    ) -> Future[R]:
        """Schedule one task as ``submit()`` would; ``action`` names the caller."""
        raise NotImplementedError

    def map(
        self,
        fn: Callable[..., R],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | str = 1,
        ordered: bool = True,
        buffersize: int | None = None,
        progress: object = False,
        task_timeout: float | None = None,
    ) -> Iterator[R]:
        """Like the builtin ``map``, run by the workers; results in input order.

        By default every call is submitted (on a process pool pickled, so a
        ``PicklingError`` is raised here) before the first result is returned,
        as in the stdlib; ``timeout`` bounds the whole iteration. Beyond it:

        * ``chunksize="auto"``: chunks sized from the measured task time;
        * ``ordered=False``: results as they finish;
        * ``buffersize=n``: at most n tasks in flight, the input read as the
          results are (bounded memory over endless generators);
        * ``progress=True`` (or a tqdm-like bar): count the results;
        * ``task_timeout``: overrides the executor's for these calls; a chunk of
          n items may run n times as long, and fails as a whole when it overruns.

        A ``submit`` overridden by a subclass or replaced on the instance is
        called for every task, as the stdlib's ``map`` does.
        """
        limit = self._executor_task_timeout
        if task_timeout is not None:
            limit = _options.check_task_timeout(task_timeout)
        overridden = _overridden_submit(self)

        def submit_task(
            call_fn: Callable[..., Any], args: tuple[Any, ...], items: int
        ) -> Future[Any]:
            task_limit = None if limit is None else limit * items
            if overridden is None:
                return self._submit(call_fn, args, {}, "map", task_limit)
            lent = _MAP_SUBMITTING.set((self, task_limit))
            try:
                future: Future[Any] = overridden(call_fn, *args)
            finally:
                _MAP_SUBMITTING.reset(lent)
            return future

        results: Iterator[R] = map_results(
            submit_task,
            fn,
            iterables,
            timeout=timeout,
            chunksize=chunksize,
            ordered=ordered,
            buffersize=buffersize,
            progress=progress,
            for_threads=self._pickles_for_threads,
        )
        return results


def _overridden_submit(executor: MapMixin) -> Callable[..., Future[Any]] | None:
    """``executor.submit`` when it is not the executor's own, else None.

    The executor's own ``submit`` is the one defined beside ``_submit`` (the
    first class in the MRO that defines ``_submit``); any other, whether a
    subclass's method or a function assigned on the instance (tqdm), must be
    called for each task, since clients count or wrap the futures it returns.
    """
    # getattr: the mixin declares no submit(); each executor defines its own.
    submit: Callable[..., Future[Any]] = getattr(executor, "submit")  # noqa: B009
    own = next(
        (
            vars(cls).get("submit")
            for cls in type(executor).__mro__
            if "_submit" in vars(cls)
        ),
        None,
    )
    is_own = (
        own is not None
        and getattr(submit, "__func__", None) is own
        and getattr(submit, "__self__", None) is executor
    )
    return None if is_own else submit


def map_results(
    submit: SubmitTask,
    fn: Callable[..., Any],
    iterables: tuple[Iterable[Any], ...],
    *,
    timeout: float | None,
    chunksize: int | str,
    ordered: bool,
    buffersize: int | None,
    progress: object,
    for_threads: bool = False,
) -> Iterator[Any]:
    """Run ``fn`` over the zipped iterables through ``submit``; see the module doc.
    ``for_threads``: a thread pool's (its pickling errors are worded for it)."""
    _check_chunksize(chunksize)
    _check_buffersize(buffersize)
    check_progress(progress)
    end_time = None if timeout is None else time.monotonic() + timeout
    feed = _Feed(submit, fn, iterables, chunksize, buffersize, ordered, for_threads)
    if buffersize is None:
        feed.submit_all()
        total: int | None = feed.items_submitted
    else:
        feed.top_up()
        total = _known_length(iterables)
    if isinstance(feed.in_flight, collections.deque) and not (
        feed.chunked or buffersize is not None or progress is not False
    ):
        return _plain_results_in_order(feed.in_flight, end_time)
    return _results(feed, end_time, progress, total)


def run_chunk(
    fn: Callable[..., Any], chunk: tuple[tuple[Any, ...], ...]
) -> tuple[float, list[Any]]:
    """Runs in the worker: one task for a chunk of map items, timed there.

    An item that raises fails the chunk with a ``_ChunkFailure`` of its own,
    holding the results of the items before it and the exception.
    """
    started = time.perf_counter()
    results: list[Any] = []
    failure = None
    try:
        for args in chunk:
            results.append(fn(*args))  # noqa: PERF401 - kept when an item raises
    except BaseException as exc:  # noqa: BLE001 - every item's failure is carried
        # Never on the exception itself: two chunks may raise the same instance
        # (a module-level constant, an error kept and re-raised) at once, on
        # two threads, and each must keep its own results.
        failure = _ChunkFailure(results, exc)
    if failure is not None:
        # Raised out here, it has no __context__: picklers that carry one along
        # (tblib's, which dask installs) would otherwise take the item's
        # exception, which may not pickle, next to the wrapper that makes sure
        # it travels.
        raise failure
    return time.perf_counter() - started, results


class _ChunkFailure(Exception):
    """A chunk's item raised ``error``; ``results`` are those of the items before it.

    One per failing chunk, so chunks raising the same exception instance keep
    their own results. Private to map: ``_take`` unwraps it, and the caller gets
    ``error`` itself, as the stdlib's map would raise it.

    A process pool's or dask's worker pickles it to send it back. It then takes
    along the text of ``error``'s traceback (the reply's own would show this
    wrapper), and it always makes the trip: an ``error`` that would not becomes
    a ``RemoteError``, as a task's own exception does, and results that would
    not are dropped, never the exception.
    """

    def __init__(
        self,
        results: list[Any],
        error: BaseException,
        remote_traceback: str | None = None,
    ) -> None:
        super().__init__()
        self.results = results
        self.error = error
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        # Seen only by code that looks at a chunk's future itself (a callback
        # added by an overridden submit()): say what it is and where to look.
        return (
            f"item {len(self.results)} of a map chunk raised "
            f"{type(self.error).__qualname__}: {_safe_str(self.error)} "
            "(map() raises that exception itself; this wraps it with the results "
            "of the items before it)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        text = self.remote_traceback
        if text is None:
            text = _traceback_text(self.error)
        error = self.error
        if not _round_trips(error):
            error = RemoteError(
                f"{type(error).__module__}.{type(error).__qualname__}",
                _safe_str(error),
                text,
            )
        results = self.results if _round_trips(self.results) else []
        return (_ChunkFailure, (results, error, text))

    def unwrap(self) -> tuple[list[Any], BaseException]:
        """(the results before the failing item, its exception), the worker's
        traceback attached as the exception's cause when it came from one."""
        if self.remote_traceback is not None:
            _wire.without_rebuilt_traceback(self.error)
            # typeshed has the argument as a traceback; it is the formatted text.
            cause = _RemoteTraceback(self.remote_traceback)  # type: ignore[arg-type]
            self.error.__cause__ = cause
        return self.results, self.error


def _round_trips(obj: object) -> bool:
    """Whether ``obj`` pickles, and unpickles again (in this process at least)."""
    try:
        pickle.loads(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))
    except BaseException:  # noqa: BLE001 - whatever a __reduce__ raises: it cannot
        return False
    return True


def _traceback_text(exc: BaseException) -> str:
    """The worker's traceback of ``exc``, as the stdlib's remote tracebacks read."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f'\n"""\n{text}"""'


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException:  # noqa: BLE001 - a broken __str__ must not hide the error
        return f"<str() of {type(exc).__qualname__} failed>"


def describe(fn: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A short, never-raising description of a task, as every executor names it
    in its errors: ``crash('segv')``, or ``a map chunk of 12 calls to f(...)``."""
    named = getattr(fn, "describe_task", None)  # a task that names itself
    if callable(named) and not args and not kwargs:
        return str(named())
    return describe_chunk(fn, args) or _pickling.describe_task(fn, args, kwargs)


def chunk_length(fn: object, args: tuple[Any, ...]) -> int | None:
    """How many calls a ``run_chunk`` task holds; None for any other task."""
    if fn is not run_chunk or len(args) != 2:
        return None
    return len(args[1])


def describe_chunk(fn: object, args: tuple[Any, ...]) -> str | None:
    """``a map chunk of 12 calls to f(...)`` for a ``run_chunk`` task, else None."""
    if fn is not run_chunk or len(args) != 2:
        return None
    inner = _pickling.describe_task(args[0], (), {}).removesuffix("()")
    return f"a map chunk of {len(args[1])} calls to {inner}(...)"


class _Feed:
    """The input side of one map: reads items, forms tasks, submits them."""

    def __init__(
        self,
        submit: SubmitTask,
        fn: Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        chunksize: int | str,
        buffersize: int | None,
        ordered: bool,
        for_threads: bool = False,
    ) -> None:
        self.submit = submit
        self.for_threads = for_threads  # a thread pool's check_pickle (errors)
        self.fn = fn
        self.items: Iterator[tuple[Any, ...]] = zip(*iterables, strict=False)
        self.auto = _AutoChunkSize() if chunksize == "auto" else None
        self.fixed_size = chunksize if isinstance(chunksize, int) else 1
        self.chunked = self.auto is not None or self.fixed_size > 1
        self.buffersize = buffersize
        self.exhausted = False
        self.items_submitted = 0
        # Submitted tasks whose results have not been taken: oldest first when
        # ordered; otherwise a set, and each future also lands in `finished`
        # once done, in completion order.
        self.in_flight: collections.deque[Future[Any]] | set[Future[Any]]
        self.finished: queue.SimpleQueue[Future[Any]] | None = None
        if ordered:
            window: collections.deque[Future[Any]] = collections.deque()
            self.in_flight = window
            self._track = window.append
        else:
            pending: set[Future[Any]] = set()
            self.in_flight = pending
            self._track = pending.add
            self.finished = queue.SimpleQueue()

    def submit_all(self) -> None:
        """Submit every item now; on any failure cancel what was submitted."""
        try:
            while self._submit_one():
                pass
        except BaseException:
            self.cancel_all()  # e.g. an item failed to pickle: do not run half a map
            raise

    def top_up(self) -> None:
        """Submit tasks until ``buffersize`` are in flight or the input ends."""
        assert self.buffersize is not None
        while len(self.in_flight) < self.buffersize and self._submit_one():
            pass

    def _submit_one(self) -> bool:
        if self.exhausted:
            return False
        if not self.chunked:
            args = next(self.items, None)
            if args is None:
                self.exhausted = True
                return False
            try:
                future = self.submit(self.fn, args, 1)
            except PicklingError as error:
                raise self._item_error((args,), error) from None
            self.items_submitted += 1
        else:
            size = self.auto.next_size() if self.auto is not None else self.fixed_size
            chunk = tuple(itertools.islice(self.items, size))
            if not chunk:
                self.exhausted = True
                return False
            future = self._submit_chunk(chunk)
            self.items_submitted += len(chunk)
            if self.auto is not None:
                future.add_done_callback(self.auto.observe)
        if self.finished is not None:
            future.add_done_callback(self.finished.put)
        self._track(future)
        return True

    def _submit_chunk(self, chunk: tuple[tuple[Any, ...], ...]) -> Future[Any]:
        try:
            return self.submit(run_chunk, (self.fn, chunk), len(chunk))
        except PicklingError as error:
            raise self._item_error(chunk, error) from None

    def _item_error(
        self, chunk: tuple[tuple[Any, ...], ...], error: PicklingError
    ) -> PicklingError:
        """``error`` of a map's task, as the error of the item that caused it."""
        first = self.items_submitted
        return _culprit_item_error(self.fn, chunk, first, self.for_threads) or error

    def next_due(self, end_time: float | None) -> Future[Any]:
        """The next task whose results are due: the oldest, or the next to finish.

        It stays in flight until ``taken()``, so that ``cancel_all()`` still
        reaches it should the wait for it fail.
        """
        if isinstance(self.in_flight, collections.deque):
            return self.in_flight[0]
        assert self.finished is not None
        try:
            return self.finished.get(timeout=_remaining(end_time))
        except queue.Empty:
            raise FuturesTimeoutError from None

    def taken(self, future: Future[Any]) -> None:
        """``future``'s results were taken: it is no longer in flight."""
        if isinstance(self.in_flight, collections.deque):
            self.in_flight.popleft()
        else:
            self.in_flight.remove(future)

    def cancel_all(self) -> None:
        for future in self.in_flight:
            future.cancel()


class _AutoChunkSize:
    """Chunk sizes for ``chunksize="auto"``, from the chunks' times in the worker."""

    PROBES = 2
    """Single-item chunks sent before waiting (once, briefly) for the first time."""

    def __init__(self) -> None:
        self.size = 1
        self.items_timed = 0
        self.seconds = 0.0
        self.probes_sent = 0
        self.first_timing = threading.Event()

    def observe(self, future: Future[Any]) -> None:
        """Done-callback of every auto chunk (runs in the executor's thread)."""
        if not future.cancelled() and future.exception() is None:
            elapsed, results = future.result()
            self.seconds += elapsed
            self.items_timed += len(results)
        self.first_timing.set()

    def next_size(self) -> int:
        if not self.items_timed:
            # Until a chunk has come back, one item a task: items may be long.
            # Submitting everything up front would otherwise race ahead of the
            # first reply and send thousands of tiny items one by one, so after
            # the probes wait for it once, for at most the target chunk time:
            # items slower than that are best sent one by one anyway.
            self.probes_sent += 1
            if self.probes_sent == self.PROBES + 1:
                self.first_timing.wait(AUTO_TARGET_CHUNK_S)
            if not self.items_timed:
                return self.size
        per_item = self.seconds / self.items_timed
        wanted = AUTO_MAX_CHUNK
        if per_item * AUTO_MAX_CHUNK > AUTO_TARGET_CHUNK_S:
            wanted = max(1, int(AUTO_TARGET_CHUNK_S / per_item))
        # Grow by at most doubling from one chunk to the next, so a chunk is
        # never far bigger than the ones already seen to run; shrink at once
        # when the items turn out slower.
        self.size = min(wanted, 2 * self.size)
        return self.size


def _plain_results_in_order(
    futures: collections.deque[Future[Any]], end_time: float | None
) -> Iterator[Any]:
    """The stdlib's map iterator: one item a task, oldest first, nothing else.

    No local name holds a future or its result while suspended at ``yield``: the
    caller alone decides what stays alive.
    """
    try:
        while futures:
            if end_time is None:
                yield _result_or_cancel(futures.popleft(), None)
            else:
                yield _result_or_cancel(futures.popleft(), end_time - time.monotonic())
    finally:
        for future in futures:
            future.cancel()


def _result_or_cancel(future: Future[Any], timeout: float | None) -> Any:
    try:
        return future.result(timeout)
    finally:
        future.cancel()  # a timeout: stop it from running, if it has not started


def _results(
    feed: _Feed, end_time: float | None, progress: object, total: int | None
) -> Iterator[Any]:
    display = open_progress(progress, total)
    tally = Tally(display)
    try:
        while feed.in_flight:
            future = feed.next_due(end_time)
            # A wait that fails (the timeout, Ctrl-C) raises here, before anything
            # more is submitted; `finally` then cancels this task with the rest.
            values, error = _take(future, feed.chunked, _remaining(end_time))
            tally.count(future)
            feed.taken(future)
            del future
            if feed.buffersize is not None and error is None:
                feed.top_up()
            yield from _deliver(values, error, display)
    finally:
        feed.cancel_all()
        display.close()


def _take(
    future: Future[Any], chunked: bool, timeout: float | None
) -> tuple[list[Any], BaseException | None]:
    """A task's items' results, and the exception that cut them short, if any.

    Raises what the wait itself raised: ``TimeoutError`` when ``timeout`` passed
    first, ``CancelledError``, ``KeyboardInterrupt``.
    """
    error = future.exception(timeout)
    if error is None:
        result = future.result()
        return (result[1] if chunked else [result]), None
    if isinstance(error, _ChunkFailure):
        return error.unwrap()
    return [], error


def _deliver(
    values: list[Any], error: BaseException | None, display: Progress
) -> Iterator[Any]:
    if values:
        display.update(len(values))
        values.reverse()  # pop() from the end: each result is dropped once yielded
        while values:
            yield values.pop()
    if error is not None:
        raise error


def _remaining(end_time: float | None) -> float | None:
    return None if end_time is None else max(0.0, end_time - time.monotonic())


def _known_length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    """How many items zip() will give, when every iterable knows its length."""
    try:
        return min(len(iterable) for iterable in iterables)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a generator; or no iterables at all
        return None


def _culprit_item_error(
    fn: Callable[..., Any],
    chunk: tuple[tuple[Any, ...], ...],
    first: int,
    for_threads: bool,
) -> PicklingError | None:
    """The PicklingError of the first item of a chunk that cannot be pickled,
    naming its index in the input (the chunk's items are ``first``, ...).

    A chunk's own error would name a path through the chunk tuple; the user
    wants the one naming their item and its argument.
    """
    for offset, args in enumerate(chunk):
        try:
            _pickling.serialize_call(
                fn,
                args,
                {},
                action="map",
                item=first + offset,
                for_threads=for_threads,
            )
        except PicklingError as error:  # noqa: PERF203 - only after a failure
            return error
    return None


def _check_chunksize(chunksize: object) -> None:
    if chunksize == "auto":
        return
    if isinstance(chunksize, bool) or not isinstance(chunksize, int):
        raise TypeError(
            f'chunksize must be an int >= 1 or "auto", got {type(chunksize).__name__} '
            f"{chunksize!r}"
        )
    if chunksize < 1:
        raise ValueError("chunksize must be >= 1.")  # the stdlib's words


def _check_buffersize(buffersize: object) -> None:
    if buffersize is None:
        return
    if isinstance(buffersize, bool) or not isinstance(buffersize, int):
        raise TypeError(
            f"buffersize must be None or an int >= 1, got {type(buffersize).__name__} "
            f"{buffersize!r}"
        )
    if buffersize < 1:
        raise ValueError(f"buffersize must be None or an int >= 1, got {buffersize}")
