"""A process pool's constructor arguments, checked and resolved once.

``PoolSettings.resolve`` raises what the constructor documents (bad counts,
unknown start methods, an initializer that cannot reach a worker) before any
process starts; the executor and ``get_reusable_executor`` then work from the
resolved record, and its ``reuse`` key decides which warm workers fit.

Fork-context primitives in ``initargs``. multiprocessing's default context is
``fork`` on Linux before 3.14, so ``initargs=(multiprocessing.RLock(),)`` (what
tqdm's ``process_map`` passes) holds a lock whose POSIX semaphore was unlinked
at birth: only a forked child can inherit it, and stalwart's workers are fresh
interpreters (unless ``mp_context="fork"``). Where such an object cannot reach
a worker:

- a fork-context ``Lock``, ``RLock``, ``Semaphore`` or ``BoundedSemaphore``,
  given directly in ``initargs`` or in a tuple, list or dict there, is replaced
  by a fresh one of the same kind from the executor's own context (one per
  original and start method, so consecutive executors share it too). The
  workers share it among themselves, not with the parent; a RuntimeWarning says
  so and how to share with the parent as well.
- any other object that holds a fork-context lock or semaphore (a Queue, Event,
  Condition, Barrier, synchronized Value/Array, or one of the above inside an
  object) raises ``stalwart.PicklingError`` naming its path (``initargs[0]``)
  and the fixes: from the constructor, not as a broken pool at the first task.
"""

from __future__ import annotations

import importlib
import multiprocessing.context
import os
import sys
import threading
import types
import warnings
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stalwart import _options, _pickling, _reuse
from stalwart._worker import WorkerConfig
from stalwart.errors import PicklingError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from multiprocessing.context import BaseContext


@dataclass(frozen=True)
class PoolSettings:
    """A process pool's constructor arguments, checked and resolved."""

    max_workers: int
    context: BaseContext
    config: WorkerConfig
    retries: int
    task_timeout: float | None
    reuse: _reuse.ReusePolicy | None
    prefix_output: bool = False

    @classmethod
    def resolve(
        cls,
        max_workers: int | None = None,
        mp_context: BaseContext | str | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        task_timeout: float | None = None,
        retries: int = 0,
        reuse: bool = False,
        idle_timeout: float | None = None,
        forward_output: bool = True,
        prefix_output: bool = False,
        max_memory_per_child: int | str | None = None,
    ) -> PoolSettings:
        """Check every argument (raising as the constructor documents)."""
        workers = _options.resolve_max_workers(max_workers)
        _options.check_output_options(forward_output, prefix_output)
        max_memory = _options.resolve_max_memory(max_memory_per_child)
        context = _options.resolve_context(mp_context)
        _options.check_initializer(initializer, initargs)
        _options.check_max_tasks_per_child(max_tasks_per_child)
        _options.check_retries(retries)
        timeout = _options.check_task_timeout(task_timeout)
        parked_for_s = _options.check_reuse(reuse, idle_timeout)
        # Spawn-style contexts re-import the main script in the worker, so its
        # functions can travel by reference; plain "loky" does not (by value then).
        by_value = context.get_start_method() == "loky"
        initializer_call = None
        inherited: tuple[Any, ...] = ()
        if initializer is not None:
            try:
                initializer_call = _pickling.serialize_call(
                    initializer, initargs, {}, action="initializer", by_value=by_value
                )
            except PicklingError as error:
                if not _is_shared_by_inheritance(error.unpicklable_type):
                    raise
                # A multiprocessing Queue/Lock/Event in initargs (the stdlib's
                # own pattern) can only reach a worker as it starts: hand it to
                # the start method, as the stdlib does.
                initargs = _inheritable_initargs(initializer, initargs, context)
                inherited = (initializer, initargs)
        main_path = None if by_value else _main_script_path()
        config = WorkerConfig(
            initializer_call,
            max_tasks_per_child,
            by_value,
            main_path,
            inherited,
            forward_output=forward_output,
            max_memory=max_memory,
        )
        policy = None
        if parked_for_s is not None:
            policy = _reuse_policy(context, config, parked_for_s)
        return cls(workers, context, config, retries, timeout, policy, prefix_output)

    def signature(self) -> tuple[Any, ...]:
        """Equal for settings that make equal executors (reuse=True only)."""
        assert self.reuse is not None
        return (
            self.max_workers,
            self.reuse.key,
            self.reuse.idle_timeout,
            self.retries,
            self.task_timeout,
            self.prefix_output,
        )


