"""Behaviour that needs a fresh interpreter: a real __main__, Ctrl-C, parent death."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests._leaks import is_process_wide_helper
from tests._scripts import finish, script_env, start_script
from tests._tasks import TIMEOUT
from tests.conftest import wait_until


def _kill_and_expect_its_workers_to_exit(process: subprocess.Popen[str]) -> None:
    """SIGKILL a script that printed its workers' pids; they must exit in 3 s."""
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, process.stderr.read() if process.stderr else ""
    workers = [psutil.Process(int(pid)) for pid in line.split()]
    process.kill()
    process.wait(TIMEOUT)
    _, alive = psutil.wait_procs(workers, timeout=3)
    assert not alive, f"orphaned workers: {[p.pid for p in alive]}"
    process.communicate()


def test_initializer_setting_a_main_global_is_seen_by_main_tasks(
    tmp_path: Path,
) -> None:
    """The classic stdlib pattern that cloudpickle-by-value breaks (loky #206, #359)."""
    process = start_script(
        tmp_path,
        """
        import stalwart

        MODEL = None

        def init(name):
            global MODEL
            MODEL = name

        def predict(x):
            return f"{MODEL}:{x}"

        if __name__ == "__main__":
            with stalwart.ProcessPoolExecutor(2, initializer=init, initargs=("bert",)) as ex:
                print(sorted(ex.map(predict, range(3))))
                print(ex.submit(lambda: predict("lambda")).result())
        """,
    )
    out, err = finish(process)
    assert process.returncode == 0, err
    assert out.splitlines() == ["['bert:0', 'bert:1', 'bert:2']", "bert:lambda"]


SQUARES = """
import stalwart
def square(x):
    return x * x
if __name__ == "__main__":
    with stalwart.ProcessPoolExecutor(1, mp_context={mp_context!r}) as ex:
        print(list(ex.map(square, range(4))))
"""


