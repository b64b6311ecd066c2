"""Make ``backend="stalwart"`` known to joblib, whichever is imported first.

``import stalwart`` must not import joblib (an optional extra, and a tenth of a
second). So: if joblib is imported already, the backend is registered now;
if not, a finder on ``sys.meta_path`` waits for ``joblib.parallel`` to be
imported, lets it load as usual, then registers the backend and removes itself.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType

TRIGGER = "joblib.parallel"  # where register_parallel_backend lives
_lock = threading.Lock()
_registered = False


def install() -> None:
    """Register now if joblib is loaded, else as soon as it is."""
    if TRIGGER in sys.modules:
        register()
    elif not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


def register() -> None:
    """Register the backend with joblib (once)."""
    global _registered
    with _lock:
        if _registered:
            return
        from stalwart import _joblib

        _joblib.register()
        _registered = True


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of ``joblib.parallel``."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TRIGGER:
            return None
        with _lock:
            if self in sys.meta_path:
                sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original(module)
            try:
                register()
            except Exception:  # never break the user's import of joblib
                logging.getLogger("stalwart").warning(
                    "could not register the 'stalwart' joblib backend", exc_info=True
                )

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
