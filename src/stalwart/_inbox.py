"""The inbox: all of a process pool that user threads touch.

``submit()``, ``shutdown()``, a done-callback and ``cancel()`` run in user
threads; everything else runs in the dispatcher's I/O thread. They meet here:

* ``lock`` guards ``state``, ``broken``, ``abort``, ``cancel_asked``,
  ``max_workers`` and appends to ``pending``. Nothing resolves or cancels a
  future while holding it: callbacks may call ``submit()`` or ``shutdown()``,
  which take it again.
* ``pending`` is a deque: user threads append (under ``lock``, so that no call
  slips in after shutdown), the I/O thread pops; each is one atomic operation.
* ``taken_back`` receives the calls that ``cancel()`` revoked in a worker.
* the wake-up pipe tells the I/O thread to look. It exists only while an I/O
  thread does, so an executor that never ran a call holds no file descriptor.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import os
import queue
import signal
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from concurrent.futures.process import BrokenProcessPool

    from stalwart._slot import Task


class PoolState(enum.Enum):
    """An executor's life. RUNNING -> DRAINING (shutdown asked: finish what was
    submitted) -> CLOSED (the I/O thread is done); BROKEN from either of the
    first two, when an error ends every outstanding call."""

    RUNNING = "running"
    DRAINING = "shut down"
    BROKEN = "broken"
    CLOSED = "closed"


class Abort:
    """Why the workers are to be killed now, and with which signal."""

    def __init__(self, reason: str, signum: int = signal.SIGKILL) -> None:
        self.reason = reason
        self.signum = signum


class Inbox:
    """See the module docstring: what user threads and the I/O thread share."""

    def __init__(self, max_workers: int) -> None:
        self.lock = threading.Lock()
        self.state = PoolState.RUNNING
        self.broken: BrokenProcessPool | None = None
        self.abort: Abort | None = None
        self.cancel_asked = False  # shutdown(cancel_futures=True), not yet done
        self.cancel_done = threading.Event()
        self.max_workers = max_workers  # get_reusable_executor may resize
        self.pending: collections.deque[Task] = collections.deque()
        self.taken_back: queue.SimpleQueue[Task] = queue.SimpleQueue()
        self._wake_r = -1
        self._wake_w = -1
        self._wake_armed = False

    @property
    def accepting(self) -> bool:
        return self.state is PoolState.RUNNING

    # -- the wake-up pipe --------------------------------------------------------------

    def open_wake_pipe(self) -> int:
        """Create the pipe (caller holds ``lock``); returns its read end."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_armed = False
        return self._wake_r

    def wake(self) -> None:
        # Called with `lock` held: close_wake_pipe() closes the fds under it, and
        # a write after that could land in a file that reused the fd number.
        # One byte per wake-up at most: the flag stays set until the I/O thread
        # has drained the pipe, and it drains before it looks at `pending`, so a
        # task appended after that look always finds the flag cleared.
        if not self._wake_armed and self._wake_w >= 0:
            self._wake_armed = True
            # Full pipe: already awake. Closed: the thread has stopped.
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"\0")

    def drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        self._wake_armed = False

    def close_wake_pipe(self) -> None:
        with self.lock:
            for fd in (self._wake_r, self._wake_w):
                if fd >= 0:
                    os.close(fd)
            self._wake_r = self._wake_w = -1
            self._wake_armed = True  # nobody is listening any more
