"""Serialise a call once, and when it cannot be pickled, say which object is to blame.

::

    submit(fn, *args, **kwargs)
        │
        ▼
    serialize_call ── dumps((fn, args, kwargs)) ──► bytes for the worker's pipe
        │                │
        │                ├─ __main__ importable by workers (a script on disk)?
        │                │     yes: the C pickler, everything importable by reference;
        │                │          if it fails (lambda, closure, local class), cloudpickle,
        │                │          still with __main__'s functions and classes by reference
        │                │     no (REPL, Jupyter, python -c): cloudpickle, __main__ by value
        │                ▼
        └─ failure ──► diagnose_unpicklable on fn, args[0], ..., kwargs['k']
                         └─► PicklingError: "args[0].model._lock is a _thread.RLock ..."

**By reference where possible.** A function that workers can import is sent as its
module and name. Spawn-style workers re-import the user's script as ``__mp_main__``, so
an initializer that sets a module global and a task that reads it share that module,
as they do with the stdlib pool. cloudpickle's by-value path would give each function
its own copy of the globals and silently break that pattern (loky #206, #359). By
value is kept for what workers cannot import: lambdas, closures, and anything from an
interactive ``__main__``.

**The check is the send.** The bytes that ``serialize_call`` returns are the ones sent,
so refusing an unpicklable call in ``submit()`` costs nothing on success: one
``pickle.dumps`` and a cached look at ``__main__``. Only a failure pays for the
diagnosis, which pickles the parts of the call one by one and walks into the first
part that fails until it reaches an object whose own parts all pickle.
"""

from __future__ import annotations

import copyreg
import dis
import functools
import io
import os
import pickle
import re
import reprlib
import sys
import types
from typing import TYPE_CHECKING, Any

import cloudpickle

from . import _outofband
from .errors import PicklingError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

__all__ = [
    "describe_call",
    "describe_task",
    "diagnose_unpicklable",
    "dumps",
    "loads",
    "pack_call",
    "pickle_into",
    "serialize_call",
    "serialize_result",
]

_PROTOCOL = pickle.HIGHEST_PROTOCOL
_pickle_dumps = pickle.dumps

# What a pickler raises for an object it cannot handle. The odd ones come from
# third-party __reduce__ methods (RecursionError from self-referencing reducers,
# ValueError and NotImplementedError from "cannot pickle in this state" checks).
# Anything else, and BaseExceptions such as KeyboardInterrupt, propagate as they are.
_PICKLING_FAILURES = (
    pickle.PicklingError,
    TypeError,
    AttributeError,
    RecursionError,
    ValueError,
    NotImplementedError,
)

# Diagnosis bounds: a failing call is walked at most this deep and this wide, so an
# enormous or endlessly nested argument still gets an answer (the deepest failing
# object found so far) within a bounded time.
_MAX_DIAGNOSIS_DEPTH = 50
_MAX_DIAGNOSIS_NODES = 10_000

# Values of these types always pickle; the diagnosis never spends a dumps() on them.
_ALWAYS_PICKLABLE: frozenset[type] = frozenset(
    {int, float, complex, bool, str, bytes, bytearray, type(None), type(...), range}
)

_FIX_FOR_CALL = (
    "  Build it inside the worker instead (initializer=..., then stalwart.worker_state()),\n"
    "  or use stalwart.ThreadPoolExecutor, which needs no pickling."
)
_FIX_FOR_THREAD_CHECK = (
    "  Threads need no pickling: drop check_pickle=True if this pool stays on\n"
    "  threads; for processes or a cluster, build it inside the worker instead\n"
    "  (initializer=..., then stalwart.worker_state())."
)
_FIX_FOR_RESULT = (
    "  Return plain data instead, and keep objects like this in the worker"
    " (initializer=..., then stalwart.worker_state())."
)


# --------------------------------------------------------------------------- dumps


