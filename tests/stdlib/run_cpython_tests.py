"""Run CPython's executor tests against ``stalwart.ProcessPoolExecutor`` and
``stalwart.ThreadPoolExecutor``.

Usage (from the repository root, stalwart importable)::

    python -m tests.stdlib.run_cpython_tests --start-method spawn \\
        [--events run.jsonl] [--json summary.json] [-k SUBSTRING] [-v] [--list]
        [--no-skips]

One start method per run, in a fresh interpreter: the stdlib tests reap child
processes, stop the resource tracker and forkserver, and check for dangling
threads, so they must not share a process with pytest or with each other.
``--start-method thread`` is the pseudo start method that runs the stdlib's
thread-pool test classes against ``stalwart.ThreadPoolExecutor`` instead.

What it does:

1. binds ``concurrent.futures.ProcessPoolExecutor`` (or ``ThreadPoolExecutor``,
   in thread mode) and every stdlib test class's ``executor_type`` that names
   the stdlib executor to stalwart's;
2. redirects the scripts the stdlib runs in a child interpreter
   (``assert_python_ok('-c', ...)``) to ``from stalwart import ...``;
3. loads the process-pool test classes for the start method (fork, forkserver,
   spawn; or loky_init_main: the spawn classes rerun, see ``variants``), or the
   thread-pool classes for ``thread``, marks the tests in ``skips.SKIPS`` as
   skipped with their reason, and runs them;
4. streams one JSON line per event to ``--events`` (start / outcome / done), so a
   caller still knows which test hung if the run is killed, and writes a summary
   to ``--json``. A test still running after ``--per-test-timeout`` seconds makes
   faulthandler dump every thread's stack to stderr and end the run.

Exit status: 0 when every test passed or is in the skip list (and no
``skips.KNOWN_BUGS`` entry passed), 1 otherwise. ``--no-skips`` runs the skip
list's tests too, to see how each fails.
"""

from __future__ import annotations

import argparse
import faulthandler
import functools
import gc
import json
import os
import sys
import time
import unittest
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import ModuleType, TracebackType

    ExcInfo = (
        tuple[type[BaseException], BaseException, TracebackType]
        | tuple[None, None, None]
    )

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PER_TEST_TIMEOUT_S = 120.0
"""A test still running after this long is hung: the stdlib's slowest process-pool
test takes about 10 s, its own deadlock guard is ``support.LONG_TIMEOUT`` (300 s)."""

_PROCESS_POOL = "ProcessPoolExecutor"
_THREAD_POOL = "ThreadPoolExecutor"
_MP_CONTEXT_IMPORT = "from multiprocessing import get_context"
_ANY_CONTEXT_IMPORT = "from tests.stdlib.cpython import get_context"


# -- 1 and 2: make stalwart the class under test ------------------------------------


def pool_name(start_method: str) -> str:
    """The executor class a run tests: the thread pool for ``thread``."""
    from tests.stdlib import cpython

    return _THREAD_POOL if start_method == cpython.THREAD_MODE else _PROCESS_POOL


def install_stalwart(start_method: str) -> list[str]:
    """Rebind everything in the stdlib suite that names the stdlib pool under test.

    Returns what was rebound, for the record.
    """
    import concurrent.futures
    import concurrent.futures.process
    import concurrent.futures.thread

    import stalwart
    from tests.stdlib import cpython

    name = pool_name(start_method)
    stalwart_pool = getattr(stalwart, name)
    stdlib_module = (
        concurrent.futures.thread
        if name == _THREAD_POOL
        else concurrent.futures.process
    )
    stdlib_pool = getattr(stdlib_module, name)
    setattr(concurrent.futures, name, stalwart_pool)
    rebound = [f"concurrent.futures.{name}"]
    pools = (stdlib_pool, stalwart_pool)
    cpython.stdlib_modules()  # imports the suite, util.py and executor.py included
    suite_modules = [
        module
        for name, module in sorted(sys.modules.items())
        if name == cpython.STDLIB_PACKAGE
        or name.startswith(cpython.STDLIB_PACKAGE + ".")
    ]
    for module in suite_modules:
        for attribute, obj in list(vars(module).items()):
            if obj is stdlib_pool:
                setattr(module, attribute, stalwart_pool)
                rebound.append(f"{module.__name__}.{attribute}")
            elif isinstance(obj, type):
                for klass in obj.__mro__:
                    # Already stalwart's when the suite was imported after the
                    # line above; listed either way.
                    if klass.__dict__.get("executor_type") in pools:
                        klass.executor_type = stalwart_pool  # type: ignore[attr-defined]
                        rebound.append(f"{klass.__module__}.{klass.__qualname__}")
        if callable(getattr(module, "assert_python_ok", None)):
            module.assert_python_ok = _in_stalwart(module.assert_python_ok, name)  # type: ignore[attr-defined]
            rebound.append(f"{module.__name__}.assert_python_ok")
    return sorted(set(rebound))


