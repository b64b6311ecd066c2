"""Start-up at fork speed: what a fresh executor costs before its first result.

Code that opens a process pool where it needs one (a script, a command-line tool,
a function called now and then) pays for starting the workers every time, in a
process that has just started itself. The claim: stalwart's default
start method, which must stay safe where plain ``fork`` is not (a parent running
threads, or CUDA), should cost about what the stdlib's ``fork`` costs, and much
less than ``forkserver`` and ``spawn``, the stdlib's safe start methods, which
start and import a fresh interpreter per worker. Every sample runs in a fresh
interpreter, running a small script file, so nothing is warm but what the
program itself did: it imports what it needs at the top of the script
(untimed), then times with ``time.perf_counter``. Being a script, it is what
spawn and forkserver workers import again, heavy imports included, as they
would a user's script (407 ms and 507 ms were measured before this start
method existed). Four
measurements. (1) Cold ``with`` block: ``with Executor(max_workers=2, ...) as
ex: list(ex.map(_work.tiny, range(4)))``, for the stdlib's
``ProcessPoolExecutor`` with ``mp_context=multiprocessing.get_context(m)`` for
``m`` in fork, forkserver and spawn, ``stalwart.ProcessPoolExecutor`` with its
default start method (no ``mp_context``) and stalwart with
``mp_context="fork"``; in a bare parent (which imported only
``concurrent.futures``, ``multiprocessing`` and stalwart) and in an import-heavy
one (which also imported ``dask.distributed``, ``pylint.lint`` and ``black``:
more memory for ``fork`` to map). The same process then runs a second, identical
block, shown for information: what is left warm (a forkserver, a resource
tracker) once a program has opened one pool. (2) Many short-lived executors:
one fresh process runs ``with Executor(2) as ex: ex.submit(_work.tiny,
i).result()`` for 200 values of ``i`` in a row (20 with ``--quick``), timed as
a whole. (3) First
result: from the constructor to the return of the first
``submit(...).result()``. (4) Real clients, unchanged: ``pylint -j 2`` and
``black --check --workers 2`` on a generated tree of a few hundred small,
realistic modules, each run a fresh process timed from the outside (wall time,
start-up and imports included). The stdlib run is the unmodified tool with the
``fork`` start method forced (Python's default on Linux before 3.14); the
stalwart run is the same command, but it first sets
``concurrent.futures.ProcessPoolExecutor`` (and
``concurrent.futures.process.ProcessPoolExecutor``) to
``stalwart.ProcessPoolExecutor``, as a user monkeypatching a tool would, and
its exit status and output must equal the stdlib run's: a difference is a
drop-in bug and misses the bar. black gets a fresh, empty ``BLACK_CACHE_DIR``
each run and checks files that all need reformatting, so every run formats
every file. Every run is started in its own session; the program waits for
what the run left in it (a start method's helpers exit with their parent),
kills whatever stays and reports it. Contenders are interleaved within each
repetition, their order rotating; figures are medians over the repetitions and
ratios are ratios of medians.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import _common
import psutil

if TYPE_CHECKING:
    from collections.abc import Callable

HERE = Path(__file__).resolve().parent
WORKERS = 2
"""Every executor here gets two workers (the figure the bars were set for), whatever the CPUs."""
FORK_BAR = 2.0
"""The bar: stalwart's default start costs ≤ 2x the stdlib's fork."""
SAFE_BAR = 5.0
"""The bar: stalwart's default start is ≥ 5x faster than forkserver and spawn."""
CLIENT_BAR = 1.05
"""The bar: a real client, monkeypatched to stalwart, takes ≤ 1.05x its time
with the stdlib's fork."""
LOOP_BLOCKS = {False: 200, True: 20}  # full, --quick
MODULES = {False: 300, True: 100}
"""Modules in the generated tree: one pylint -j 2 run takes a few seconds."""
RESULT_TIMEOUT_S = 60.0
"""How long a child waits for one result (or one map) before it gives up."""
CHILD_TIMEOUT_S = 120
LOOP_TIMEOUT_S = 300
CLIENT_TIMEOUT_S = 300
LINGER_S = 10.0
"""How long a finished run's leftover processes get to exit by themselves."""

