"""The template process, seen from the parent: start it, keep it, fork through it.

One template per parent process (see ``_template_server`` for its side). It is
started by the spawn method from stalwart's spawner thread, so that the kernel
kills it when the parent dies, and it imports what the parent had imported when
it started. Each worker it forks costs a ``fork()`` of a small, quiet process,
not a fresh interpreter importing everything again.

``TemplateProcess`` is a ``multiprocessing`` process object like any other
(``pid``, ``sentinel``, ``exitcode``, ``kill()``...): only its ``Popen`` differs,
modelled on the stdlib forkserver's. The template restarts transparently when
it has died; one that cannot come up fit to fork (its preload crashed, or left
a thread running) is remembered as unavailable and ``TemplateUnavailable`` says
why, so that the caller falls back to fresh interpreters.
"""

from __future__ import annotations

import contextlib
import io
import logging
import multiprocessing.process as mp_process
import os
import socket
import sys
import threading
import types
from multiprocessing import popen_fork, reduction, util
from multiprocessing.connection import wait
from multiprocessing.context import set_spawning_popen
from multiprocessing.process import BaseProcess
from typing import Any, NoReturn

from loky.backend import context as loky_context

from stalwart import _spawn, _template_server
from stalwart._template_server import InheritedFd, read_signed

logger = logging.getLogger("stalwart")

READY_TIMEOUT_S = 120.0
"""How long the template may take to import the parent's modules (a parent
that imported torch and dask takes seconds, on a slow disk more)."""

NEVER_PRELOADED = frozenset({"__main__", "__mp_main__", "this", "antigravity"})
"""Imported another way (the main script, as spawn does), or with side effects
that only make sense once (``this`` prints a poem; ``antigravity`` opens a
browser)."""


class TemplateUnavailable(Exception):
    """The template cannot fork workers for this parent; ``str()`` says why."""


