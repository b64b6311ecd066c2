"""CPython's own ``test.test_concurrent_futures``, run against stalwart (contract 1).

Each start method runs in its own interpreter (``tests/stdlib/run_cpython_tests.py``),
all four at once, and a fifth runs the thread-pool tests against
``stalwart.ThreadPoolExecutor``: the suite mostly waits on sleeps and worker
start-up, so this takes about a minute and a half instead of five. A stdlib test fails here unless it passes
or ``tests/stdlib/skips.py`` says why it cannot apply to stalwart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.stdlib import cpython, skips

REPO_ROOT = Path(__file__).resolve().parent.parent
START_METHODS = ("fork", "forkserver", "spawn", "loky_init_main", cpython.THREAD_MODE)
"""The process pool's start methods, and ``thread``: the thread-pool tests."""
RUN_TIMEOUT_S = 420.0
"""Bound on one start method's run (about a minute on 2 cores, all four at once).
A hung test is cut at 120 s by the runner's own watchdog, which dumps every stack.
The thread run takes about a minute (the same sleeps, no worker start-up)."""
DETAIL_LINES = 40

pytestmark = [pytest.mark.slow, pytest.mark.timeout(RUN_TIMEOUT_S + 120)]


@dataclass
class Run:
    """What one runner subprocess reported."""

    start_method: str
    returncode: int | None = None
    timed_out: bool = False
    events: list[dict[str, Any]] = field(default_factory=list)
    stderr: str = ""

    @property
    def outcomes(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == "outcome"]

    @property
    def done(self) -> dict[str, Any] | None:
        return next((e for e in self.events if e["event"] == "done"), None)

    def unfinished(self) -> list[str]:
        """Tests that started and never reported an outcome (hung or crashed)."""
        finished = {o["id"] for o in self.outcomes}
        return [
            e["id"]
            for e in self.events
            if e["event"] == "start" and e["id"] not in finished
        ]


def _runner_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO_ROOT), *env.get("PYTHONPATH", "").split(os.pathsep)]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    env.setdefault("PYTHONFAULTHANDLER", "1")
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Run every start method's stdlib tests at once, each in its own interpreter."""
    if not cpython.stdlib_suite_available():
        pytest.skip("this CPython build ships no test.test_concurrent_futures")
    out = tmp_path_factory.mktemp("stdlib")
    env = _runner_env()
    procs: dict[str, tuple[subprocess.Popen[bytes], Path, Path]] = {}
    for method in START_METHODS:
        events, stderr = out / f"{method}.jsonl", out / f"{method}.stderr"
        with stderr.open("wb") as err:
            command = [sys.executable, "-m", "tests.stdlib.run_cpython_tests"]
            command += ["--start-method", method, "--events", str(events)]
            proc = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,  # one process group: killable with its workers
            )
        procs[method] = (proc, events, stderr)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    results: dict[str, Run] = {}
    try:
        for method, (proc, events, stderr) in procs.items():
            run = results[method] = Run(method)
            try:
                run.returncode = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                run.timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                run.returncode = proc.wait()
            if events.exists():
                lines = events.read_text(encoding="utf-8").splitlines()
                run.events = [json.loads(line) for line in lines if line.strip()]
            run.stderr = stderr.read_text(encoding="utf-8", errors="replace")
    finally:
        for proc, _, _ in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return results


def _tail(text: str, lines: int = DETAIL_LINES) -> str:
    kept = text.rstrip().splitlines()
    cut = len(kept) - lines
    return "\n".join(([f"[... {cut} lines cut]"] if cut > 0 else []) + kept[-lines:])


def _report(run: Run) -> str | None:
    """Why this run does not conform, readable in a pytest failure; None if it does."""
    bad = [
        (outcome, why)
        for outcome in run.outcomes
        if (why := skips.verdict(outcome["id"], outcome["status"])) is not None
    ]
    env_changed = [o["id"] for o in run.outcomes if o.get("env_changed")]
    problems: list[str] = []
    if run.done is None:
        if run.timed_out:
            how = f"timed out after {RUN_TIMEOUT_S:.0f} s"
        else:
            how = f"ended with exit code {run.returncode} before finishing"
        hung = run.unfinished()
        problems.append(
            f"the runner {how}; test(s) that never finished: {hung or 'none'}.\n"
            f"runner stderr (faulthandler dumps every thread when a test hangs):\n"
            f"{_tail(run.stderr, 80)}"
        )
    for outcome, why in bad:
        problems.append(f"{why}: {outcome['id']}\n{_tail(outcome['detail'])}")
    if env_changed:
        problems.append(
            "left threads or child processes behind (the stdlib's "
            "threading_cleanup/reap_children; right after a failing test this is "
            "usually that test's executor, never shut down):\n  "
            + "\n  ".join(env_changed)
        )
    if not problems:
        return None
    counts: dict[str, int] = {}
    for outcome in run.outcomes:
        counts[outcome["status"]] = counts.get(outcome["status"], 0) + 1
    pool = (
        "ThreadPoolExecutor"
        if run.start_method == cpython.THREAD_MODE
        else "ProcessPoolExecutor"
    )
    header = (
        f"CPython's test_concurrent_futures under {run.start_method!r} against "
        f"stalwart.{pool}: {counts}. Each failure below is a stalwart "
        "bug unless tests/stdlib/skips.py's policy covers it. Rerun one with: "
        f"python -m tests.stdlib.run_cpython_tests --start-method {run.start_method} "
        "-v -k TEST_NAME"
    )
    return "\n\n".join([header, *problems])


@pytest.mark.parametrize("start_method", START_METHODS)
def test_stdlib_process_pool_tests_pass(
    runs: dict[str, Run], start_method: str
) -> None:
    """Every stdlib process-pool test passes, or is skipped with a documented reason
    (for ``thread``: every thread-pool test, against stalwart's thread pool)."""
    run = runs[start_method]
    problems = _report(run)
    if problems:
        pytest.fail(problems, pytrace=False)
    assert run.outcomes, "the runner ran no test"
    assert any(o["status"] == "passed" for o in run.outcomes)
