"""Work for the tour: plain module-level functions, as users write them."""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any

import stalwart

_loads_in_this_process = 0


def slow_square(x: int) -> int:
    time.sleep(0.02)  # stands for real work
    return x * x


def tiny(x: int) -> int:
    return x


def segfault() -> None:
    faulthandler.disable()  # keep the demo's output short
    ctypes.string_at(0)  # a genuine segmentation fault, as a buggy C extension makes


def hang_with_a_child() -> None:
    """A task stuck for an hour, with a helper process of its own (say, a solver)."""
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    time.sleep(3600)


class Model:
    """Stands for an ML model: it holds a lock, so it cannot be pickled."""

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def classify(self, text: str) -> str:
        with self._lock:
            return "positive" if text in {"good", "great", "fine", "ok"} else "negative"


class Validator:
    def __init__(self, model: Model) -> None:
        self.model = model


def run_model(validator: Validator) -> str:
    return validator.model.classify("good")


def load_model(name: str) -> Model:
    global _loads_in_this_process
    _loads_in_this_process += 1
    time.sleep(0.1)  # stands for reading weights from disk
    return Model()


def predict(text: str) -> tuple[str, str, int, int]:
    model: Model = stalwart.worker_state()
    return text, model.classify(text), os.getpid(), _loads_in_this_process


def fetch(url: str) -> int:
    """Stands for an HTTP request: waiting, not computing."""
    time.sleep(0.05)
    return len(url)


def crunch(n: int) -> int:
    """Pure-Python arithmetic: holds the GIL the whole time."""
    return sum(i * i for i in range(n))


def take_seconds(seconds: float) -> float:
    time.sleep(seconds)  # stands for work of uneven size
    return seconds


def where_am_i(x: int) -> tuple[int, str, int]:
    """Which process ran this, and what its worker state (the model) says."""
    model: Model = stalwart.worker_state()
    return x, model.classify("good"), os.getpid()


def first_and_sum(array: Any) -> tuple[float, float]:
    """Reads the whole argument (a NumPy array): its first value, and its sum."""
    return float(array[0]), float(array.sum())


def element(array: Any, i: int) -> float:
    return float(array[i])


def ones(n: int) -> Any:
    import numpy as np

    return np.ones(n)


try:
    from sklearn.linear_model import LogisticRegression
except ImportError:  # the tour's joblib section says so, and skips
    LogisticRegression = object


class DiesOnceLogistic(LogisticRegression):  # type: ignore[misc,valid-type]
    """A scikit-learn LogisticRegression whose first fit, anywhere, SIGKILLs
    its worker, as the OOM killer would; ``marker`` records that it happened."""

    def __init__(self, marker: str = "", C: float = 1.0) -> None:
        super().__init__(C=C, max_iter=300)
        self.marker = marker

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Any:
        if self.marker and not os.path.exists(self.marker):
            with open(self.marker, "w"):
                pass
            os.kill(os.getpid(), 9)
        return super().fit(X, y, sample_weight=sample_weight)


def chatty(x: int) -> int:
    """Prints and logs, as tasks do: both show up in the parent."""
    print(f"working on {x}")
    logging.getLogger("tour").warning("item %d looks odd", x)
    return x * 2


_kept: list[bytes] = []


def leak(megabytes: int) -> int:
    """Keeps ``megabytes`` more on every call, as a leaking library would."""
    _kept.append(b"\x01" * (megabytes * 1_000_000))
    return os.getpid()


def allocate_in(cgroup: str, megabytes: int) -> None:
    """Joins a memory cgroup with a small limit, then allocates past it."""
    with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
        procs.write(str(os.getpid()))
    hog = bytearray(megabytes * 2**20)
    for offset in range(0, len(hog), 4096):
        hog[offset] = 1