def squares_from(tmp_path: Path, args: list[str], stdin: str | None = None) -> str:
    """Run ``python *args`` (the SQUARES program given by ``args`` or ``stdin``)
    in ``tmp_path``; what it printed, once it exited without error."""
    result = subprocess.run(
        [sys.executable, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=script_env(),
        timeout=TIMEOUT,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_main_functions_work_from_python_dash_c(tmp_path: Path) -> None:
    """No script file to re-import: __main__ functions travel by value instead."""
    code = SQUARES.format(mp_context=None)
    assert squares_from(tmp_path, ["-c", code]) == "[0, 1, 4, 9]"


@pytest.mark.parametrize("mp_context", [None, "template"])
def test_a_script_read_from_stdin_works(tmp_path: Path, mp_context: str | None) -> None:
    """``python - < script.py``: no file to re-import (``__file__`` is
    "<stdin>"), so __main__ functions travel by value."""
    code = SQUARES.format(mp_context=mp_context)
    assert squares_from(tmp_path, ["-"], stdin=code) == "[0, 1, 4, 9]"


def test_workers_exit_when_the_parent_is_sigkilled(tmp_path: Path) -> None:
    process = start_script(
        tmp_path,
        """
        import sys, threading
        import stalwart
        import os

        def pid():
            return os.getpid()

        if __name__ == "__main__":
            ex = stalwart.ProcessPoolExecutor(2)
            pids = {ex.submit(pid).result() for _ in range(20)}
            print(" ".join(map(str, pids)), flush=True)
            threading.Event().wait()  # until killed
        """,
    )
    _kill_and_expect_its_workers_to_exit(process)


def test_ctrl_c_inside_a_with_block_exits_promptly(tmp_path: Path) -> None:
    process = start_script(
        tmp_path,
        """
        import os, time
        import stalwart

        def slow(path):
            open(path, "w").close()   # tell the test this task is running
            time.sleep(600)           # user work that would take ten minutes

        if __name__ == "__main__":
            with stalwart.ProcessPoolExecutor(2) as ex:
                futures = [ex.submit(slow, f"started-{i}") for i in range(10)]
                print(os.getpid(), flush=True)
                futures[0].result()
        """,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == str(process.pid)
    wait_until(lambda: (tmp_path / "started-0").exists(), "the first task to start")
    workers = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGINT)
    _, err = finish(process)
    assert "KeyboardInterrupt" in err
    _, alive = psutil.wait_procs(
        [w for w in workers if not is_process_wide_helper(w)], timeout=3
    )
    assert not alive
    assert not (tmp_path / "started-9").exists(), (
        "queued work should have been cancelled"
    )


def test_interpreter_exit_completes_submitted_work(tmp_path: Path) -> None:
    """As in the stdlib: work submitted before exit runs, even without shutdown()."""
    process = start_script(
        tmp_path,
        """
        import stalwart

        def write(path):
            with open(path, "w") as f:
                f.write("done")

        if __name__ == "__main__":
            ex = stalwart.ProcessPoolExecutor(1)
            ex.submit(write, "out.txt")
            ex.shutdown(wait=False)
        """,
    )
    _, err = finish(process)
    assert process.returncode == 0, err
    assert (tmp_path / "out.txt").read_text() == "done"


@pytest.mark.parametrize("start_method", ["template", "loky_init_main"])
def test_an_executor_started_at_import_time_fails_clearly(
    tmp_path: Path, start_method: str
) -> None:
    """No `if __name__ == "__main__":` guard: workers re-import the script."""
    process = start_script(
        tmp_path,
        f"""
        import stalwart

        def echo(x):
            return x

        ex = stalwart.ProcessPoolExecutor(1, mp_context={start_method!r})
        try:
            print(ex.submit(echo, 1).result(timeout=60))
        except Exception as exc:
            print(type(exc).__name__, exc)
        ex.shutdown()
        """,
    )
    out, _ = finish(process)
    assert "WorkerCrashedError" in out
    assert "__name__ == '__main__'" in out
    if start_method == "template":  # stalwart's worker says why: said, not guessed
        assert "creates an executor at import time" in out


def test_a_main_script_that_fails_in_workers_is_named_with_its_error(
    tmp_path: Path,
) -> None:
    """The script imports in the parent but raises when a worker imports it:
    the error says what it raised, with the worker's traceback as its cause."""
    process = start_script(
        tmp_path,
        """
        import os
        import traceback
        import stalwart

        if os.environ.get("STARTED_BY") == "the test":
            raise ValueError("no config in workers")

        def echo(x):
            return x

        if __name__ == "__main__":
            os.environ["STARTED_BY"] = "the test"
            ex = stalwart.ProcessPoolExecutor(1, mp_context="template")
            try:
                ex.submit(echo, 1).result(timeout=60)
            except Exception as exc:
                print(type(exc).__name__, exc)
                print("cause:", "".join(traceback.format_exception(exc.__cause__)))
            ex.shutdown()
        """,
    )
    out, _ = finish(process)
    assert "WorkerCrashedError worker" in out
    assert "could not import the main script" in out
    assert "it raised ValueError: no config in workers" in out
    assert 'raise ValueError("no config in workers")' in out  # the traceback


def test_an_unguarded_script_runs_where_the_caller_is_forked(tmp_path: Path) -> None:
    """A single-threaded script needs no main guard, as under the stdlib's fork:
    its workers are forked from it, and nothing imports it again."""
    process = start_script(
        tmp_path,
        """
        import stalwart

        def echo(x):
            return x

        ex = stalwart.ProcessPoolExecutor(1)
        print(ex.submit(echo, 1).result(timeout=60))
        ex.shutdown()
        """,
    )
    out, err = finish(process, check=True)
    assert out.split() == ["1"], err


def test_ctrl_c_while_exit_waits_for_work_exits_promptly(tmp_path: Path) -> None:
    """shutdown(wait=False), script ends, exit waits for the work: Ctrl-C ends that."""
    process = start_script(
        tmp_path,
        """
        import time
        import stalwart

        def slow(path):
            open(path, "w").close()
            time.sleep(600)

        if __name__ == "__main__":
            ex = stalwart.ProcessPoolExecutor(2)
            for i in range(4):
                ex.submit(slow, f"started-{i}")
            ex.shutdown(wait=False)
        """,
    )
    wait_until(lambda: (tmp_path / "started-0").exists(), "the first task to start")
    workers = [
        w
        for w in psutil.Process(process.pid).children(recursive=True)
        if not is_process_wide_helper(w)
    ]
    process.send_signal(signal.SIGINT)
    finish(process)
    _, alive = psutil.wait_procs(workers, timeout=3)
    assert not alive, f"workers left running: {[p.pid for p in alive]}"
    assert not (tmp_path / "started-3").exists(), "queued work should be cancelled"


def test_shutdown_without_wait_then_exit_ends_overdue_tasks(tmp_path: Path) -> None:
    """Exit waits for submitted work, and task_timeout bounds that wait."""
    process = start_script(
        tmp_path,
        """
        import time
        import stalwart

        def slow():
            time.sleep(600)

        if __name__ == "__main__":
            ex = stalwart.ProcessPoolExecutor(2, task_timeout=0.5)
            futures = [ex.submit(slow) for _ in range(3)]
            ex.shutdown(wait=False)
            futures[0].add_done_callback(
                lambda f: print(type(f.exception()).__name__, flush=True)
            )
        """,
    )
    out, err = finish(process)
    assert process.returncode == 0, err
    assert out.strip() == "TaskTimeoutError"


def test_parked_workers_exit_with_the_interpreter(tmp_path: Path) -> None:
    """Warm workers, parked or held by get_reusable_executor, end at exit, fast."""
    process = start_script(
        tmp_path,
        """
        import os
        import stalwart

        def pid():
            return os.getpid()

        def init():
            return "loaded"

        def note_clean_exit():
            # Runs only when a worker ends normally (told to stop), not when it
            # is killed or exits because its parent died.
            from multiprocessing import util
            util.Finalize(None, open, args=(f"clean-exit-{os.getpid()}", "w"), exitpriority=1)

        if __name__ == "__main__":
            with stalwart.ProcessPoolExecutor(
                2, reuse=True, idle_timeout=600, initializer=note_clean_exit
            ) as ex:
                parked = {ex.submit(pid).result() for _ in range(20)}
            warm = stalwart.get_reusable_executor(2, initializer=init, idle_timeout=600)
            held = {warm.submit(pid).result() for _ in range(20)}
            with stalwart.ThreadPoolExecutor(2, reuse=True, idle_timeout=600) as threads:
                threads.submit(pid).result()
            print(" ".join(map(str, parked)))
            print(" ".join(map(str, held)), flush=True)
        """,
    )
    out, err = finish(process)
    assert process.returncode == 0, err
    parked_line, _ = out.splitlines()
    workers = [psutil.Process(int(p)) for p in out.split() if psutil.pid_exists(int(p))]
    _, alive = psutil.wait_procs(workers, timeout=3)
    assert not alive, f"workers outlived the interpreter: {[p.pid for p in alive]}"
    assert "Traceback" not in err, err
    clean_exits = {path.name for path in tmp_path.glob("clean-exit-*")}
    parked_exits = {f"clean-exit-{pid}" for pid in parked_line.split()}
    assert parked_exits <= clean_exits, "parked workers were not stopped, only orphaned"


def test_parked_workers_exit_when_the_parent_is_sigkilled(tmp_path: Path) -> None:
    process = start_script(
        tmp_path,
        """
        import os, threading
        import stalwart

        def pid():
            return os.getpid()

        if __name__ == "__main__":
            with stalwart.ProcessPoolExecutor(2, reuse=True, idle_timeout=600) as ex:
                pids = {ex.submit(pid).result() for _ in range(20)}
            print(" ".join(map(str, pids)), flush=True)
            threading.Event().wait()  # until killed
        """,
    )
    _kill_and_expect_its_workers_to_exit(process)


def test_a_script_that_ends_while_the_template_starts_prints_no_traceback(
    tmp_path: Path,
) -> None:
    """A second executor created while the first one's I/O thread runs starts
    the template; the script ends before the template is ready: the template
    just leaves, without a BrokenPipeError on stderr."""
    code = """
        import stalwart

        def double(x):
            return 2 * x

        if __name__ == "__main__":
            first = stalwart.get_reusable_executor(max_workers=1)
            assert list(first.map(double, range(3))) == [0, 2, 4]
            other = stalwart.get_reusable_executor(max_workers=1, task_timeout=30)
            other.shutdown()
            first.shutdown(kill_workers=True)
        """
    _, err = finish(start_script(tmp_path, code), check=True)
    assert "Traceback" not in err, err


def test_an_unguarded_dask_script_is_told_about_the_guard_briefly(
    tmp_path: Path,
) -> None:
    """dask's local cluster starts its workers with spawn, which imports the
    script: a clear error instead of a cluster per worker and 200 lines of
    dask's logs."""
    pytest.importorskip("distributed")
    code = """
        import stalwart

        def square(x):
            return x * x

        ex = stalwart.DaskExecutor(max_workers=1)
        print(ex.submit(square, 3).result(timeout=60))
        ex.shutdown()
        """
    process = start_script(tmp_path, code)
    _, err = finish(process)
    assert process.returncode != 0
    assert "could not start its workers" in err
    assert "if __name__ == '__main__':" in err
    assert "was importing the main module" in err  # the worker's own words
    assert len(err.splitlines()) < 80, err
