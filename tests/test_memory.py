"""What stalwart reads of a worker's memory, and how it tells an OOM kill from
another SIGKILL: sizes, RSS, memory cgroups (v1 for real where the machine
allows, v2 from a directory laid out like one), and real kernel OOM kills."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from stalwart import _memory
from stalwart._memory import (
    CgroupMemory,
    KernelOomKill,
    MemoryWatch,
    OomCounts,
    format_size,
    locate_memory_cgroup,
    parse_mountinfo,
    parse_size,
    read_cgroup_memory,
    sigkill_verdict,
)
from tests._tasks import TIMEOUT
from tests.conftest import wait_until

if TYPE_CHECKING:
    pass

MiB = 1 << 20

OVER_THE_LIMIT = """
import sys
sys.stdin.readline()  # go: it is in its cgroup by now
block = bytearray(200 << 20)
for i in range(0, len(block), 4096):  # touched: resident, charged to the cgroup
    block[i] = 1
print("survived", flush=True)
"""

WAITS = "import sys; sys.stdin.readline()"


# -- sizes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (4096, 4096),
        ("100", 100),
        ("100B", 100),
        ("300MB", 300 * 10**6),
        (" 2 GB ", 2 * 10**9),
        ("0.5kb", 500),
        ("2GiB", 2 << 30),
        ("64Mi", 64 * MiB),
        ("512M", 512 * MiB),
        ("512m", 512 * MiB),
        ("1.5G", 3 << 29),
        ("1.5 gib", 3 << 29),
        ("1T", 1 << 40),
    ],
)
def test_parse_size_reads_bytes_si_and_binary_units(
    value: int | str, size: int
) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", ["2 gigs", "", "GB", "-1GB", "1e9", "1.5.2G", "inf"])
def test_a_size_that_is_not_one_is_refused_naming_the_accepted_forms(
    value: str,
) -> None:
    with pytest.raises(ValueError, match="is not a size") as caught:
        parse_size(value)
    message = str(caught.value)
    assert message.startswith(f"max_memory_per_child={value!r}")
    assert "'2GiB'" in message
    assert "powers of 1024" in message
    assert "powers of 1000" in message


@pytest.mark.parametrize("value", [0, -5, "0MB", "0.1B"])
def test_a_size_of_no_bytes_is_refused(value: int | str) -> None:
    with pytest.raises(ValueError, match="must be more than 0 bytes"):
        parse_size(value, "memory_limit")


@pytest.mark.parametrize("value", [1.5e9, True, None, b"1G"])
def test_a_size_of_another_type_is_refused(value: object) -> None:
    with pytest.raises(TypeError, match="must be a number of bytes"):
        parse_size(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (512, "512 B"),
        (64 * MiB, "64.0 MiB"),
        (3 << 29, "1.5 GiB"),
        (5 << 40, "5.0 TiB"),
    ],
)
def test_format_size_uses_the_largest_binary_unit(size: int, text: str) -> None:
    assert format_size(size) == text


# -- resident memory ---------------------------------------------------------------


def touched(size: int) -> bytearray:
    """``size`` bytes, every page written to: resident, not just reserved."""
    block = bytearray(size)
    block[::4096] = b"x" * len(range(0, size, 4096))
    return block


def needs_proc() -> None:
    if not Path("/proc/self/statm").exists():
        pytest.skip("no /proc on this system")


def test_resident_memory_grows_with_touched_allocations() -> None:
    needs_proc()
    own_before = _memory.own_resident_bytes()
    before = _memory.resident_bytes(os.getpid())
    assert before is not None
    block = touched(100 * MiB)
    after = _memory.resident_bytes(os.getpid())
    assert after is not None
    assert after - before > 90 * MiB
    assert _memory.own_resident_bytes() - own_before > 90 * MiB
    del block


@pytest.mark.timeout(60)
def test_a_dead_process_has_no_resident_memory_zombie_or_reaped() -> None:
    needs_proc()
    child = subprocess.Popen([sys.executable, "-c", WAITS], stdin=subprocess.PIPE)
    try:
        assert _memory.resident_bytes(child.pid) is not None
        os.kill(child.pid, signal.SIGKILL)
        wait_until(lambda: _is_zombie(child.pid), "the killed child to be a zombie")
        assert _memory.resident_bytes(child.pid) is None  # a zombie's statm is 0s
    finally:
        _end(child)
    assert _memory.resident_bytes(child.pid) is None


@pytest.mark.timeout(60)
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")  # the child only
def test_a_forked_child_reads_its_own_memory_not_its_parents() -> None:
    """The parent's open /proc/self/statm would read the parent in the child."""
    needs_proc()
    _memory.own_resident_bytes()  # opens and keeps the file
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            before = _memory.own_resident_bytes()
            block = touched(100 * MiB)
            grown = _memory.own_resident_bytes() - before
            os.write(write_end, str(grown).encode())
            del block
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        grown = int(reader.read() or b"0")
    os.waitpid(pid, 0)
    # Reading the parent's file, the child would see the parent, which did
    # not grow. (Measured in the child: a fork's RSS is not the parent's plus
    # its own growth, since shared file pages are mapped lazily in the child.)
    assert grown > 90 * MiB


