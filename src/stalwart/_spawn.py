"""Process mechanics: start a worker, kill a process tree, name an exit code.

Policy (when to start or kill) lives in ``_process``; this module only knows how,
and leans on loky for the parts loky does well.
"""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING

from loky.backend.utils import kill_process_tree

from stalwart import _worker

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import BaseContext
    from multiprocessing.process import BaseProcess

    from stalwart._worker import WorkerConfig


def start_worker_process(
    context: BaseContext, child_end: Connection, config: WorkerConfig
) -> BaseProcess:
    """Start one worker running ``_worker.run_worker`` on its end of a duplex pipe."""
    process = context.Process(  # type: ignore[attr-defined]
        target=_worker.run_worker,
        args=(child_end, config),
        name="stalwart-worker",
        daemon=True,
    )
    process.start()
    return process  # type: ignore[no-any-return]


def kill_worker_tree(process: BaseProcess) -> None:
    """SIGKILL a worker and every process it started (a timed-out task's children)."""
    kill_process_tree(process)


def signal_name(exitcode: int | None) -> str | None:
    """``-11`` -> ``"SIGSEGV"``; None for a normal exit code or an unknown one."""
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"
