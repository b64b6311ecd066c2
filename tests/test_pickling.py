"""Serialising calls once, and naming the unpicklable object when that fails."""

from __future__ import annotations

import functools
import pickle
import subprocess
import sys
import textwrap
import threading
import types
from pathlib import Path

import pytest

from stalwart._pickling import (
    describe_call,
    diagnose_unpicklable,
    dumps,
    loads,
    serialize_call,
    serialize_result,
)
from stalwart.errors import PicklingError

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 30.0  # seconds, for subprocesses; reached only when something hangs
SRC = str(Path(__file__).resolve().parents[1] / "src")
RLOCK_TYPE = type(threading.RLock())
LOCK = threading.RLock()  # a module global that by-value functions drag along


def echo(*args: object, **kwargs: object) -> object:
    return args, kwargs


def run_model(validator: object) -> None:
    pass


class Model:
    def __init__(self) -> None:
        self._lock = threading.RLock()


class Validator:
    def __init__(self) -> None:
        self.model = Model()


class Holder:
    def __init__(self, **attributes: object) -> None:
        self.__dict__.update(attributes)

    def method(self) -> None:
        pass


class SlottedBase:
    __slots__ = ("lock",)


class Slotted(SlottedBase):
    __slots__ = ("name",)

    def __init__(self) -> None:
        self.name = "worker"
        self.lock = threading.RLock()


class RefusesPickling:
    def __reduce__(self) -> tuple[object, ...]:
        raise RuntimeError("this object refuses to be pickled")


class InterruptsPickling:
    def __reduce__(self) -> tuple[object, ...]:
        raise KeyboardInterrupt


class FailsOnlyFirstTwice:
    """Fails the C pickler and cloudpickle, then pickles: nothing left to blame."""

    def __init__(self) -> None:
        self.attempts = 0

    def __reduce__(self) -> tuple[object, ...]:
        self.attempts += 1
        if self.attempts <= 2:
            raise TypeError("fails only when pickled with everything else")
        return (FailsOnlyFirstTwice, ())


class BrokenRepr:
    def __repr__(self) -> str:
        raise ValueError("repr is broken")


class Plain:
    pass


def unsendable(fn: object, *args: object, **kwargs: object) -> PicklingError:
    with pytest.raises(PicklingError) as info:
        serialize_call(fn, args, kwargs)  # type: ignore[arg-type]
    return info.value


# ----------------------------------------------------------------- what gets sent


def test_picklable_call_round_trips_through_loads() -> None:
    """An importable function and plain data come back equal, the function by reference."""
    data = serialize_call(echo, (1, "two"), {"three": [3]})
    assert b"cloudpickle" not in data
    assert loads(data) == (echo, (1, "two"), {"three": [3]})


def test_lambda_falls_back_to_cloudpickle_and_round_trips() -> None:
    """A lambda cannot be found by name, so it travels by value."""
    data = serialize_call(lambda x: x + 1, (1,), {})
    assert b"cloudpickle" in data
    fn, args, kwargs = loads(data)
    assert fn(*args, **kwargs) == 2


def test_closure_falls_back_to_cloudpickle_and_round_trips() -> None:
    """A nested function keeps its closure when sent by value."""

    def make_adder(n: int) -> types.FunctionType:
        def add(x: int) -> int:
            return x + n

        return add  # type: ignore[return-value]

    fn, args, kwargs = loads(serialize_call(make_adder(10), (5,), {}))
    assert fn(*args, **kwargs) == 15


def test_error_survives_a_round_trip_back_to_the_parent() -> None:
    """A worker sends PicklingError to the parent; path and type must survive it."""
    with pytest.raises(PicklingError) as info:
        serialize_result(Model(), task="make_model()")
    copy = loads(dumps(info.value))
    assert copy.path == "result._lock"
    assert copy.unpicklable_type is RLOCK_TYPE
    assert str(copy) == str(info.value)


# ------------------------------------------------------------ naming the culprit


