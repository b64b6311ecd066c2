"""A task's output and log records, shown by the parent.

A task runs in a worker process, where the parent's ``sys.stdout`` (a Jupyter
cell, pytest's capture, an ``io.StringIO``) and its logging handlers do not
exist: with the stdlib's pools, prints vanish from notebooks and worker log
records never reach the parent's handlers. Here::

    worker                                      parent (I/O thread)
    sys.stdout / sys.stderr = LineForwarder     OUTPUT -> the parent's *current*
      each complete line -> OUTPUT frame           sys.stdout / sys.stderr
    root logger: one RecordForwarder            LOG -> the parent's logger of
      each record, message formatted -> LOG        the same name, if it is
                                                   enabled for that level

Frames go up the worker's own pipe, so a worker's output arrives in order, and
before the answer of the task that wrote it (a task's unfinished last line is
sent when it ends). The root logger's inherited handlers are removed in the
worker, so a record is formatted once, by the parent. What is written to file
descriptors 1 and 2 directly (C extensions, subprocesses) still goes to the
inherited descriptors, as before. A process a task forks writes to the
original streams: it must not write into its parent's pipe.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

STDOUT = 1
STDERR = 2


class LineForwarder(io.TextIOBase):
    """A worker's ``sys.stdout`` or ``sys.stderr``: complete lines go to the
    parent at once; an unfinished one waits for its newline, a ``flush()``, or
    the end of the task."""

    def __init__(
        self, stream: int, original: Any, send: Callable[[int, str], None]
    ) -> None:
        super().__init__()
        self._stream = stream
        self._original = original  # for fileno(), encoding, and forked children
        self._send = send
        self._partial: list[str] = []
        self._lock = threading.Lock()  # a task's threads may print too

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if _forked:
            return self._write_original(text)
        newline = text.rfind("\n")
        with self._lock:
            if newline < 0:
                if text:
                    self._partial.append(text)
                return len(text)
            lines = "".join(self._partial) + text[: newline + 1]
            rest = text[newline + 1 :]
            self._partial = [rest] if rest else []
        self._send(self._stream, lines)
        return len(text)

    def flush(self) -> None:
        if _forked:
            return
        with self._lock:
            pending, self._partial = "".join(self._partial), []
        if pending:
            self._send(self._stream, pending)

    @property
    def has_partial_line(self) -> bool:
        return bool(self._partial)

    def _write_original(self, text: str) -> int:
        original = self._original
        if original is None:
            return len(text)
        written: int = original.write(text)
        return written

    def fileno(self) -> int:
        if self._original is None:
            raise io.UnsupportedOperation("fileno")
        fd: int = self._original.fileno()
        return fd

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._original, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self._original, "errors", None)

    @property
    def buffer(self) -> Any:
        """Bytes written here bypass forwarding: they go to the inherited
        descriptor, as fd-level output does."""
        return getattr(self._original, "buffer", None)


class RecordForwarder(logging.Handler):
    """The worker's only root handler: each record goes to the parent, its
    message already merged with its args and its traceback as text (what
    ``logging.handlers.QueueHandler.prepare`` does), every attribute plain."""

    def __init__(self, send: Callable[[dict[str, Any]], None]) -> None:
        super().__init__()
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        if _forked:
            return
        try:
            self._send(record_as_dict(record))
        except Exception:  # noqa: BLE001 - logging must never fail the task
            self.handleError(record)


def record_as_dict(record: logging.LogRecord) -> dict[str, Any]:
    """A record as plain data that always pickles: what ``makeLogRecord``
    rebuilds in the parent, with ``stalwart_task`` naming the running call."""
    fields = dict(record.__dict__)
    fields["msg"] = record.getMessage()
    fields["args"] = None
    if record.exc_info:
        fields["exc_text"] = "".join(traceback.format_exception(*record.exc_info))
    fields["exc_info"] = None
    fields.pop("message", None)
    fields["stalwart_task"] = describe_running_task()
    return {name: _plain(value) for name, value in fields.items()}


def _plain(value: object) -> object:
    if value is None or type(value) in (str, int, float, bool):
        return value
    return repr(value)


# -- the worker's side -------------------------------------------------------------

_forked = False  # set in a process a task forked: it writes to the originals
_running: tuple[Any, tuple[Any, ...], dict[str, Any]] | None = None
_streams: tuple[LineForwarder, LineForwarder] | None = None


def _mark_forked() -> None:
    global _forked
    _forked = True


def install(
    send_output: Callable[[int, str], None],
    send_record: Callable[[dict[str, Any]], None],
    log_levels: Iterable[tuple[str, int]],
) -> None:
    """Route this worker's ``sys.stdout``, ``sys.stderr`` and root logger to
    the parent."""
    global _streams
    out = LineForwarder(STDOUT, sys.__stdout__, send_output)
    err = LineForwarder(STDERR, sys.__stderr__, send_output)
    sys.stdout, sys.stderr = out, err
    _streams = (out, err)
    root = logging.getLogger()
    for handler in list(root.handlers):  # the parent's, inherited by fork
        root.removeHandler(handler)
    root.addHandler(RecordForwarder(send_record))
    for name, level in log_levels:
        logging.getLogger(name or None).setLevel(level)
    os.register_at_fork(after_in_child=_mark_forked)


def use_inherited_descriptors() -> None:
    """``forward_output=False``: prints go to file descriptors 1 and 2, as the
    worker inherited them, whichever way it started (a forked worker's
    ``sys.stdout`` would otherwise be a copy of the parent's object, an
    ``io.StringIO`` that nobody reads)."""
    if sys.__stdout__ is not None:
        sys.stdout = sys.__stdout__
    if sys.__stderr__ is not None:
        sys.stderr = sys.__stderr__


def flush_partial_lines() -> None:
    """Send the unfinished last lines written so far (a task, or the
    initializer, has ended: its output goes before its answer)."""
    if _streams is not None:
        for stream in _streams:
            if stream.has_partial_line:
                stream.flush()


def task_started(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """The call now running here: named in the records it logs."""
    global _running
    _running = (fn, args, kwargs)


def task_ended() -> None:
    global _running
    _running = None
    if _streams is not None:
        flush_partial_lines()


def describe_running_task() -> str | None:
    if _running is None:
        return None
    from stalwart import _pickling

    fn, args, kwargs = _running
    return _pickling.describe_task(fn, args, kwargs)


def parent_log_levels() -> tuple[tuple[str, int], ...]:
    """The levels this process's logging is configured with (the root's
    effective level, and every logger given one), for workers to start with."""
    levels = [("", logging.getLogger().getEffectiveLevel())]
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            levels.append((name, logger.level))
    return tuple(levels)


# -- the parent's side -------------------------------------------------------------


def deliver_output(
    stream: int, text: str, prefix: str | None = None, mid_line: bool = False
) -> bool:
    """Write a worker's text to this process's current stdout or stderr, each
    line started with ``prefix`` (not the rest of a line begun earlier:
    ``mid_line``); return whether the text ended mid-line."""
    target = sys.stdout if stream == STDOUT else sys.stderr
    if prefix:
        lines = text.split("\n")
        last = lines.pop()  # "" when the text ends with its newline
        text = "".join(
            line + "\n" if i == 0 and mid_line else prefix + line + "\n"
            for i, line in enumerate(lines)
        )
        if last:
            text += last if mid_line and not lines else prefix + last
    if target is not None:  # None: pythonw, or closed on purpose
        # A closed or broken stream: lost, as a print's would be.
        with contextlib.suppress(OSError, ValueError):
            target.write(text)
    return not text.endswith("\n")


def deliver_record(fields: dict[str, Any], worker_pid: int | None) -> None:
    """Hand a worker's log record to this process's logger of the same name,
    if it is enabled for the record's level."""
    record = logging.makeLogRecord(fields)
    record.worker_pid = worker_pid
    logger = logging.getLogger(record.name if record.name != "root" else None)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)


