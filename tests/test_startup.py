"""Start-up at fork speed without fork's hazards (docs/guides/how-it-works.md: "How workers start").

Each test runs a script of its own: the template process is one per parent, and
whether the caller may be forked depends on the threads the parent runs.
"""

from __future__ import annotations

import os
import signal
import socket
from typing import TYPE_CHECKING

import psutil
import pytest

from stalwart import _forking, _template_server
from tests._scripts import finish, run_for_json, start_script
from tests.conftest import wait_until

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/task"), reason="the fork-safety proof reads /proc"
)

A_THREAD_RUNS = (
    "import threading; "
    "threading.Thread(target=threading.Event().wait, daemon=True).start()"
)
"""A line for a script's main block: the caller may not be forked any more."""

DEBUG_LOG = (
    "import logging; logging.basicConfig(level=logging.DEBUG, format='LOG %(message)s')"
)
"""A line for a script's main block: stalwart says which way workers start."""


def test_workers_are_forked_from_a_single_threaded_caller(tmp_path: Path) -> None:
    """The fast path: like the stdlib's fork, workers see the parent's memory."""
    out, err = finish(
        start_script(
            tmp_path,
            f"""
            import stalwart
            STATE = "as imported"

            def state(_=None):
                return STATE

            if __name__ == "__main__":
                {DEBUG_LOG}
                STATE = "set at run time"
                with stalwart.ProcessPoolExecutor(2) as ex:
                    print(sorted(set(ex.map(state, range(8)))))
            """,
        ),
        check=True,
    )
    assert out.split("\n")[0] == "['set at run time']"
    assert err.count("forked from the caller") == 2, err


def test_with_a_thread_running_workers_come_from_the_template(tmp_path: Path) -> None:
    """Runtime state set after import is not seen (spawn's semantics), and a
    lock that a parent thread holds is not inherited held."""
    code = f"""
        import threading
        import stalwart
        STATE = "as imported"
        LOCK = threading.Lock()

        def state_and_lock(_=None):
            got = LOCK.acquire(timeout=10)  # forked while held: never free
            if got:
                LOCK.release()
            return STATE, got

        if __name__ == "__main__":
            {DEBUG_LOG}
            STATE = "set at run time"
            held, release = threading.Event(), threading.Event()

            def hold():
                with LOCK:
                    held.set()
                    release.wait()

            holder = threading.Thread(target=hold)
            holder.start()
            held.wait()
            with stalwart.ProcessPoolExecutor(2) as ex:
                print(sorted(set(ex.map(state_and_lock, range(8)))))
            release.set()
            holder.join()
        """
    out, err = finish(start_script(tmp_path, code), check=True)
    assert out.split("\n")[0] == "[('as imported', True)]"
    assert "not forking the caller: 3 threads are running" in err  # with the
    # spawner thread, which started the template when the executor was made
    assert err.count("forked from the template") == 2, err


def test_changes_after_the_template_started_reach_new_workers(tmp_path: Path) -> None:
    """sys.path, the working directory and the environment as of each start;
    a module imported after the template started is imported on demand."""
    (tmp_path / "later").mkdir()
    (tmp_path / "later" / "late_module.py").write_text(
        "def where():\n"
        "    import os\n"
        "    return os.getcwd(), os.environ.get('STALWART_TEST_VAR')\n"
    )
    results = run_for_json(
        tmp_path,
        f"""
        import json, os, sys
        import stalwart

        if __name__ == "__main__":
            with stalwart.ProcessPoolExecutor(1, mp_context="template") as ex:
                ex.submit(abs, -1).result()  # the template is up now
            sys.path.append({str(tmp_path / "later")!r})
            os.chdir({str(tmp_path / "later")!r})
            os.environ["STALWART_TEST_VAR"] = "set later"
            import late_module
            with stalwart.ProcessPoolExecutor(1, mp_context="template") as ex:
                cwd, var = ex.submit(late_module.where).result()
            print(json.dumps({{"cwd": cwd, "var": var}}))
        """,
    )
    assert results == [{"cwd": str(tmp_path / "later"), "var": "set later"}]