def dumps(
    obj: object,
    *,
    by_value: bool = False,
    buffer_callback: _outofband.BufferCallback | None = None,
) -> bytes:
    """Pickle by reference what workers can import, by value (cloudpickle) only what they cannot.

    ``by_value=True`` is for workers that do not re-import the main script (loky's own
    start method): ``__main__``'s functions and classes then travel by value too.
    ``buffer_callback`` (``_outofband.Buffers``) keeps big buffers out of band.
    """
    if not by_value and _is_main_importable():
        try:
            return _pickle_dumps(obj, _PROTOCOL, buffer_callback=buffer_callback)
        except _PICKLING_FAILURES:
            if buffer_callback is not None:
                buffer_callback.found.clear()
            # a lambda, closure or local class somewhere inside: go by value
    return _dumps_by_value(obj, by_value, buffer_callback)


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Rebuild an object from the bytes ``dumps`` made."""
    return pickle.loads(data)


# (the __main__ module, its __file__, whether workers can import it)
_main_verdict: tuple[object, object, bool] = (None, None, False)


def _is_main_importable() -> bool:
    """Whether spawn-style workers re-import ``__main__``: it must be a file on disk.

    A REPL, Jupyter, ``python -c`` or a script read from stdin leaves ``__main__``
    without a ``__file__`` that exists; workers then cannot find its functions by
    name, and those must travel by value. The answer is cached on the identity of
    the module and of its ``__file__``, so the hot path makes no filesystem call.
    """
    global _main_verdict
    main = sys.modules.get("__main__")
    file = getattr(main, "__file__", None)
    cached_main, cached_file, verdict = _main_verdict
    if cached_main is main and cached_file is file:
        return verdict
    verdict = isinstance(file, str) and os.path.isfile(file)
    _main_verdict = (main, file, verdict)
    return verdict


def _dumps_by_value(
    obj: object, main_by_value: bool, buffer_callback: Any = None
) -> bytes:
    """cloudpickle, except that an importable ``__main__`` is still used by reference."""
    with io.BytesIO() as buffer:
        _by_value_pickler(buffer, main_by_value, buffer_callback).dump(obj)
        return buffer.getvalue()


def _by_value_pickler(
    file: Any, main_by_value: bool, buffer_callback: Any = None
) -> pickle.Pickler:
    """cloudpickle's pickler into ``file``, keeping an importable ``__main__``
    by reference unless ``main_by_value``."""
    if main_by_value or not _is_main_importable():
        pickler: pickle.Pickler = cloudpickle.Pickler(
            file, protocol=_PROTOCOL, buffer_callback=buffer_callback
        )
        return pickler
    return _MainByReferencePickler(
        file, protocol=_PROTOCOL, buffer_callback=buffer_callback
    )


def _is_importable_main_attribute(obj: object) -> bool:
    """Whether obj is a function or class that workers find by name in their ``__main__``."""
    if not isinstance(obj, (types.FunctionType, type)):
        return False
    if getattr(obj, "__module__", None) != "__main__":
        return False
    target: object = sys.modules.get("__main__")
    for part in obj.__qualname__.split("."):
        target = getattr(target, part, None)
    return target is obj


class _MainByReferencePickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle's pickler that leaves ``__main__``'s functions and classes by reference.

    Plain cloudpickle sends everything from ``__main__`` by value. Once the C pickler
    has failed on, say, a lambda argument, that would also copy the task function
    and its globals, and break the initializer-sets-a-global pattern for the whole call.
    """

    def reducer_override(self, obj: object) -> Any:
        if _is_importable_main_attribute(obj):
            return NotImplemented  # pickle's save_global: module and name
        return super().reducer_override(obj)


# ------------------------------------------------------------------ calls and results


