"""What the OS says about a worker's memory, and whether the OOM killer ended it.

Three sources, all plain files (Linux first; what is missing reads as None,
never as an exception):

* **Resident memory** of a process: ``/proc/<pid>/statm`` (psutil's figure on
  systems without ``/proc``, if the program imported psutil already).
* **Its memory cgroup**: ``/proc/<pid>/cgroup`` names it (v1: the ``memory``
  line; v2: the ``0::`` line), ``/proc/self/mountinfo`` says where that is
  mounted, and the cgroup's files give its limit, its use, and how many of its
  processes the OOM killer ended. ``/proc/vmstat`` counts them machine-wide.
* **The kernel log** (``/dev/kmsg``, where readable: root, or
  ``kernel.dmesg_restrict=0``): the OOM killer's own line, naming the pid.

A ``MemoryWatch`` follows one worker from the parent::

    MemoryWatch(pid)       worker started: take the OOM counts as a baseline
      .refresh()           now and then: its RSS (last, peak); follow cgroup moves
      .explain_sigkill()   it died of SIGKILL: the OOM killer, or someone else?
      .close()

The kernel counts an OOM kill in ``/proc/vmstat`` and in the *victim's* memory
cgroup before it sends the SIGKILL ("task reaper must see this", mm/oom_kill.c),
so the counts are up by the time the parent sees the death. Where the worker
sat at its death is the catch: a zombie's ``/proc/<pid>/cgroup`` still names
its v2 cgroup but shows ``/`` for every v1 hierarchy (the kernel prints ``/``
for exiting tasks there), and a reaped worker has no ``/proc`` entry at all.
So a worker that moved into another v1 cgroup since its last ``refresh()`` is
found only through the kernel log, or counted machine-wide.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import posixpath
import re
import resource
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

PAGE_SIZE = mmap.PAGESIZE

V1_UNLIMITED = 1 << 60
"""cgroup v1 writes "no limit" as the largest page count times the page size
(9223372036854771712 on x86-64): anything this large is no limit."""

_SIZE = re.compile(r"\s*([0-9]+)(?:\.([0-9]*))?\s*([a-zA-Z]*)\s*")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    **{f"{p}b": 1000**i for i, p in enumerate("kmgt", 1)},
    **{f"{p}{s}": 1024**i for i, p in enumerate("kmgt", 1) for s in ("", "i", "ib")},
}
_SIZE_FORMS = (
    "write an int of bytes, or a number and a unit such as '2GiB', '1.5G' or "
    "'500MB' (KiB, MiB, GiB, TiB and K, M, G, T are powers of 1024; KB, MB, "
    "GB, TB powers of 1000; B or no unit: bytes)"
)


# -- sizes -------------------------------------------------------------------------


def parse_size(value: int | str, name: str = "max_memory_per_child") -> int:
    """Bytes from an int or a string such as ``"2GiB"`` or ``"500MB"``.

    Units, in any case: KiB/MiB/GiB/TiB (and Ki/Mi/Gi/Ti) and the single
    letters K/M/G/T are powers of 1024, as Docker, Java's ``-Xmx`` and
    ``ulimit`` read them; KB/MB/GB/TB are powers of 1000; B or none, bytes.
    A fraction is rounded down to whole bytes: ``parse_size("1.5G") ==
    1610612736``. ``name`` is the keyword that an error names.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(
            f"{name} must be a number of bytes (an int) or a string such as "
            f"'2GiB', got {type(value).__name__} {value!r}"
        )
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value)
        unit = _SIZE_UNITS.get(match.group(3).lower()) if match else None
        if match is None or unit is None:
            raise ValueError(f"{name}={value!r} is not a size: {_SIZE_FORMS}")
        fraction = match.group(2) or ""
        size = int(match.group(1)) * unit
        size += int(fraction or "0") * unit // 10 ** len(fraction)
    if size <= 0:
        raise ValueError(f"{name} must be more than 0 bytes, got {value!r}")
    return size


