"""The stdlib ``test_concurrent_futures`` tests that cannot apply to stalwart.

stalwart is a drop-in ``ProcessPoolExecutor`` and ``ThreadPoolExecutor``
(docs/design.md, contract point 1), and CPython's own suite is the yardstick: every
process-pool test of it runs against ``stalwart.ProcessPoolExecutor`` under fork,
forkserver, spawn and loky's ``loky_init_main``, and every thread-pool test
against ``stalwart.ThreadPoolExecutor`` (the runner's ``thread`` mode). A test
may be listed here only for one of these reasons, after reading it:

* it reads the stdlib executor's private machinery (``_processes``,
  ``_executor_manager_thread``, ``_call_queue``, the stdlib's thread layout),
  which stalwart's own dispatcher does not have;
* it asserts stdlib behaviour that stalwart's contract deliberately replaces:
  a dead worker breaks the stdlib pool for every future, stalwart fails only
  that task (``WorkerCrashedError``, a ``BrokenProcessPool``) and keeps going;
  stalwart refuses an unpicklable call in ``submit()``, not later in
  ``result()``; a negative ``max_workers`` counts back from the CPU count;
  the default start method is loky's fork+exec, never the stdlib's; the
  default worker count counts usable CPUs (cgroup quota and affinity aware).

``stalwart.ThreadPoolExecutor`` keeps the stdlib's ``_threads``, ``_broken``,
``_shutdown`` and ``_max_workers`` readable, so the thread tests that read those
run as they are.

Anything else that fails is a stalwart bug: fix stalwart, do not list it here.
While a fix is under way, such a test may go in ``KNOWN_BUGS`` with what is
wrong: it still runs, and the conformance test fails as soon as it passes, so
the entry cannot outlive the bug.

The stdlib skips a few process-pool tests itself (``test_hang_gh83386``, which
hangs its own pool; fork-incompatible and Windows-only ones): they show as
skipped with the stdlib's reason and are not listed here. To see how a listed
test fails, run ``python -m tests.stdlib.run_cpython_tests --start-method spawn
--no-skips -k TEST_NAME``.

Keys are ``fnmatch`` patterns over unittest ids, which look like
``test.test_concurrent_futures[.test_process_pool].ProcessPoolSpawnProcessPoolExecutorTest
.test_saturation`` (stdlib classes), ``tests.stdlib.variants.ProcessPoolLokyInitMain...``
(the loky variants) or ``...test_thread_pool.ThreadPoolExecutorTest.test_saturation``
(thread mode); a pattern such as ``*ProcessPoolExecutorTest.test_saturation``
means "under every start method", and ``*.ThreadPool*`` patterns only ever match
thread-pool classes. Values are the reason, one line, shown as the skip message.
"""

from __future__ import annotations

import fnmatch

_INTERNALS = (
    "reads the stdlib executor's private {what}, which stalwart has no equivalent of"
)

