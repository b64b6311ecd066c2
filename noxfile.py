"""Developer tasks. `nox` runs lint, typecheck and tests on every CPython it finds."""

from __future__ import annotations

import nox

nox.needs_version = ">=2025.2.9"
nox.options.sessions = ["lint", "typecheck", "tests"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHONS = nox.project.python_versions(PYPROJECT)  # from the classifiers


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