def serialize_call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    action: str = "submit",
    by_value: bool = False,
    item: int | None = None,
    for_threads: bool = False,
) -> bytes:
    """Return ``dumps((fn, args, kwargs), by_value=by_value)``: the bytes for a worker.

    Raises PicklingError (chained from the pickler's exception) naming the unpicklable
    object, e.g. ``args[0].model._lock is a _thread.RLock``. ``action`` is the method
    the user called, as the message shows it: ``"submit"`` or ``"map"``; ``item``,
    the index of a map's item; ``for_threads``: a thread pool's ``check_pickle``
    (no worker process, and no advice to use threads).
    """
    try:
        return dumps((fn, args, kwargs), by_value=by_value)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure: this PicklingError
        # Any exception out of pickling means this call cannot be sent, whatever a
        # user's __reduce__ chose to raise; it is kept as the cause.
        raise _unsendable_call_error(
            fn, args, kwargs, action, by_value, exc, item, for_threads
        ) from _without_pickler_frames(exc)


def pack_call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    action: str = "submit",
    by_value: bool = False,
) -> bytes | _outofband.Packed:
    """``serialize_call`` for a process pool's worker: big buffers out of band.

    The same one pickling, and the same PicklingError; the buffers of
    ``_outofband.OUT_OF_BAND_BYTES`` or more are copied into shared memory
    now, so that what the task sees is the data at ``submit()``.
    """
    call = (fn, args, kwargs)
    buffers = _outofband.Buffers()
    try:
        data = dumps(call, by_value=by_value, buffer_callback=buffers)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure: this PicklingError
        raise _unsendable_call_error(
            fn, args, kwargs, action, by_value, exc
        ) from _without_pickler_frames(exc)
    if not buffers.found and len(data) < _outofband.OUT_OF_BAND_BYTES:
        return data  # the common case: a small call, the bytes as they are
    packed = _outofband.pack([data], buffers.found, for_queue=True)
    if packed is None:  # no descriptor to spare: every buffer in the stream
        data = dumps(call, by_value=by_value)
        packed = _outofband.Packed([data], len(data))
    if packed.segment is None and packed.size >= _outofband.OUT_OF_BAND_BYTES:
        # A big stream that waits for the pipe: hold its big bytes by
        # reference, not as a copy (2,000 calls passing one 1 MiB bytes).
        sink = _outofband.Sink()
        pickle_into(sink, call, by_value)
        packed = _outofband.Packed(sink.chunks, sink.size)
    return packed


def pickle_into(
    file: Any, obj: object, by_value: bool, buffer_callback: Any = None
) -> None:
    """What ``dumps`` does, into ``file`` (which has ``write`` and ``reset``)."""
    if not by_value and _is_main_importable():
        try:
            pickle.Pickler(file, _PROTOCOL, buffer_callback=buffer_callback).dump(obj)
        except _PICKLING_FAILURES:
            file.reset()  # a lambda, closure or local class inside: go by value
        else:
            return
    _by_value_pickler(file, by_value, buffer_callback).dump(obj)


def serialize_result(value: object, *, task: str, by_value: bool = False) -> bytes:
    """Return ``dumps(value, by_value=by_value)`` for a task's result, in the worker.

    Raises PicklingError whose path starts at ``result``, e.g. ``result[0]._lock``.
    ``task`` is the short description of the task that the message names.
    """
    if not by_value:
        # By reference first, whatever __main__ is: the parent resolves what
        # pickles here (its own __main__ included: a worker's is a copy or a
        # re-import of it), and pickle refuses a reference it could not check.
        # Without a main script file (python -c, Jupyter) dumps() would use
        # cloudpickle for every result: ten times the cost on a small one.
        try:
            return _pickle_dumps(value, _PROTOCOL)
        except _PICKLING_FAILURES:
            pass
    try:
        return dumps(value, by_value=by_value)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure: this PicklingError
        raise _unsendable_result_error(
            value, task, by_value, exc
        ) from _without_pickler_frames(exc)


_PICKLER_FILES = ("pickle.py", "copyreg.py", "cloudpickle.py", "cloudpickle_fast.py")


def _without_pickler_frames(exc: BaseException) -> BaseException:
    """``exc`` (the cause of a PicklingError) with its traceback cut to the
    frames that help: from the first one outside pickle, cloudpickle and
    stalwart (a ``__reduce__`` of the user's that raised), else none. The
    message already names the culprit; 14 lines of pickler internals do not."""
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        internal = filename.endswith(_PICKLER_FILES) or (
            os.sep + "stalwart" + os.sep in filename
        )
        if not internal:
            break
        tb = tb.tb_next
    return exc.with_traceback(tb)