def test_rlock_inside_argument_is_named_by_path() -> None:
    """The message names the call, the attribute path, the type and the fix."""
    error = unsendable(run_model, Validator())
    assert error.path == "args[0].model._lock"
    assert error.unpicklable_type is RLOCK_TYPE
    text = str(error)
    assert f"cannot send submit(run_model, <{__name__}.Validator object>)" in text
    assert "args[0].model._lock is a _thread.RLock, which cannot be pickled." in text
    assert "initializer=..., then stalwart.worker_state()" in text
    assert "stalwart.ThreadPoolExecutor" in text


def test_error_is_a_pickle_error_chained_from_the_original() -> None:
    """Old `except pickle.PicklingError` code still catches it; the cause is kept."""
    error = unsendable(run_model, Validator())
    assert isinstance(error, pickle.PicklingError)
    assert isinstance(error.__cause__, TypeError)
    assert "RLock" in str(error.__cause__)


def test_map_is_named_as_the_action() -> None:
    """The executor's map passes action="map", and the message says map."""
    with pytest.raises(PicklingError, match=r"^cannot send map\(run_model, "):
        serialize_call(run_model, (Validator(),), {}, action="map")


def test_rlock_in_dict_value_is_named_by_key() -> None:
    """Dict values are addressed by their key's repr."""
    error = unsendable(echo, cfg={"name": "x", "lock": threading.RLock()})
    assert error.path == "kwargs['cfg']['lock']"


def test_rlock_in_list_is_named_by_index() -> None:
    """List and tuple items are addressed by index."""
    error = unsendable(echo, 1, [0, (1, threading.RLock())])
    assert error.path == "args[1][1][1]"


def test_rlock_in_slots_of_a_base_class_is_named_by_attribute() -> None:
    """__slots__ anywhere in the MRO are walked like __dict__ attributes."""
    error = unsendable(echo, Slotted())
    assert error.path == "args[0].lock"
    assert error.unpicklable_type is RLOCK_TYPE


def test_rlock_in_closure_cell_is_named_by_variable() -> None:
    """A closure cell is named by its free variable."""
    lock = threading.RLock()

    def task() -> object:
        return lock

    error = unsendable(task)
    assert error.path == "fn.<closure lock>"


def test_rlock_in_referenced_global_is_named() -> None:
    """A by-value function carries the globals it uses; an unpicklable one is named."""
    error = unsendable(lambda: LOCK.acquire())
    assert error.path == "fn.__globals__['LOCK']"
    assert error.unpicklable_type is RLOCK_TYPE


def test_attribute_named_like_a_global_is_not_blamed() -> None:
    """`obj.LOCK` is an attribute, not a use of the global LOCK."""
    numbers = (n for n in range(3))

    def task(obj: Holder) -> object:
        return obj.LOCK, numbers

    error = unsendable(task, Holder())
    assert error.path == "fn.<closure numbers>"


def test_unpicklable_default_argument_is_named() -> None:
    """Defaults travel with a by-value function."""

    def task(lock: object = threading.RLock()) -> object:
        return lock

    assert unsendable(task).path == "fn.__defaults__[0]"


def test_generator_argument_is_named_with_its_builtin_type() -> None:
    """Builtin types are written without the `builtins.` prefix."""
    error = unsendable(echo, (n for n in range(3)))
    assert error.path == "args[0]"
    assert error.unpicklable_type is types.GeneratorType
    assert "args[0] is a generator, which cannot be pickled" in str(error)


def test_open_file_takes_the_article_an(tmp_path: Path) -> None:
    """`an _io.TextIOWrapper`: the article follows the sound, not the underscore."""
    with (tmp_path / "log.txt").open("w") as log:
        error = unsendable(echo, log=log)
    assert error.path == "kwargs['log']"
    assert "is an _io.TextIOWrapper" in str(error)


def test_object_whose_reduce_raises_is_the_culprit() -> None:
    """Whatever a __reduce__ raises, the object is named and the error kept as cause."""
    error = unsendable(echo, Holder(inner=RefusesPickling()))
    assert error.path == "args[0].inner"
    assert error.unpicklable_type is RefusesPickling
    assert isinstance(error.__cause__, RuntimeError)