def format_size(size: int) -> str:
    """``"64.0 MiB"``: bytes in the largest binary unit that keeps a number >= 1."""
    if size < 1024:
        return f"{size} B"
    scaled = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        scaled /= 1024
        if scaled < 1024:
            return f"{scaled:.1f} {unit}"
    return f"{scaled / 1024:.1f} TiB"


# -- resident memory ---------------------------------------------------------------

_HAS_PROC = os.path.isdir("/proc/self")


def resident_bytes(pid: int) -> int | None:
    """A process's resident set size (RSS), or None if it is gone or unreadable.

    A zombie (dead, not yet reaped) has no memory left, so None too.
    """
    if _HAS_PROC:
        return _rss_from_statm(_read_bytes(f"/proc/{pid}/statm"))
    return _psutil_rss(pid)


def own_resident_bytes() -> int:
    """This process's RSS: for a worker to check after each task (~1 µs).

    Keeps ``/proc/self/statm`` open and re-reads it with ``pread``. Without
    ``/proc``: psutil's figure if psutil is imported already, else the peak RSS
    (``getrusage``), which is never below the current one.
    """
    opened = _own_statm
    if opened is not None and opened[0] == os.getpid():
        with contextlib.suppress(OSError):
            rss = _rss_from_statm(os.pread(opened[1], 128, 0))
            if rss is not None:
                return rss
    return _own_resident_bytes_slowly()


_own_statm: tuple[int, int] | None = None  # (the pid that opened it, its fd)
_own_statm_lock = threading.Lock()  # two threads' first calls open one fd, not two


def _own_resident_bytes_slowly() -> int:
    global _own_statm
    if _HAS_PROC:
        with _own_statm_lock:
            # After a fork by C code (no fork hook ran) the fd is the parent's
            # /proc/<pid>/statm: forgotten, not closed, as the child may have
            # reused its number already.
            if _own_statm is None or _own_statm[0] != os.getpid():
                fd = _open_or_none("/proc/self/statm")
                _own_statm = None if fd is None else (os.getpid(), fd)
            if _own_statm is not None:
                with contextlib.suppress(OSError):
                    rss = _rss_from_statm(os.pread(_own_statm[1], 128, 0))
                    if rss is not None:
                        return rss
    rss = _psutil_rss(os.getpid())
    if rss is not None:
        return rss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux counts KiB


def _forget_own_statm() -> None:
    """In a forked child: the inherited fd reads the parent's memory."""
    global _own_statm
    if _own_statm is not None:
        with contextlib.suppress(OSError):
            os.close(_own_statm[1])
        _own_statm = None


os.register_at_fork(after_in_child=_forget_own_statm)


def _rss_from_statm(statm: bytes | None) -> int | None:
    """RSS from statm's "size resident shared ..." (pages); a zombie's is all 0."""
    try:
        pages = int(statm.split(None, 2)[1]) if statm else 0
    except (IndexError, ValueError):
        return None
    return pages * PAGE_SIZE if pages > 0 else None


def _psutil_rss(pid: int) -> int | None:
    """psutil's RSS, only if the program imported psutil (we never do)."""
    psutil = sys.modules.get("psutil")
    if psutil is None:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.Error, OSError):
        return None


# -- memory cgroups ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CgroupMemory:
    """A memory cgroup's figures at one moment; None: not there to read.

    Attributes:
        directory: the cgroup's directory, e.g. ``/sys/fs/cgroup/memory/x``.
        version: 1 or 2.
        oom_kills: its processes that the OOM killer ended (v1: kernel 4.13+).
        limit: the tightest memory limit on it or its parents; None: no limit.
        usage: the memory charged to it now.
        peak: the most ever charged to it (v2: kernel 5.19+).
    """

    directory: str
    version: Literal[1, 2]
    oom_kills: int | None
    limit: int | None
    usage: int | None
    peak: int | None


@dataclass(frozen=True, slots=True)
class CgroupMount:
    """A cgroup hierarchy as mounted here: the v1 one holding memory, or v2."""

    version: Literal[1, 2]
    root: str  # the cgroup seen at mount_point: "/", or "/docker/abc" in a container
    mount_point: str