SKIPS: dict[str, str] = {
    # -- executor.py / ProcessPoolExecutorTest -----------------------------------
    "*ProcessPoolExecutorTest.test_max_workers_negative": (
        "asserts max_workers=-1 raises; stalwart's contract: negative n means "
        "cpus + 1 + n (joblib: -1 = all CPUs), only 0 and below -cpus raise"
    ),
    "*ProcessPoolExecutorTest.test_killed_child": (
        "reads executor._processes to kill a worker, then asserts the stdlib's "
        "whole-pool breakage (submit() raises BrokenProcessPool); stalwart fails "
        "only the killed task and stays usable (contract 3)"
    ),
    "*ProcessPoolExecutorTest.test_saturation": (
        "reads executor._processes (the worker count), and submits a multiprocessing "
        "Semaphore's method, which stalwart refuses in submit() (contract 2; the "
        "stdlib fails those tasks later, and the test never reads them)"
    ),
    "*ProcessPoolForkProcessPoolExecutorTest.test_max_tasks_per_child": (
        "under fork, asserts the stdlib's refusal of fork + max_tasks_per_child, "
        "which stalwart supports (it replaces workers from its dispatcher under "
        "every start method)"
    ),
    "*ProcessPoolExecutorTest.test_max_tasks_per_child_defaults_to_spawn_context": (
        "reads executor._mp_context and asserts the stdlib's 'spawn' default; "
        "stalwart's default start method is loky's fork+exec for every configuration"
    ),
    "*ProcessPoolExecutorTest.test_python_finalization_error": (
        "makes the stdlib's second thread start (its queue feeder) fail; stalwart's "
        "parent starts one thread, so nothing fails and the map's own TypeError "
        "(mul((2, 3))) surfaces (under fork the mock leaks into the worker instead)"
    ),
    # -- test_shutdown.py / ProcessPoolShutdownTest --------------------------------
    "*ProcessPoolShutdownTest.test_processes_terminate": (
        "reads executor._processes, and submits a multiprocessing Semaphore, which "
        "stalwart refuses in submit() (contract 2; the stdlib fails those tasks "
        "later, and the test never reads them)"
    ),
    "*ProcessPoolShutdownTest.test_context_manager_shutdown": _INTERNALS.format(
        what="executor._processes"
    ),
    "*ProcessPoolShutdownTest.test_del_shutdown": _INTERNALS.format(
        what="_executor_manager_thread, _processes and _call_queue"
    ),
    "*ProcessPoolShutdownTest.test_shutdown_no_wait": _INTERNALS.format(
        what="_executor_manager_thread, _processes and _call_queue"
    ),
    # -- test_deadlock.py / ExecutorDeadlockTest -----------------------------------
    "*ExecutorDeadlockTest.test_error_at_task_pickle": (
        "expects PicklingError from result(); stalwart raises it from submit(), "
        "naming the culprit (contract 2), outside the test's assertRaises"
    ),
    "*ExecutorDeadlockTest.test_shutdown_deadlock_pickle": (
        "reads executor._executor_manager_thread, and expects PicklingError from "
        "result() where stalwart raises it from submit() (contract 2)"
    ),
    # -- test_thread_pool.py / ThreadPoolExecutorTest ------------------------------
    "*.ThreadPoolExecutorTest.test_max_workers_negative": (
        "asserts max_workers=-1 raises; stalwart's contract: negative n means "
        "cpus + 1 + n (joblib: -1 = all CPUs), only 0 and below -cpus raise"
    ),
    "*.ThreadPoolExecutorTest.test_default_workers": (
        "reads executor._max_workers and asserts min(32, os.cpu_count() + 4); "
        "stalwart counts usable CPUs (cgroup quota and affinity aware, as loky "
        "does), which differs wherever a quota applies"
    ),
}


HANGS: dict[str, str] = {}
"""Stalwart bugs that hang a stdlib test: skipped with the bug's description, so
that the rest of the suite still runs. Each entry is an open bug, not a policy."""

SKIPS.update(HANGS)

KNOWN_BUGS: dict[str, str] = {}
"""Stalwart bugs the stdlib suite found, not fixed yet: pattern -> what is wrong.
These tests run and are expected to fail (strictly: a pass is reported)."""


def matching_pattern(test_id: str, table: dict[str, str] = SKIPS) -> str | None:
    """The pattern of `table` that covers `test_id`, or None."""
    for pattern in table:
        if fnmatch.fnmatchcase(test_id, pattern):
            return pattern
    return None


def verdict(test_id: str, status: str) -> str | None:
    """What is wrong with a runner outcome, or None when it conforms.

    `status` is the runner's: passed, failed, error or skipped.
    """
    known = matching_pattern(test_id, KNOWN_BUGS)
    if status in ("failed", "error"):
        return None if known else status.upper()
    if status == "passed" and known:
        return f"PASSES, though KNOWN_BUGS lists it (remove {known!r})"
    return None