STDLIB = "concurrent.futures.ProcessPoolExecutor"
CONTENDERS: dict[str, tuple[bool, str | None, str]] = {
    # key: (stalwart?, start method or None for the default, label)
    "stalwart": (True, None, "`stalwart.ProcessPoolExecutor` (default `mp_context`)"),
    "stdlib-fork": (False, "fork", f'`{STDLIB}`, `get_context("fork")`'),
    "stdlib-forkserver": (
        False,
        "forkserver",
        f'`{STDLIB}`, `get_context("forkserver")`',
    ),
    "stdlib-spawn": (False, "spawn", f'`{STDLIB}`, `get_context("spawn")`'),
    "stalwart-template": (
        True,
        "template",
        '`stalwart.ProcessPoolExecutor(mp_context="template")`: what a parent'
        " that runs threads gets (the template starts in the first block)",
    ),
    "stalwart-fork": (
        True,
        "fork",
        '`stalwart.ProcessPoolExecutor(mp_context="fork")`',
    ),
}
PAIR: tuple[str, ...] = ("stalwart", "stdlib-fork")
"""The contenders of the many-executors and first-result measurements."""
PARENTS = {
    "bare": "bare parent",
    "heavy": "import-heavy parent (`dask.distributed`, `pylint.lint`, `black`)",
}
CLIENTS = ("pylint", "black")
SIDES: tuple[str, ...] = ("stdlib", "stalwart")
CLIENT_LABELS = {
    "stdlib": 'unchanged, `multiprocessing.set_start_method("fork")`',
    "stalwart": "unchanged, `concurrent.futures.ProcessPoolExecutor` patched to "
    "`stalwart.ProcessPoolExecutor`",
}
Run = dict[str, Any]
"""One run: ``seconds`` (and ``second``, ``returncode``) or ``error``, and
``leftovers``: what it left running, killed."""

CHILD = """\
import json, sys, time
spec = json.loads(sys.argv[1])
sys.path.insert(0, spec["path"])
import concurrent.futures, multiprocessing
import stalwart
if spec["heavy"]:
    import black, dask.distributed, pylint.lint
import _work

if spec["stalwart"]:
    Executor = stalwart.ProcessPoolExecutor
    options = {"mp_context": spec["method"]} if spec["method"] else {}
else:
    Executor = concurrent.futures.ProcessPoolExecutor
    options = {"mp_context": multiprocessing.get_context(spec["method"])}
T = spec["timeout"]

def with_block():
    start = time.perf_counter()
    with Executor(max_workers=2, **options) as ex:
        results = list(ex.map(_work.tiny, range(4), timeout=T))
    elapsed = time.perf_counter() - start
    if results != [0, 1, 2, 3]:
        raise SystemExit(f"wrong results: {results}")
    return elapsed

def many_blocks(n):
    start = time.perf_counter()
    for i in range(n):
        with Executor(2, **options) as ex:
            if ex.submit(_work.tiny, i).result(timeout=T) != i:
                raise SystemExit("wrong result")
    return time.perf_counter() - start

def first_result():
    start = time.perf_counter()
    ex = Executor(max_workers=2, **options)
    value = ex.submit(_work.tiny, 7).result(timeout=T)
    elapsed = time.perf_counter() - start
    ex.shutdown(wait=True)
    if value != 7:
        raise SystemExit("wrong result")
    return elapsed

if __name__ == "__main__":  # spawn and forkserver workers import this script
    if spec["mode"] == "cold":
        out = {"seconds": with_block(), "second": with_block()}
    elif spec["mode"] == "loop":
        out = {"seconds": many_blocks(spec["blocks"])}
    else:
        out = {"seconds": first_result()}
    print(json.dumps(out))
"""
"""One sample, in a fresh interpreter: the imports are done before any clock."""

CLIENT = """\
import json, multiprocessing, sys
spec = json.loads(sys.argv[1])
if "fork" in multiprocessing.get_all_start_methods():
    multiprocessing.set_start_method("fork", force=True)
if spec["stalwart"]:
    import concurrent.futures, concurrent.futures.process, stalwart
    concurrent.futures.ProcessPoolExecutor = stalwart.ProcessPoolExecutor
    concurrent.futures.process.ProcessPoolExecutor = stalwart.ProcessPoolExecutor
sys.argv = [spec["tool"], *spec["argv"]]
if spec["tool"] == "pylint":
    from pylint import run_pylint
    run_pylint(spec["argv"])
else:
    import black
    black.patched_main()
"""
"""One run of a real client, unchanged but for the start method and the patch."""