def memory_cgroup(pid: int) -> CgroupMemory | None:
    """The figures of ``pid``'s memory cgroup, or None if it has none to read."""
    located = locate_memory_cgroup(_read_bytes(f"/proc/{pid}/cgroup"), cgroup_mounts())
    return None if located is None else read_cgroup_memory(*located)


def locate_memory_cgroup(
    proc_cgroup: bytes | None, mounts: Sequence[CgroupMount]
) -> tuple[str, Literal[1, 2]] | None:
    """The directory and version of the memory cgroup that the text of
    ``/proc/<pid>/cgroup`` names, found under ``mounts``; None if none is here."""
    v1_path, v2_path = _cgroup_paths(proc_cgroup)
    if v1_path is not None:  # memory is bound to v1: v2 cannot have it too
        directory = _directory_of(v1_path, [m for m in mounts if m.version == 1])
        return None if directory is None else (directory, 1)
    if v2_path is None:
        return None
    directory = _directory_of(v2_path, [m for m in mounts if m.version == 2])
    if directory is None:
        return None
    # A v2 cgroup has memory files only where its parent enabled the controller.
    controllers = _read_bytes(posixpath.join(directory, "cgroup.controllers"))
    if controllers is None or b"memory" not in controllers.split():
        return None
    return directory, 2


def read_cgroup_memory(directory: str, version: Literal[1, 2]) -> CgroupMemory:
    """What the memory cgroup at ``directory`` counts now."""

    def read(name: str) -> bytes | None:
        return _read_bytes(posixpath.join(directory, name))

    if version == 1:
        limits = [
            _int(read("memory.limit_in_bytes")),
            _field(read("memory.stat"), b"hierarchical_memory_limit"),
        ]
        limit = min((x for x in limits if x is not None), default=None)
        return CgroupMemory(
            directory=directory,
            version=1,
            oom_kills=_field(read("memory.oom_control"), b"oom_kill"),
            limit=None if limit is None or limit >= V1_UNLIMITED else limit,
            usage=_int(read("memory.usage_in_bytes")),
            peak=_int(read("memory.max_usage_in_bytes")),
        )
    return CgroupMemory(
        directory=directory,
        version=2,
        oom_kills=_field(read("memory.events"), b"oom_kill"),
        limit=_v2_limit(directory),
        usage=_int(read("memory.current")),
        peak=_int(read("memory.peak")),
    )


def cgroup_mounts() -> tuple[CgroupMount, ...]:
    """This process's cgroup mounts: read once, as they do not move under a pool."""
    global _mounts
    if _mounts is None:
        _mounts = parse_mountinfo(_read_bytes("/proc/self/mountinfo") or b"")
    return _mounts


_mounts: tuple[CgroupMount, ...] | None = None


def parse_mountinfo(mountinfo: bytes) -> tuple[CgroupMount, ...]:
    """The v1 ``memory`` and the v2 cgroup mounts in a mountinfo file's text."""
    found = []
    for line in mountinfo.decode(errors="replace").splitlines():
        # "36 35 98:0 <root> <mount point> <options...> - <type> <source> <options>"
        mount, _, filesystem = line.partition(" - ")
        fields, (fs_type, *rest) = mount.split(), filesystem.split() or [""]
        if len(fields) < 5:
            continue
        root, mount_point = _unescape(fields[3]), _unescape(fields[4])
        options = rest[-1].split(",") if rest else []
        if fs_type == "cgroup2":
            found.append(CgroupMount(2, root, mount_point))
        elif fs_type == "cgroup" and "memory" in options:
            found.append(CgroupMount(1, root, mount_point))
    return tuple(found)


def machine_oom_kills() -> int | None:
    """OOM kills on this machine since boot (``/proc/vmstat``, kernel 4.13+)."""
    return _field(_read_bytes("/proc/vmstat"), b"oom_kill")