@pytest.mark.timeout(60)
def test_a_watch_follows_last_and_peak_memory_until_death() -> None:
    needs_proc()
    fds_before = len(os.listdir("/proc/self/fd"))
    child = subprocess.Popen([sys.executable, "-c", WAITS], stdin=subprocess.PIPE)
    watch = MemoryWatch(child.pid)
    try:
        rss = watch.refresh()
        assert rss is not None
        assert (watch.last_rss, watch.peak_rss) == (rss, rss)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(TIMEOUT)
        assert watch.refresh() is None  # reaped: its /proc entry stops answering
        assert (watch.last_rss, watch.peak_rss) == (rss, rss)  # kept
    finally:
        watch.close()
        watch.close()
        _end(child)
    assert len(os.listdir("/proc/self/fd")) == fds_before


# -- memory cgroups, v2 and v1 laid out in a directory --------------------------------


def mountinfo_line(fs_type: str, root: str, mount_point: Path, options: str) -> bytes:
    point = str(mount_point).replace(" ", "\\040")
    return f"41 31 0:38 {root} {point} rw,relatime - {fs_type} {fs_type} {options}\n".encode()


def write_files(directory: Path, **files: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name.replace("__", ".")).write_text(text)
    return directory


@pytest.fixture
def v2_tree(tmp_path: Path) -> Path:
    """A cgroup v2 mount: /pool limits to 50 MiB, /pool/worker to 64 MiB."""
    root = write_files(tmp_path / "cgroup v2", cgroup__controllers="cpu io memory\n")
    write_files(
        root / "pool", cgroup__controllers="memory\n", memory__max=f"{50 * MiB}\n"
    )
    write_files(
        root / "pool" / "worker",
        cgroup__controllers="cpu memory\n",
        memory__max=f"{64 * MiB}\n",
        memory__current=f"{10 * MiB}\n",
        memory__peak=f"{49 * MiB}\n",
        memory__events="low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n",
    )
    write_files(root / "nomemory", cgroup__controllers="cpu io\n")
    return root


def test_v2_memory_cgroup_is_found_and_read(v2_tree: Path) -> None:
    mounts = parse_mountinfo(
        mountinfo_line("tmpfs", "/", Path("/sys/fs/cgroup"), "rw")
        + mountinfo_line("cgroup2", "/", v2_tree, "rw,nsdelegate")
    )
    assert [(m.version, m.mount_point) for m in mounts] == [(2, str(v2_tree))]
    located = locate_memory_cgroup(b"0::/pool/worker\n", mounts)
    assert located == (str(v2_tree / "pool" / "worker"), 2)
    assert read_cgroup_memory(*located) == CgroupMemory(
        directory=str(v2_tree / "pool" / "worker"),
        version=2,
        oom_kills=2,
        limit=50 * MiB,  # its parent's is tighter
        usage=10 * MiB,
        peak=49 * MiB,
    )


def test_v2_without_the_memory_controller_has_no_memory_cgroup(v2_tree: Path) -> None:
    mounts = parse_mountinfo(mountinfo_line("cgroup2", "/", v2_tree, "rw"))
    assert locate_memory_cgroup(b"0::/nomemory\n", mounts) is None
    assert locate_memory_cgroup(b"0::/not-there\n", mounts) is None
    assert locate_memory_cgroup(b"", mounts) is None
    assert locate_memory_cgroup(None, mounts) is None