# -- running a fresh process, and what it leaves behind ---------------------------


@dataclass
class Done:
    """How a fresh process ended."""

    returncode: int | None  # None: it timed out and was killed
    stdout: str
    stderr: str
    seconds: float  # wall time, start to exit
    leftovers: list[str]  # what it left running in its session, killed


def session_members(sid: int) -> list[psutil.Process]:
    """The live processes of session ``sid``: a run and whatever it started."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
    return members


def end_session(sid: int, wait_s: float) -> list[str]:
    """Give session ``sid``'s processes ``wait_s`` to exit by themselves (a
    start method's helpers do, once their parent has), then kill the rest;
    return the command lines of those killed."""
    _, alive = psutil.wait_procs(session_members(sid), timeout=wait_s)
    killed = []
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            killed.append(f"pid {proc.pid}: {' '.join(proc.cmdline())[:120]}")
            proc.kill()
    return killed


def run_fresh(
    command: list[str], timeout_s: float, env: dict[str, str] | None = None
) -> Done:
    """Run ``command`` in a session of its own and time it; neither it nor
    anything it started outlives the call."""
    start = time.perf_counter()
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
        errors="replace",
        start_new_session=True,
        env=env,
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
            returncode: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            end_session(proc.pid, 0)
            stdout, stderr, returncode = "", "", None
            with contextlib.suppress(subprocess.TimeoutExpired):
                stdout, stderr = proc.communicate(timeout=LINGER_S)
        seconds = time.perf_counter() - start
    return Done(returncode, stdout, stderr, seconds, end_session(proc.pid, LINGER_S))


def failure(done: Done, timeout_s: float) -> str | None:
    """Why a run failed, or None."""
    if done.returncode is None:
        return f"timed out after {timeout_s:.0f} s"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no stderr"])[-1]
        return f"exited with status {done.returncode}: {last[:200]}"
    return None


def _child_script() -> str:
    """CHILD, as a script file (written once per run of this program)."""
    if not _CHILD_FILE:
        fd, path = tempfile.mkstemp(prefix="bench_startup_child_", suffix=".py")
        with os.fdopen(fd, "w") as script:
            script.write(CHILD)
        atexit.register(os.unlink, path)
        _CHILD_FILE.append(path)
    return _CHILD_FILE[0]


_CHILD_FILE: list[str] = []


def sample(contender: str, mode: str, heavy: bool = False, blocks: int = 0) -> Run:
    """One sample of ``mode`` (cold, loop, first) for ``contender`` in a fresh
    interpreter: its figures (``seconds``, for cold also ``second``) or
    ``error``, and ``leftovers``."""
    is_stalwart, method, _ = CONTENDERS[contender]
    spec = {
        "path": str(HERE),
        "heavy": heavy,
        "stalwart": is_stalwart,
        "method": method,
        "mode": mode,
        "blocks": blocks,
        "timeout": RESULT_TIMEOUT_S,
    }
    timeout_s = LOOP_TIMEOUT_S if mode == "loop" else CHILD_TIMEOUT_S
    done = run_fresh([sys.executable, _child_script(), json.dumps(spec)], timeout_s)
    run: Run = {"leftovers": done.leftovers}
    why = failure(done, timeout_s)
    if why is None:
        try:
            run.update(json.loads(done.stdout.strip().splitlines()[-1]))
        except (IndexError, ValueError):
            why = f"printed no figures: {done.stdout[-200:]!r}"
    if why is not None:
        run["error"] = why
    return run


# -- the real clients -------------------------------------------------------------

NOUNS = ("account", "invoice", "sensor", "ticket", "order", "shipment", "device")
CLASS = (
    "",
    "",
    "@dataclass",
    "class {cls}:",
    "    '''One {noun} as stored on disk.'''",
    "",
    "    name: str",
    "    size: int = 0",
    "    tags: list = field(default_factory=list)",
    "    parent: Optional[str] = None",
    "",
    "    def describe(self) -> str:",
    "        '''A one-line summary.'''",
    "        return '%s (%d, %d tags)' % (self.name, self.size, len(self.tags))",
    "",
    "    def merge(self, other, strict=False):",
    "        if strict and other.name!=self.name:",
    "            raise ValueError('cannot merge %s into %s' % (other.name, self.name))",
    "        total=self.size+other.size",
    "        return {cls}(self.name, total, self.tags + other.tags, self.parent)",
)
FUNCTIONS = (
    (
        "def load_{noun}s_{k}(path, default = None):",
        "    '''Read the records of a JSON file, or ``default``.'''",
        "    if not os.path.exists(path):",
        "        return default",
        "    with open(path) as handle:",
        "        data = json.load(handle)",
        "    return [{cls}(**item) for item in data]",
    ),
    (
        "def summarize_{k}(records, limit=LIMIT_{index}):",
        "    unused = 0",
        "    result = {{}}",
        "    for record in records[:limit]:",
        "        key = record.name.lower()",
        "        result[key] = result.get(key, 0)+record.size",
        "    return sorted(result.items(), key=lambda kv: -kv[1])",
    ),
    (
        "def validate_{k}(record, names=[]):",
        "    '''Check one record; return the problems found.'''",
        "    problems = []",
        "    if not record.name: problems.append('missing name')",
        "    if record.size<0:",
        "        problems.append('negative size: %d' % record.size)",
        "    for tag in record.tags:",
        "        if tag in names:",
        "            problems.append('duplicate tag ' + tag)",
        "    return problems",
    ),
    (
        "def save_{k}(records, path):",
        "    '''Write the records to ``path`` as JSON.'''",
        "    payload = [{{'name': r.name, 'size': r.size, 'tags': r.tags}} for r in records]",
        "    with open(path, 'w') as handle:",
        "        json.dump(payload, handle, indent = 2)",
        "    return len(payload)",
    ),
)
"""Templates (``str.format``) of the generated modules' class and functions."""


