"""Shared fixtures: bounded waits, gates that work across processes, leak checks."""

from __future__ import annotations

import contextlib
import errno
import multiprocessing
import os
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest

import stalwart
from stalwart import _memory
from tests._leaks import worker_processes
from tests._tasks import TIMEOUT

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from concurrent.futures import Executor


def wait_until(
    predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT
) -> Any:
    """Poll `predicate` until it is truthy; fail naming `what` after `timeout` s.

    For OS state that offers no event to wait on (a pid that must vanish); the
    poll interval changes only latency, never the outcome.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


def returns_within(action: Callable[[], Any], what: str, timeout: float) -> None:
    """Run `action` on a daemon thread; fail naming `what` if it has not returned
    after `timeout` s (a hang), or re-raise what it raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # re-raised below, in the test's thread
            errors.append(exc)

    runner = threading.Thread(target=run, name="test-runner", daemon=True)
    runner.start()
    runner.join(timeout)
    assert not runner.is_alive(), f"{what} did not return within {timeout} s: a hang"
    if errors:
        raise errors[0]


@pytest.fixture(params=["process", "thread", "dask"])
def kind(request: pytest.FixtureRequest) -> str:
    """Run the test once per executor kind: the swap must change nothing.

    A test that marks itself ``not_on_dask(reason)`` is skipped for dask, with
    its reason: behaviour the dask executor does not define.
    """
    if request.param == "dask":
        marker = request.node.get_closest_marker("not_on_dask")
        if marker is not None:
            pytest.skip(f"not defined on dask: {marker.args[0]}")
        global _dask_client
        _dask_client = request.getfixturevalue("dask_client")
    return str(request.param)


_dask_client: Any = None


def open_executor(kind: str, **kwargs: Any) -> Executor:
    """``stalwart.executor(kind)`` with two workers; threads check pickling too,
    so that they refuse exactly what a process pool would. dask executors run
    on the session's two-worker local cluster (see ``dask_client``)."""
    kwargs.setdefault("max_workers", 2)
    if kind == "thread":
        kwargs.setdefault("check_pickle", True)
    if kind == "dask":
        kwargs.pop("max_workers")  # the given cluster keeps its own size
        kwargs.setdefault("client", _dask_client)
    return stalwart.executor(kind, **kwargs)


@pytest.fixture(scope="session")
def dask_client() -> Iterator[Any]:
    """A real dask cluster for the session: two worker processes, one thread
    each (started on first use, closed at the end). What it starts is the
    session's, not a test's, for the leak check below."""
    distributed = pytest.importorskip("distributed")
    threads_before = set(threading.enumerate())
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = distributed.Client(cluster, set_as_default=False)
    _session_helpers.update(t for t in threading.enumerate() if t not in threads_before)
    _session_helper_pids.update(
        p.pid
        for p in psutil.Process().children(recursive=True)
        if p.pid not in children_before
    )
    yield client
    client.close()
    cluster.close()


_session_helpers: set[threading.Thread] = set()
_session_helper_pids: set[int] = set()

PROCESS_WIDE_THREADS = ("Dask-Offload", "stalwart-spawner")
"""Threads started once per process, on first use, by design: distributed's, and
stalwart's spawner (worker processes are started from one long-lived thread, so
that the kernel's parent-death signal outlives the I/O threads; see _lifeline)."""


@pytest.fixture(scope="session")
def manager() -> Iterator[Any]:
    """A multiprocessing Manager: its Event proxies can be passed to tasks."""
    with multiprocessing.get_context("spawn").Manager() as manager:
        yield manager


@pytest.fixture(autouse=True)
def no_leaked_workers_or_threads() -> Iterator[None]:
    """Every test must leave no worker process and no executor thread behind."""
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    threads_before = set(threading.enumerate())
    yield

    def leaked_children() -> list[psutil.Process]:
        return worker_processes(exclude=children_before | _session_helper_pids)

    def leaked_threads() -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if t not in threads_before
            and t not in _session_helpers
            and not t.name.startswith(PROCESS_WIDE_THREADS)
        ]

    try:
        wait_until(lambda: not leaked_children(), "worker processes to exit", 10)
    except AssertionError:
        leaked = leaked_children()
        for process in leaked:
            process.kill()
        pytest.fail(f"leaked worker processes: {[p.pid for p in leaked]}")
    try:
        wait_until(lambda: not leaked_threads(), "executor threads to exit", 10)
    except AssertionError:
        pytest.fail(f"leaked threads: {leaked_threads()}")


@pytest.fixture
def memory_cgroup_of_64_mib() -> Iterator[Path]:
    """A fresh memory cgroup (v1 or v2) limited to 64 MiB without swap, for a real
    kernel OOM kill; removed afterwards. Skipped where the machine refuses one."""
    if os.geteuid() != 0:
        pytest.skip("creating a memory cgroup takes root")
    mounts = _memory.cgroup_mounts()
    v1 = [m for m in mounts if m.version == 1]
    v2 = [m for m in mounts if m.version == 2]
    if not v1 and not v2:
        pytest.skip("no cgroup v1 memory controller and no cgroup v2 mounted")
    mount = (v1 or v2)[0]
    group = Path(mount.mount_point) / f"stalwart-test-{uuid.uuid4().hex[:12]}"
    try:
        group.mkdir()
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES, errno.EROFS, errno.ENOENT):
            pytest.skip(f"this machine refuses a memory cgroup at {group}: {exc}")
        raise
    try:
        if mount.version == 2:
            if "memory" not in (group / "cgroup.controllers").read_text().split():
                pytest.skip(f"the memory controller is not enabled for {group}")
            (group / "memory.max").write_text(str(64 * 2**20))
            with contextlib.suppress(FileNotFoundError):
                (group / "memory.swap.max").write_text("0")
        else:
            (group / "memory.limit_in_bytes").write_text(str(64 * 2**20))
            with contextlib.suppress(FileNotFoundError):  # no swap accounting
                (group / "memory.memsw.limit_in_bytes").write_text(str(64 * 2**20))
        yield group
    finally:
        wait_until(
            lambda: not (group / "cgroup.procs").read_text().split(),
            f"the processes in {group} to end",
        )
        group.rmdir()