class Template:
    """This process's template: started on first use, restarted if it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one start, one request at a time
        self._process: BaseProcess | None = None
        self._sock: socket.socket | None = None
        self._ready = False
        self._unfit: str | None = None  # why it cannot be used, for good

    def start_soon(self) -> None:
        """Start the template now, if it is not running, without waiting for it."""
        with self._lock:
            if self._unfit is None and not self._running():
                with contextlib.suppress(TemplateUnavailable):
                    self._start()

    def check_available(self) -> None:
        """Wait until the template is up; raise TemplateUnavailable if it cannot be."""
        with self._lock:
            self._ensure_ready()

    def fork(self, fds: list[int]) -> None:
        """Ask the template to fork a worker that inherits ``fds`` (see the
        server's protocol); restart it once if it died."""
        with self._lock:
            for attempt in (1, 2):
                self._ensure_ready()
                assert self._sock is not None
                try:
                    reduction.sendfds(self._sock, fds)
                    return
                except OSError as exc:
                    if attempt == 2:
                        raise TemplateUnavailable(
                            f"the template process stopped answering ({exc})"
                        ) from exc
                    self._discard("it stopped answering")

    def close(self) -> None:
        """End the template (its workers die with it): at exit."""
        with self._lock:
            self._discard(None)

    # -- under self._lock ----------------------------------------------------------

    def _running(self) -> bool:
        process = self._process
        if process is None:
            return False
        if wait([process.sentinel], 0):
            self._discard(f"it exited with code {process.exitcode}")
            return False
        return True

    def _ensure_ready(self) -> None:
        if self._unfit is not None:
            raise TemplateUnavailable(self._unfit)
        if not self._running():
            self._start()
        if not self._ready:
            self._wait_until_ready()

    def _start(self) -> None:
        parent_end, template_end = socket.socketpair()
        modules = preloadable_modules()
        # loky's spawn: its child gets an environment of its own from the
        # start (BLAS pools stay single-threaded while the main script and the
        # modules are imported), without touching this process's.
        process = loky_context.get_context("loky").Process(
            target=_template_server.serve,
            args=(template_end, modules),
            name="stalwart-template",
            daemon=True,  # multiprocessing ends it at exit, after our workers
            env=_template_server.single_threaded_blas(),
        )
        try:
            _spawn.start_helper_process(process)
        except Exception as exc:
            parent_end.close()
            self._unfit = f"it could not be started ({type(exc).__name__}: {exc})"
            raise TemplateUnavailable(self._unfit) from exc
        finally:
            template_end.close()  # its copy is the template's: EOF when it dies
        self._process, self._sock, self._ready = process, parent_end, False
        logger.debug(
            "started template process %s preloading %d modules",
            process.pid,
            len(modules),
        )

    def _wait_until_ready(self) -> None:
        sock = self._sock
        assert sock is not None
        sock.settimeout(READY_TIMEOUT_S)
        try:
            reply = _template_server.receive_message(sock)
        except (OSError, EOFError) as exc:
            process = self._process
            if process is not None:
                process.join(1.0)
            code = None if process is None else process.exitcode
            why = "timed out" if isinstance(exc, TimeoutError) else f"code {code}"
            self._give_up(f"preloading the parent's modules failed ({why})")
        sock.settimeout(None)
        if reply[0] == _template_server.UNFIT:
            self._give_up(reply[1])
        _, pid, skipped = reply
        for name, error in skipped:
            logger.debug("template %s did not preload %s: %s", pid, name, error)
        self._ready = True

    def _give_up(self, reason: str) -> NoReturn:
        self._discard(reason)
        self._unfit = reason
        raise TemplateUnavailable(reason)

    def _discard(self, reason: str | None) -> None:
        process, sock = self._process, self._sock
        self._process, self._sock, self._ready = None, None, False
        if sock is not None:
            sock.close()  # the template reads EOF and exits
        if process is not None:
            if reason is not None:
                logger.debug("template process %s discarded: %s", process.pid, reason)
            process.join(1.0)
            if process.exitcode is None:
                process.kill()
                process.join()


def preloadable_modules() -> list[str]:
    """The parent's modules, in import order, that a template should import."""
    names = []
    for name, module in list(sys.modules.items()):
        if name in NEVER_PRELOADED or not isinstance(module, types.ModuleType):
            continue
        spec = getattr(module, "__spec__", None)
        if spec is None or spec.name != name:
            continue  # not importable by this name (an alias, or made by hand)
        names.append(name)
    return names


# -- a worker forked by the template -------------------------------------------------


class TemplatePopen(popen_fork.Popen):
    """Start one process through the template (the forkserver protocol)."""

    method = "template"
    DupFd = InheritedFd

    def __init__(self, process_obj: BaseProcess) -> None:
        self._fds: list[int] = []
        super().__init__(process_obj)

    def duplicate_for_child(self, fd: int) -> int:
        self._fds.append(fd)
        return len(self._fds) - 1

    def _launch(self, process_obj: BaseProcess) -> None:
        buffer = io.BytesIO(_template_server.prepared_environment())
        buffer.seek(0, io.SEEK_END)
        set_spawning_popen(self)  # type: ignore[arg-type]
        try:
            reduction.dump(process_obj, buffer)
        finally:
            set_spawning_popen(None)
        data_r, data_w = os.pipe()
        status_r, status_w = os.pipe()
        try:
            template.fork([data_r, status_w, *self._fds])
        except BaseException:
            os.close(data_w)
            os.close(status_r)
            raise
        finally:
            os.close(data_r)
            os.close(status_w)
        self.sentinel = status_r
        # Held while the process object lives: the worker's sentinel of its parent.
        parent_w = os.dup(data_w)
        self.finalizer = util.Finalize(self, util.close_fds, (parent_w, status_r))  # type: ignore[attr-defined]
        try:
            with open(data_w, "wb", closefd=True) as pipe:
                pipe.write(buffer.getbuffer())
            self.pid = read_signed(status_r)
        except (OSError, EOFError) as exc:
            raise TemplateUnavailable(
                f"the template process died while starting a worker ({exc})"
            ) from exc

    def poll(self, flag: int = os.WNOHANG) -> int | None:
        if self.returncode is None:
            if not wait([self.sentinel], 0 if flag == os.WNOHANG else None):
                return None
            try:
                self.returncode = read_signed(self.sentinel)
            except (OSError, EOFError):
                # The template died (killed): so did this worker, by the
                # kernel's parent-death signal.
                self.returncode = -9
        return self.returncode


class TemplateProcess(BaseProcess):
    """A process started by forking the template."""

    _start_method = None  # multiprocessing knows no such method to force

    @staticmethod
    def _Popen(process_obj: BaseProcess) -> Any:
        return TemplatePopen(process_obj)


template = Template()


def _after_fork_in_child() -> None:
    """A forked child has no template of its own: the template is its parent's."""
    global template
    inherited = template
    template = Template()
    if inherited._sock is not None:
        inherited._sock.close()  # our copy only: the template lives on
    # Nor is the template this child's to terminate or join at exit.
    mp_process._children.discard(inherited._process)  # type: ignore[attr-defined]


os.register_at_fork(after_in_child=_after_fork_in_child)
util.Finalize(None, template.close, exitpriority=0)