def _in_stalwart(assert_python: Callable[..., Any], pool: str) -> Callable[..., Any]:
    """Wrap ``assert_python_ok`` so that a ``-c`` script uses stalwart's `pool`."""

    @functools.wraps(assert_python)
    def run(*args: str, **env_vars: Any) -> Any:
        args_list = list(args)
        for i in range(len(args_list) - 1):
            if args_list[i] == "-c":
                args_list[i + 1] = redirect_script(args_list[i + 1], pool)
        # The stdlib runs the child with -I, which ignores PYTHONPATH; stalwart and
        # tests.stdlib must be importable there as they are here.
        env_vars.setdefault("__isolated", False)
        env_vars["PYTHONPATH"] = child_pythonpath()
        return assert_python(*args_list, **env_vars)

    return run


def redirect_script(code: str, pool: str = _PROCESS_POOL) -> str:
    """Point a stdlib child script at stalwart's `pool`; refuse one that cannot be."""
    stalwart_import = f"from stalwart import {pool}"
    code = code.replace(f"from concurrent.futures import {pool}", stalwart_import)
    code = code.replace(_MP_CONTEXT_IMPORT, _ANY_CONTEXT_IMPORT)
    if pool in code and stalwart_import not in code:
        raise AssertionError(
            f"this stdlib child script names {pool} in a way the "
            f"runner cannot redirect to stalwart:\n{code}"
        )
    return code


def child_pythonpath() -> str:
    """PYTHONPATH under which a child imports stalwart and tests.stdlib as we do."""
    import stalwart

    stalwart_root = os.path.dirname(os.path.dirname(os.path.abspath(stalwart.__file__)))
    existing = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    entries = [REPO_ROOT, stalwart_root, *existing]
    return os.pathsep.join(dict.fromkeys(entry for entry in entries if entry))


# -- 3: load, mark skips --------------------------------------------------------------


def load_tests(start_method: str, keyword: str | None) -> unittest.TestSuite:
    """The process-pool tests for `start_method` (thread-pool tests for
    ``thread``), grouped by module."""
    from tests.stdlib import cpython

    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    if start_method == cpython.THREAD_MODE:
        for module in cpython.stdlib_modules():
            for cls in cpython.thread_pool_classes(module):
                suite.addTests(loader.loadTestsFromTestCase(cls))
    elif start_method in cpython.STDLIB_START_METHODS:
        modules: list[ModuleType] = cpython.stdlib_modules()
        for module in modules:
            for cls in cpython.process_pool_classes(module):
                if cpython.start_method_of(cls) == start_method:
                    suite.addTests(loader.loadTestsFromTestCase(cls))
            for class_name, methods in cpython.EXTRA_TESTS.items():
                extra = getattr(module, class_name, None)
                for method, method_start in methods.items():
                    if extra is not None and method_start == start_method:
                        suite.addTest(extra(method))
    else:
        from tests.stdlib import variants

        if start_method not in variants.VARIANTS:
            known = [
                *cpython.STDLIB_START_METHODS,
                *variants.VARIANTS,
                cpython.THREAD_MODE,
            ]
            raise SystemExit(f"unknown start method {start_method!r}; known: {known}")
        for cls in variants.variant_classes(start_method):
            suite.addTests(loader.loadTestsFromTestCase(cls))
    if keyword:
        suite = unittest.TestSuite(t for t in iter_tests(suite) if keyword in t.id())
    _check_class_under_test(suite, pool_name(start_method))
    return suite


def _check_class_under_test(suite: unittest.TestSuite, pool: str) -> None:
    """Refuse to run a mixin test that would still test the stdlib's pool."""
    import stalwart

    stalwart_pool = getattr(stalwart, pool)
    for test in iter_tests(suite):
        executor_type = getattr(test, "executor_type", stalwart_pool)
        if executor_type is not stalwart_pool:
            raise SystemExit(
                f"{test.id()} would test {executor_type!r}, not stalwart's pool: "
                "the stdlib suite changed shape; update install_stalwart()"
            )


