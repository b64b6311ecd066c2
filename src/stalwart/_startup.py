"""How a worker process starts: fork the caller, fork the template, or spawn.

stalwart's default start method (``"stalwart"``) takes the fastest way that is
safe at the moment a worker starts:

1. **Fork the caller**, for an executor's first workers, where ``_forking``
   proves it safe (one OS thread, no accelerator runtime, no open socket): all
   of them at once, on the first task, before the executor's I/O thread starts.
   This is the stdlib's fork, at its speed, where fork cannot hurt; workers see
   the parent's memory as it was then.
2. **Fork the template** otherwise (later workers, a parent that runs threads):
   a fresh interpreter that imported the parent's main script and modules forks
   each worker (``_template``). Workers see modules as imported, not the
   parent's later changes to them (spawn's semantics), at the price of a fork.
3. **A fresh interpreter** (loky's fork+exec, the previous default) where the
   template cannot be used: it failed to preload, or preloading left a thread
   running. Logged at debug level, with the reason.

``mp_context="template"`` skips the first way (spawn's semantics always), and
any multiprocessing or loky start method is honoured as given.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import TYPE_CHECKING

import loky

from stalwart import _forking, _spawn
from stalwart._template import TemplateProcess, TemplateUnavailable, template

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from stalwart._worker import WorkerConfig

logger = logging.getLogger("stalwart")


class TemplateContext(BaseContext):
    """``mp_context="template"``: every worker forked from the template."""

    _name = "template"
    Process = TemplateProcess

    def get_start_method(self, allow_none: bool = False) -> str:
        return self._name


class StalwartContext(TemplateContext):
    """The default: fork the caller where provably safe, else the template."""

    _name = "stalwart"


DEFAULT_CONTEXT = StalwartContext()
TEMPLATE_CONTEXT = TemplateContext()
START_METHODS = {"stalwart": DEFAULT_CONTEXT, "template": TEMPLATE_CONTEXT}

_FORK = multiprocessing.get_context("fork")
_FRESH = loky.backend.get_context("loky_init_main")


@dataclass(frozen=True)
class WorkerStart:
    """One way to start a worker: its context makes the worker's pipe and lock."""

    how: str  # for the debug log: which way this worker took
    context: BaseContext
    start: Callable[[Connection, WorkerConfig], BaseProcess]


def _starting(context: BaseContext, how: str, *, on_spawner: bool) -> WorkerStart:
    start = functools.partial(
        _spawn.start_worker_process, context, on_spawner_thread=on_spawner
    )
    return WorkerStart(how, context, start)


FORK_CALLER = _starting(_FORK, "forked from the caller", on_spawner=False)
_FROM_TEMPLATE = _starting(
    TEMPLATE_CONTEXT, "forked from the template", on_spawner=False
)
_FRESH_INTERPRETER = _starting(_FRESH, "a fresh interpreter", on_spawner=True)


def may_fork_caller(context: BaseContext) -> bool:
    """Whether ``context`` forks the caller when that is safe (the default)."""
    return isinstance(context, StalwartContext)


def caller_fork_hazard(context: BaseContext) -> str | None:
    """Why this executor's first workers cannot be forked from the caller now."""
    if not may_fork_caller(context):
        return f"start method {context.get_start_method()!r}"
    return _forking.fork_hazard()


def prepare(context: BaseContext) -> None:
    """At construction: start the template early where it will be needed."""
    if isinstance(context, TemplateContext) and caller_fork_hazard(context):
        template.start_soon()


def plan(context: BaseContext) -> WorkerStart:
    """How the next worker of an executor with ``context`` starts (from any
    thread; the first way, forking the caller, is the dispatcher's to choose)."""
    if not isinstance(context, TemplateContext):
        return _starting(context, context.get_start_method(), on_spawner=True)
    try:
        template.check_available()
    except TemplateUnavailable as exc:
        logger.debug("no template process (%s): starting fresh interpreters", exc)
        return _FRESH_INTERPRETER
    return _FROM_TEMPLATE
