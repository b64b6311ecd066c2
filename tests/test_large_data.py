"""Large data at memory speed: big arrays cross in shared memory, as snapshots.

What a user sees: a task gets its arguments as they were at ``submit()`` (never
stale data from an earlier call, never changes made after), writable and its
own; big results come back whole and writable; ``stalwart.shared()`` sends one
read-only copy to many tasks; and none of it leaves memory files behind, in the
parent, in the workers, or on disk, however the pool ends.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import gc
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil
import pytest

import stalwart
from tests import _large_tasks as tasks
from tests import _tasks
from tests._leaks import open_fds
from tests._scripts import finish, run_for_json, start_script
from tests._tasks import TIMEOUT
from tests.conftest import wait_until

np = pytest.importorskip("numpy")

pytestmark = pytest.mark.timeout(120)

MiB = tasks.MiB
BIG = 2**18  # float64 elements: 2 MiB, above the out-of-band threshold

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc and memfd names (Linux)"
)


def big_zeros() -> Any:
    return np.zeros(BIG)


# -- what leaks would look like -------------------------------------------------


def stalwart_memfds() -> collections.Counter[str]:
    """This process's descriptors of stalwart's memory files, by link name."""
    return collections.Counter(
        link for link in open_fds().values() if "memfd:stalwart" in link
    )


def stalwart_files() -> set[str]:
    """Entries named for stalwart in /dev/shm and the temporary directory: where
    a named shared-memory file or a temporary file would be left behind."""
    found = set()
    for folder in ("/dev/shm", tempfile.gettempdir()):
        if os.path.isdir(folder):
            found.update(
                os.path.join(folder, name)
                for name in os.listdir(folder)
                if "stalwart" in name.lower()
            )
    return found


def memfds_of(pid: int) -> list[str]:
    """stalwart memory files a process holds open or mapped (none if it is gone)."""
    held = []
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:  # closed meanwhile
                continue
            if "memfd:stalwart" in link:
                held.append(link)
        with open(f"/proc/{pid}/maps") as maps:
            held.extend(line for line in maps if "memfd:stalwart" in line)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return held


def gone_or_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def no_memory_files_left() -> Any:
    """Fail the test if it leaves this process holding a stalwart memory file it
    did not hold before, or a stalwart file in /dev/shm or the temp directory."""
    if sys.platform.startswith("linux"):
        # Warm the process-wide machinery (template, spawner) outside the count.
        with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
            ex.submit(tasks.read_first, big_zeros()).result(timeout=TIMEOUT)
    gc.collect()
    fds_before = stalwart_memfds() if sys.platform.startswith("linux") else None
    files_before = stalwart_files()
    yield
    gc.collect()
    if fds_before is not None:
        try:
            wait_until(
                lambda: not (stalwart_memfds() - fds_before),
                "the parent to close the memory files this test used",
                10,
            )
        except AssertionError:
            pytest.fail(f"memory files left open: {stalwart_memfds() - fds_before}")
    assert stalwart_files() - files_before == set()


# -- 1. never stale, always the value at submit() ------------------------------


def test_a_changed_array_sent_again_is_seen_with_its_new_value() -> None:
    """joblib's stale-data case: the same array object, changed in place after
    a first call, reaches the second call with its new contents."""
    arr = big_zeros()
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        assert ex.submit(tasks.read_first, arr).result(timeout=TIMEOUT) == 0.0
        arr[0] = 42.0
        assert ex.submit(tasks.read_first, arr).result(timeout=TIMEOUT) == 42.0
        arr[0] = 7.0
        assert list(ex.map(tasks.read_first, [arr, arr])) == [7.0, 7.0]


def test_an_array_changed_after_submit_reaches_the_task_as_it_was_at_submit(
    manager: Any,
) -> None:
    """The call waits in the queue (the one worker is held by a gate task) while
    the parent changes the array: the task still reads the value at submit()."""
    started, gate = manager.Event(), manager.Event()
    arr = big_zeros()
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        busy = ex.submit(_tasks.block_until, started, gate, "busy")
        assert started.wait(TIMEOUT)
        queued = ex.submit(tasks.read_first, arr)
        arr[0] = 42.0
        arr[:] = 5.0
        gate.set()
        assert busy.result(timeout=TIMEOUT) == "busy"
        assert queued.result(timeout=TIMEOUT) == 0.0


# -- 2. snapshots while queued -----------------------------------------------------


def test_each_queued_call_sees_the_array_as_it_was_when_it_was_submitted(
    manager: Any,
) -> None:
    """Twenty calls of one array, changed between submits, all queued behind two
    busy workers: each call reads its own submit-time value."""
    started = [manager.Event(), manager.Event()]
    gate = manager.Event()
    arr = big_zeros()
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        busy = [ex.submit(_tasks.block_until, s, gate, "busy") for s in started]
        assert all(s.wait(TIMEOUT) for s in started)
        futures = []
        for i in range(20):
            arr[0] = i
            futures.append(ex.submit(tasks.read_first, arr))
        arr[0] = 999.0
        gate.set()
        assert [f.result(timeout=TIMEOUT) for f in futures] == list(range(20))
        assert [f.result(timeout=TIMEOUT) for f in busy] == ["busy", "busy"]


def test_calls_submitted_faster_than_workers_run_them_keep_their_snapshots() -> None:
    """No gate: whatever mix of queued and running calls the timing makes, every
    call reads the value its array held when it was submitted."""
    arr = big_zeros()
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        futures = []
        for i in range(100):
            arr[0] = i
            futures.append(ex.submit(tasks.read_first, arr))
        assert [f.result(timeout=TIMEOUT) for f in futures] == list(range(100))


# -- 3. snapshots across a crash and a retry ---------------------------------------


def test_a_retried_call_sees_the_array_as_it_was_at_submit(tmp_path: Path) -> None:
    """The first attempt kills its worker; the array is changed meanwhile; the
    retry, in a new worker, still reads the submit-time value."""
    marker = tmp_path / "died-once"
    arr = big_zeros()
    arr[0] = 3.0
    with stalwart.ProcessPoolExecutor(max_workers=1, retries=1) as ex:
        future = ex.submit(tasks.read_first_after_dying_once, str(marker), arr)
        arr[0] = 4.0
        wait_until(marker.exists, "the first attempt to start")
        arr[0] = 5.0
        assert future.result(timeout=TIMEOUT) == 3.0
        assert ex.submit(tasks.read_first, arr).result(timeout=TIMEOUT) == 5.0


def test_calls_re_sent_after_their_worker_crashed_keep_their_snapshots() -> None:
    """Calls queued on a worker that dies are sent again to another: each
    still reads the value its array held when it was submitted."""
    arr = big_zeros()
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        list(ex.map(abs, range(8)))  # warm: short tasks are sent ahead in batches
        futures = []
        for i in range(40):
            if i == 10:
                victim = ex.submit(tasks.die_holding, arr, "segv")
            arr[0] = i
            futures.append(ex.submit(tasks.read_first, arr))
        arr[0] = -1.0
        with pytest.raises(stalwart.WorkerCrashedError):
            victim.result(timeout=TIMEOUT)
        assert [f.result(timeout=TIMEOUT) for f in futures] == list(range(40))


# -- 4. arguments arrive writable, and private ------------------------------------


def test_a_large_argument_arrives_writable_and_writing_it_changes_only_the_task_copy() -> (
    None
):
    """As with the stdlib: the task may write to its argument. Neither the
    parent's array nor the next task's copy of it changes."""
    arr = np.full(BIG, 7.0)
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        first = ex.submit(tasks.write_then_read, arr)
        second = ex.submit(tasks.write_then_read, arr)
        assert first.result(timeout=TIMEOUT) == (True, 7.0, -1.0)
        assert second.result(timeout=TIMEOUT) == (True, 7.0, -1.0)
        again = ex.submit(tasks.write_then_read, arr).result(timeout=TIMEOUT)
        assert again == (True, 7.0, -1.0)
    assert arr[0] == 7.0
    assert arr[-1] == 7.0
    assert arr.flags.writeable


def test_one_array_passed_twice_in_a_call_arrives_as_copies_of_the_same_data() -> None:
    """The same array in two argument places: both arrive with the right data."""
    arr = np.arange(BIG, dtype=np.float64)
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        pair = ex.submit(_tasks.echo, (arr, arr)).result(timeout=TIMEOUT)
    assert np.array_equal(pair[0], arr)
    assert np.array_equal(pair[1], arr)


# -- 5. large results ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_64_mib_result_comes_back_whole_writable_with_dtype_and_shape() -> None:
    """A big array returned by a task: every element, its dtype and shape, and
    the parent may write to it."""
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        result = ex.submit(tasks.make_array, 64 * MiB, "float64", "C", (1024, -1))
        other = ex.submit(tasks.make_array, 4 * MiB, "int32")
        arr = result.result(timeout=TIMEOUT)
        second = other.result(timeout=TIMEOUT)
    expected = np.arange(8 * MiB, dtype=np.float64).reshape(1024, -1)
    assert arr.dtype == np.float64
    assert arr.shape == (1024, 8 * 1024)
    assert np.array_equal(arr, expected)
    assert arr.flags.writeable
    arr[0, 0] = -1.0
    arr[-1, -1] = -1.0
    assert arr[0, 0] == arr[-1, -1] == -1.0
    assert second.dtype == np.int32
    assert np.array_equal(second, np.arange(MiB, dtype=np.int32))


def test_a_large_bytes_result_comes_back_equal() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        data = ex.submit(tasks.make_bytes, 8 * MiB).result(timeout=TIMEOUT)
    assert type(data) is bytes
    assert data == tasks.make_bytes(8 * MiB)


def test_a_structure_holding_several_large_arrays_comes_back_equal() -> None:
    """A dict of big and small arrays, nested plain values: all as made."""
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        got = ex.submit(tasks.make_structure).result(timeout=TIMEOUT)
    expected = tasks.make_structure()
    assert sorted(got) == sorted(expected)
    for key in ("weights", "labels", "mask", "small"):
        assert got[key].dtype == expected[key].dtype, key
        assert got[key].shape == expected[key].shape, key
        assert np.array_equal(got[key], expected[key]), key
        assert got[key].flags.writeable, key
    assert got["meta"] == expected["meta"]
    assert got["pair"] == expected["pair"]


def test_fortran_ordered_and_strided_arguments_round_trip_equal() -> None:
    """Layouts other than C-contiguous cross with their values (and a
    Fortran-ordered array stays Fortran-ordered)."""
    base = np.arange(4 * MiB // 8, dtype=np.float64).reshape(1024, 512)
    layouts = [np.asfortranarray(base), base.reshape(-1)[::2], base.T, base[::-1]]
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        got = [ex.submit(_tasks.echo, a).result(timeout=TIMEOUT) for a in layouts]
    assert got[0].flags.f_contiguous
    for sent, back in zip(layouts, got, strict=True):
        assert back.shape == sent.shape
        assert np.array_equal(back, sent)


def test_a_fortran_ordered_result_comes_back_fortran_ordered() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        got = ex.submit(tasks.make_array, 4 * MiB, "float64", "F", (1024, 512))
        arr = got.result(timeout=TIMEOUT)
    assert arr.flags.f_contiguous
    assert arr.flags.writeable
    expected = np.arange(4 * MiB // 8, dtype=np.float64).reshape(1024, 512)
    assert np.array_equal(arr, expected)


def test_a_strided_view_returned_by_a_task_comes_back_equal() -> None:
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        arr = np.arange(BIG * 2, dtype=np.float64)
        got = ex.submit(_tasks.echo, {"view": arr[::2], "rev": arr[::-1]}).result(
            timeout=TIMEOUT
        )
    assert np.array_equal(got["view"], arr[::2])
    assert np.array_equal(got["rev"], arr[::-1])


# -- 6. stalwart.shared() -------------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_thousand_tasks_read_one_shared_array_correctly() -> None:
    """One 16 MiB shared array, a thousand tasks each reading one element: the
    right values, the data read-only in the tasks, and (Linux) each worker
    holding one mapping of it, not one per task."""
    original = np.arange(2 * MiB, dtype=np.float64)  # 16 MiB
    data = stalwart.shared(original)
    indexes = [(i * 2099 + 7) % original.size for i in range(1000)]
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        futures = [ex.submit(tasks.read_at, data, i) for i in indexes]
        assert [f.result(timeout=TIMEOUT) for f in futures] == [
            float(i) for i in indexes
        ]
        assert ex.submit(tasks.is_writeable, data).result(timeout=TIMEOUT) is False
        if sys.platform.startswith("linux"):
            mappings = [ex.submit(tasks.shared_mappings) for _ in range(20)]
            assert {f.result(timeout=TIMEOUT) for f in mappings} <= {0, 1}


def test_a_shared_copy_is_read_only_in_the_parent_and_equal_to_the_original() -> None:
    original = np.arange(BIG, dtype=np.float64)
    data = stalwart.shared(original)
    assert isinstance(data, np.ndarray)
    assert data.dtype == original.dtype
    assert data.shape == original.shape
    assert np.array_equal(data, original)
    assert data.flags.writeable is False
    with pytest.raises(ValueError, match="read-only"):
        data[0] = 1.0


def test_a_task_writing_to_a_shared_array_is_told_to_copy_it_first() -> None:
    """numpy's read-only ValueError, with a note naming stalwart.shared() and
    the way out (a copy)."""
    data = stalwart.shared(big_zeros())
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        with pytest.raises(ValueError, match="read-only") as info:
            ex.submit(tasks.write_first, data).result(timeout=TIMEOUT)
        assert ex.submit(tasks.read_first, data).result(timeout=TIMEOUT) == 0.0
    error = info.value
    text = "\n".join([str(error), *getattr(error, "__notes__", ())])
    assert "stalwart.shared()" in text
    assert "copy" in text


def test_changing_the_original_after_shared_never_changes_what_tasks_see() -> None:
    original = big_zeros()
    data = stalwart.shared(original)
    original[0] = 42.0
    original[-1] = 42.0
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        assert ex.submit(tasks.read_first, data).result(timeout=TIMEOUT) == 0.0
        assert ex.submit(tasks.read_at, data, BIG - 1).result(timeout=TIMEOUT) == 0.0
        assert ex.submit(tasks.read_first, original).result(timeout=TIMEOUT) == 42.0
    assert data[0] == 0.0


def test_slices_of_a_shared_array_are_sent_with_their_values() -> None:
    """A slice is not the shared object itself: it is sent as an ordinary
    argument, and arrives right (contiguous or strided, big or small)."""
    data = stalwart.shared(np.arange(4 * BIG, dtype=np.float64))
    pieces = [data[10 : 10 + BIG], data[::2], data[5:50], data[::-3]]
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        sums = [ex.submit(tasks.total, p) for p in pieces]
        firsts = [ex.submit(tasks.read_first, p) for p in pieces]
        assert [f.result(timeout=TIMEOUT) for f in sums] == [
            float(p.sum()) for p in pieces
        ]
        assert [f.result(timeout=TIMEOUT) for f in firsts] == [
            float(p[0]) for p in pieces
        ]


def test_a_shared_structure_of_several_arrays_reaches_tasks_whole() -> None:
    original = tasks.make_structure()
    data = stalwart.shared(original)
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        got = ex.submit(_tasks.echo, data).result(timeout=TIMEOUT)
        weight = ex.submit(tasks.read_at, data["weights"], 12345).result(TIMEOUT)
    assert weight == 12345.0
    for key in ("weights", "labels", "mask", "small"):
        assert np.array_equal(got[key], original[key]), key
        assert np.array_equal(data[key], original[key]), key
    assert data["weights"].flags.writeable is False
    assert got["meta"] == data["meta"] == original["meta"]


def test_shared_of_an_object_without_large_buffers_returns_an_equal_object() -> None:
    plain = {"a": [1, 2, 3], "b": "text", "c": (None, 2.5), "d": b"x" * 1000}
    assert stalwart.shared(plain) == plain
    small = np.arange(100)
    assert np.array_equal(stalwart.shared(small), small)
    assert stalwart.shared(12) == 12


def test_a_shared_object_passes_unchanged_through_the_thread_pool() -> None:
    """Threads need no transport: the task gets the shared object itself."""
    data = stalwart.shared(np.arange(BIG, dtype=np.float64))
    with stalwart.ThreadPoolExecutor(max_workers=2) as ex:
        assert ex.submit(_tasks.echo, data).result(timeout=TIMEOUT) is data
        futures = [ex.submit(tasks.read_at, data, i) for i in range(0, BIG, 4099)]
        assert [f.result(timeout=TIMEOUT) for f in futures] == [
            float(i) for i in range(0, BIG, 4099)
        ]
        with pytest.raises(ValueError, match="read-only"):
            ex.submit(tasks.write_first, data).result(timeout=TIMEOUT)


# -- 7. nothing left behind ------------------------------------------------------------


@linux_only
@pytest.mark.usefixtures("no_memory_files_left")
def test_moving_large_arguments_and_results_leaves_no_memory_files() -> None:
    """After a with-block that sent and received big data, the parent holds no
    stalwart memory file, and nothing appeared in /dev/shm or the temp dir."""
    arr = np.arange(4 * BIG, dtype=np.float64)
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        sums = [ex.submit(tasks.total, arr) for _ in range(10)]
        echoed = [ex.submit(_tasks.echo, arr) for _ in range(5)]
        made = ex.submit(tasks.make_array, 16 * MiB)
        assert [f.result(timeout=TIMEOUT) for f in sums] == [float(arr.sum())] * 10
        assert all(np.array_equal(f.result(timeout=TIMEOUT), arr) for f in echoed)
        assert made.result(timeout=TIMEOUT).nbytes == 16 * MiB
    del sums, echoed, made


@linux_only
@pytest.mark.usefixtures("no_memory_files_left")
def test_a_dropped_shared_object_releases_its_memory_file() -> None:
    """stalwart.shared() holds one file while its object lives; once the object
    and the calls that used it are gone, the parent holds nothing."""
    data = stalwart.shared(np.arange(4 * BIG, dtype=np.float64))
    assert any("stalwart-shared" in link for link in stalwart_memfds())
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        futures = [ex.submit(tasks.read_at, data, i) for i in range(50)]
        assert [f.result(timeout=TIMEOUT) for f in futures] == [
            float(i) for i in range(50)
        ]
    del data, futures


@linux_only
@pytest.mark.usefixtures("no_memory_files_left")
def test_a_task_killed_for_task_timeout_while_holding_large_data_leaks_nothing() -> (
    None
):
    arr = big_zeros()
    with stalwart.ProcessPoolExecutor(max_workers=1, task_timeout=0.5) as ex:
        overdue = ex.submit(tasks.hold, arr, TIMEOUT * 10)
        with pytest.raises(stalwart.TaskTimeoutError):
            overdue.result(timeout=TIMEOUT)
        assert ex.submit(tasks.total, arr + 1).result(timeout=TIMEOUT) == BIG
    del overdue


@linux_only
@pytest.mark.usefixtures("no_memory_files_left")
def test_a_worker_segfault_while_holding_large_data_leaks_nothing() -> None:
    arr = big_zeros()
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        victim = ex.submit(tasks.die_holding, arr, "segv")
        with pytest.raises(stalwart.WorkerCrashedError):
            victim.result(timeout=TIMEOUT)
        made = ex.submit(tasks.make_array, 2 * MiB).result(timeout=TIMEOUT)
        assert np.array_equal(made, np.arange(BIG, dtype=np.float64))
    del victim


@linux_only
@pytest.mark.usefixtures("no_memory_files_left")
def test_ctrl_c_in_a_with_block_moving_large_data_leaks_nothing(
    tmp_path: Path,
) -> None:
    """KeyboardInterrupt inside the with-block, while tasks hold big arguments
    and more wait in the queue: the block ends, and no memory file remains."""
    arr = np.ones(4 * BIG)
    with pytest.raises(KeyboardInterrupt):  # noqa: PT012 - raised in the block
        with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
            futures = [
                ex.submit(tasks.hold_after_marking, str(tmp_path / f"m{i}"), arr)
                for i in range(8)
            ]
            wait_until((tmp_path / "m0").exists, "a task to start")
            raise KeyboardInterrupt
    assert not cf.wait(futures, TIMEOUT).not_done
    assert not (tmp_path / "m7").exists(), "queued work should have been cancelled"
    del futures


@linux_only
@pytest.mark.timeout(90)
def test_a_sigkilled_parent_leaves_no_memory_files_in_its_workers(
    tmp_path: Path,
) -> None:
    """The parent dies while its workers hold big arguments (and more are
    queued): the workers end, no process of its tree still holds a stalwart
    memory file, and nothing is left in /dev/shm or the temp directory."""
    files_before = stalwart_files()
    process = start_script(
        tmp_path,
        """
        import threading
        import numpy as np
        import stalwart
        from tests import _large_tasks as tasks

        if __name__ == "__main__":
            ex = stalwart.ProcessPoolExecutor(2)
            arr = np.ones(2**20)
            shared = stalwart.shared(np.ones(2**20))
            for i in range(6):
                ex.submit(tasks.hold_after_marking, f"m{i}", arr, 600)
                ex.submit(tasks.hold, shared, 600)
            print("submitted", flush=True)
            threading.Event().wait()  # until killed
        """,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "submitted"
        markers = [tmp_path / "m0", tmp_path / "m1"]
        workers = {
            int(m.read_text())
            for m in wait_until(
                lambda: [m for m in markers if m.exists()],
                "tasks to start in the workers",
            )
        }
        tree = {p.pid for p in psutil.Process(process.pid).children(recursive=True)}
        assert workers <= tree
        assert any(memfds_of(pid) for pid in workers), "workers should map the data"
    finally:
        process.kill()
        finish(process)
    wait_until(
        lambda: all(gone_or_zombie(pid) for pid in tree),
        "the dead parent's workers (and template) to exit",
    )
    assert {pid: memfds_of(pid) for pid in tree if memfds_of(pid)} == {}
    assert stalwart_files() - files_before == set()


# -- 8. out of memory fails one task ---------------------------------------------------


@linux_only
@pytest.mark.timeout(120)
def test_a_result_too_big_to_map_fails_that_task_alone(tmp_path: Path) -> None:
    """The parent cannot map a 1 GiB result (its address space is capped): that
    task's future fails with a memory error; the next task on the same executor
    succeeds, and the executor shuts down cleanly."""
    lines = run_for_json(
        tmp_path,
        """
        import json, resource
        import numpy as np
        import stalwart
        from tests import _large_tasks as tasks

        def vm_size() -> int:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmSize:"):
                        return int(line.split()[1]) * 1024
            raise RuntimeError("no VmSize")

        def report(**fields):
            print(json.dumps(fields), flush=True)

        if __name__ == "__main__":
            with stalwart.ProcessPoolExecutor(1) as ex:
                # Warm every path first: a big argument, a big result.
                assert ex.submit(tasks.total, np.ones(2**18)).result(60) == 2**18
                assert ex.submit(tasks.make_ones, 2**21).result(60).sum() == 2**21
                _, hard = resource.getrlimit(resource.RLIMIT_AS)
                resource.setrlimit(resource.RLIMIT_AS, (vm_size() + (256 << 20), hard))
                future = ex.submit(tasks.make_ones, 1 << 30)
                try:
                    value = future.result(120)
                    report(outcome="returned", size=int(value.nbytes))
                    del value
                except Exception as exc:
                    chain, cause = [], exc
                    while cause is not None:
                        chain.append(type(cause).__name__)
                        cause = cause.__cause__
                    report(outcome="raised", chain=chain, message=str(exc))
                report(next=ex.submit(tasks.total, np.ones(2**18)).result(60))
                report(small=ex.submit(abs, -3).result(60))
            report(shutdown="clean")
        """,
        timeout=110,
    )
    failure, after, small, end = lines
    # As the stdlib does for a result it cannot unpickle: BrokenProcessPool
    # (that task's alone here), caused by the MemoryError.
    assert failure["outcome"] == "raised", failure
    assert failure["chain"][0] == "BrokenProcessPool", failure
    assert "MemoryError" in failure["chain"], failure
    assert "make_ones(1073741824)" in failure["message"], failure
    assert after == {"next": float(2**18)}
    assert small == {"small": 3}
    assert end == {"shutdown": "clean"}


# -- 9. the other executors take the same calls ----------------------------------------


def test_the_thread_pool_takes_the_same_large_array_calls() -> None:
    arr = np.arange(BIG, dtype=np.float64)
    with stalwart.ThreadPoolExecutor(max_workers=2) as ex:
        assert ex.submit(tasks.total, arr).result(timeout=TIMEOUT) == float(arr.sum())
        made = ex.submit(tasks.make_array, 8 * MiB).result(timeout=TIMEOUT)
        assert np.array_equal(made, np.arange(MiB, dtype=np.float64))
        assert ex.submit(tasks.read_at, arr, BIG - 1).result(TIMEOUT) == BIG - 1


def test_the_dask_executor_takes_the_same_large_array_calls(dask_client: Any) -> None:
    """dask keeps its own transport; the same calls (a big argument, a big
    result, a shared() object) give the same answers."""
    arr = np.arange(BIG, dtype=np.float64)
    data = stalwart.shared(np.arange(BIG, dtype=np.float64))
    with stalwart.DaskExecutor(client=dask_client) as ex:
        assert ex.submit(tasks.total, arr).result(timeout=TIMEOUT) == float(arr.sum())
        made = ex.submit(tasks.make_array, 8 * MiB).result(timeout=TIMEOUT)
        assert np.array_equal(made, np.arange(MiB, dtype=np.float64))
        assert ex.submit(tasks.read_at, data, BIG - 1).result(TIMEOUT) == BIG - 1