def _cgroup_paths(proc_cgroup: bytes | None) -> tuple[str | None, str | None]:
    """The v1 memory path and the v2 path in ``/proc/<pid>/cgroup``'s text."""
    v1_path = v2_path = None
    for line in (proc_cgroup or b"").decode(errors="replace").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if "memory" in controllers.split(","):
            v1_path = path
        elif hierarchy == "0" and not controllers:
            v2_path = path.removesuffix(" (deleted)")  # v2 marks a removed cgroup
    return v1_path, v2_path


def _directory_of(path: str, mounts: Sequence[CgroupMount]) -> str | None:
    """Where cgroup ``path`` is, under the mount of its deepest ancestor (a
    container may mount just its own subtree); None if no mount holds it."""
    best: tuple[int, str] | None = None
    for mount in mounts:
        root = mount.root.rstrip("/")
        if path != root and not path.startswith(root + "/"):
            continue
        if best is None or len(root) > best[0]:
            relative = path[len(root) :].strip("/")
            best = (len(root), posixpath.join(mount.mount_point, relative))
    return None if best is None else best[1].rstrip("/") or "/"


def _v2_limit(directory: str) -> int | None:
    """The smallest memory.max from ``directory`` up (the root cgroup has none):
    a parent's limit binds its children too."""
    limits = []
    while (text := _read_bytes(posixpath.join(directory, "memory.max"))) is not None:
        if text.strip() != b"max":
            limits.append(_int(text))
        directory, child = posixpath.dirname(directory), directory
        if directory == child:
            break
    return min((x for x in limits if x is not None), default=None)


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


# -- the kernel log ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KernelOomKill:
    """The kernel log's account of an OOM kill.

    Attributes:
        message: its "Killed process" line, e.g. ``"Memory cgroup out of memory:
            Killed process 8043 (python) total-vm:217844kB, anon-rss:69628kB..."``
            (or the "oom-kill:" summary line if that is all there is).
        memcg: the victim's memory cgroup, e.g. ``"/x"``, if the log names it.
    """

    message: str
    memcg: str | None


def kernel_oom_kill(pid: int) -> KernelOomKill | None:
    """The kernel log's latest OOM kill of ``pid``, or None if it names none.

    Raises OSError when the log cannot be read (it takes root, or
    ``kernel.dmesg_restrict=0``). Reads the whole log (~2 ms for 1,900 lines).
    The log names pids as the initial pid namespace sees them: see
    ``kernel_pids_are_ours``.
    """
    killed, summary = f"Killed process {pid} (", f",pid={pid},"
    message = memcg = None
    for line in _kernel_log():
        # The latest kill wins (an earlier one was of a previous owner of the
        # pid). Its "oom-kill:" summary, naming the cgroup, comes just before
        # its "Killed process" line, unless rate-limited (10 in 5 s).
        if line.startswith("oom-kill:") and summary in line:
            found = re.search(r"task_memcg=([^,]*)", line)
            message, memcg = line, found.group(1) if found else None
        elif killed in line:
            summarised = message is not None and message.startswith("oom-kill:")
            message, memcg = line, memcg if summarised else None
    return None if message is None else KernelOomKill(message, memcg)


def kernel_pids_are_ours() -> bool:
    """Whether this process sees pids as the kernel log names them: in a
    container with its own pid namespace, the log's pid 8043 is not ours."""
    global _in_initial_pid_namespace
    if _in_initial_pid_namespace is None:
        try:
            namespace = os.readlink("/proc/self/ns/pid")
        except OSError:
            namespace = ""
        _in_initial_pid_namespace = namespace == INITIAL_PID_NAMESPACE
    return _in_initial_pid_namespace


INITIAL_PID_NAMESPACE = "pid:[4026531836]"
"""The initial pid namespace's fixed inode (PROC_PID_INIT_INO, 0xEFFFFFFC)."""

_in_initial_pid_namespace: bool | None = None


