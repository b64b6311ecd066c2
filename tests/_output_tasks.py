"""Tasks that print and log, for tests/test_seeing_inside.py (importable by workers)."""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger("stalwart_tests.worker")


def print_lines(count: int) -> int:
    for i in range(count):
        print(f"line {i} of {os.getpid()}")
    return os.getpid()


def print_to_stderr(text: str) -> int:
    print(text, file=sys.stderr)
    return os.getpid()


def print_unfinished(text: str) -> int:
    print(text, end="")
    return os.getpid()


def write_to_fd_1(text: str) -> int:
    os.write(1, text.encode())
    return os.getpid()


def log_at_levels(tag: str) -> int:
    log.debug("debug %s", tag)
    log.info("info %s", tag)
    log.warning("warning %s", tag)
    return os.getpid()


def log_an_error() -> int:
    try:
        raise KeyError("missing")
    except KeyError:
        log.exception("it failed")
    return os.getpid()


def print_from_threads(threads: int, lines: int) -> int:
    def chatter(n: int) -> None:
        for i in range(lines):
            print(f"thread {n} line {i}")

    workers = [threading.Thread(target=chatter, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return os.getpid()


def fork_a_child_that_prints() -> int:
    pid = os.fork()
    if pid == 0:
        print("from the forked child")
        logging.getLogger("stalwart_tests.worker").warning("child's record")
        sys.stdout.flush()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def chatty_initializer() -> str:
    print("initializer says hello")
    log.warning("initializer logged")
    return "ready"