def _reuse_policy(
    context: BaseContext, config: WorkerConfig, idle_timeout: float
) -> _reuse.ReusePolicy:
    """Park under everything that shapes a worker process, so that an executor
    only ever adopts workers identical to those it would have started."""
    inherited = config.inherited_initializer
    keepalive = (inherited[0], *inherited[1]) if inherited else ()
    key = (
        "process",
        context.get_start_method(),
        config.initializer_call,
        _reuse.identity_key(keepalive),
        config.max_tasks,
        config.by_value,
        config.main_path,
        config.forward_output,
        config.max_memory,
        _reuse.environment_fingerprint(),
    )
    return _reuse.ReusePolicy(key, idle_timeout, keepalive)


def _is_shared_by_inheritance(culprit: type | None) -> bool:
    """multiprocessing's queues, locks, events, shared values: sent only at start."""
    module = getattr(culprit, "__module__", "") or ""
    return module.startswith(("multiprocessing.", "loky.backend."))


def _main_script_path() -> str | None:
    """The main script's path, recorded now for workers started later.

    CPython deletes ``__main__.__file__`` once the script body has run, so a
    worker started after that (``shutdown(wait=False)`` at the end of a script)
    would otherwise not import the script its tasks refer to.
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        return None  # run with -m: loky and spawn find it by module name
    path = getattr(main, "__file__", None)
    if not isinstance(path, str) or not os.path.isfile(path):
        return None  # "<stdin>" (python - < script.py): nothing to import
    return os.path.abspath(path)


# ------------------------------------------- fork-context primitives in initargs


def _import_mp_synchronize() -> types.ModuleType | None:
    try:
        return importlib.import_module("multiprocessing.synchronize")
    except ImportError:  # no sem_open on this platform: no multiprocessing locks
        return None


_mp_synchronize = _import_mp_synchronize()


def _inheritable_initargs(
    initializer: Callable[..., Any], initargs: tuple[Any, ...], context: BaseContext
) -> tuple[Any, ...]:
    """``initargs`` as the start method can send them to a worker of ``context``.

    Under any start method but ``fork``, a fork-context lock or semaphore is
    swapped for a shared one from ``context`` (with a RuntimeWarning), and any
    other object holding one raises PicklingError; see the module docstring.
    """
    start_method = context.get_start_method()
    if start_method == "fork" or _mp_synchronize is None:
        return initargs  # the fork start method inherits every one of them
    replaced: list[tuple[str, str]] = []
    adapted = tuple(
        _replace_fork_primitives(arg, f"initargs[{i}]", context, replaced)
        for i, arg in enumerate(initargs)
    )
    found = _find_fork_semlock([("initializer", initializer)]) or _find_fork_semlock(
        [(f"initargs[{i}]", arg) for i, arg in enumerate(adapted)]
    )
    if found is not None:
        path, holder = found
        raise _fork_object_error(initializer, initargs, path, holder, start_method)
    for path, kind in replaced:
        warnings.warn(
            f"{path} is a multiprocessing {kind} made in a 'fork' context (the default"
            f" context on Linux before Python 3.14), which a {start_method!r} worker"
            f" cannot inherit. The workers get instead one new {kind} that they"
            " share among themselves, but not with this process. To share it with"
            " this process as well, create it with multiprocessing.get_context("
            f"'spawn').{kind}() (or 'forkserver'), or pass mp_context='fork'"
            " (unsafe if this process runs threads).",
            RuntimeWarning,
            stacklevel=_first_caller_outside_stalwart(),
        )
    return adapted


def _replace_fork_primitives(
    obj: Any, path: str, context: BaseContext, replaced: list[tuple[str, str]]
) -> Any:
    """``obj``, its fork-context Lock/RLock/Semaphore/BoundedSemaphore replaced
    where it is one or sits in plain tuples, lists and dicts; the others are
    left for ``_find_fork_semlock`` to name."""
    if type(obj) in (tuple, list):
        items = [
            _replace_fork_primitives(item, f"{path}[{i}]", context, replaced)
            for i, item in enumerate(obj)
        ]
        if all(new is old for new, old in zip(items, obj, strict=True)):
            return obj  # keep the user's object, and so its identity (reuse key)
        return type(obj)(items)
    if type(obj) is dict:
        values = {
            key: _replace_fork_primitives(value, f"{path}[{key!r}]", context, replaced)
            for key, value in obj.items()
        }
        if all(values[key] is value for key, value in obj.items()):
            return obj
        return values
    if type(obj) in _REPLACEABLE_KINDS and _is_fork_semlock(obj):
        kind = type(obj).__name__
        replacement = _shared_replacement(obj, kind, context)
        if replacement is None:
            return obj  # its value cannot be read here: named as an error instead
        replaced.append((path, kind))
        return replacement
    return obj


_REPLACEABLE_KINDS: frozenset[type] = (
    frozenset()
    if _mp_synchronize is None
    else frozenset(
        {
            _mp_synchronize.Lock,
            _mp_synchronize.RLock,
            _mp_synchronize.Semaphore,
            _mp_synchronize.BoundedSemaphore,
        }
    )
)

# One replacement per original lock and start method: tqdm hands the same
# class-level lock to every process_map, so its executors (and reuse=True's
# warm workers, keyed by initargs identity) keep meeting the same lock.
_replacements: weakref.WeakKeyDictionary[Any, dict[str, Any]] = (
    weakref.WeakKeyDictionary()
)
_replacements_lock = threading.Lock()  # executors may be built from many threads


def _shared_replacement(original: Any, kind: str, context: BaseContext) -> Any:
    """A new ``kind`` from ``context``, the same one each time for ``original``.

    A lock starts unlocked; a BoundedSemaphore at its bound; a Semaphore (whose
    initial value is not recorded) at the original's current value. None where
    that value cannot be read (``sem_getvalue`` is missing on macOS).
    """
    start_method = context.get_start_method()
    with _replacements_lock:
        per_method = _replacements.setdefault(original, {})
        replacement = per_method.get(start_method)
        if replacement is not None:
            return replacement
        if kind == "BoundedSemaphore":
            replacement = context.BoundedSemaphore(original._semlock.maxvalue)
        elif kind == "Semaphore":
            try:
                value = original.get_value()
            except NotImplementedError:
                return None
            replacement = context.Semaphore(value)
        else:
            replacement = getattr(context, kind)()
        per_method[start_method] = replacement
        return replacement


def _is_fork_semlock(obj: object) -> bool:
    """A multiprocessing lock or semaphore made in a ``fork`` context.

    Such a SemLock unlinks its semaphore's name at once, so only a forked child
    can reach it; ``name`` is None then (on every CPython, where 3.11+ also
    record ``_is_fork_ctx``). 3.11+ refuse to pickle it; 3.10 would send the
    parent's handle, which a fresh interpreter cannot use.
    """
    if _mp_synchronize is None or not isinstance(obj, _mp_synchronize.SemLock):
        return False
    semlock = getattr(obj, "_semlock", None)
    return semlock is not None and getattr(semlock, "name", "") is None


# The walk for fork-context SemLocks follows what the start method's pickler
# would pickle, bounded like the pickling diagnosis so that a huge initarg
# still costs a bounded time.
_MAX_SCAN_DEPTH = 50
_MAX_SCAN_NODES = 10_000
_NOT_SCANNED = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType)


class _AnyStartMethod:
    """Stands for the process being started while the walk takes objects apart:
    multiprocessing's objects reduce themselves only then (``assert_spawning``)."""

    def DupFd(self, fd: int) -> int:
        return fd

    def duplicate_for_child(self, handle: int) -> int:
        return handle