def iter_tests(suite: unittest.TestSuite) -> Iterator[unittest.TestCase]:
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from iter_tests(item)
        else:
            yield item


def mark_skips(suite: unittest.TestSuite) -> set[str]:
    """Turn the tests in the skip list into skips (no setUp runs); return patterns used."""
    from tests.stdlib import skips

    used: set[str] = set()
    for test in iter_tests(suite):
        pattern = skips.matching_pattern(test.id())
        if pattern is not None:
            method = getattr(test, test._testMethodName)
            skipped = unittest.skip(skips.SKIPS[pattern])(method)
            setattr(test, test._testMethodName, skipped)
            used.add(pattern)
    return used


# -- 4: run and record ---------------------------------------------------------------


class Recorder(unittest.TextTestResult):
    """A TextTestResult that also streams each outcome as a JSON line."""

    def __init__(
        self,
        stream: Any,
        descriptions: bool,
        verbosity: int,
        *,
        events: TextIO | None = None,
        per_test_timeout: float = PER_TEST_TIMEOUT_S,
        **kwargs: Any,
    ) -> None:
        super().__init__(stream, descriptions, verbosity, **kwargs)
        self.events = events
        self.per_test_timeout = per_test_timeout
        self.outcomes: dict[str, dict[str, Any]] = {}
        self._started: dict[str, float] = {}

    def emit(self, event: dict[str, Any]) -> None:
        if self.events is not None:
            self.events.write(json.dumps(event) + "\n")
            self.events.flush()

    def record(self, test: Any, status: str, detail: str = "") -> None:
        """Keep `test`'s outcome: a TestCase, or unittest's stand-in for a fixture."""
        test_id = test.id()
        previous = self.outcomes.get(test_id)
        if previous is not None and previous["status"] in ("failed", "error"):
            if status in ("failed", "error"):  # a second subtest failure, or tearDown
                previous["detail"] += "\n" + detail
            return
        started = self._started.get(test_id, time.monotonic())
        self.outcomes[test_id] = {
            "id": test_id,
            "status": status,
            "detail": detail,
            "seconds": round(time.monotonic() - started, 3),
        }
        if not isinstance(test, unittest.TestCase):
            # A class or module fixture (unittest's _ErrorHolder): no stopTest follows.
            self.emit({"event": "outcome", **self.outcomes[test_id]})

    def rearm_watchdog(self) -> None:
        """Dump every stack and exit if the run makes no progress for a while.

        Re-armed at each test's start and end, so it bounds each test and also
        what runs between them (class and module fixtures and cleanups).
        """
        # fd 2, not sys.stderr: some stdlib tests swap sys.stderr for a StringIO.
        faulthandler.dump_traceback_later(self.per_test_timeout, exit=True, file=2)

    def startTestRun(self) -> None:
        super().startTestRun()
        self.rearm_watchdog()

    def stopTestRun(self) -> None:
        faulthandler.cancel_dump_traceback_later()
        super().stopTestRun()

    def startTest(self, test: unittest.TestCase) -> None:
        self._started[test.id()] = time.monotonic()
        self.emit({"event": "start", "id": test.id()})
        self.rearm_watchdog()
        super().startTest(test)

    def stopTest(self, test: unittest.TestCase) -> None:
        super().stopTest(test)
        self.rearm_watchdog()
        from test import support

        outcome = self.outcomes.setdefault(
            test.id(), {"id": test.id(), "status": "passed", "detail": "", "seconds": 0}
        )
        if support.environment_altered:  # dangling threads or unreaped children
            outcome["env_changed"] = True
            support.environment_altered = False
        self.emit({"event": "outcome", **outcome})
        if outcome["status"] in ("failed", "error"):
            # A failed test may never shut its executor down; collect it now (its
            # finalizer shuts it down) rather than let its dispatcher thread and
            # workers be blamed on the tests that follow.
            gc.collect()

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self.record(test, "passed")

    def addFailure(self, test: unittest.TestCase, err: ExcInfo) -> None:
        super().addFailure(test, err)
        self.record(test, "failed", self.failures[-1][1])

    def addError(self, test: unittest.TestCase, err: ExcInfo) -> None:
        super().addError(test, err)
        self.record(test, "error", self.errors[-1][1])

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self.record(test, "skipped", reason)

    def addSubTest(
        self,
        test: unittest.TestCase,
        subtest: unittest.TestCase,
        err: ExcInfo | None,
    ) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = err[0] is not None and issubclass(err[0], test.failureException)
            detail = (self.failures if failed else self.errors)[-1][1]
            self.record(test, "failed" if failed else "error", f"{subtest}: {detail}")

    def addExpectedFailure(self, test: unittest.TestCase, err: ExcInfo) -> None:
        super().addExpectedFailure(test, err)
        self.record(test, "passed", "expected failure")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self.record(test, "failed", "unexpected success")


