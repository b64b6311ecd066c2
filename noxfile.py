"""Developer tasks. `nox` runs lint, typecheck, the tests on every CPython it
finds, and the documentation build."""

# nox looks for python3.10 ... python3.13 on PATH only, and pyenv puts there just
# the versions made active (its shims answer for no other). So this file finds
# the other installed ones itself (pyenv's versions, /usr/local/bin, /usr/bin)
# and links them into .nox/.pythons/, first on PATH. A version installed nowhere
# is skipped, or fails the run where CI is set (nox's rule).

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"
nox.options.sessions = ["lint", "typecheck", "tests", "docs"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHONS = nox.project.python_versions(PYPROJECT)  # from the classifiers
PYTHON_LINKS = Path(__file__).resolve().parent / ".nox" / ".pythons"


def _pyenv_root() -> Path | None:
    """pyenv's root: ``$PYENV_ROOT``, else what ``pyenv root`` says, else ~/.pyenv."""
    if root := os.environ.get("PYENV_ROOT"):
        return Path(root)
    if pyenv := shutil.which("pyenv"):
        try:
            answer = subprocess.run(
                [pyenv, "root"], capture_output=True, text=True, timeout=10, check=True
            )
            return Path(answer.stdout.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    default = Path(os.path.expanduser("~/.pyenv"))
    return default if default.is_dir() else None


def _on_path(name: str) -> bool:
    """Whether ``name`` is on PATH, not counting version managers' shims: they
    answer only for the versions made active, and fail for the others."""
    entries = os.environ.get("PATH", "").split(os.pathsep)
    usable = os.pathsep.join(e for e in entries if e and Path(e).name != "shims")
    return shutil.which(name, path=usable) is not None


def _installed_cpython(version: str) -> Path | None:
    """``pythonX.Y`` where it is installed off PATH: pyenv's newest ``X.Y.Z``,
    else /usr/local/bin, else /usr/bin."""
    name = f"python{version}"
    candidates: list[Path] = []
    if (root := _pyenv_root()) is not None:
        releases = [
            directory
            for directory in (root / "versions").glob(f"{version}.*")
            if re.fullmatch(rf"{re.escape(version)}\.\d+", directory.name)
        ]
        releases.sort(key=lambda d: int(d.name.rsplit(".", 1)[1]), reverse=True)
        candidates += [release / "bin" / name for release in releases]
    candidates += [Path("/usr/local/bin", name), Path("/usr/bin", name)]
    return next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


def _put_installed_pythons_on_path(versions: list[str]) -> None:
    """Link each of ``versions`` that PATH lacks but the machine has into
    PYTHON_LINKS, and put that folder first on PATH (only ``pythonX.Y`` names:
    no other ``python`` or ``pip`` changes for the sessions)."""
    found = {
        version: target
        for version in versions
        if not _on_path(f"python{version}")
        and (target := _installed_cpython(version)) is not None
    }
    if not found:
        return
    try:
        PYTHON_LINKS.mkdir(parents=True, exist_ok=True)
        for stale in set(versions) - set(found):  # now on PATH: PATH decides
            (PYTHON_LINKS / f"python{stale}").unlink(missing_ok=True)
        for version, target in found.items():
            link = PYTHON_LINKS / f"python{version}"
            if link.is_symlink() and Path(os.readlink(link)) == target:
                continue
            # Renamed into place: a nox started alongside sees the old link or the new.
            pending = PYTHON_LINKS / f".python{version}.{os.getpid()}"
            pending.unlink(missing_ok=True)
            pending.symlink_to(target)
            pending.replace(link)
        folders = [str(PYTHON_LINKS)]
    except OSError:  # no links here (a read-only tree): their folders, then
        folders = [str(target.parent) for target in found.values()]
    os.environ["PATH"] = os.pathsep.join([*folders, os.environ.get("PATH", "")])


_put_installed_pythons_on_path(PYTHONS)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite (CPython's own executor tests included) on each Python."""
    session.install(".", *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install(".", *nox.project.dependency_groups(PYPROJECT, "typecheck"))
    session.run("mypy")


@nox.session(default=False)
def demo(session: nox.Session) -> None:
    """The tour: each feature working for real (examples/tour.py)."""
    # numpy: the large-data section; scikit-learn: the joblib backend's
    session.install(".[progress,dask,joblib]", "numpy", "scikit-learn")
    session.run("python", "examples/tour.py")


@nox.session(default=False)
def soak(session: nox.Session) -> None:
    """The long fault-injection soak, stdlib and loky alongside; rewrites
    benchmarks/RELIABILITY.md (``nox -s soak -- --quick`` for a short look)."""
    session.install(".", *nox.project.dependency_groups(PYPROJECT, "test"))
    session.run("python", "benchmarks/soak.py", *session.posargs)


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """Benchmarks against the stdlib, loky and pebble; rewrites benchmarks/RESULTS.md."""
    session.install(".", *nox.project.dependency_groups(PYPROJECT, "bench"))
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site into site/ (mkdocs, warnings are errors);
    ``nox -s docs -- serve`` serves it at http://127.0.0.1:8000 instead."""
    session.install(".", *nox.project.dependency_groups(PYPROJECT, "docs"))
    quiet = {"NO_MKDOCS_2_WARNING": "1"}  # Material's end-of-life notice, every build
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", "--strict", *session.posargs[1:], env=quiet)
    else:
        session.run("mkdocs", "build", "--strict", *session.posargs, env=quiet)


SDIST_MUST_HOLD = ("LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml")
SDIST_MUST_HOLD += ("src/stalwart/py.typed", "tests/conftest.py")  # packagers test
WHEEL_MUST_HOLD = ("stalwart/__init__.py", "stalwart/py.typed")


@nox.session(default=False)
def build(session: nox.Session) -> None:
    """Build the sdist and the wheel, check them (twine --strict, their files,
    an install), then copy them into dist/."""
    session.install(*nox.project.dependency_groups(PYPROJECT, "build"))
    out = Path(session.create_tmp()) / "dist"
    shutil.rmtree(out, ignore_errors=True)
    # The wheel is built from the sdist: proof that the sdist is complete.
    session.run("python", "-m", "build", "--outdir", str(out))
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    session.run("twine", "check", "--strict", str(sdist), str(wheel))

    with tarfile.open(sdist) as archive:  # names are under "stalwart-X.Y.Z/"
        in_sdist = {name.partition("/")[2] for name in archive.getnames()}
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
    missing = [f"sdist: {n}" for n in SDIST_MUST_HOLD if n not in in_sdist]
    missing += [f"wheel: {n}" for n in WHEEL_MUST_HOLD if n not in in_wheel]
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in in_wheel):
        missing.append("wheel: *.dist-info/licenses/LICENSE")
    if missing:
        session.error(f"the distributions lack {', '.join(missing)}")

    # It installs (over the last run's: same version), and knows its version.
    session.install("--force-reinstall", str(wheel))
    session.run("python", "-c", "import stalwart; print(stalwart.__version__)")
    dist = Path("dist")
    dist.mkdir(exist_ok=True)
    for built in (sdist, wheel):
        shutil.copy2(built, dist / built.name)
        session.log(f"built {dist / built.name}")