def test_v2_removed_cgroup_and_missing_files_read_as_none(v2_tree: Path) -> None:
    (v2_tree / "gone").mkdir()
    (v2_tree / "gone" / "cgroup.controllers").write_text("memory\n")
    mounts = parse_mountinfo(mountinfo_line("cgroup2", "/", v2_tree, "rw"))
    located = locate_memory_cgroup(b"0::/gone (deleted)\n", mounts)
    assert located == (str(v2_tree / "gone"), 2)
    assert read_cgroup_memory(*located) == CgroupMemory(
        str(v2_tree / "gone"), 2, oom_kills=None, limit=None, usage=None, peak=None
    )


def test_a_container_mounting_its_own_subtree_maps_paths_under_it(
    v2_tree: Path,
) -> None:
    mounts = parse_mountinfo(mountinfo_line("cgroup2", "/docker/abc", v2_tree, "rw"))
    located = locate_memory_cgroup(b"0::/docker/abc/pool/worker\n", mounts)
    assert located == (str(v2_tree / "pool" / "worker"), 2)
    assert locate_memory_cgroup(b"0::/elsewhere\n", mounts) is None


def test_v1_memory_cgroup_is_found_and_read_with_its_hierarchical_limit(
    tmp_path: Path,
) -> None:
    v1 = tmp_path / "memory"
    write_files(
        v1 / "x",
        memory__limit_in_bytes="9223372036854771712\n",  # none of its own...
        memory__stat=f"cache 0\nhierarchical_memory_limit {64 * MiB}\n",  # ...a parent's
        memory__oom_control="oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
        memory__usage_in_bytes=f"{MiB}\n",
        memory__max_usage_in_bytes=f"{63 * MiB}\n",
    )
    mounts = parse_mountinfo(
        mountinfo_line("cgroup", "/", tmp_path / "cpu", "rw,cpu,cpuacct")
        + mountinfo_line("cgroup", "/", v1, "rw,memory")
        + mountinfo_line("cgroup2", "/", tmp_path / "unified", "rw")
    )
    # Hybrid: memory is on v1, so the 0:: line is not where it is.
    located = locate_memory_cgroup(b"4:memory:/x\n1:cpu,cpuacct:/\n0::/\n", mounts)
    assert located == (str(v1 / "x"), 1)
    assert read_cgroup_memory(*located) == CgroupMemory(
        str(v1 / "x"), 1, oom_kills=3, limit=64 * MiB, usage=MiB, peak=63 * MiB
    )
    (v1 / "x" / "memory.stat").write_text("cache 0\n")
    assert read_cgroup_memory(str(v1 / "x"), 1).limit is None  # unlimited


def test_this_machines_memory_cgroup_is_the_one_proc_names() -> None:
    needs_proc()
    cgroup = _memory.memory_cgroup(os.getpid())
    if cgroup is None:
        pytest.skip("this process has no memory cgroup to read here")
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    named = [line.split(":", 2)[2] for line in lines if ":memory:" in line]
    named = named or [line[3:] for line in lines if line.startswith("0::")]
    assert cgroup.directory.endswith(named[0].rstrip("/")), (cgroup, named)
    assert Path(cgroup.directory).is_dir()
    assert cgroup.usage is None or cgroup.usage > 0


# -- the kernel log -----------------------------------------------------------------

SUMMARY = (
    "oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,"
    "oom_memcg=/{cg},task_memcg=/{cg},task=python,pid={pid},uid=0"
)
KILLED = (
    "Memory cgroup out of memory: Killed process {pid} (python) total-vm:217844kB, "
    "anon-rss:{kb}kB, file-rss:2092kB, shmem-rss:0kB, UID:0 pgtables:196kB"
)


@pytest.mark.parametrize(
    ("log", "found"),
    [
        ([], None),
        (  # another pid's kill, and a pid that merely starts with 42
            [
                SUMMARY.format(cg="a", pid=7),
                KILLED.format(pid=7, kb=1),
                "Killed process 421 (x)",
            ],
            None,
        ),
        (
            [
                SUMMARY.format(cg="a", pid=42),
                "[ pid ] uid ...",
                KILLED.format(pid=42, kb=1),
            ],
            KernelOomKill(KILLED.format(pid=42, kb=1), "/a"),
        ),
        (  # an older kill of the pid's previous owner, then this one, rate-limited
            [
                SUMMARY.format(cg="a", pid=42),
                KILLED.format(pid=42, kb=1),
                KILLED.format(pid=42, kb=2),
            ],
            KernelOomKill(KILLED.format(pid=42, kb=2), None),
        ),
        (  # logged as killed, not yet as "Killed process"
            [KILLED.format(pid=42, kb=1), SUMMARY.format(cg="b", pid=42)],
            KernelOomKill(SUMMARY.format(cg="b", pid=42), "/b"),
        ),
    ],
)
def test_the_kernel_log_is_searched_for_the_latest_oom_kill_of_the_pid(
    monkeypatch: pytest.MonkeyPatch, log: list[str], found: KernelOomKill | None
) -> None:
    monkeypatch.setattr(_memory, "_kernel_log", lambda: iter(log))
    assert _memory.kernel_oom_kill(42) == found