def run(args: argparse.Namespace) -> int:
    from test import support

    support.verbose = args.verbose  # as regrtest: quiet unless asked
    rebound = install_stalwart(args.start_method)
    suite = load_tests(args.start_method, args.keyword)
    used_skips = set() if args.no_skips else mark_skips(suite)
    if args.list:
        for test in iter_tests(suite):
            method = getattr(test, test._testMethodName)
            why = getattr(method, "__unittest_skip_why__", "")
            print(test.id(), f"  [skip: {why}]" if why else "")
        return 0

    _start_process_wide_helpers(args.start_method)
    events = open(args.events, "w", encoding="utf-8") if args.events else None  # noqa: SIM115
    try:
        started = time.monotonic()
        runner = unittest.TextTestRunner(
            stream=sys.stderr,
            verbosity=2 if args.verbose else 1,
            # Buffering would hide what forked workers write to (a copy of) it.
            buffer=False,
            resultclass=functools.partial(
                Recorder, events=events, per_test_timeout=args.per_test_timeout
            ),
        )
        result = runner.run(suite)
        assert isinstance(result, Recorder)
        summary = {
            "python": sys.version,
            "start_method": args.start_method,
            "seconds": round(time.monotonic() - started, 1),
            "rebound": rebound,
            "unused_skips": sorted(_unused_skips(used_skips)),
            "outcomes": list(result.outcomes.values()),
        }
        if events is not None:
            done = {k: v for k, v in summary.items() if k != "outcomes"}
            events.write(json.dumps({"event": "done", **done}) + "\n")
    finally:
        if events is not None:
            events.close()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as file:
            json.dump(summary, file, indent=1)
    from tests.stdlib import skips

    bad = [
        (o, why)
        for o in result.outcomes.values()
        if (why := skips.verdict(o["id"], o["status"])) is not None
    ]
    counts: dict[str, int] = {}
    for outcome in result.outcomes.values():
        counts[outcome["status"]] = counts.get(outcome["status"], 0) + 1
    print(f"{args.start_method}: {counts} in {summary['seconds']} s")
    for outcome, why in bad:
        print(f"{why}: {outcome['id']}")
    return 1 if bad else 0


def _start_process_wide_helpers(start_method: str) -> None:
    """Start what stalwart (and multiprocessing) start once per process, on first
    use, and keep by design: stalwart's spawner thread (workers are started from
    one long-lived thread so the kernel's parent-death signal outlives the I/O
    threads) and the start method's own helpers. Otherwise the stdlib's
    per-test leak check would blame whichever test happened to start them."""
    import stalwart
    from tests.stdlib import cpython

    if start_method == cpython.THREAD_MODE:
        return

    with stalwart.ProcessPoolExecutor(1, mp_context=start_method) as ex:
        ex.submit(abs, -1).result()


def _unused_skips(used: set[str]) -> set[str]:
    from tests.stdlib import skips

    return set(skips.SKIPS) - used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start-method", required=True)
    parser.add_argument("--events", help="stream JSON lines here")
    parser.add_argument("--json", help="write the summary here")
    parser.add_argument("-k", "--keyword", help="only tests whose id contains this")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--list", action="store_true", help="list the tests, run none")
    parser.add_argument(
        "--no-skips",
        action="store_true",
        help="run the skip list's tests too (to see why they cannot apply)",
    )
    parser.add_argument(
        "--per-test-timeout", type=float, default=PER_TEST_TIMEOUT_S, metavar="S"
    )
    args = parser.parse_args(argv)
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    from tests.stdlib import cpython

    if not cpython.stdlib_suite_available():
        print("this CPython build ships no test.test_concurrent_futures")
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
