"""The worker process's main loop (runs in the child).

    start: ignore SIGINT (the parent decides), watch the parent, run the
           initializer once, keep its result for worker_state(), send READY
    loop:  receive a batch of calls, acknowledge it -> for each, in order:
           claim it (skip it if the parent took it back), unpickle, run,
           pickle the outcome, send it at once -> until STOP, EOF, or
           max_tasks_per_child tasks are done; a RESET batch restores the
           environment before the worker is parked

Each call is claimed in the shared claim table (``_claims``) before it starts
and each reply is sent before the next call starts, so when the worker dies the
parent knows exactly which task it was running, or that it was running none.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import multiprocessing.process
import multiprocessing.spawn
import os
import pickle
import signal
import sys
import time
import traceback
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stalwart import (
    _forwarding,
    _memory,
    _outofband,
    _pickling,
    _shared,
    _state,
    _wire,
)
from stalwart.errors import RemoteError

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection

    from stalwart._claims import ClaimTable

PARENT_POLL_INTERVAL_S = 0.25
"""How often a worker checks that its parent is alive. A dead parent must not
leave orphans running (contract 9: exit within ~2 s), and a getppid() call four
times a second costs nothing measurable."""

_HIGHEST = pickle.HIGHEST_PROTOCOL


@dataclass(frozen=True)
class WorkerConfig:
    """What shapes a worker; sent once, when the process starts."""

    initializer_call: bytes | None  # serialize_call(initializer, initargs, {})
    max_tasks: int | None  # max_tasks_per_child
    by_value: bool  # pickle replies with cloudpickle (the parent's policy)
    main_path: str | None  # the parent's main script, to import as spawn does
    # (initializer, initargs) as plain objects, when initargs hold what only
    # process inheritance can carry (multiprocessing queues, locks, events):
    # the start method's own pickler sends them; () otherwise.
    inherited_initializer: tuple[Any, ...] = ()
    # This worker's claim table (``_claims``), shared with the parent: the
    # parent sets it per worker, just before starting the process.
    claims: ClaimTable | None = None
    # Prints and log records go to the parent (_forwarding), logging starting
    # at the parent's levels; False leaves sys.stdout and logging as inherited.
    forward_output: bool = True
    log_levels: tuple[tuple[str, int], ...] = ()
    # max_memory_per_child, in bytes: past it after a task, the worker exits.
    max_memory: int | None = None


def run_worker(conn: Connection, config: WorkerConfig) -> None:
    """Entry point of a worker process."""
    # Ctrl-C in a terminal reaches the whole process group; the parent decides
    # what an interrupt means for the work, so a worker must not die of it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _enable_faulthandler()
    _start_parent_watchdog()
    frames = _wire.BlockingFrames(conn.fileno())
    if config.forward_output:
        _forwarding.install(
            _output_sender(frames), _record_sender(frames), config.log_levels
        )
    else:
        _forwarding.use_inherited_descriptors()
    try:
        _import_main_script(config.main_path)
    except BaseException as exc:  # noqa: BLE001 - told to the parent, then we exit
        _tell_main_failed(frames, exc)
        sys.exit(1)
    if not _run_initializer(frames, config):
        return
    frames.send([pickle.dumps((_wire.READY, os.getpid()), _HIGHEST)])
    _serve(frames, config, _Environment())


def _tell_main_failed(frames: _wire.BlockingFrames, exc: BaseException) -> None:
    """The main script failed to import here: say why, for the parent's error."""
    from stalwart._process import ExecutorAtImportError

    at_import = isinstance(exc, ExecutorAtImportError)
    reply = (_wire.MAIN_FAILED, _summary(exc), _format_traceback(exc), at_import)
    _forwarding.flush_partial_lines()
    with contextlib.suppress(OSError):
        frames.send([pickle.dumps(reply, _HIGHEST)])


def _summary(exc: BaseException) -> str:
    return f"{type(exc).__qualname__}: {exc}"