# -- a dask worker's side: output captured per task thread -------------------------
#
# A dask worker runs many tasks at once, on threads, next to dask's own: a task's
# lines and records are collected for its thread alone and travel back with its
# answer (dask has its own transport), to be delivered in the parent like a
# process worker's. Everything else the worker prints or logs stays its own.

_capture = threading.local()  # .events: list, while this thread runs a task
_router_lock = threading.Lock()
_routed = False


class _ThreadRouter(io.TextIOBase):
    """``sys.stdout`` / ``sys.stderr`` of a dask worker: a thread running a
    stalwart task writes into its capture, every other thread as before."""

    def __init__(self, stream: int, original: Any) -> None:
        super().__init__()
        self._stream = stream
        self._original = original

    def write(self, text: str) -> int:
        events = getattr(_capture, "events", None)
        if events is None:
            written: int = self._original.write(text)
            return written
        events.append(("output", self._stream, text))
        return len(text)

    def flush(self) -> None:
        if getattr(_capture, "events", None) is None:
            self._original.flush()

    def fileno(self) -> int:
        fd: int = self._original.fileno()
        return fd

    def isatty(self) -> bool:
        return getattr(_capture, "events", None) is None and bool(
            self._original.isatty()
        )

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._original, "encoding", None) or "utf-8"


class _CapturedRecords(logging.Handler):
    """Collects the records of a thread running a stalwart task."""

    def emit(self, record: logging.LogRecord) -> None:
        events = getattr(_capture, "events", None)
        if events is not None:
            try:
                events.append(("log", record_as_dict(record)))
            except Exception:  # noqa: BLE001 - logging must never fail the task
                self.handleError(record)


def _not_captured(record: logging.LogRecord) -> bool:
    """The worker's own handlers skip what a captured task logs: the parent
    formats it, once."""
    return getattr(_capture, "events", None) is None


def _route_this_process() -> None:
    global _routed
    with _router_lock:
        if _routed:
            return
        sys.stdout = _ThreadRouter(STDOUT, sys.stdout)
        sys.stderr = _ThreadRouter(STDERR, sys.stderr)
        root = logging.getLogger()
        for handler in root.handlers:
            handler.addFilter(_not_captured)
        root.addHandler(_CapturedRecords())
        _routed = True


@contextlib.contextmanager
def captured() -> Iterator[list[tuple[Any, ...]]]:
    """Within this block, what this thread prints or logs is collected (as
    ``("output", stream, text)`` and ``("log", fields)`` events) instead of
    shown: a dask worker's task, whose events go back with its answer."""
    _route_this_process()
    events: list[tuple[Any, ...]] = []
    _capture.events = events
    try:
        yield events
    finally:
        _capture.events = None


def deliver_events(
    events: Iterable[tuple[Any, ...]], prefix: str | None, worker_pid: int | None
) -> None:
    """Show a dask task's captured events here, in order."""
    mid_line = {STDOUT: False, STDERR: False}
    for event in events:
        if event[0] == "output":
            _, stream, text = event
            mid_line[stream] = deliver_output(stream, text, prefix, mid_line[stream])
        elif event[0] == "log":
            deliver_record(event[1], worker_pid)
