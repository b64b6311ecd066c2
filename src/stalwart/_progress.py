"""Progress reporting for ``map(progress=...)`` and ``stalwart.as_completed``.

``progress=True`` shows a tqdm bar when tqdm is installed (``tqdm.auto``, so a
notebook gets its widget) and otherwise writes a plain ``done i/n`` line to
stderr, with the failed tasks and those run again after a crash (``retries``)
counted next to it; ``progress=`` may also be the user's own tqdm-like object,
anything with an ``update(n)`` method, which stalwart updates and never closes.
"""

from __future__ import annotations

import concurrent.futures
import sys
import time
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from concurrent.futures import Future

T = TypeVar("T")

PLAIN_INTERVAL_S = 0.5
"""The plain ``done i/n`` line is rewritten at most this often (plus once at the
end), so a million tiny tasks do not flood a log with a million lines."""


class Progress(Protocol):
    """What the executors need of a progress display."""

    def update(self, n: int) -> object: ...

    def close(self) -> object: ...


def check_progress(progress: object) -> None:
    """Refuse a ``progress=`` value that is neither a flag nor a tqdm-like object."""
    if progress is None or isinstance(progress, bool):
        return
    if not callable(getattr(progress, "update", None)):
        raise TypeError(
            "progress must be True, False, or a tqdm-like object with an update(n) "
            f"method; got {type(progress).__name__} {progress!r}"
        )


def open_progress(progress: object, total: int | None) -> Progress:
    """The display for ``progress=``: nothing, tqdm, a plain line, or the user's own."""
    check_progress(progress)
    if progress is None or progress is False:
        return _NoProgress()
    if progress is True:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return _PlainProgress(total)
        bar: Progress = tqdm(total=total)
        return bar
    return _UsersProgress(progress)


def as_completed(
    fs: Iterable[Future[T]], timeout: float | None = None, progress: object = False
) -> Iterator[Future[T]]:
    """``concurrent.futures.as_completed``, with an optional progress display.

    Yields the futures as they finish (first the ones already done), exactly as
    the stdlib does; ``progress=True`` counts them on a tqdm bar or a plain
    ``done i/n`` line on stderr, and ``progress=bar`` updates your own bar::

        for future in stalwart.as_completed(futures, progress=True):
            handle(future.result())

    Raises:
        TimeoutError: the futures are not all done ``timeout`` seconds after the
            call (concurrent.futures.TimeoutError, as in the stdlib).
    """
    check_progress(progress)
    if progress is None or progress is False:
        return concurrent.futures.as_completed(fs, timeout)
    futures = set(fs)
    return _counted(
        concurrent.futures.as_completed(futures, timeout), progress, len(futures)
    )


def _counted(
    futures: Iterator[Future[T]], progress: object, total: int
) -> Iterator[Future[T]]:
    # The display opens at the first next(): an iterator never read shows nothing.
    display = open_progress(progress, total)
    tally = Tally(display)
    try:
        for future in futures:
            display.update(1)
            tally.count(future)
            yield future
    finally:
        display.close()


class Tally:
    """Failed and retried tasks, shown next to done (``progress=True`` only:
    the user's own bar is theirs)."""

    def __init__(self, display: Progress) -> None:
        self._display = display
        self.failed = 0
        self.retried = 0

    def count(self, future: Future[Any]) -> None:
        """A finished task: counted if it failed or was run again."""
        retried = getattr(future, "retries", 0)
        failed = not future.cancelled() and future.exception(0) is not None
        if not (failed or retried):
            return  # the common case: nothing to show
        self.failed += failed
        self.retried += retried
        text = f"{self.failed} failed, {self.retried} retried"
        display = self._display
        if isinstance(display, _PlainProgress):
            display.counts = text
        elif not isinstance(display, _UsersProgress):
            set_postfix = getattr(display, "set_postfix_str", None)  # tqdm
            if set_postfix is not None:
                set_postfix(text)


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


class _UsersProgress:
    """The user's bar: updated here, closed by its owner."""

    def __init__(self, bar: Any) -> None:
        self._bar = bar

    def update(self, n: int) -> None:
        self._bar.update(n)

    def close(self) -> None:
        pass


class _PlainProgress:
    """``done i/n`` on stderr: rewritten in place on a terminal, a line each
    ``PLAIN_INTERVAL_S`` otherwise (logs, CI, captured output)."""

    def __init__(self, total: int | None) -> None:
        self._total = total
        self._done = 0
        self._shown = -1
        self._last_shown_at = 0.0
        self._closed = False
        self.counts = ""  # "1 failed, 2 retried" (Tally)

    def update(self, n: int) -> None:
        self._done += n
        now = time.monotonic()
        if now - self._last_shown_at >= PLAIN_INTERVAL_S or self._done == self._total:
            self._show(final=False)
            self._last_shown_at = now

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._show(final=True)

    def _show(self, final: bool) -> None:
        stream = sys.stderr
        if stream is None:  # pythonw, or stderr closed: nowhere to report
            return
        text = f"done {self._done}" + (
            f"/{self._total}" if self._total is not None else ""
        )
        if self.counts:
            text += f" ({self.counts})"
        interactive = _is_terminal(stream)
        if self._done != self._shown:
            stream.write(f"\r{text}" if interactive else f"{text}\n")
            self._shown = self._done
        if final and interactive:
            stream.write("\n")
        stream.flush()


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False
