"""An executor inherited through a raw ``os.fork()`` is inert in the child.

The child has a copy of the executor object but none of its threads, and the
workers are the parent's: in the child, ``shutdown()`` and leaving a ``with``
block return at once, ``submit()`` refuses with a RuntimeError that names the
fork, and nothing the child does (its exit included) touches the parent's pool.

The fork happens in a script of its own, never in the pytest process: a child
of pytest would inherit pytest's state (and its exit would run pytest's hooks).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests._scripts import run_for_json
from tests._tasks import TIMEOUT

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()"),
]


CHILD_FAILURES = {
    1: "submit() in the child did not raise RuntimeError",
    2: "submit()'s RuntimeError in the child does not mention the fork",
    4: "shutdown() in the child raised",
    8: "shutdown() in the child did not return at once",
    16: "leaving the with block in the child did not return at once",
    32: "the child failed in an unexpected way",
}
"""The child's exit status is a sum of these bits (0: all as it should be)."""

SCRIPT = """
    import json, os, signal, sys, time, traceback
    import stalwart

    AT_ONCE_S = 5.0  # microseconds expected; a hang is what this catches
    CHILD_ALARM_S = 20  # backstop: a child hung in shutdown() dies of SIGALRM
    WAIT_FOR_CHILD_S = 40


    def report(**fields):
        print(json.dumps(fields), flush=True)


    def child_checks(ex):
        failures = 0
        try:
            ex.submit(abs, -1)
        except RuntimeError as exc:
            if "fork" not in str(exc):
                failures |= 2
        else:
            failures |= 1
        started = time.monotonic()
        try:
            ex.shutdown()
            ex.shutdown(wait=True, cancel_futures=True)
        except BaseException:
            traceback.print_exc()
            failures |= 4
        if time.monotonic() - started > AT_ONCE_S:
            failures |= 8
        return failures


    def wait_for_child(pid):
        deadline = time.monotonic() + WAIT_FOR_CHILD_S
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return None


    if __name__ == "__main__":
        in_child = False
        with stalwart.ProcessPoolExecutor(2) as ex:
            assert sorted(ex.map(abs, range(-40, 0))) == list(range(1, 41))
            before = sorted(ex._processes)
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                in_child = True
                signal.alarm(CHILD_ALARM_S)
                try:
                    failures = child_checks(ex)
                except BaseException:
                    traceback.print_exc()
                    failures = 32
                leaving = time.monotonic()
            else:
                status = wait_for_child(pid)
                report(
                    event="child",
                    hung=status is None,
                    exited=status is not None and os.WIFEXITED(status),
                    code=None if status is None else os.waitstatus_to_exitcode(status),
                )
                after = ex._processes
                report(
                    event="parent",
                    same_workers=sorted(after) == before,
                    workers=len(after),
                    alive=all(p.is_alive() for p in after.values()),
                    results=list(ex.map(abs, range(-20, 0))),
                    last=ex.submit(pow, 2, 10).result(timeout=60),
                )
        if in_child:
            if time.monotonic() - leaving > AT_ONCE_S:
                failures |= 16
            sys.exit(failures)  # a normal exit: the child's exit hooks run too
        report(event="shut down")
"""


def test_an_inherited_executor_is_inert_in_a_forked_child(tmp_path: Path) -> None:
    child, parent, end = run_for_json(tmp_path, SCRIPT, timeout=TIMEOUT * 3)
    assert child["event"] == "child"
    assert not child["hung"], "the child hung (SIGALRM did not even end it)"
    assert child["exited"], f"the child died of signal {-child['code']} (hung?)"
    failed = [why for bit, why in CHILD_FAILURES.items() if child["code"] & bit]
    assert not failed, failed
    assert parent["workers"] >= 1
    assert parent == {
        "event": "parent",
        "same_workers": True,
        "workers": parent["workers"],
        "alive": True,
        "results": list(range(20, 0, -1)),
        "last": 1024,
    }, "the parent's executor was disturbed by its forked child"
    assert end == {"event": "shut down"}
