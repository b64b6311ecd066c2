"""Tasks that take or return large data: module-level, so workers import them by
reference. NumPy is imported lazily, so that importing this module costs nothing
(and needs nothing) where the large-data tests are skipped."""

from __future__ import annotations

import os
import time
from typing import Any

from tests._tasks import TIMEOUT, die

MiB = 1 << 20


def read_first(arr: Any) -> float:
    return float(arr[0])


def read_at(arr: Any, index: int) -> float:
    return float(arr[index])


def read_first_after_dying_once(marker_path: str, arr: Any) -> float:
    """Kill this worker the first time (leaving a marker file); when retried,
    say what the array held."""
    if not os.path.exists(marker_path):
        with open(marker_path, "w") as marker:
            marker.write(str(os.getpid()))
        die("exit")
    return float(arr[0])


def write_then_read(arr: Any) -> tuple[bool, float, float]:
    """Whether the argument arrived writable, its first element as it came, and
    after this task wrote to it."""
    writeable = bool(arr.flags.writeable)
    before = float(arr[0])
    arr[0] = -1.0
    arr[-1] = -1.0
    return writeable, before, float(arr[0])


def write_first(arr: Any) -> None:
    arr[0] = 1.0


def is_writeable(arr: Any) -> bool:
    return bool(arr.flags.writeable)


def shared_mappings() -> int:
    """How many mappings of stalwart.shared() files this worker holds (Linux)."""
    with open("/proc/self/maps") as maps:
        return sum("memfd:stalwart-shared" in line for line in maps)


def make_array(
    nbytes: int, dtype: str = "float64", order: str = "C", shape: tuple[int, ...] = ()
) -> Any:
    """An array of `nbytes` holding 0, 1, 2...: every element checkable."""
    import numpy as np

    count = nbytes // np.dtype(dtype).itemsize
    arr = np.arange(count, dtype=dtype)
    return np.asarray(arr.reshape(shape or (count,)), order=order)


def make_ones(nbytes: int) -> Any:
    import numpy as np

    return np.ones(nbytes, dtype=np.uint8)


def make_bytes(nbytes: int) -> bytes:
    return bytes(range(256)) * (nbytes // 256)


def make_structure() -> dict[str, Any]:
    """Several big arrays among small, plain values."""
    import numpy as np

    return {
        "weights": np.arange(2 * MiB // 8, dtype=np.float64),
        "labels": np.arange(3 * MiB // 4, dtype=np.int32).reshape(-1, 16),
        "mask": np.ones(MiB + 1, dtype=np.bool_),
        "small": np.arange(10),
        "meta": {"name": "run-1", "sizes": [1, 2, 3], "scale": 0.5, "tag": None},
        "pair": ("a", b"b" * 100),
    }


def total(arr: Any) -> float:
    return float(arr.sum())


def hold(arr: Any, seconds: float = TIMEOUT) -> int:
    """Keep a large argument for `seconds`: the workload, never a synchronisation."""
    time.sleep(seconds)
    return int(arr.size)


def hold_after_marking(marker_path: str, arr: Any, seconds: float = TIMEOUT) -> int:
    """Tell the test this task is running (a marker file), then hold `arr`."""
    with open(marker_path + ".tmp", "w") as marker:
        marker.write(str(os.getpid()))
    os.replace(marker_path + ".tmp", marker_path)  # never seen half written
    return hold(arr, seconds)


def die_holding(arr: Any, how: str) -> None:
    """Kill this worker while it holds (and has read) a large argument."""
    assert arr.size
    die(how)
