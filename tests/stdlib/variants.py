"""The stdlib's spawn test classes, rerun under loky's ``loky_init_main`` start method.

``loky_init_main`` (fork+exec, then re-import ``__main__`` as spawn does) is
stalwart's default start method, so it gets the same tests as the stdlib's
``spawn``. The classes are built when this module is imported, under
importable names, so that a worker unpickling a reference to one of them (the
stdlib's ``test_traceback`` submits a classmethod) finds it.

Importing this module imports the stdlib suite: only the runner and workers do.
"""

from __future__ import annotations

import unittest
from typing import Any

from tests.stdlib import cpython

VARIANTS: dict[str, str] = {"loky_init_main": "spawn"}
"""Extra start method -> the stdlib start method whose test classes it reruns."""

_CLASS_PREFIX = {"loky_init_main": "ProcessPoolLokyInitMain"}


def _context_for(start_method: str) -> Any:
    def get_context(self: unittest.TestCase) -> Any:
        return cpython.get_context(start_method)

    return get_context


def _build() -> dict[str, type[unittest.TestCase]]:
    built: dict[str, type[unittest.TestCase]] = {}
    if not cpython.stdlib_suite_available():
        return built
    for module in cpython.stdlib_modules():
        for cls in cpython.process_pool_classes(module):
            for variant, source in VARIANTS.items():
                if cpython.start_method_of(cls) != source:
                    continue
                stdlib_prefix = "ProcessPool" + source.capitalize()
                name = cls.__name__.replace(stdlib_prefix, _CLASS_PREFIX[variant], 1)
                namespace = {
                    "__module__": __name__,
                    "__qualname__": name,
                    "__doc__": f"{cls.__name__} under {variant!r}.",
                    "ctx": variant,
                    "get_context": _context_for(variant),
                }
                built[name] = type(name, (cls,), namespace)
    return built


VARIANT_CLASSES = _build()
globals().update(VARIANT_CLASSES)


def variant_classes(start_method: str) -> list[type[unittest.TestCase]]:
    """The variant classes that run under `start_method`, in name order."""
    return [
        cls
        for name, cls in sorted(VARIANT_CLASSES.items())
        if getattr(cls, "ctx", None) == start_method
    ]


def setUpModule() -> None:
    """Register the stdlib's module cleanups (multiprocessing, threads) here too."""
    for module in cpython.stdlib_modules():
        setup = getattr(module, "setUpModule", None)
        if setup is not None:
            setup()
            return
