"""Find CPython's ``test.test_concurrent_futures`` and its process-pool test classes.

The suite is a single module on 3.10 and a package of ``test_*`` modules from
3.12 on (3.11.7 and 3.12.1 here ship none). Its process-pool classes are built by
``create_executor_tests()`` from a test mixin and one of the
``ProcessPool{Fork,Forkserver,Spawn}Mixin`` classes, which carry ``ctx`` (the
start method) and ``executor_type`` (the class under test). Thread-pool classes
(``ThreadPoolMixin``) have an ``executor_type`` naming a thread pool and no
``ctx``; the runner's ``thread`` mode runs those instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing
import pkgutil
import unittest
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import ModuleType

STDLIB_PACKAGE = "test.test_concurrent_futures"
STDLIB_START_METHODS = ("fork", "forkserver", "spawn")
THREAD_MODE = "thread"
"""The runner's pseudo start method that runs the thread-pool classes."""

EXTRA_TESTS: dict[str, dict[str, str]] = {
    # Plain TestCase (3.13) that runs the spawn / forkserver failing-initializer
    # classes itself, then checks the resource tracker leaked nothing.
    "FailingInitializerResourcesTest": {
        "test_spawn": "spawn",
        "test_forkserver": "forkserver",
    },
}
"""Process-pool tests outside the mixin classes: class name -> method -> start method."""


def stdlib_suite_available() -> bool:
    """Whether this interpreter ships ``test.test_concurrent_futures``."""
    try:
        return importlib.util.find_spec(STDLIB_PACKAGE) is not None
    except ImportError:  # no ``test`` package at all
        return False


def stdlib_modules() -> list[ModuleType]:
    """Import and return the stdlib suite's test modules."""
    package = importlib.import_module(STDLIB_PACKAGE)
    if not hasattr(package, "__path__"):
        return [package]
    names = sorted(
        info.name
        for info in pkgutil.iter_modules(package.__path__)
        if info.name.startswith("test_")
    )
    return [importlib.import_module(f"{STDLIB_PACKAGE}.{name}") for name in names]


def start_method_of(obj: object) -> str | None:
    """The start method of a stdlib process-pool test class; None for anything else."""
    if not (isinstance(obj, type) and issubclass(obj, unittest.TestCase)):
        return None
    ctx = getattr(obj, "ctx", None)
    return ctx if isinstance(ctx, str) and hasattr(obj, "executor_type") else None


def process_pool_classes(module: ModuleType) -> list[type[unittest.TestCase]]:
    """The process-pool test classes defined in `module`, in name order."""
    return [
        obj
        for name, obj in sorted(vars(module).items())
        if start_method_of(obj) is not None and obj.__module__ == module.__name__
    ]


def is_thread_pool_class(obj: object) -> bool:
    """Whether `obj` is a stdlib test class of a thread pool (no ``ctx``)."""
    from concurrent.futures import thread

    if not (isinstance(obj, type) and issubclass(obj, unittest.TestCase)):
        return False
    executor_type = getattr(obj, "executor_type", None)
    return (
        getattr(obj, "ctx", None) is None
        and isinstance(executor_type, type)
        and issubclass(executor_type, thread.ThreadPoolExecutor)
    )


def thread_pool_classes(module: ModuleType) -> list[type[unittest.TestCase]]:
    """The thread-pool test classes defined in `module`, in name order."""
    return [
        obj
        for name, obj in sorted(vars(module).items())
        if is_thread_pool_class(obj) and obj.__module__ == module.__name__
    ]


def get_context(method: str) -> Any:
    """``multiprocessing.get_context``, extended with loky's start methods."""
    if method.startswith("loky"):
        import loky.backend

        return loky.backend.get_context(method)
    return multiprocessing.get_context(method)