def _unsendable_call_error(
    fn: object,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    action: str,
    by_value: bool,
    exc: Exception,
    item: int | None = None,
    for_threads: bool = False,
) -> PicklingError:
    call = describe_call(fn, args, kwargs, action=action)
    if item is not None:
        call = f"item {item} of {call}"
    if for_threads:
        head = f"cannot pickle {call} (check_pickle=True):"
        fix, plain = (
            _FIX_FOR_THREAD_CHECK,
            "  Pass plain data, or drop check_pickle=True.",
        )
    else:
        head = f"cannot send {call} to a worker process:"
        fix = _FIX_FOR_CALL
        plain = "  Pass plain data, or use stalwart.ThreadPoolExecutor, which needs no pickling."
    roots: list[tuple[str, object]] = [("fn", fn)]
    roots += [(f"args[{i}]", arg) for i, arg in enumerate(args)]
    roots += [(f"kwargs[{name!r}]", value) for name, value in kwargs.items()]
    found = _diagnose_failure(roots, by_value, exc)
    if found is None:
        return PicklingError(
            f"{head}\n  the call could not be pickled: {_describe_exception(exc)}.\n"
            + plain
        )
    path, culprit_type = found
    return PicklingError(
        f"{head}\n  {_culprit_sentence(path, culprit_type)}\n{fix}",
        path=path,
        unpicklable_type=culprit_type,
    )


def _unsendable_result_error(
    value: object, task: str, by_value: bool, exc: Exception
) -> PicklingError:
    head = f"cannot send the result of {task} back from the worker process:"
    found = _diagnose_failure([("result", value)], by_value, exc)
    if found is None:
        return PicklingError(
            f"{head}\n  the result could not be pickled: {_describe_exception(exc)}.\n"
            "  Return plain data instead."
        )
    path, culprit_type = found
    return PicklingError(
        f"{head}\n  {_culprit_sentence(path, culprit_type)}\n{_FIX_FOR_RESULT}",
        path=path,
        unpicklable_type=culprit_type,
    )


def _diagnose_failure(
    roots: list[tuple[str, object]], by_value: bool, exc: Exception
) -> tuple[str, type] | None:
    """The culprit in the first root, in order, that does not pickle; None if none found."""
    if _is_recursion_failure(exc):
        return None
    diagnosis = _Diagnosis(by_value)
    try:
        for root, part in roots:
            found = diagnosis.find_culprit(part, root)
            if found is not None:
                return found
    except Exception:  # noqa: BLE001 - a failed diagnosis must not hide the real error
        pass
    return None


def _is_recursion_failure(exc: BaseException) -> bool:
    """Too deeply nested to pickle: re-pickling every level to diagnose it would be slow."""
    seen = 0
    cause: BaseException | None = exc
    while cause is not None and seen < 5:
        if isinstance(cause, RecursionError):
            return True
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return False


def _describe_exception(exc: BaseException) -> str:
    text = _safe_str(exc).rstrip(".")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _culprit_sentence(path: str, culprit_type: type) -> str:
    name = _type_name(culprit_type)
    return f"{path} is {_article(name)} {name}, which cannot be pickled."


def _type_name(cls: type) -> str:
    """``_thread.RLock``, ``_io.TextIOWrapper``; builtins by their bare name (``generator``)."""
    qualname = getattr(cls, "__qualname__", None) or getattr(cls, "__name__", "?")
    module = getattr(cls, "__module__", None)
    if not isinstance(module, str) or module == "builtins":
        return str(qualname)
    return f"{module}.{qualname}"


def _article(name: str) -> str:
    letter = name.lstrip("_")[:1].lower()
    return "an" if letter in ("a", "e", "i", "o", "u") else "a"


# ------------------------------------------------------------------------- diagnosis