def _output_sender(frames: _wire.BlockingFrames) -> Callable[[int, str], None]:
    def send(stream: int, text: str) -> None:
        with contextlib.suppress(OSError):  # the parent is gone: nobody to show
            frames.send([pickle.dumps((_wire.OUTPUT, stream, text), _HIGHEST)])

    return send


def _record_sender(
    frames: _wire.BlockingFrames,
) -> Callable[[dict[str, Any]], None]:
    def send(fields: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            frames.send([pickle.dumps((_wire.LOG, fields), _HIGHEST)])

    return send


def _enable_faulthandler() -> None:
    """An unexpected crash should still leave its C stack on stderr."""
    for stream in (sys.stderr, sys.__stderr__):
        try:
            faulthandler.enable(stream)  # type: ignore[arg-type]
        except (AttributeError, ValueError, OSError):
            continue  # no usable fd (stderr swapped for a StringIO under fork)
        return


def _start_parent_watchdog() -> None:
    from stalwart import _lifeline  # the kernel's death signal, then a watchdog

    _lifeline.hold_on_to_parent(PARENT_POLL_INTERVAL_S)


def _import_main_script(main_path: str | None) -> None:
    """Import the parent's main script as ``__mp_main__``, as spawn does.

    Tasks refer to ``__main__`` functions by name. The start method usually has
    imported the script already (then this does nothing), but not if the worker
    was started after the parent's script body had ended.
    """
    main = sys.modules.get("__main__")
    if main_path is None or getattr(main, "__file__", None) == main_path:
        return
    current = multiprocessing.process.current_process()
    # Marks this as bootstrapping: a script without a __main__ guard that starts
    # an executor at import time gets a clear error instead of recursing.
    current._inheriting = True  # type: ignore[attr-defined]
    try:
        multiprocessing.spawn.prepare({"init_main_from_path": main_path})
    finally:
        del current._inheriting  # type: ignore[attr-defined]


def _run_initializer(frames: _wire.BlockingFrames, config: WorkerConfig) -> bool:
    state = None
    if config.initializer_call is not None or config.inherited_initializer:
        try:
            if config.initializer_call is not None:
                initializer, initargs, _ = _pickling.loads(config.initializer_call)
            else:
                initializer, initargs = config.inherited_initializer
            state = initializer(*initargs)
        except BaseException as exc:  # noqa: BLE001 - logged, and sent to the parent
            reply = (_wire.INIT_FAILED, *initializer_failure(exc))
            _forwarding.flush_partial_lines()
            frames.send([pickle.dumps(reply, _HIGHEST)])
            return False
    _forwarding.flush_partial_lines()
    _state.set_process_worker_state(state)
    return True


def initializer_failure(exc: BaseException) -> tuple[str, str]:
    """Log an initializer's exception, then return (its summary, its traceback).

    The stdlib logs here too: code that watches the 'concurrent.futures' logger
    for initializer failures keeps working.
    """
    logging.getLogger("concurrent.futures").critical(
        "Exception in initializer:", exc_info=exc
    )
    return _summary(exc), _format_traceback(exc)


class _Environment:
    """What a task may change that the next executor would notice: the working
    directory, the environment variables and ``sys.path``, as they were once the
    initializer had run. Restored when the worker is parked (RESET), so that a
    warm worker is adopted exactly as it would have started."""

    def __init__(self) -> None:
        self.cwd = os.getcwd()
        self.environ = dict(os.environ)
        self.path = list(sys.path)

    def restore(self) -> None:
        with contextlib.suppress(OSError):
            os.chdir(self.cwd)
        if dict(os.environ) != self.environ:
            os.environ.clear()
            os.environ.update(self.environ)
        if sys.path != self.path:
            sys.path[:] = self.path


def _serve(
    frames: _wire.BlockingFrames, config: WorkerConfig, environment: _Environment
) -> None:
    claims = config.claims
    assert claims is not None, "the parent gives every worker its claim table"
    tasks_left = config.max_tasks
    mappings = _outofband.Mappings()
    while True:
        try:
            frame, fds = frames.receive()
        except (EOFError, OSError):
            return  # the parent closed our pipe: shut down
        if not frame:
            return  # STOP
        batch = _wire.decode_batch(frame)
        mappings.receive(batch.own_ids, batch.shared_ids, fds)
        mappings.forget(batch.forget_ids)
        if not batch.calls:
            environment.restore()  # RESET: we are being parked
            mappings.shared.clear()  # the next executor sends what it shares
            continue
        last_seq = batch.calls[-1][1]
        if not _send(frames, pickle.dumps((_wire.RECEIVED, last_seq), _HIGHEST)):
            return
        for task_id, seq, call in batch.calls:
            if not claims.start(seq):
                continue  # the parent took it back (cancelled, or for another worker)
            if not _send(frames, run_call(task_id, call, config.by_value, mappings)):
                return
            if tasks_left is not None:
                tasks_left -= 1
            if config.max_memory is not None:
                rss = _memory.own_resident_bytes()
                if rss > config.max_memory:
                    # Replaced: the calls of this batch not started go elsewhere.
                    _send(frames, pickle.dumps((_wire.OVER_MEMORY, rss), _HIGHEST))
                    return
        del batch, frame, call  # the calls' memory goes before the next batch's
        mappings.close_unused()  # the files of calls that were taken back
        if tasks_left is not None and tasks_left <= 0:
            return  # recycled: the parent sends no more than max_tasks


def _send(frames: _wire.BlockingFrames, reply: bytes | _outofband.Packed) -> bool:
    """Send a reply; False if the parent has closed our pipe (it shut us down
    while we worked, or died): then we end quietly, as on EOF."""
    try:
        if isinstance(reply, bytes):
            frames.send([reply])
        else:
            segment = reply.segment
            frames.send(reply.parts, None if segment is None else [segment.fd])
            if segment is not None:
                segment.close()  # the parent holds it now
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def run_call(
    task_id: int,
    call: memoryview | bytes,
    by_value: bool,
    mappings: _outofband.Mappings | None = None,
) -> bytes | _outofband.Packed:
    """Run one call and return the reply frame; never raises for a task's failure.

    Also what a DaskExecutor's task runs on a dask worker (``_dask_worker``), so
    results and errors cross back the same way on every executor kind. With
    ``mappings`` (a process pool's worker), a call may come as a segment frame
    and a large result leaves through shared memory (``_outofband``); without,
    everything travels in band (dask has its own transport).
    """
    started = time.perf_counter()
    forks = _forks_into_this_process
    read_only_data = False
    try:
        if mappings is not None and _outofband.is_segment_frame(call):
            (fn, args, kwargs), read_only_data = mappings.load(call, private=True)
        else:
            fn, args, kwargs = _pickling.loads(call)
    except BaseException as exc:  # noqa: BLE001 - reported as this task's failure
        # As the stdlib: a call the worker cannot rebuild is a BrokenProcessPool
        # for that task (here only that task: the worker carries on).
        error = BrokenProcessPool(
            f"the call could not be unpickled in worker {os.getpid()}: {exc!r}. "
            "Its arguments pickle in the parent but not back in a fresh "
            "interpreter; the worker's traceback is attached."
        )
        error.__cause__ = exc
        return error_reply(task_id, error, time.perf_counter() - started)
    _forwarding.task_started(fn, args, kwargs)
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - whatever a task raises is its result
        _exit_if_forked_child(forks)
        _forwarding.task_ended()
        if read_only_data:
            _explain_read_only(exc)
        return error_reply(task_id, exc, time.perf_counter() - started)
    _exit_if_forked_child(forks)
    _forwarding.task_ended()
    del args, kwargs  # a large argument's mapping goes before the reply is built
    out_of_band = mappings is not None
    if not by_value:
        try:
            reply = (_wire.RESULT, task_id, value, time.perf_counter() - started)
            return _pack_reply(reply, out_of_band)
        except MemoryError as exc:
            return error_reply(task_id, exc, time.perf_counter() - started)
        except BaseException:  # noqa: BLE001 - needs cloudpickle, or cannot be pickled
            pass  # serialize_result below tries cloudpickle, then diagnoses
    try:
        data = _pickling.serialize_result(value, task=_task_name(fn), by_value=by_value)
        busy_s = time.perf_counter() - started
        return _pack_reply((_wire.RESULT_BYTES, task_id, data, busy_s), out_of_band)
    except BaseException as exc:  # noqa: BLE001 - PicklingError, or what __reduce__ raised
        return error_reply(task_id, exc, time.perf_counter() - started)


def _pack_reply(reply: tuple[Any, ...], out_of_band: bool) -> bytes | _outofband.Packed:
    """A reply tuple pickled, its big buffers in shared memory if ``out_of_band``."""
    if not out_of_band:
        return pickle.dumps(reply, _HIGHEST)
    buffers = _outofband.Buffers(shared_ok=False)
    data = pickle.dumps(reply, _HIGHEST, buffer_callback=buffers)
    if not buffers.found and len(data) < _outofband.OUT_OF_BAND_BYTES:
        return data  # the common case: a small reply, in band
    try:
        packed = _outofband.pack([data], buffers.found, for_queue=False)
    except MemoryError:
        raise  # this task fails; the worker carries on
    except OSError:  # no shared memory file to be had: the pipe, as the stdlib
        return pickle.dumps(reply, _HIGHEST)
    assert packed is not None, "a reply does not wait in a queue"
    return packed


def _explain_read_only(exc: BaseException) -> None:
    """A task wrote to an array from ``stalwart.shared()``: say why it is
    read-only, in the error the user will read."""
    if isinstance(exc, ValueError) and "read-only" in str(exc):
        hint = _shared.READ_ONLY_HINT
        if hasattr(exc, "add_note"):
            exc.add_note(hint)
        elif len(exc.args) == 1 and isinstance(exc.args[0], str):
            exc.args = (f"{exc.args[0]}\n{hint}",)


def _exit_if_forked_child(forks_before: int) -> None:
    """A task that called ``os.fork()`` may return twice: in the child, the
    return must not reach the pipe the parent reads (a second answer to one
    call). The child ends here, as multiprocessing ends its forked children.
    (A counter bumped in forked children only, not getpid(): a system call
    per task.)"""
    if _forks_into_this_process != forks_before:
        os._exit(0)


_forks_into_this_process = 0


def _count_fork_into_child() -> None:
    global _forks_into_this_process
    _forks_into_this_process += 1


os.register_at_fork(after_in_child=_count_fork_into_child)


def error_reply(task_id: int, exc: BaseException, busy_s: float) -> bytes:
    """The ERROR reply for ``exc``; a ``RemoteError`` stands in for an exception
    that cannot make the trip (it fails to pickle, or to unpickle)."""
    remote_traceback = _format_traceback(exc)
    try:
        reply = pickle.dumps(
            (_wire.ERROR, task_id, exc, remote_traceback, busy_s), _HIGHEST
        )
        # An exception that pickles may still not unpickle, or not as itself.
        if not isinstance(pickle.loads(reply)[2], BaseException):
            raise TypeError("rebuilds as a non-exception")
    except BaseException:  # noqa: BLE001 - any failure: send a RemoteError instead
        remote = RemoteError(
            f"{type(exc).__module__}.{type(exc).__qualname__}",
            _safe_str(exc),
            remote_traceback,
        )
        reply = pickle.dumps(
            (_wire.ERROR, task_id, remote, remote_traceback, busy_s), _HIGHEST
        )
    return reply


def _format_traceback(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f'\n"""\n{text}"""'


def _task_name(fn: object) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except BaseException:  # noqa: BLE001 - a broken __str__ must not kill the worker
        return f"<str() of {type(exc).__qualname__} failed>"
