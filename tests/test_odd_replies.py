"""One odd reply from a worker fails one task, never the executor.

A reply may rebuild as something that is no exception, a task may fork and
return twice, and a large result may not fit in the parent's memory: each
fails (or is ignored for) the one call concerned, and the next task runs on
the same executor as if nothing happened.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import stalwart
from tests import _tasks, _trust_tasks
from tests._scripts import run_for_json
from tests._tasks import TIMEOUT

pytestmark = pytest.mark.timeout(120)


def test_an_exception_that_rebuilds_as_a_non_exception_fails_its_task_only() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        before = ex.submit(_tasks.pid).result(timeout=TIMEOUT)
        odd = ex.submit(_trust_tasks.raise_rebuilds_as_int)
        error = odd.exception(timeout=TIMEOUT)
        assert isinstance(error, Exception)
        assert "RebuildsAsInt" in str(error)
        assert ex.submit(pow, 2, 5).result(timeout=TIMEOUT) == 32
        # Not even its worker was replaced: the reply was odd, the worker fine.
        assert ex.submit(_tasks.pid).result(timeout=TIMEOUT) == before


def test_a_task_whose_fork_returns_twice_answers_once() -> None:
    """The forked child must not answer on its parent's pipe: the task's one
    answer is the parent's, and the worker goes on answering in step."""
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        worker = ex.submit(_tasks.pid).result(timeout=TIMEOUT)
        assert ex.submit(_trust_tasks.fork_and_return).result(timeout=TIMEOUT) == (
            "parent"
        )
        futures = [ex.submit(_tasks.echo, i) for i in range(50)]
        assert [f.result(timeout=TIMEOUT) for f in futures] == list(range(50))
        pids = {ex.submit(_tasks.pid).result(timeout=TIMEOUT) for _ in range(5)}
        assert pids == {worker}, "the worker was replaced: it was not in step"


RESULT_SIZE = 300_000_000
"""S: the large result's size in bytes."""

LARGE_RESULT_SCRIPT = """
    import json, os, resource, sys
    import stalwart
    from tests._trust_tasks import big_bytes

    SIZE = int(sys.argv[1])
    HEADROOM = float(sys.argv[2])  # times SIZE, on top of what is mapped now


    def report(**fields):
        print(json.dumps(fields), flush=True)


    def mapped_bytes():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmSize in /proc/self/status")


    if __name__ == "__main__":
        with stalwart.ProcessPoolExecutor(1) as ex:
            # The worker exists before the limit: only the parent is limited.
            report(event="tiny", value=ex.submit(abs, -1).result(timeout=60))
            soft, hard = resource.getrlimit(resource.RLIMIT_AS)
            limit = mapped_bytes() + int(HEADROOM * SIZE)
            if hard != resource.RLIM_INFINITY and limit > hard:
                report(event="refused", why=f"hard RLIMIT_AS {hard} < {limit}")
                sys.exit(0)
            try:
                resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
            except (ValueError, OSError) as exc:
                report(event="refused", why=repr(exc))
                sys.exit(0)
            try:
                value = ex.submit(big_bytes, SIZE).result(timeout=60)
            except BaseException as exc:
                cause = exc.__cause__
                report(
                    event="large",
                    ok=False,
                    types=[t.__name__ for t in type(exc).__mro__],
                    message=str(exc)[:2000],
                    cause=None if cause is None else type(cause).__name__,
                )
            else:
                intact = len(value) == SIZE and value[:1] == value[-1:] == b"x"
                del value
                report(event="large", ok=True, intact=intact)
            report(event="tiny", value=ex.submit(abs, -2).result(timeout=60))
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        report(event="shut down")
"""


def _skip_unless_room_for_a_large_result() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("limits the parent's address space (RLIMIT_AS) and reads /proc")
    with open("/proc/meminfo") as meminfo:
        fields = dict(line.split(":", 1) for line in meminfo)
    available = int(fields["MemAvailable"].split()[0]) * 1024
    if available < 2 << 30:
        pytest.skip(f"needs 2 GB of free memory, {available >> 20} MB available")


def _large_result_outcome(tmp_path: Path, headroom: float) -> dict[str, Any]:
    lines = run_for_json(
        tmp_path,
        LARGE_RESULT_SCRIPT,
        str(RESULT_SIZE),
        str(headroom),
        timeout=TIMEOUT * 3,
    )
    if any(line["event"] == "refused" for line in lines):
        pytest.skip(f"cannot lower RLIMIT_AS here: {lines[-1]['why']}")
    assert lines[0] == {"event": "tiny", "value": 1}
    assert lines[2:] == [{"event": "tiny", "value": 2}, {"event": "shut down"}], (
        "the executor did not carry on after the large result"
    )
    large: dict[str, Any] = lines[1]
    assert large["event"] == "large"
    return large


def test_a_result_too_large_for_the_parents_memory_fails_its_task_only(
    tmp_path: Path,
) -> None:
    """1.6 x S leaves room to read the frame (S) but not to unpickle it (S
    more): a MemoryError in the parent fails that task, then work goes on."""
    _skip_unless_room_for_a_large_result()
    large = _large_result_outcome(tmp_path, headroom=1.6)
    assert not large["ok"], "the result fitted: lower the headroom to test this"
    if "MemoryError" in large["types"]:
        return  # the MemoryError itself: as clear as it gets
    assert "BrokenProcessPool" in large["types"], large
    message = large["message"]
    assert "big_bytes(" in message, "the error should name the task"
    assert "executor is broken" not in message, message
    assert large["cause"] == "MemoryError" or "unpickled" in message, large


def test_a_large_result_costs_the_parent_less_than_three_copies(
    tmp_path: Path,
) -> None:
    """With 3 x S free the parent reads the frame and rebuilds the bytes: two
    copies, not the three a frame accumulated, then copied, then unpickled took."""
    _skip_unless_room_for_a_large_result()
    large = _large_result_outcome(tmp_path, headroom=3.0)
    assert large == {"event": "large", "ok": True, "intact": True}