def _find_fork_semlock(roots: list[tuple[str, object]]) -> tuple[str, object] | None:
    """``(path, holder)`` for the first fork-context SemLock under ``roots``: the
    holder is the outermost multiprocessing object on the way to it (a Queue, an
    Event, or the lock itself), which is what the user made and can remake."""
    before = multiprocessing.context.get_spawning_popen()
    multiprocessing.context.set_spawning_popen(_AnyStartMethod())  # type: ignore[arg-type]
    try:
        seen: set[int] = set()
        for path, obj in roots:
            found = _scan(obj, [(path, obj)], seen)
            if found is not None:
                return found
        return None
    finally:
        multiprocessing.context.set_spawning_popen(before)


def _scan(
    obj: object, trail: list[tuple[str, object]], seen: set[int]
) -> tuple[str, object] | None:
    if _is_fork_semlock(obj):
        for path, holder in trail:
            if type(holder).__module__.startswith("multiprocessing."):
                return path, holder
        return trail[-1]
    if (
        id(obj) in seen
        or len(seen) >= _MAX_SCAN_NODES
        or len(trail) > _MAX_SCAN_DEPTH
        or isinstance(obj, _NOT_SCANNED)
        or type(obj) in _pickling._ALWAYS_PICKLABLE
    ):
        return None
    seen.add(id(obj))
    path = trail[-1][0]
    for suffix, part in _parts_or_none(obj):
        trail.append((path + suffix, part))
        try:
            found = _scan(part, trail, seen)
        finally:
            trail.pop()
        if found is not None:
            return found
    return None