def test_the_template_killed_the_next_worker_starts_anyway(tmp_path: Path) -> None:
    go = tmp_path / "go"
    os.mkfifo(go)
    process = start_script(
        tmp_path,
        f"""
        import os
        import stalwart

        if __name__ == "__main__":
            with stalwart.ProcessPoolExecutor(1, mp_context="template") as ex:
                print(ex.submit(os.getppid).result(), flush=True)
            with open({str(go)!r}) as fifo:  # the test kills the template meanwhile
                fifo.read()
            with stalwart.ProcessPoolExecutor(1, mp_context="template") as ex:
                print(ex.submit(os.getppid).result(), flush=True)
        """,
    )
    assert process.stdout is not None
    template = psutil.Process(int(process.stdout.readline()))
    assert template.name() == "stalwart-tmpl"
    template.kill()
    wait_until(lambda: not _still_running(template), "the template to die")
    with open(go, "w") as fifo:
        fifo.write("go")
    out, _ = finish(process, check=True)
    second = int(out.split()[0])
    assert second != template.pid, "a new template forks the new worker"


def test_parent_sigkill_ends_the_template_and_its_workers(tmp_path: Path) -> None:
    process = start_script(
        tmp_path,
        f"""
        import os, time
        import stalwart

        def pids():
            return os.getppid(), os.getpid()

        if __name__ == "__main__":
            {A_THREAD_RUNS}
            ex = stalwart.ProcessPoolExecutor(2)
            futures = [ex.submit(pids) for _ in range(8)]
            for template, worker in {{f.result() for f in futures}}:
                print(template, worker, flush=True)
            time.sleep(600)  # killed by the test
        """,
    )
    assert process.stdout is not None
    line = process.stdout.readline().split()
    pids = {int(pid) for pid in line}
    assert len(pids) == 2, "one template, at least one worker"
    survivors = [psutil.Process(pid) for pid in pids]
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    wait_until(
        lambda: not [p for p in survivors if _still_running(p)],
        "the template and its workers to die with their parent",
        1.0,
    )
    finish(process)