def diagnose_unpicklable(
    obj: object, root: str, *, by_value: bool = False
) -> tuple[str, type] | None:
    """Find the object inside ``obj`` that cannot be pickled.

    Returns ``(path, type)`` of the first object, depth first, that fails to pickle
    although all of its parts pickle, e.g. ``("args[0].model._lock", _thread.RLock)``
    for ``root="args[0]"``; None if ``obj`` pickles fine.
    """
    return _Diagnosis(by_value).find_culprit(obj, root)


class _Diagnosis:
    """One diagnosis: each object is test-pickled at most once, however often it is met.

    Verdicts are memoised by ``id()``; every tested object is kept alive until the
    diagnosis ends, so that no id can be reused by a new object meanwhile.
    """

    def __init__(self, by_value: bool = False) -> None:
        self._by_value = by_value  # test-pickle as dumps(..., by_value) falls back to
        self._verdicts: dict[int, bool] = {}
        self._kept_alive: list[object] = []
        self._tested = 0

    def find_culprit(self, obj: object, root: str) -> tuple[str, type] | None:
        if self._pickles(obj):
            return None
        path, culprit = self._descend(obj, root, depth=0, on_path={id(obj)})
        return path, type(culprit)

    def _pickles(self, obj: object) -> bool:
        if type(obj) in _ALWAYS_PICKLABLE:
            return True
        key = id(obj)
        verdict = self._verdicts.get(key)
        if verdict is None:
            self._kept_alive.append(obj)
            self._tested += 1
            try:
                _dumps_by_value(obj, self._by_value)
            except Exception:  # noqa: BLE001 - whatever it raises, it does not pickle
                verdict = False
            else:
                verdict = True
            self._verdicts[key] = verdict
        return verdict

    def _descend(
        self, obj: object, path: str, depth: int, on_path: set[int]
    ) -> tuple[str, object]:
        """Follow the first failing part of the failing ``obj`` down to the culprit."""
        if depth >= _MAX_DIAGNOSIS_DEPTH:
            return path, obj
        parts = _parts(obj)
        while self._tested < _MAX_DIAGNOSIS_NODES:
            try:
                suffix, part = next(parts)
            except StopIteration:
                break
            except Exception:  # noqa: BLE001 - e.g. its __reduce__ raised
                break  # obj could not even be taken apart: obj is the culprit
            if id(part) in on_path or self._pickles(part):
                continue  # a cycle back to an object already being explained, or fine
            on_path.add(id(part))
            try:
                return self._descend(part, path + suffix, depth + 1, on_path)
            finally:
                on_path.discard(id(part))
        return path, obj


def _parts(obj: object) -> Iterator[tuple[str, object]]:
    """Yield ``(path suffix, part)`` for what pickling ``obj`` would pickle in turn."""
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield f"[{i}]", item
    elif isinstance(obj, dict):
        yield from _mapping_parts(obj)
    elif isinstance(obj, (set, frozenset)):
        for item in obj:
            yield ".<set item>", item
    elif isinstance(obj, types.FunctionType):
        yield from _function_parts(obj)
        return
    elif isinstance(obj, types.MethodType):
        yield ".__self__", obj.__self__
        yield ".__func__", obj.__func__
        return
    elif isinstance(obj, types.BuiltinMethodType):
        receiver = getattr(obj, "__self__", None)
        if receiver is not None and not isinstance(receiver, types.ModuleType):
            yield ".__self__", receiver  # e.g. lock.acquire
        return
    elif isinstance(obj, functools.partial):
        yield ".func", obj.func
        for i, arg in enumerate(obj.args):
            yield f".args[{i}]", arg
        for name, value in obj.keywords.items():
            yield f".keywords[{name!r}]", value
        yield from _attribute_parts(getattr(obj, "__dict__", None) or {})
        return
    elif isinstance(obj, type):
        yield from _class_parts(obj)
        return
    else:
        yield from _reduced_parts(obj, with_items=True)
        return
    if type(obj) not in (list, tuple, dict, set, frozenset):
        # A subclass (namedtuple, OrderedDict, ...): its attributes travel as well.
        yield from _reduced_parts(obj, with_items=False)


