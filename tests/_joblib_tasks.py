"""Estimators and calls for the joblib backend's tests (importable by workers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from sklearn.linear_model import LogisticRegression

import stalwart


class DiesOnceLogistic(LogisticRegression):  # type: ignore[misc]
    """A LogisticRegression whose first fit (across all workers) SIGKILLs its
    worker: ``marker`` is created first, so every later fit runs normally."""

    def __init__(self, marker: str = "", C: float = 1.0, max_iter: int = 200) -> None:
        super().__init__(C=C, max_iter=max_iter)
        self.marker = marker

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Any:
        if self.marker and not os.path.exists(self.marker):
            with open(self.marker, "w"):
                pass
            os.kill(os.getpid(), signal.SIGKILL)
        return super().fit(X, y, sample_weight=sample_weight)


class OomOnceLogistic(LogisticRegression):  # type: ignore[misc]
    """A LogisticRegression whose first fit moves its worker into the memory
    cgroup ``cgroup`` and allocates past its limit: the kernel's OOM killer
    ends the worker. ``marker`` makes every later fit run normally."""

    def __init__(
        self, cgroup: str = "", marker: str = "", C: float = 1.0, max_iter: int = 200
    ) -> None:
        super().__init__(C=C, max_iter=max_iter)
        self.cgroup = cgroup
        self.marker = marker

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Any:
        if self.marker and not os.path.exists(self.marker):
            with open(self.marker, "w"):
                pass
            with open(os.path.join(self.cgroup, "cgroup.procs"), "w") as procs:
                procs.write(str(os.getpid()))
            hog = [bytearray(16 << 20) for _ in range(64)]  # 1 GiB, page by page
            del hog
        return super().fit(X, y, sample_weight=sample_weight)


class HangsLogistic(LogisticRegression):  # type: ignore[misc]
    """A LogisticRegression whose fit with ``C == hang_at`` starts a child
    process, adds its pid to ``pid_file``, then hangs."""

    def __init__(
        self,
        hang_at: float = -1.0,
        pid_file: str = "",
        C: float = 1.0,
        max_iter: int = 200,
    ) -> None:
        super().__init__(C=C, max_iter=max_iter)
        self.hang_at = hang_at
        self.pid_file = pid_file

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Any:
        if self.hang_at == self.C:
            child = subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(600)"]
            )
            with open(self.pid_file, "a") as file:
                file.write(f"{child.pid}\n")
            time.sleep(600)
        return super().fit(X, y, sample_weight=sample_weight)


def pid(_: object) -> int:
    return os.getpid()


def blas_threads(_: object) -> list[int]:
    """The thread counts of the BLAS/OpenMP pools loaded in this worker."""
    import numpy  # noqa: F401  (loads OpenBLAS if nothing did yet)
    from threadpoolctl import threadpool_info

    return sorted({info["num_threads"] for info in threadpool_info()})


def model_name(_: object) -> str:
    return str(stalwart.worker_state())


def load_model(name: str) -> str:
    return f"model {name} in {os.getpid()}"


def first_and_writeable(array: Any) -> tuple[float, bool]:
    return float(array[0]), bool(array.flags.writeable)


def write_first(array: Any) -> None:
    array[0] = 1.0