def module_source(index: int, rng: random.Random) -> str:
    """A small, plausible module (40-80 lines) that black reformats (single
    quotes, cramped operators) and pylint has a few things to say about."""
    noun = rng.choice(NOUNS)
    names = {"noun": noun, "cls": noun.capitalize() + "Record", "index": index}
    lines = [
        f"'''Records and helpers for the {noun} service (module {index}).'''",
        "import json",
        "import os",
        "from dataclasses import dataclass, field",
        "from typing import Optional",
    ]
    if index and rng.random() < 0.5:  # something for astroid to follow
        lines.append(f"from . import mod_{rng.randrange(index):03d}")
    lines += [
        "",
        f"LIMIT_{index} = {rng.randint(10, 999)}",
        f"DEFAULTS = {{'name': '{noun}{index}', 'size': {rng.randint(0, 99)}}}",
        *(line.format(**names) for line in CLASS),
    ]
    for k in range(rng.randint(1, 4)):
        lines += ["", ""] + [f.format(k=k, **names) for f in rng.choice(FUNCTIONS)]
    return "\n".join(lines) + "\n"


def make_tree(root: Path, modules: int) -> Path:
    """Write the package ``pkg`` of ``modules`` modules under ``root``, the same
    every time (a fixed seed); return its directory."""
    rng = random.Random(12)
    package = root / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("'''The generated package.'''\n")
    for index in range(modules):
        (package / f"mod_{index:03d}.py").write_text(module_source(index, rng))
    return package


def client_run(tool: str, use_stalwart: bool, package: Path, scratch: Path) -> Done:
    """One run of ``tool`` over ``package`` in a fresh process, configured by
    the (empty) files in ``scratch`` only, never by the user's."""
    env = dict(os.environ)
    if tool == "pylint":
        argv = ["-j", str(WORKERS), f"--rcfile={scratch / 'pylintrc'}"]
        argv += ["--persistent=n", "--score=n", "--disable=duplicate-code"]
        env["PYLINTHOME"] = str(scratch / "pylint-home")
    else:
        argv = ["--check", "--workers", str(WORKERS)]
        argv += [f"--config={scratch / 'black.toml'}"]
        env["BLACK_CACHE_DIR"] = tempfile.mkdtemp(prefix="black-cache-", dir=scratch)
    spec = {"tool": tool, "stalwart": use_stalwart, "argv": [*argv, str(package)]}
    command = [sys.executable, "-c", CLIENT, json.dumps(spec)]
    return run_fresh(command, CLIENT_TIMEOUT_S, env)