def _mapping_parts(mapping: Mapping[Any, Any]) -> Iterator[tuple[str, object]]:
    for key, value in mapping.items():
        yield f"[{_key_repr(key)}]", value
    for key in mapping:
        yield f".<key {_key_repr(key)}>", key


def _attribute_parts(attributes: Mapping[Any, Any]) -> Iterator[tuple[str, object]]:
    for name, value in attributes.items():
        if isinstance(name, str) and name.isidentifier():
            yield f".{name}", value
        else:
            yield f".__dict__[{_key_repr(name)}]", value


def _key_repr(key: object) -> str:
    return repr(key) if isinstance(key, str) else _short_repr(key)


def _function_parts(fn: types.FunctionType) -> Iterator[tuple[str, object]]:
    """What cloudpickle sends with a function it pickles by value."""
    namespace = fn.__globals__
    for name in _referenced_globals(fn.__code__):
        if name in namespace:
            yield f".__globals__[{name!r}]", namespace[name]
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
        try:
            contents = cell.cell_contents
        except ValueError:
            continue  # an empty cell (a name not yet bound) pickles fine
        yield f".<closure {name}>", contents
    for i, default in enumerate(fn.__defaults__ or ()):
        yield f".__defaults__[{i}]", default
    for name, default in (fn.__kwdefaults__ or {}).items():
        yield f".__kwdefaults__[{name!r}]", default
    yield from _attribute_parts(fn.__dict__)


_GLOBAL_OPCODES = frozenset(
    dis.opmap[name] for name in ("LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL")
)


def _referenced_globals(code: types.CodeType) -> dict[str, None]:
    """Global names that code and the code nested in it use, in order (as cloudpickle does).

    ``co_names`` alone would also list attribute names (``x.lock``), and could blame a
    module global that the function never touches.
    """
    names: dict[str, None] = {}
    for instruction in dis.get_instructions(code):
        if instruction.opcode in _GLOBAL_OPCODES:
            names[instruction.argval] = None
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(_referenced_globals(const))
    return names


def _class_parts(cls: type) -> Iterator[tuple[str, object]]:
    """What cloudpickle sends with a class it pickles by value (one defined in a function)."""
    for name, value in vars(cls).items():
        if name in ("__dict__", "__weakref__") or isinstance(
            value, types.MemberDescriptorType
        ):
            continue
        yield f".{name}", value
    for i, base in enumerate(cls.__bases__):
        yield f".__bases__[{i}]", base


# The constructors object.__reduce_ex__ uses; their first argument is the class.
_NEWOBJ_CONSTRUCTORS = (copyreg.__newobj__, copyreg.__newobj_ex__)  # type: ignore[attr-defined]


def _reduced_parts(obj: object, *, with_items: bool) -> Iterator[tuple[str, object]]:
    """The parts of ``obj`` that its reduction (``__reduce_ex__``) hands to the pickler.

    The state first: for ordinary instances it is the ``__dict__`` plus the values of
    every ``__slots__`` in the MRO, so attributes come out as ``.name``. Then the items
    (unless the caller already walked them as a container's), the constructor's
    arguments and the constructor. A reducer that raises propagates, which makes
    ``obj`` itself the culprit.
    """
    reducer = cloudpickle.Pickler.dispatch_table.get(type(obj))
    reduced = reducer(obj) if reducer is not None else obj.__reduce_ex__(_PROTOCOL)
    if not isinstance(reduced, tuple) or len(reduced) < 2:
        return  # a global's name, pickled by reference
    constructor, arguments = reduced[0], reduced[1]
    state = reduced[2] if len(reduced) > 2 else None
    list_items = reduced[3] if len(reduced) > 3 else None
    dict_items = reduced[4] if len(reduced) > 4 else None
    if state is not None:
        if isinstance(state, dict):
            yield from _attribute_parts(state)
        elif (
            isinstance(state, tuple)
            and len(state) == 2
            and all(part is None or isinstance(part, dict) for part in state)
        ):
            for attributes in state:  # (__dict__, slot values)
                yield from _attribute_parts(attributes or {})
        else:
            yield ".<state>", state
    if with_items and list_items is not None:
        for i, item in enumerate(list_items):
            yield f"[{i}]", item
    if with_items and dict_items is not None:
        for key, value in dict_items:
            yield f"[{_key_repr(key)}]", value
    for i, argument in enumerate(arguments or ()):
        is_class_of_obj = (
            i == 0 and constructor in _NEWOBJ_CONSTRUCTORS and argument is type(obj)
        )
        yield (".__class__" if is_class_of_obj else f".<reduce arg {i}>"), argument
    yield ".<reduce callable>", constructor