# -- the verdict, from counts -------------------------------------------------------


def cgroup(oom_kills: int | None, directory: str = "/sys/fs/cgroup/w") -> CgroupMemory:
    return CgroupMemory(
        directory, 2, oom_kills, limit=64 * MiB, usage=None, peak=64 * MiB
    )


def test_a_new_oom_kill_in_its_cgroup_is_named_with_the_figures() -> None:
    verdict = sigkill_verdict(
        OomCounts(5, cgroup(0)),
        OomCounts(6, cgroup(1)),
        last_rss=61 * MiB,
        peak_rss=63 * MiB,
    )
    assert "out of memory" in verdict
    assert "/sys/fs/cgroup/w counted 1 more OOM kill" in verdict
    assert "limit 64.0 MiB" in verdict
    assert "last known memory 61.0 MiB, peak 63.0 MiB" in verdict


@pytest.mark.parametrize("victims_cgroup", [cgroup(1), None])
def test_the_kernel_log_naming_the_worker_is_quoted(
    victims_cgroup: CgroupMemory | None,
) -> None:
    line = "Memory cgroup out of memory: Killed process 42 (python) anon-rss:65536kB"
    verdict = sigkill_verdict(
        OomCounts(5, None),
        OomCounts(6, victims_cgroup),
        kernel_log=KernelOomKill(line, "/w"),
    )
    assert "out of memory: the kernel's OOM killer ended it" in verdict
    assert f'The kernel log says: "{line}"' in verdict
    assert ("limit 64.0 MiB" in verdict) == (victims_cgroup is not None)


@pytest.mark.parametrize(
    ("before", "after", "known", "evidence"),
    [
        (OomCounts(5, cgroup(0)), OomCounts(5, cgroup(0)), "", "on this machine"),
        (OomCounts(5, None), OomCounts(5, None), "", "on this machine"),
        (
            OomCounts(5, cgroup(0)),
            OomCounts(6, cgroup(0)),
            "cgroup seen at death",
            "in its memory cgroup /sys/fs/cgroup/w (the machine counted 1 more",
        ),
        (  # moved at the last instant, to a v2 cgroup with no OOM kill ever
            OomCounts(5, cgroup(0)),
            OomCounts(6, cgroup(0, "/sys/fs/cgroup/other")),
            "cgroup seen at death",
            "in its memory cgroup /sys/fs/cgroup/other",
        ),
        (
            OomCounts(5, cgroup(0)),
            OomCounts(6, cgroup(1)),
            "kernel log read",
            "The kernel log names no OOM kill of it",
        ),
        (OomCounts(None, cgroup(0)), OomCounts(None, cgroup(0)), "", "cgroup"),
    ],
)
def test_a_sigkill_with_no_oom_kill_of_it_blames_something_else(
    before: OomCounts, after: OomCounts, known: str, evidence: str
) -> None:
    verdict = sigkill_verdict(
        before,
        after,
        cgroup_seen_at_death=known == "cgroup seen at death",
        kernel_log_read=known == "kernel log read",
        last_rss=MiB,
    )
    assert "out of memory" not in verdict
    assert "something else sent SIGKILL" in verdict
    assert evidence in verdict


@pytest.mark.parametrize(
    ("after", "evidence"),
    [
        (OomCounts(7, None), "the machine counted 2 more OOM kills since"),
        (OomCounts(6, cgroup(0)), "none in its memory cgroup /sys/fs/cgroup/w, where"),
        (
            OomCounts(6, cgroup(3, "/sys/fs/cgroup/small")),
            "which it moved into, counted 3",
        ),
    ],
)
def test_an_oom_kill_counted_elsewhere_than_where_it_was_seen_is_suspected(
    after: OomCounts, evidence: str
) -> None:
    before = OomCounts(5, None if after.cgroup is None else cgroup(0))
    verdict = sigkill_verdict(before, after, peak_rss=MiB)
    assert verdict.startswith("It most likely ran out of memory")
    assert evidence in verdict