def difference(stdlib: Done, ours: Done) -> str | None:
    """What differs between the two runs' exit statuses and output (lines in
    any order: workers finish in any order), or None."""
    if stdlib.returncode != ours.returncode:
        return f"exit status {ours.returncode} (stdlib: {stdlib.returncode})"
    for stream in ("stdout", "stderr"):
        theirs = sorted(getattr(stdlib, stream).splitlines())
        mine = sorted(getattr(ours, stream).splitlines())
        if theirs != mine:
            only_ours = sorted(set(mine) - set(theirs))[:3]
            only_theirs = sorted(set(theirs) - set(mine))[:3]
            return (
                f"{stream}: only with stalwart {only_ours}, only stdlib {only_theirs}"
            )
    return None


# -- measuring --------------------------------------------------------------------


@dataclass
class Results:
    """Every run of every measurement (a run: a dict, see ``sample``)."""

    cold: dict[tuple[str, str], list[Run]]  # (parent, contender)
    loop: dict[str, list[Run]]
    first: dict[str, list[Run]]
    clients: dict[tuple[str, str], list[Run]]  # (tool, "stdlib" or "stalwart")
    mismatches: dict[str, list[str]]  # tool: the differences, one per rep
    leftovers: list[str]


def rotated(items: tuple[str, ...], rep: int) -> tuple[str, ...]:
    shift = rep % len(items)  # no contender always goes first
    return items[shift:] + items[:shift]


def record(results: Results, what: str, run: Run) -> None:
    """Report a run on stderr, and what it left behind."""
    if run["leftovers"]:
        _common.progress(
            f"  {what}: {len(run['leftovers'])} process(es) still running "
            f"{LINGER_S:.0f} s after it ended; killed: {'; '.join(run['leftovers'])}"
        )
        results.leftovers.extend(f"{what}: {item}" for item in run["leftovers"])
    outcome = f"FAILED: {run['error']}" if "error" in run else f"{run['seconds']:.3f} s"
    if "second" in run:
        outcome += f" (second block {run['second']:.3f} s)"
    _common.progress(f"{what}: {outcome}")


def measure(reps: int, blocks: int, package: Path, scratch: Path) -> Results:
    results = Results(
        cold={(p, c): [] for p in PARENTS for c in CONTENDERS},
        loop={c: [] for c in PAIR},
        first={c: [] for c in PAIR},
        clients={(t, s): [] for t in CLIENTS for s in SIDES},
        mismatches={t: [] for t in CLIENTS},
        leftovers=[],
    )
    for rep in range(reps):
        step = f"startup rep {rep + 1}/{reps}"
        for parent in PARENTS:
            for contender in rotated(tuple(CONTENDERS), rep):
                run = sample(contender, "cold", heavy=parent == "heavy")
                results.cold[parent, contender].append(run)
                record(results, f"{step} cold {parent} {contender}", run)
        for mode, runs in (("loop", results.loop), ("first", results.first)):
            for contender in rotated(PAIR, rep):
                run = sample(contender, mode, blocks=blocks)
                runs[contender].append(run)
                record(results, f"{step} {mode} {contender}", run)
        for tool in CLIENTS:
            done: dict[str, Done] = {}
            for side in rotated(SIDES, rep):
                done[side] = client_run(tool, side == "stalwart", package, scratch)
                run = {"seconds": done[side].seconds, "leftovers": done[side].leftovers}
                run["returncode"] = done[side].returncode
                if done[side].returncode is None:
                    run["error"] = f"timed out after {CLIENT_TIMEOUT_S} s"
                results.clients[tool, side].append(run)
                record(results, f"{step} {tool} {side} (exit {run['returncode']})", run)
            differs = difference(done["stdlib"], done["stalwart"])
            if differs:
                results.mismatches[tool].append(differs)
                _common.progress(
                    f"!!! DROP-IN BUG: {tool} behaves differently with stalwart: "
                    f"{differs}\n!!! its stderr ends: {done['stalwart'].stderr[-1500:]}"
                )
    return results