def _kernel_log() -> Iterator[str]:
    """The kernel log's messages, oldest first."""
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            try:
                record = os.read(fd, 8192)  # one record a read; less: EINVAL
            except BrokenPipeError:  # the ring overwrote the next record: go on
                continue
            except BlockingIOError:  # the end
                return
            # "priority,sequence,microseconds,flags;message\n continuation..."
            message = record.partition(b";")[2].split(b"\n", 1)[0]
            yield message.decode(errors="replace")
    finally:
        os.close(fd)


# -- the verdict -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OomCounts:
    """OOM kills counted at one moment, with the cgroup's figures; None: unknown."""

    machine_oom_kills: int | None
    cgroup: CgroupMemory | None


def sigkill_verdict(
    before: OomCounts,
    after: OomCounts,
    *,
    cgroup_seen_at_death: bool = False,
    kernel_log: KernelOomKill | None = None,
    kernel_log_read: bool = False,
    last_rss: int | None = None,
    peak_rss: int | None = None,
) -> str:
    """Why a worker died of SIGKILL, in sentences for its crash message.

    ``before``: the counts when it started (its cgroup's: when it was last seen
    there); ``after``: at its death, for the cgroup it was in then if
    ``cgroup_seen_at_death``, else the same one. ``kernel_log``: the kernel's
    line about killing it; ``kernel_log_read``: the log was searched. The text
    says "out of memory" exactly when it blames (or suspects) the OOM killer.
    """
    cgroup = after.cgroup
    same_cgroup = (
        before.cgroup is not None
        and cgroup is not None
        and before.cgroup.directory == cgroup.directory
    )
    cgroup_more = _increase(
        before.cgroup.oom_kills if same_cgroup and before.cgroup else None,
        cgroup.oom_kills if cgroup else None,
    )
    machine_more = _increase(before.machine_oom_kills, after.machine_oom_kills)
    worker = _worker_figures(last_rss, peak_rss)
    elsewhere = f" (the machine counted {_kills(machine_more)})" if machine_more else ""
    # 1. The kernel logs every OOM kill with the victim's pid: where the log
    #    could be read, it settles the question.
    if kernel_log is not None:
        where = cgroup and f"in its memory cgroup {cgroup.directory}: {_limits(cgroup)}"
        figures = "; ".join(f for f in (where, worker) if f)
        return (
            "It ran out of memory: the kernel's OOM killer ended it"
            f"{f' ({figures})' if figures else ''}. The kernel log says: "
            f'"{kernel_log.message}". {_MORE_MEMORY}'
        )
    if kernel_log_read:
        return f"The kernel log names no OOM kill of it{elsewhere}, {_SOMEONE_ELSE}"
    # 2. The kernel counts an OOM kill in the victim's own cgroup (and in
    #    /proc/vmstat), before it sends the SIGKILL.
    if cgroup is not None and cgroup_more:
        counted = (
            f"its memory cgroup {cgroup.directory} counted {_kills(cgroup_more)}: "
            f"{_limits(cgroup)}"
        )
        return (
            "It ran out of memory: the kernel's OOM killer ended it "
            f"({counted}{f'; {worker}' if worker else ''}). {_MORE_MEMORY}"
        )
    if machine_more == 0:
        return (
            "No OOM kill was counted on this machine since the worker started, "
            f"{_SOMEONE_ELSE}"
        )
    # No kill in a cgroup it surely died in (seen there at death; or nothing
    # else counts) is no OOM kill of this worker.
    sure_of_cgroup = cgroup_seen_at_death or machine_more is None
    if (
        cgroup is not None
        and sure_of_cgroup
        and (cgroup_more == 0 or (not same_cgroup and cgroup.oom_kills == 0))
    ):
        return (
            f"No OOM kill was counted in its memory cgroup {cgroup.directory}"
            f"{elsewhere}, {_SOMEONE_ELSE}"
        )
    # 3. Only the machine counted one, and the worker may have been elsewhere.
    if machine_more:
        evidence = (
            f"the machine counted {_kills(machine_more)} since the worker started"
        )
        if cgroup is not None and same_cgroup:
            evidence += (
                f", none in its memory cgroup {cgroup.directory}, where it was "
                "last seen (it may have moved)"
            )
        elif cgroup is not None and cgroup.oom_kills:
            evidence += (
                f"; its memory cgroup {cgroup.directory}, which it moved into, "
                f"counted {_kills(cgroup.oom_kills, more='')} ({_limits(cgroup)})"
            )
        figures = f" ({worker})" if worker else ""
        return f"It most likely ran out of memory: {evidence}{figures}. {_MORE_MEMORY}"
    return (
        "Either the kernel's OOM killer or another process sent it: this system "
        "shows no OOM kill counts to tell which."
    )


