"""The last act of a dispatcher: park its healthy idle workers, stop the rest.

``reuse=True``: an idle worker is sent RESET (it restores the working
directory, environment and ``sys.path`` its tasks may have changed) and handed,
pipe, claim table and all, to the process-wide warm set (``_reuse``), where the
next executor with the same key adopts it. Every other worker is sent STOP (or
terminated while still starting) and killed if it has not exited after
``WORKER_EXIT_GRACE_S``. Runs on the I/O thread, after its loop.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from multiprocessing.connection import wait as wait_for_sentinels
from typing import TYPE_CHECKING

from stalwart import _reuse, _spawn, _wire
from stalwart._slot import WorkerState

if TYPE_CHECKING:
    from stalwart._pipes import Pipes
    from stalwart._slot import WorkerSlot
    from stalwart._stats import ExecutorStats

logger = logging.getLogger("stalwart")

WORKER_EXIT_GRACE_S = 5.0
"""How long shutdown lets a worker finish exiting on its own before killing it."""


def park_or_stop(
    slots: list[WorkerSlot],
    pipes: Pipes,
    reuse: _reuse.ReusePolicy | None,
    stats: ExecutorStats,
    avg_busy_s: float | None,
    exiting: bool,
) -> None:
    """Park what may be parked (``reuse`` given), stop the rest; ``slots``
    keeps each worker not yet parked or stopped, for a last-resort kill."""
    for slot in slots:  # their last figures for stats(): short runs had none
        if slot.memory is not None:
            slot.figures.note_memory(slot.memory.refresh())
    if reuse is not None and not exiting:
        for slot in list(slots):
            if slot.can_park() and _park(slot, pipes, reuse, avg_busy_s):
                slots.remove(slot)
                stats.workers_parked += 1
                stats.worker_ended(slot.figures, "parked")
    for slot in slots:
        stats.worker_ended(slot.figures, "shut down")
    stop_all(list(slots), pipes)
    slots.clear()


def _park(
    slot: WorkerSlot,
    pipes: Pipes,
    reuse: _reuse.ReusePolicy,
    avg_busy_s: float | None,
) -> bool:
    """Hand one idle worker to the warm set; False if it must stop instead."""
    try:
        # Its pipe is empty (it is idle), so this small write cannot block.
        os.write(slot.fd, _wire.RESET_FRAME)
    except OSError:
        return False
    parked = _reuse.ParkedProcess(
        slot.process,
        slot.conn,
        slot.tasks_left,
        slot.claims,
        reuse.keepalive,
        window=slot.window,
        idle_since=slot.idle_since,
        avg_busy_s=avg_busy_s,
        next_seq=slot.next_seq,
        memory=slot.memory,
    )
    pipes.unwatch(slot)
    if not _reuse.PROCESSES.park(reuse.key, parked, reuse.idle_timeout):
        pipes.watch(slot)
        return False
    slot.reader.close()
    slot.sock.close()  # the parked worker keeps only its Connection
    slot.memory = None  # the parked worker's now, then its adopter's
    logger.debug("parked worker %s", slot.pid)
    return True


def stop(slot: WorkerSlot, pipes: Pipes) -> None:
    """Ask one worker to exit: STOP if it is ready, terminate if it is not."""
    if slot.state is WorkerState.RUNNING:
        # An explicit stop, not just EOF: under fork a worker holds a copy
        # of our end of its own pipe, so closing ours is no EOF to it.
        slot.move(WorkerState.STOPPING)
        pipes.send(slot, [_wire.frame_header(0)])
    elif slot.state is WorkerState.STARTING:
        slot.move(WorkerState.STOPPING)
        slot.process.terminate()  # still starting: nothing to finish


def stop_all(slots: list[WorkerSlot], pipes: Pipes) -> None:
    for slot in slots:
        stop(slot, pipes)
        pipes.forget(slot)
    deadline = time.monotonic() + WORKER_EXIT_GRACE_S
    alive = {slot.sentinel: slot for slot in slots}
    while alive:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            for slot in alive.values():
                logger.warning("worker %s did not exit; killing it", slot.pid)
                _spawn.kill_worker_tree(slot.process)
            break
        # Short waits: under fork a sentinel may never fire (see
        # Endings.reap_silent_deaths), so the exit code is checked as well.
        wait_for_sentinels(list(alive), min(remaining, 0.05))
        for sentinel, slot in list(alive.items()):
            if slot.process.exitcode is not None:
                del alive[sentinel]
    for slot in slots:
        slot.process.join()
        slot.claims.close()
        if slot.memory is not None:
            slot.memory.close()


def kill_all(slots: list[WorkerSlot]) -> None:
    """Last resort when stopping failed: no worker may outlive its executor."""
    for slot in slots:
        with contextlib.suppress(Exception):
            _spawn.kill_worker_tree(slot.process)
            slot.process.join(WORKER_EXIT_GRACE_S)