def test_keyboard_interrupt_while_pickling_is_not_swallowed() -> None:
    """Only pickling failures are converted; Ctrl-C still stops the program."""
    with pytest.raises(KeyboardInterrupt):
        serialize_call(echo, (InterruptsPickling(),), {})


def test_cycle_containing_an_unpicklable_object_terminates() -> None:
    """Objects that point at each other are walked once."""
    first, second = Holder(), Holder()
    first.peer, second.peer = second, first
    second.lock = threading.RLock()
    error = unsendable(echo, first)
    assert error.path == "args[0].peer.lock"


def test_partial_arguments_are_named() -> None:
    """functools.partial is walked as .func, .args[i] and .keywords['k']."""
    positional = functools.partial(echo, 1, threading.RLock())
    assert unsendable(positional).path == "fn.args[1]"
    keyword = functools.partial(echo, lock=threading.RLock())
    assert unsendable(keyword).path == "fn.keywords['lock']"


def test_bound_method_names_its_instance() -> None:
    """A bound method carries its instance as .__self__."""
    holder = Holder(_lock=threading.RLock())
    error = unsendable(holder.method)
    assert error.path == "fn.__self__._lock"
    assert "submit(Holder.method)" in str(error)


def test_deep_nesting_is_reported_at_the_depth_cap() -> None:
    """Past 50 levels the diagnosis stops and names the deepest failing object."""
    node = Holder(lock=threading.RLock())
    for _ in range(100):
        node = Holder(next=node)
    error = unsendable(echo, node)
    assert error.path == "args[0]" + ".next" * 50
    assert error.unpicklable_type is Holder


def test_huge_container_is_reported_within_the_node_budget() -> None:
    """A container too big to test item by item is itself named, quickly."""
    items: list[object] = [Plain() for _ in range(12_000)]
    items.append(threading.RLock())
    error = unsendable(echo, items)
    assert error.path == "args[0]"
    assert error.unpicklable_type is list


def test_failure_with_no_single_culprit_reports_the_original_error() -> None:
    """When every part pickles alone, the message carries the pickler's own words."""
    error = unsendable(echo, FailsOnlyFirstTwice())
    assert error.path is None
    assert error.unpicklable_type is None
    assert "could not be pickled: TypeError: fails only when pickled" in str(error)


def test_diagnose_unpicklable_returns_path_and_type() -> None:
    """The diagnosis alone: None for what pickles, (path, type) for what does not."""
    assert diagnose_unpicklable({"a": [1, 2]}, "x") is None
    assert diagnose_unpicklable(Validator(), "v") == ("v.model._lock", RLOCK_TYPE)


# ------------------------------------------------------------------------ results


def test_result_path_is_rooted_at_result() -> None:
    """In the worker, the path starts at `result` and the fix is about return values."""
    with pytest.raises(PicklingError) as info:
        serialize_result([Model()], task="make_models()")
    assert info.value.path == "result[0]._lock"
    text = str(info.value)
    assert (
        "cannot send the result of make_models() back from the worker process" in text
    )
    assert "Return plain data instead" in text


def test_result_dict_value_is_named_by_key() -> None:
    """Dict results are addressed by key."""
    with pytest.raises(PicklingError) as info:
        serialize_result({"k": threading.RLock()}, task="t()")
    assert info.value.path == "result['k']"


def test_picklable_result_round_trips() -> None:
    """A plain result is simply its pickle."""
    assert loads(serialize_result({"answer": 42}, task="t()")) == {"answer": 42}


# ------------------------------------------------------------------ describe_call


def test_describe_call_never_raises_for_a_broken_repr() -> None:
    """A __repr__ that raises shows as <module.Type object>."""
    text = describe_call(BrokenRepr(), (BrokenRepr(),), {"k": BrokenRepr()})
    placeholder = f"<{__name__}.BrokenRepr object>"
    assert text == f"submit({placeholder}, {placeholder}, k={placeholder})"


def test_describe_call_shortens_long_and_many_arguments() -> None:
    """Each argument is capped in length, and at most four are shown."""
    text = describe_call(echo, ("x" * 500, 2, 3, 4, 5), {"k": 6}, action="map")
    assert text.startswith("map(echo, 'xxx")
    assert text.endswith(", 4, ...)")
    assert len(text) < 100