_MORE_MEMORY = "Give the workers more memory, or run fewer of them or smaller tasks."
_SOMEONE_ELSE = "so something else sent SIGKILL: another process, or a supervisor."


def _increase(before: int | None, after: int | None) -> int | None:
    return None if before is None or after is None else max(after - before, 0)


def _kills(count: int, more: str = "more ") -> str:
    return f"{count} {more}OOM kill{'s' if count != 1 else ''}"


def _worker_figures(last_rss: int | None, peak_rss: int | None) -> str:
    figures = []
    if last_rss is not None:
        figures.append(f"the worker's last known memory {format_size(last_rss)}")
    if peak_rss is not None:
        figures.append(f"peak {format_size(peak_rss)}")
    return ", ".join(figures)


def _limits(cgroup: CgroupMemory) -> str:
    """``"limit 64.0 MiB, peak use 64.0 MiB"``."""
    figures = (
        "no limit" if cgroup.limit is None else f"limit {format_size(cgroup.limit)}"
    )
    if cgroup.peak is not None:
        figures += f", peak use {format_size(cgroup.peak)}"
    return figures


# -- following a worker ------------------------------------------------------------


class MemoryWatch:
    """One worker's memory, followed from the parent to explain a SIGKILL.

    Make it when the worker starts (~55 µs; a parked worker keeps its own for
    the executor that adopts it), ``refresh()`` it now and then (~2.5 µs: its
    RSS, and whether it moved to another memory cgroup), call
    ``explain_sigkill()`` when it died of SIGKILL, then ``close()``. It holds two
    file descriptors on the worker's ``/proc`` entry, which stop answering once
    the worker is reaped, so a reused pid cannot fool it. Called before the
    worker is reaped, ``explain_sigkill()`` also sees a v2 cgroup it moved into
    at the last instant. Owned by one thread.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.last_rss: int | None = None
        self.peak_rss: int | None = None
        self._statm_fd = _open_or_none(f"/proc/{pid}/statm")
        self._cgroup_fd = _open_or_none(f"/proc/{pid}/cgroup")
        self._closer = weakref.finalize(
            self, _close_fds, self._statm_fd, self._cgroup_fd
        )
        self._cgroup_text = self._read_cgroup_text()
        self._before = OomCounts(
            machine_oom_kills(), self._read_cgroup(self._cgroup_text)
        )

    def refresh(self) -> int | None:
        """The worker's RSS now (None once it died), kept as ``last_rss`` and
        ``peak_rss``; a move to another memory cgroup starts a new baseline."""
        if self._statm_fd is None:  # without /proc: psutil's answer, by pid
            rss = None if _HAS_PROC else resident_bytes(self.pid)
        else:
            try:
                rss = _rss_from_statm(os.pread(self._statm_fd, 128, 0))
            except OSError:  # ESRCH: reaped
                rss = None
        if rss is None:
            return None  # dying: its v1 cgroup would read "/" now
        self.last_rss = rss
        self.peak_rss = max(rss, self.peak_rss or 0)
        text = self._read_cgroup_text()
        if text is not None and text != self._cgroup_text:
            self._follow_move(text)
        return rss

    def explain_sigkill(self) -> str:
        """Why the worker died of SIGKILL, in sentences for its crash message
        (``sigkill_verdict``); best called before the worker is reaped."""
        at_death = self._read_cgroup_text()
        seen_at_death = at_death is not None and _cgroup_paths(at_death)[0] is None
        cgroup = self._read_cgroup(at_death if seen_at_death else self._cgroup_text)
        after = OomCounts(machine_oom_kills(), cgroup)
        kill, log_read = None, False
        more = _increase(self._before.machine_oom_kills, after.machine_oom_kills)
        if more != 0 and kernel_pids_are_ours():  # ~2 ms: only after an OOM kill
            with contextlib.suppress(OSError):  # not readable here
                kill, log_read = kernel_oom_kill(self.pid), True
        if kill is not None:
            victims = self._victims_cgroup(kill, after.cgroup, seen_at_death)
            after = OomCounts(after.machine_oom_kills, victims)
        return sigkill_verdict(
            self._before,
            after,
            cgroup_seen_at_death=seen_at_death,
            kernel_log=kill,
            kernel_log_read=log_read,
            last_rss=self.last_rss,
            peak_rss=self.peak_rss,
        )

    def close(self) -> None:
        """Let go of the worker's ``/proc`` entry."""
        self._closer()
        self._statm_fd = self._cgroup_fd = None

    def _victims_cgroup(
        self, kill: KernelOomKill, cgroup: CgroupMemory | None, seen_at_death: bool
    ) -> CgroupMemory | None:
        """The cgroup the OOM kill happened in: the one the kernel log names (its
        summary line is rate-limited: 10 in 5 s), else the one it was last seen
        in if it is sure: seen at death, or counting the kill."""
        named = None if kill.memcg is None else _cgroup_named(kill.memcg)
        if named is not None or cgroup is None or seen_at_death:
            return named or cgroup
        known = self._before.cgroup
        counted = (
            known is not None
            and known.directory == cgroup.directory
            and (_increase(known.oom_kills, cgroup.oom_kills) or 0) > 0
        )
        return cgroup if counted else None

    def _follow_move(self, text: bytes) -> None:
        """The worker's cgroups changed: a new memory cgroup gets a new baseline."""
        v1_path = _cgroup_paths(text)[0]
        if v1_path == "/" and _cgroup_paths(self._cgroup_text)[0] != "/":
            return  # what an exiting process shows in v1: a death, not a move
        self._cgroup_text = text
        moved_to = self._read_cgroup(text)
        known = self._before.cgroup
        if moved_to is None or known is None or moved_to.directory != known.directory:
            self._before = OomCounts(self._before.machine_oom_kills, moved_to)

    def _read_cgroup_text(self) -> bytes | None:
        if self._cgroup_fd is None:
            return None
        try:
            return os.pread(self._cgroup_fd, 65536, 0)
        except OSError:  # ESRCH: reaped
            return None

    @staticmethod
    def _read_cgroup(text: bytes | None) -> CgroupMemory | None:
        located = locate_memory_cgroup(text, cgroup_mounts())
        return None if located is None else read_cgroup_memory(*located)


def _cgroup_named(path: str) -> CgroupMemory | None:
    """The memory cgroup at ``path`` (as the kernel log names it), if mounted here."""
    mounts = cgroup_mounts()
    version: Literal[1, 2] = 1 if any(m.version == 1 for m in mounts) else 2
    directory = _directory_of(path, [m for m in mounts if m.version == version])
    if directory is None or not os.path.isdir(directory):
        return None
    return read_cgroup_memory(directory, version)


# -- reading files -----------------------------------------------------------------


def _read_bytes(path: str) -> bytes | None:
    """A file's contents, or None if it cannot be read (gone, not there, refused)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _int(text: bytes | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _field(text: bytes | None, key: bytes) -> int | None:
    """The number after ``key`` in a file of "key value" lines (vmstat, events);
    found, not split: /proc/vmstat has ~180 lines."""
    lines = b"\n" + (text or b"")
    at = lines.find(b"\n" + key + b" ")
    if at < 0:
        return None
    start = at + len(key) + 2
    end = lines.find(b"\n", start)
    return _int(lines[start : end if end >= 0 else None])


def _open_or_none(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError:
        return None


def _close_fds(*fds: int | None) -> None:
    for fd in fds:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