def _still_running(process: psutil.Process) -> bool:
    """Alive and not a zombie (a dead orphan waits for init to reap it)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_module_that_starts_a_thread_sends_workers_to_fresh_interpreters(
    tmp_path: Path,
) -> None:
    """The fallback: a template left with a thread cannot fork safely."""
    (tmp_path / "threaded_at_import.py").write_text(
        "import threading\n"
        "_stop = threading.Event()\n"
        "threading.Thread(target=_stop.wait, daemon=True).start()\n"
    )
    out, err = finish(
        start_script(
            tmp_path,
            f"""
            import os
            import stalwart
            import threaded_at_import

            if __name__ == "__main__":
                {DEBUG_LOG}
                with stalwart.ProcessPoolExecutor(2) as ex:
                    print(sum(ex.map(abs, range(-5, 0))))
            """,
        ),
        check=True,
    )
    assert out.split("\n")[0] == "15"
    assert "after preloading, 2 threads are running" in err, err
    assert "a fresh interpreter" in err


def test_a_main_script_that_imports_numpy_still_gets_workers_from_the_template(
    tmp_path: Path,
) -> None:
    """NumPy's OpenBLAS starts its thread pool at import: the caller cannot be
    forked, and a template importing the script the same way would be unfit.
    The template imports with BLAS single-threaded, so it forks the workers."""
    pytest.importorskip("numpy")
    out, err = finish(
        start_script(
            tmp_path,
            f"""
            import os
            import numpy
            import stalwart

            if __name__ == "__main__":
                print(len(os.listdir("/proc/self/task")))
                {DEBUG_LOG}
                with stalwart.ProcessPoolExecutor(2) as ex:
                    print(sum(ex.map(abs, range(-5, 0))))
            """,
            # What a dask cluster earlier in this session may have set here.
            unset=_template_server.BLAS_THREAD_VARIABLES,
        ),
        check=True,
    )
    threads, total = out.split("\n")[:2]
    if threads == "1":
        pytest.skip("NumPy started no thread on this machine (one CPU?)")
    assert total == "15"
    assert "forked from the template" in err, err
    assert "a fresh interpreter" not in err, err


def test_the_initializer_global_pattern_works_from_the_template(
    tmp_path: Path,
) -> None:
    """DESIGN contract 1, with both functions in __main__, on the template path."""
    out, _ = finish(
        start_script(
            tmp_path,
            """
            import stalwart
            CONFIG = None

            def init(value):
                global CONFIG
                CONFIG = value

            def read(_):
                return CONFIG

            if __name__ == "__main__":
                with stalwart.ProcessPoolExecutor(
                    2, mp_context="template", initializer=init, initargs=("set",),
                    max_tasks_per_child=2,
                ) as ex:
                    print(sorted(set(ex.map(read, range(10)))))
            """,
        ),
        check=True,
    )
    assert out.split("\n")[0] == "['set']"


def test_an_explicit_start_method_is_honoured(tmp_path: Path) -> None:
    results = run_for_json(
        tmp_path,
        """
        import json, multiprocessing, os
        import stalwart

        if __name__ == "__main__":
            for method in ("spawn", "forkserver", "loky", "fork", "template"):
                with stalwart.ProcessPoolExecutor(1, mp_context=method) as ex:
                    ex.submit(abs, -1).result()
                    print(json.dumps(ex._mp_context.get_start_method()))
        """,
    )
    assert results == ["spawn", "forkserver", "loky", "fork", "template"]


# -- the proof itself, against a fake /proc (pure policy) ------------------------------


def fake_proc(tmp_path: Path, threads: int, fds: dict[str, str]) -> str:
    proc = tmp_path / "proc"
    (proc / "task").mkdir(parents=True)
    (proc / "fd").mkdir()
    for tid in range(threads):
        (proc / "task" / str(1000 + tid)).mkdir()
    for name, target in fds.items():
        os.symlink(target, proc / "fd" / name)
    return str(proc)


@pytest.mark.parametrize(
    ("threads", "fds", "hazard"),
    [
        (1, {"0": "/dev/null", "1": "pipe:[1]", "2": "/tmp/log"}, None),
        (3, {}, "3 threads are running"),
        (1, {"7": "/dev/nvidiactl"}, "accelerator runtime holds /dev/nvidiactl"),
        (1, {"7": "/dev/kfd"}, "accelerator runtime holds /dev/kfd"),
        (1, {"7": "/dev/dri/renderD128"}, "accelerator runtime"),
        (1, {"9": "socket:[4242]"}, "a connection is open (fd 9)"),
        (1, {"8": "socket:[4243]"}, None),  # an anonymous pair: plumbing
    ],
)
def test_fork_hazard_reads_threads_devices_and_sockets(
    tmp_path: Path, threads: int, fds: dict[str, str], hazard: str | None
) -> None:
    found = _forking.fork_hazard(
        proc=fake_proc(tmp_path, threads, fds), is_connection=lambda fd: fd == 9
    )
    if hazard is None:
        assert found is None
    else:
        assert found is not None
        assert hazard in found


def test_fork_hazard_ignores_the_callers_own_descriptors(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, 1, {"5": "socket:[1]"})
    connected = _forking.fork_hazard(proc=proc, is_connection=lambda fd: True)
    assert connected is not None
    ignored = _forking.fork_hazard({5}, proc=proc, is_connection=lambda fd: True)
    assert ignored is None


def test_which_sockets_are_connections() -> None:
    """A socket pair is plumbing; a TCP socket, or a named Unix one, is not."""
    left, right = socket.socketpair()
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    named = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    named.bind("\0stalwart-test-" + str(os.getpid()))  # the abstract namespace
    with left, right, tcp, named:
        assert not _forking.socket_is_connection(left.fileno())
        assert _forking.socket_is_connection(tcp.fileno())
        assert _forking.socket_is_connection(named.fileno())


def test_a_forked_worker_is_a_child_of_the_caller(tmp_path: Path) -> None:
    results = run_for_json(
        tmp_path,
        """
        import json, os
        import stalwart

        if __name__ == "__main__":
            with stalwart.ProcessPoolExecutor(1) as ex:
                print(json.dumps(ex.submit(os.getppid).result() == os.getpid()))
        """,
    )
    assert results == [True]


def test_no_worker_or_template_is_left_after_a_script_ends(tmp_path: Path) -> None:
    process = start_script(
        tmp_path,
        f"""
        import os
        import stalwart

        if __name__ == "__main__":
            {A_THREAD_RUNS}
            ex = stalwart.ProcessPoolExecutor(2)
            print(*{{ex.submit(os.getppid).result() for _ in range(4)}}, flush=True)
        """,
    )
    out, _ = finish(process, check=True)
    (template,) = {int(pid) for pid in out.split()}
    wait_until(lambda: not psutil.pid_exists(template), "the template to exit", 5)