# -- the report -------------------------------------------------------------------


def med(runs: list[Run], key: str = "seconds") -> float | None:
    values = [r[key] for r in runs if "error" not in r]
    return _common.median(values) if values else None


def seconds_cells(runs: list[Run], fmt: str) -> list[str]:
    """The median and min-max cells; failed runs are named, not hidden."""
    values = [r["seconds"] for r in runs if "error" not in r]
    errors = "; ".join(sorted({r["error"] for r in runs if "error" in r}))
    if not values:
        return [f"failed: {errors}", "—"]
    cell = f"{_common.median(values):{fmt}}"
    if errors:
        cell += f" ({len(runs) - len(values)} failed: {errors})"
    return [cell, _common.spread(values, fmt)]


class Report:
    """The table's rows and the verdicts, built measurement by measurement."""

    def __init__(self) -> None:
        self.rows: list[list[str]] = []
        self.bars: list[dict[str, str]] = []

    def compare(
        self,
        measurement: str,
        ours: list[Run],
        theirs: list[Run],
        bar: str,
        passes: Callable[[float], bool],
        *,
        faster: bool = False,
        flaw: str = "",
        fmt: str = ".3f",
    ) -> tuple[str, list[str]]:
        """Judge stalwart's runs against another contender's: the ratio of
        medians is stalwart's time over theirs (``faster``: theirs over
        stalwart's). A failed stalwart run, or a ``flaw``, misses the bar.
        Return the row's ratio cell and its bar and verdict cells."""
        a, b = med(ours), med(theirs)
        if a is None or b is None:
            ratio, measured = None, "n/a: a contender failed every run"
        else:
            ratio = b / a if faster else a / b
            first, second = (b, a) if faster else (a, b)
            measured = f"{ratio:.2f}x ({first:{fmt}} vs {second:{fmt}} s)"
        failed = sum("error" in r for r in ours)
        if failed:
            measured += f"; stalwart failed {failed} of {len(ours)} runs"
        if flaw:
            measured += f"; {flaw}"
        passed = ratio is not None and passes(ratio) and not failed and not flaw
        verdict = _common.verdict(passed)
        self.bars.append({"bar": f"{measurement}: {bar}", "measured": measured})
        self.bars[-1]["verdict"] = verdict
        if ratio is None:
            return "n/a", [bar, verdict]
        how = "this ÷ stalwart" if faster else "stalwart ÷ this"
        return f"{ratio:.2f}x ({how})", [bar, verdict]