def test_with_no_counts_at_all_the_verdict_says_it_cannot_tell() -> None:
    verdict = sigkill_verdict(OomCounts(None, None), OomCounts(None, None))
    assert "out of memory" not in verdict
    assert "no OOM kill counts" in verdict


# -- real kills ----------------------------------------------------------------------


def start(program: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", program],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def move(process: subprocess.Popen[str], group: Path) -> None:
    try:
        (group / "cgroup.procs").write_text(str(process.pid))
    except OSError as exc:
        _end(process)
        pytest.skip(f"this machine refuses to move a process into {group}: {exc}")


def go(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.write("go\n")
    process.stdin.flush()


def wait_for_death(process: subprocess.Popen[str], reap: bool) -> None:
    """Until the process died; if not `reap`, it stays a zombie (waitid WNOWAIT)."""
    if reap:
        process.wait(TIMEOUT)
        return
    flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
    wait_until(lambda: os.waitid(os.P_PID, process.pid, flags), f"{process.pid} to die")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reap", [False, True], ids=["zombie", "reaped"])
@pytest.mark.parametrize("kernel_log", ["readable", "refused"])
def test_a_real_oom_kill_is_named_with_the_cgroups_limit(
    memory_cgroup_of_64_mib: Path,
    monkeypatch: pytest.MonkeyPatch,
    reap: bool,
    kernel_log: str,
) -> None:
    """The child is moved into a 64 MiB cgroup, then touches 200 MB."""
    if kernel_log == "refused":  # as for a user who may not read /dev/kmsg

        def refused(pid: int) -> KernelOomKill | None:
            raise PermissionError(errno.EPERM, "Operation not permitted", "/dev/kmsg")

        monkeypatch.setattr(_memory, "kernel_oom_kill", refused)
    child = start(OVER_THE_LIMIT)
    watch = MemoryWatch(child.pid)
    try:
        move(child, memory_cgroup_of_64_mib)
        assert watch.refresh() is not None  # sees the move: a new baseline there
        go(child)
        wait_for_death(child, reap)
        verdict = watch.explain_sigkill()
    finally:
        watch.close()
        _end(child)
    assert child.returncode == -signal.SIGKILL, child.returncode
    assert "out of memory" in verdict, verdict
    assert "limit 64.0 MiB" in verdict, verdict
    assert str(memory_cgroup_of_64_mib) in verdict, verdict
    if kernel_log == "readable" and _kernel_log_readable():
        assert f"Killed process {child.pid} (" in verdict, verdict


@pytest.mark.timeout(60)
def test_an_oom_kill_after_an_unseen_move_is_found_in_the_kernel_log(
    memory_cgroup_of_64_mib: Path,
) -> None:
    """The worker moves and dies before any refresh(): the v1 zombie shows "/",
    so only the kernel log names the cgroup (v2 shows it at death)."""
    child = start(OVER_THE_LIMIT)
    watch = MemoryWatch(child.pid)
    try:
        move(child, memory_cgroup_of_64_mib)
        go(child)
        wait_for_death(child, reap=False)
        verdict = watch.explain_sigkill()
    finally:
        watch.close()
        _end(child)
    assert "out of memory" in verdict, verdict
    kill = _memory.kernel_oom_kill(child.pid) if _kernel_log_readable() else None
    if kill is not None and kill.memcg is not None:  # its line is rate-limited
        assert "limit 64.0 MiB" in verdict, verdict


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reap", [False, True], ids=["zombie", "reaped"])
def test_a_plain_sigkill_is_not_blamed_on_memory(reap: bool) -> None:
    needs_proc()
    child = start(WAITS)
    watch = MemoryWatch(child.pid)
    try:
        assert watch.refresh() is not None
        os.kill(child.pid, signal.SIGKILL)
        wait_for_death(child, reap)
        verdict = watch.explain_sigkill()
    finally:
        watch.close()
        _end(child)
    assert child.returncode == -signal.SIGKILL
    assert "out of memory" not in verdict, verdict
    assert "something else sent SIGKILL" in verdict, verdict


# -- helpers -------------------------------------------------------------------------


def _is_zombie(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _kernel_log_readable() -> bool:
    try:
        os.close(os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK))
    except OSError:
        return False
    return True


def _end(process: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    """Kill (if need be) and reap, closing its pipes."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    process.wait(TIMEOUT)
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            with contextlib.suppress(BrokenPipeError):
                stream.close()