def _parts_or_none(obj: object) -> Iterator[tuple[str, object]]:
    """The pickling diagnosis's parts of ``obj``; none where it will not come apart."""
    try:
        yield from _pickling._parts(obj)
    except Exception:  # noqa: BLE001 - e.g. its __reduce__ raised: a leaf then
        return


def _fork_object_error(
    initializer: Callable[..., Any],
    initargs: tuple[Any, ...],
    path: str,
    holder: object,
    start_method: str,
) -> PicklingError:
    culprit_type = type(holder)
    name = f"{culprit_type.__module__}.{culprit_type.__qualname__}"
    call = _pickling.describe_call(initializer, initargs, {}, action="initializer")
    factory = _FACTORY_OF.get(culprit_type.__name__)
    remake = (
        f"multiprocessing.get_context('spawn').{factory}(...)"
        if factory is not None
        else "its locks from multiprocessing.get_context('spawn')"
    )
    return PicklingError(
        f"cannot send {call} to a worker process:\n"
        f"  {path} is a {name} made in a 'fork' context (the default context on"
        f" Linux before Python 3.14): it holds a semaphore that only a forked child"
        f" can inherit, and a {start_method!r} worker is a fresh interpreter.\n"
        f"  Create it with {remake} (or 'forkserver'), use a"
        " multiprocessing.Manager() proxy, or pass mp_context='fork' (unsafe if this"
        " process runs threads).",
        path=path,
        unpicklable_type=culprit_type,
    )


_FACTORY_OF = {
    **{
        name: name
        for name in (
            "Lock",
            "RLock",
            "Semaphore",
            "BoundedSemaphore",
            "Condition",
            "Event",
            "Barrier",
            "Queue",
            "JoinableQueue",
            "SimpleQueue",
        )
    },
    "Synchronized": "Value",
    "SynchronizedArray": "Array",
    "SynchronizedString": "Array",
}
"""The multiprocessing context method that makes an object of each type."""


def _first_caller_outside_stalwart() -> int:
    """``warnings.warn``'s stacklevel that points at the user's constructor call,
    however many stalwart frames (executor, reusable, settings) lie between."""
    package_dir = os.path.dirname(os.path.abspath(__file__))
    frame: types.FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and (
        os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == package_dir
    ):
        frame = frame.f_back
        level += 1
    return level
