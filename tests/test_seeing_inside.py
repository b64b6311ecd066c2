"""Seeing inside the workers: their prints and log records reach the parent.

A task's ``print()`` appears on the parent's *current* ``sys.stdout`` (here an
``io.StringIO``, as a Jupyter cell or pytest's capture would be), and its log
records are handled by the parent's ``logging`` handlers, once, at the levels
the parent configured. Both start paths are covered: workers forked from the
caller, and workers forked from the template interpreter.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from typing import TYPE_CHECKING

import pytest

import stalwart
from tests import _output_tasks as tasks
from tests._scripts import finish, start_script
from tests._tasks import TIMEOUT

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

START_PATHS = [None, "template"]  # forked from the caller; from the template


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected() -> Iterator[Collect]:
    """A handler on the parent's "stalwart_tests" logger, which logs DEBUG."""
    logger = logging.getLogger("stalwart_tests")
    handler = Collect()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)


@pytest.mark.parametrize("mp_context", START_PATHS)
def test_a_workers_prints_appear_on_the_parents_current_stdout(
    mp_context: str | None,
) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        with stalwart.ProcessPoolExecutor(2, mp_context=mp_context) as ex:
            pid = ex.submit(tasks.print_lines, 3).result(timeout=TIMEOUT)
            # In the pipe before the answer: there as soon as result() returns.
            shown = out.getvalue()
    assert shown == "".join(f"line {i} of {pid}\n" for i in range(3))


def test_stderr_goes_to_the_parents_stderr() -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        with stalwart.ProcessPoolExecutor(1) as ex:
            ex.submit(tasks.print_to_stderr, "to stderr").result(timeout=TIMEOUT)
    assert err.getvalue() == "to stderr\n"


def test_each_workers_lines_arrive_whole_and_in_order() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        with stalwart.ProcessPoolExecutor(2) as ex:
            pids = list(ex.map(tasks.print_lines, [500] * 4, timeout=TIMEOUT))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2000
    for pid in set(pids):
        mine = [line for line in lines if line.endswith(f" of {pid}")]
        numbers = [int(line.split()[1]) for line in mine]
        assert numbers == list(range(500)) * pids.count(pid)


def test_a_task_s_unfinished_last_line_arrives_with_its_task() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        with stalwart.ProcessPoolExecutor(1) as ex:
            ex.submit(tasks.print_unfinished, "no newline").result(timeout=TIMEOUT)
            assert out.getvalue() == "no newline"


def test_lines_printed_by_a_task_s_threads_arrive_intact() -> None:
    """Threads print while the worker answers: one pipe, no torn frames."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        with stalwart.ProcessPoolExecutor(1) as ex:
            ex.submit(tasks.print_from_threads, 8, 200).result(timeout=TIMEOUT)
            assert ex.submit(tasks.print_lines, 0).result(timeout=TIMEOUT) > 0
    lines = out.getvalue().splitlines()
    assert sorted(lines) == sorted(
        f"thread {n} line {i}" for n in range(8) for i in range(200)
    )


def test_prefix_output_names_the_worker_on_each_line() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        with stalwart.ProcessPoolExecutor(1, prefix_output=True) as ex:
            pid = ex.submit(tasks.print_lines, 2).result(timeout=TIMEOUT)
    assert out.getvalue() == (
        f"[worker {pid}] line 0 of {pid}\n[worker {pid}] line 1 of {pid}\n"
    )


FD_LEVEL_SCRIPT = """
import contextlib, io, sys
import stalwart
from tests import _output_tasks as tasks

if __name__ == "__main__":
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        with stalwart.ProcessPoolExecutor(1, forward_output={forward}) as ex:
            ex.submit(tasks.{task}, *{args!r}).result(timeout=60)
    sys.stderr.write("forwarded: " + repr(out.getvalue()))
