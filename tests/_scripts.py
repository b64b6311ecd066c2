"""Running a user's script in a fresh interpreter, as the tests that need one do
(exit hooks, a parent killed with SIGKILL, os.fork(), resource limits)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests._tasks import TIMEOUT

ROOT = Path(__file__).resolve().parents[1]
SRC = str(ROOT / "src")


def script_env() -> dict[str, str]:
    """stalwart and the tests package importable by the script and its workers;
    a PYTHONPATH already set (another stalwart tree) comes first."""
    paths = [os.environ.get("PYTHONPATH", ""), SRC, str(ROOT)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def start_script(
    tmp_path: Path, code: str, *args: str, unset: tuple[str, ...] = ()
) -> subprocess.Popen[str]:
    """Write `code` (dedented) to a script in `tmp_path` and start it there,
    without the environment variables named in `unset`."""
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in script_env().items() if k not in unset},
        cwd=tmp_path,
    )


def finish(
    process: subprocess.Popen[str], *, check: bool = False, timeout: float = TIMEOUT
) -> tuple[str, str]:
    """(stdout, stderr) once the script ends; fail the test if it hangs (or,
    with `check`, if it exits with an error)."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"script hung; stdout={out!r} stderr={err[-2000:]!r}")
    if check:
        assert process.returncode == 0, err[-3000:]
    return out, err


def run_for_json(
    tmp_path: Path, code: str, *args: str, timeout: float = TIMEOUT
) -> list[dict[str, Any]]:
    """Run a script to its end; the JSON lines it printed."""
    out, _ = finish(start_script(tmp_path, code, *args), check=True, timeout=timeout)
    return [json.loads(line) for line in out.splitlines()]