def test_describe_call_hides_object_addresses() -> None:
    """Addresses change every run and mean nothing in a log."""
    text = describe_call(run_model, ((n for n in ()), Plain()), {})
    assert " at 0x" not in text
    assert f"<{__name__}.Plain object>" in text


# ------------------------------------------------- __main__: by reference or value


def _fake_main(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    main = types.ModuleType("__main__")
    exec("def task():\n    return 'from main'\n", main.__dict__)
    monkeypatch.setitem(sys.modules, "__main__", main)
    return main


def test_main_without_a_file_sends_its_functions_by_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A REPL's __main__ cannot be re-imported by workers, so its functions go by value."""
    main = _fake_main(monkeypatch)
    data = dumps(main.task)
    assert b"cloudpickle" in data
    copy = loads(data)
    assert copy is not main.task
    assert copy() == "from main"


def test_main_script_on_disk_sends_its_functions_by_reference(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Once __main__ has a real __file__ its functions go by name, lambdas beside them too."""
    main = _fake_main(monkeypatch)
    script = tmp_path / "script.py"
    script.write_text("")
    main.__file__ = str(script)
    assert loads(dumps(main.task)) is main.task
    task, by_value = loads(dumps((main.task, lambda: 0)))
    assert task is main.task
    assert by_value() == 0
    assert loads(dumps(main.task, by_value=True)) is not main.task
    main.__file__ = str(tmp_path / "deleted.py")
    assert loads(dumps(main.task)) is not main.task


MAIN_SCRIPT = """
import sys
sys.path.insert(0, {src!r})
from stalwart._pickling import dumps, serialize_call

STATE = "unset"


def init(value):
    global STATE
    STATE = value


def task():
    return STATE


if __name__ == "__main__":
    import pathlib

    out = pathlib.Path(sys.argv[1])
    (out / "init.pkl").write_bytes(dumps(init))
    (out / "task.pkl").write_bytes(dumps(task))
    (out / "lambda.pkl").write_bytes(dumps(lambda: STATE))
    (out / "mixed.pkl").write_bytes(serialize_call(task, (lambda: 0,), {{}}))
"""

SPAWN_WORKER = """
import pickle, sys
from multiprocessing import spawn
from pathlib import Path

script, out = sys.argv[1], Path(sys.argv[2])
spawn.import_main_path(script)  # what a spawn-style worker does: __mp_main__
init = pickle.loads((out / "init.pkl").read_bytes())
task = pickle.loads((out / "task.pkl").read_bytes())
fn, args, kwargs = pickle.loads((out / "mixed.pkl").read_bytes())
init("set by the initializer")
print(task(), fn is task, sep="|")
"""


def _run_python(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_main_script_initializer_global_is_seen_by_task(tmp_path: Path) -> None:
    """The stdlib pattern: init() sets a global of the script, task() reads it (loky #206)."""
    script = tmp_path / "script.py"
    script.write_text(MAIN_SCRIPT.format(src=SRC))
    _run_python(str(script), str(tmp_path))
    assert b"cloudpickle" not in (tmp_path / "task.pkl").read_bytes()
    assert b"__main__" in (tmp_path / "task.pkl").read_bytes()
    assert b"cloudpickle" in (tmp_path / "lambda.pkl").read_bytes()
    output = _run_python("-c", SPAWN_WORKER, str(script), str(tmp_path))
    assert output == "set by the initializer|True"


def test_function_from_python_c_is_sent_by_value(tmp_path: Path) -> None:
    """`python -c` leaves no script to re-import, so the function itself is sent."""
    data_file = tmp_path / "call.pkl"
    sender = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {SRC!r})
        from stalwart._pickling import serialize_call
        def seven():
            return 7
        open({str(data_file)!r}, "wb").write(serialize_call(seven, (), {{}}))
    """)
    _run_python("-c", sender)
    receiver = (
        "import pickle, sys\n"
        "fn, args, kwargs = pickle.loads(open(sys.argv[1], 'rb').read())\n"
        "print(fn(*args, **kwargs))\n"
    )
    assert _run_python("-c", receiver, str(data_file)) == "7"