"""


def fd_level_run(
    tmp_path: Path, task: str, args: tuple[object, ...], forward: bool
) -> tuple[str, str]:
    """A script whose fd 1 is a pipe we read (the workers inherit it, however
    they start), and whose sys.stdout is an io.StringIO: (what reached fd 1,
    what reached the StringIO)."""
    code = FD_LEVEL_SCRIPT.format(task=task, args=args, forward=forward)
    out, err = finish(start_script(tmp_path, code), check=True)
    return out, err.rpartition("forwarded: ")[2]


def test_forward_output_false_leaves_prints_on_the_inherited_descriptor(
    tmp_path: Path,
) -> None:
    on_fd, forwarded = fd_level_run(tmp_path, "print_lines", (1,), forward=False)
    assert "line 0 of" in on_fd
    assert forwarded == "''"


def test_output_written_to_file_descriptor_1_is_not_forwarded(tmp_path: Path) -> None:
    on_fd, forwarded = fd_level_run(
        tmp_path, "write_to_fd_1", ("straight to fd 1\n",), forward=True
    )
    assert on_fd == "straight to fd 1\n"
    assert forwarded == "''"


def test_a_process_a_task_forks_writes_to_the_original_streams(tmp_path: Path) -> None:
    """The forked child must not write into the worker's pipe (it would tear
    its frames): its output goes to the inherited descriptor, and the
    executor carries on."""
    on_fd, forwarded = fd_level_run(
        tmp_path, "fork_a_child_that_prints", (), forward=True
    )
    assert "from the forked child" in on_fd
    assert forwarded == "''"


@pytest.mark.parametrize("mp_context", START_PATHS)
def test_a_workers_log_record_reaches_the_parents_handler_with_its_pid_and_task(
    collected: Collect, mp_context: str | None
) -> None:
    with stalwart.ProcessPoolExecutor(1, mp_context=mp_context) as ex:
        pid = ex.submit(tasks.log_at_levels, "x").result(timeout=TIMEOUT)
    messages = [record.getMessage() for record in collected.records]
    assert messages == ["debug x", "info x", "warning x"]
    record = collected.records[-1]
    assert record.process == pid
    assert record.worker_pid == pid  # type: ignore[attr-defined]
    assert record.name == "stalwart_tests.worker"
    assert record.levelno == logging.WARNING
    assert "log_at_levels('x')" in record.stalwart_task  # type: ignore[attr-defined]


def test_records_below_the_parents_level_are_not_delivered(
    collected: Collect,
) -> None:
    logging.getLogger("stalwart_tests").setLevel(logging.WARNING)
    with stalwart.ProcessPoolExecutor(1, mp_context="template") as ex:
        ex.submit(tasks.log_at_levels, "y").result(timeout=TIMEOUT)
    assert [record.getMessage() for record in collected.records] == ["warning y"]


def test_a_logged_traceback_arrives_as_text(collected: Collect) -> None:
    with stalwart.ProcessPoolExecutor(1) as ex:
        ex.submit(tasks.log_an_error).result(timeout=TIMEOUT)
    (record,) = collected.records
    assert record.getMessage() == "it failed"
    assert record.exc_text is not None
    assert "KeyError: 'missing'" in record.exc_text
    formatted = logging.Formatter().format(record)
    assert formatted.count("KeyError: 'missing'") == 1


def test_a_record_is_handled_once_even_by_a_handler_the_worker_inherited(
    tmp_path: os.PathLike[str],
) -> None:
    """A forked worker inherits the parent's handlers (a log file): records
    must reach the file through the parent, once, not also from the worker."""
    path = os.path.join(tmp_path, "run.log")
    handler = logging.FileHandler(path)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with stalwart.ProcessPoolExecutor(1) as ex:
            ex.submit(tasks.log_at_levels, "once").result(timeout=TIMEOUT)
    finally:
        root.removeHandler(handler)
        handler.close()
    with open(path) as log_file:
        assert log_file.read().count("warning once") == 1


def test_the_initializer_s_prints_and_records_arrive(collected: Collect) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        with stalwart.ProcessPoolExecutor(
            1, initializer=tasks.chatty_initializer
        ) as ex:
            ex.submit(tasks.print_lines, 0).result(timeout=TIMEOUT)
    assert out.getvalue() == "initializer says hello\n"
    assert [r.getMessage() for r in collected.records] == ["initializer logged"]


def test_the_executor_carries_on_after_a_task_forked_a_child_that_logs(
    collected: Collect,
) -> None:
    with stalwart.ProcessPoolExecutor(1) as ex:
        assert ex.submit(tasks.fork_a_child_that_prints).result(TIMEOUT) == 0
        assert ex.submit(tasks.log_at_levels, "after").result(TIMEOUT) > 0
    messages = [record.getMessage() for record in collected.records]
    assert messages == ["debug after", "info after", "warning after"]


def test_the_thread_pool_s_prints_are_the_parents_own() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        with stalwart.ThreadPoolExecutor(2, prefix_output=True) as ex:
            ex.submit(tasks.print_lines, 1).result(timeout=TIMEOUT)
    assert out.getvalue() == f"line 0 of {os.getpid()}\n"


def test_a_dask_task_s_prints_and_records_reach_the_parent(collected: Collect) -> None:
    """On dask, a task's thread is captured on its worker and its lines and
    records come back with its answer; the worker's own output stays there."""
    pytest.importorskip("distributed")
    out = io.StringIO()
    with stalwart.DaskExecutor(max_workers=1, prefix_output=True) as ex:
        with contextlib.redirect_stdout(out):
            pid = ex.submit(tasks.print_lines, 2).result(timeout=TIMEOUT)
            assert ex.submit(tasks.log_at_levels, "d").result(timeout=TIMEOUT) == pid
    assert out.getvalue() == (
        f"[worker {pid}] line 0 of {pid}\n[worker {pid}] line 1 of {pid}\n"
    )
    # The dask worker's loggers keep their own levels: WARNING and up.
    (record,) = collected.records
    assert record.getMessage() == "warning d"
    assert record.process == pid
    assert "log_at_levels('d')" in record.stalwart_task  # type: ignore[attr-defined]