def report(results: Results, blocks: int, modules: int) -> Report:
    """Every row of the table, and every verdict."""
    out = Report()
    not_slower = f"stalwart ≤ {FORK_BAR:g}x stdlib fork's time"
    for parent, parent_title in PARENTS.items():
        measurement = f"cold `with` block, {parent_title}"
        ours = results.cold[parent, "stalwart"]
        for contender, (_, method, label) in CONTENDERS.items():
            runs = results.cold[parent, contender]
            ratio_cell, bar_cells = "—", ["", ""]
            if contender == "stdlib-fork":
                ratio_cell, bar_cells = out.compare(
                    measurement, ours, runs, not_slower, lambda r: r <= FORK_BAR
                )
            elif contender in ("stdlib-forkserver", "stdlib-spawn"):
                ratio_cell, bar_cells = out.compare(
                    measurement,
                    ours,
                    runs,
                    f"stalwart ≥ {SAFE_BAR:g}x faster than stdlib {method}",
                    lambda r: r >= SAFE_BAR,
                    faster=True,
                )
            elif contender in ("stalwart-fork", "stalwart-template"):
                a, b = med(ours), med(runs)
                if a is not None and b is not None:
                    ratio_cell = f"{a / b:.2f}x (stalwart ÷ this)"
            second = med(runs, "second")
            out.rows.append(
                [
                    measurement,
                    label,
                    *seconds_cells(runs, ".3f"),
                    "—" if second is None else f"{second:.3f}",
                    ratio_cell,
                    *bar_cells,
                ]
            )

    for measurement, runs_of, fmt in (
        (f"{blocks} short-lived executors in one process (total)", results.loop, ".2f"),
        ("constructor to first `submit().result()`", results.first, ".3f"),
    ):
        ours, theirs = runs_of["stalwart"], runs_of["stdlib-fork"]
        ratio_cell, bar_cells = out.compare(
            measurement, ours, theirs, not_slower, lambda r: r <= FORK_BAR, fmt=fmt
        )
        for contender, runs, cells in (
            ("stalwart", ours, ["—", "", ""]),
            ("stdlib-fork", theirs, [ratio_cell, *bar_cells]),
        ):
            label = CONTENDERS[contender][2]
            out.rows.append(
                [measurement, label, *seconds_cells(runs, fmt), "—", *cells]
            )

    for tool, command in (
        ("pylint", f"`pylint -j {WORKERS}`"),
        ("black", f"`black --check --workers {WORKERS}`"),
    ):
        measurement = f"real client: {command} on {modules} modules"
        mismatches = results.mismatches[tool]
        ours, theirs = (
            results.clients[tool, "stalwart"],
            results.clients[tool, "stdlib"],
        )
        ratio_cell, bar_cells = out.compare(
            measurement,
            ours,
            theirs,
            f"stalwart ≤ {CLIENT_BAR:g}x stdlib fork's wall time, same exit status "
            "and output",
            lambda r: r <= CLIENT_BAR,
            flaw=f"DROP-IN BUG in {len(mismatches)} run(s)" if mismatches else "",
            fmt=".2f",
        )
        for side, runs, cells in (
            ("stalwart", ours, ["—", "", ""]),
            ("stdlib", theirs, [ratio_cell, *bar_cells]),
        ):
            statuses = ", ".join(sorted({str(r["returncode"]) for r in runs}))
            label = f"{CLIENT_LABELS[side]} (exit status {statuses})"
            if side == "stalwart" and mismatches:
                label += f"; **DROP-IN BUG**: {mismatches[0]}".replace("|", "\\|")
            out.rows.append(
                [measurement, label, *seconds_cells(runs, ".2f"), "—", *cells]
            )
    return out


def main() -> None:
    args = _common.parse_args(__doc__, default_reps=5, quick_reps=2)
    blocks, modules = LOOP_BLOCKS[args.quick], MODULES[args.quick]
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        scratch = Path(tmp)
        package = make_tree(scratch, modules)
        (scratch / "pylintrc").write_text("[MAIN]\n")
        (scratch / "black.toml").write_text("")
        results = measure(args.reps, blocks, package, scratch)
    out = report(results, blocks, modules)
    table = _common.markdown_table(
        [
            "measurement",
            "executor",
            "median s",
            "min-max s",
            "second `with` block in the same process, median s",
            "compared with stalwart",
            "bar",
            "verdict",
        ],
        out.rows,
    )
    _common.emit(
        args,
        title="Start-up: a fresh executor in a fresh process",
        doc=__doc__,
        table=table,
        params=(
            f"{WORKERS} workers per executor, tasks of `_work.tiny`, every sample in "
            f"a fresh interpreter; {blocks} `with` blocks per short-lived-executors "
            f"run. Real clients: a generated package of {modules} modules of 40-80 "
            "lines; pylint with `duplicate-code` disabled, black with a fresh cache "
            "each run. Python's default start method here: "
            f"`{multiprocessing.get_start_method()}`. Processes a run left behind "
            f"(killed {LINGER_S:.0f} s after it ended): "
            f"{len(results.leftovers) or 'none'}. Median of {args.reps} interleaved "
            "repetitions."
        ),
        bars=out.bars,
        raw={
            "workers": WORKERS,
            "loop_blocks": blocks,
            "modules": modules,
            "cold": [
                {"parent": p, "contender": c, "runs": runs}
                for (p, c), runs in results.cold.items()
            ],
            "loop": results.loop,
            "first_result": results.first,
            "clients": [
                {"tool": t, "side": s, "runs": runs}
                for (t, s), runs in results.clients.items()
            ],
            "client_mismatches": results.mismatches,
            "leftovers": results.leftovers,
        },
    )


if __name__ == "__main__":
    main()
