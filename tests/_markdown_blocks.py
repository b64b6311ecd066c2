"""The fenced code blocks of README.md and docs/, read as programs to run.

The convention every page follows, so that a changed API breaks a test, not a
reader:

* A block whose info string is exactly ``python`` is a complete program. It is
  written to ``example.py`` in a fresh directory and run there with this
  interpreter (environment inherited, stalwart importable as the tests import
  it); it must exit 0 within ``RUN_TIMEOUT`` seconds.
* A ``python`` block whose preceding non-blank line is
  ``<!-- docs-test: skip: REASON -->`` is not run (a fragment, a sketch that
  needs a cluster); the test reports it skipped, with REASON.
* Blocks tagged anything else (``pycon``, ``text``, ``console``, ``bash``,
  ``toml``...) or nothing are never run. A tag that looks like Python but is not
  exactly ``python`` (``py``, ``python3``, ``python title="x"``) is refused
  (``looks_like_python``): it would silently escape the test.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUN_TIMEOUT = 120.0  # seconds a block may run
STDERR_LINES = 40  # lines of stderr a failure shows

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:(?P<body>.*?)-->\s*$")
_SKIP = re.compile(r"^\s*skip:\s*(?P<reason>\S.*?)\s*$")
_PYTHONISH = re.compile(r"^(py|python|python3|py3)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Block:
    """One fenced code block."""

    path: Path
    line: int  # of the opening fence, counted from 1
    info: str  # the info string, stripped: "python", "text", ""
    code: str  # the content, the fence's indentation removed
    marker: str | None  # the docs-test comment just before it, as written
    marker_line: int | None

    @property
    def where(self) -> str:
        """``file:line``, the file relative to the repository."""
        return f"{_name(self.path)}:{self.line}"

    @property
    def runs(self) -> bool:
        """Whether the convention makes this block a program to run."""
        return self.info == "python"

    @property
    def skip_reason(self) -> str | None:
        """The REASON of a well-formed skip marker before this block, else None."""
        if self.marker is None:
            return None
        match = _SKIP.match(_MARKER.match(self.marker).group("body"))  # type: ignore[union-attr]
        return match.group("reason") if match else None

    @property
    def looks_like_python(self) -> bool:
        """Tagged as Python, but not exactly ``python``: it would never run."""
        return self.info != "python" and bool(_PYTHONISH.match(self.info))


def _name(path: Path) -> str:
    """``path`` relative to the repository where it is inside it."""
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block in ``path``, in order.

    A fence may be indented (a block inside a list item); it closes at a line of
    the same character, at least as long, and nothing else. A block left open
    runs to the end of the file, as in CommonMark.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None or (
            opening["fence"][0] == "`" and "`" in opening["info"]
        ):  # an inline code span at the start of a line, not a fence
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        start = index
        body = []
        index += 1
        while index < len(lines):
            text = lines[index]
            stripped = text.strip()
            if stripped.startswith(fence) and set(stripped) == {fence[0]}:
                break
            body.append(text[len(indent) :] if text.startswith(indent) else text)
            index += 1
        index += 1  # past the closing fence
        marker, marker_line = _marker_before(lines, start)
        blocks.append(
            Block(
                path=path,
                line=start + 1,
                info=opening["info"].strip(),
                code="\n".join(body) + "\n",
                marker=marker,
                marker_line=marker_line,
            )
        )
    return blocks


def _marker_before(lines: list[str], start: int) -> tuple[str | None, int | None]:
    """The docs-test comment on the last non-blank line before ``start``, if any."""
    for index in range(start - 1, -1, -1):
        if lines[index].strip():
            if _MARKER.match(lines[index]):
                return lines[index].strip(), index + 1
            return None, None
    return None, None


def marker_problems(path: Path) -> list[str]:
    """Every ``docs-test`` comment in ``path`` that does not do what it seems to:
    malformed, without a reason, or not right before a ``python`` block."""
    blocks = read_blocks(path)
    attached = {b.marker_line: b for b in blocks if b.marker_line is not None}
    problems = []
    inside = _lines_inside_blocks(blocks)
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if "docs-test" not in text or number in inside:
            continue
        where = f"{_name(path)}:{number}"
        match = _MARKER.match(text)
        if match is None:
            problems.append(
                f"{where}: a docs-test comment must stand alone on its line, "
                f"as <!-- docs-test: skip: REASON -->"
            )
        elif _SKIP.match(match["body"]) is None:
            problems.append(
                f"{where}: {text.strip()} is not <!-- docs-test: skip: REASON --> "
                "(the only marker; REASON is required)"
            )
        elif number not in attached or not attached[number].runs:
            problems.append(
                f"{where}: the skip marker is not right before a ```python block, "
                "so it skips nothing"
            )
    return problems


def _lines_inside_blocks(blocks: list[Block]) -> set[int]:
    inside: set[int] = set()
    for block in blocks:
        inside.update(range(block.line, block.line + block.code.count("\n") + 2))
    return inside


def markdown_files() -> list[Path]:
    """README.md and every page under docs/, in a stable order."""
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


@dataclass(frozen=True)
class Outcome:
    returncode: int | None  # None: killed after RUN_TIMEOUT
    stdout: str
    stderr: str


def run_block(block: Block, workdir: Path, timeout: float = RUN_TIMEOUT) -> Outcome:
    """Run ``block`` as ``example.py`` in ``workdir``, then kill whatever it left
    running (its process group); past ``timeout``, kill it too."""
    script = workdir / "example.py"
    script.write_text(block.code, encoding="utf-8")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            [sys.executable, script.name],
            cwd=workdir,
            env=_environment(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group, killed whole below
        )
        exited = _wait_unreaped(process.pid, timeout)
        # Until it is reaped, the program's pid, which is its group's id, cannot
        # be given to another process: the group killed is the program's own.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        returncode = process.wait()
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode("utf-8", "replace")
        stderr = err.read().decode("utf-8", "replace")
    return Outcome(returncode if exited else None, stdout, stderr)


def _wait_unreaped(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``pid`` to exit, leaving it unreaped (a
    zombie); return whether it exited."""
    deadline = time.monotonic() + timeout
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # latency only: the deadline decides


def _environment() -> dict[str, str]:
    """This process's environment, with the stalwart that the tests import first
    on the path (an installed copy, or the repository's src/)."""
    import stalwart

    where = str(Path(stalwart.__file__).resolve().parents[1])
    paths = [where, os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def failure_message(block: Block, outcome: Outcome) -> str:
    """What a reader of the test log needs: where, how it ended, stderr's end."""
    if outcome.returncode is None:
        ending = f"was killed after {RUN_TIMEOUT:.0f} s (a hang, or far too slow)"
    else:
        ending = f"exited with status {outcome.returncode}"
    tail = outcome.stderr.splitlines()[-STDERR_LINES:]
    stdout_tail = outcome.stdout.splitlines()[-10:]
    parts = [
        f"the ```python block at {block.where} {ending}.",
        f"--- last {len(tail)} lines of its stderr ---",
        *tail,
    ]
    if stdout_tail:
        parts += [f"--- last {len(stdout_tail)} lines of its stdout ---", *stdout_tail]
    parts.append(
        "Fix the example (each ```python block is a complete program, run as "
        "example.py), or mark a fragment with <!-- docs-test: skip: REASON --> "
        "on the line before it."
    )
    return "\n".join(parts)