# ---------------------------------------------------------------------- describe_call

_MAX_ARG_REPR_CHARS = 40
_MAX_ARGS_SHOWN = 4
_OBJECT_REPR: object = object.__repr__
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+>")  # "<generator object g at 0x7f..>": noise
_FUNCTION_TYPES = (types.FunctionType, types.BuiltinFunctionType, types.MethodType)


class _ShortRepr(reprlib.Repr):
    """reprlib, but objects with the default repr read ``<module.Type object>``.

    The address in ``<... object at 0x7f...>`` means nothing in a log, and a ``__repr__``
    that raises yields the same short form instead of an exception.
    """

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 2
        self.maxtuple = self.maxlist = self.maxset = self.maxfrozenset = 4
        self.maxdict = 3
        self.maxstring = 30
        self.maxlong = 30
        self.maxother = _MAX_ARG_REPR_CHARS

    def repr_instance(self, x: Any, level: int) -> str:
        if isinstance(x, _FUNCTION_TYPES):
            return f"<function {_safe_str(getattr(x, '__qualname__', '?'))}>"
        if type(x).__repr__ is _OBJECT_REPR:
            return _placeholder(x)
        try:
            text = repr(x)
        except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real error
            return _placeholder(x)
        return _shorten(_ADDRESS.sub(">", text), self.maxother)


_short_repr_engine = _ShortRepr()


def _placeholder(obj: object) -> str:
    return f"<{_type_name(type(obj))} object>"


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short_repr(obj: object) -> str:
    try:
        return _shorten(_short_repr_engine.repr(obj), _MAX_ARG_REPR_CHARS)
    except Exception:  # noqa: BLE001 - only describes; must never raise
        return _placeholder(obj)


def _safe_str(obj: object) -> str:
    try:
        return str(obj)
    except Exception:  # noqa: BLE001 - only describes; must never raise
        return _placeholder(obj)


def describe_call(
    fn: object,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any],
    *,
    action: str = "submit",
) -> str:
    """Short text of a call for messages, e.g. ``submit(run_model, <__main__.Validator object>)``.

    Never raises: an argument whose repr fails shows as ``<module.Type object>``.
    """
    try:
        return f"{action}({', '.join([_callable_name(fn), *_shown_arguments(args, kwargs)])})"
    except Exception:  # noqa: BLE001 - only describes; must never raise
        return f"{action}({_placeholder(fn)}, ...)"


def describe_task(fn: object, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    """Short text of a task as it ran, e.g. ``crash('segv')``; never raises."""
    try:
        return f"{_callable_name(fn)}({', '.join(_shown_arguments(args, kwargs))})"
    except Exception:  # noqa: BLE001 - only describes; must never raise
        return f"{_placeholder(fn)}(...)"


def _callable_name(fn: object) -> str:
    qualname = getattr(fn, "__qualname__", None)
    return qualname if isinstance(qualname, str) else _short_repr(fn)


def _shown_arguments(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> list[str]:
    items: list[str] = [_short_repr(arg) for arg in args[: _MAX_ARGS_SHOWN + 1]]
    for name, value in list(kwargs.items())[: _MAX_ARGS_SHOWN + 1]:
        items.append(f"{name}={_short_repr(value)}")
    if len(args) + len(kwargs) > _MAX_ARGS_SHOWN:
        items = [*items[:_MAX_ARGS_SHOWN], "..."]
    return items
