"""Constructor arguments that cannot reach a worker as given: fork-context locks.

multiprocessing's default context is ``fork`` on Linux before Python 3.14, so
``initargs=(multiprocessing.RLock(),)`` (tqdm's ``process_map`` does exactly
this) holds a lock that only a forked child can inherit. stalwart's workers are
fresh interpreters: such a lock or semaphore is replaced by one the workers
share among themselves (with a RuntimeWarning), and anything else holding one
is refused by the constructor, naming where it sits and what to do instead.
"""

from __future__ import annotations

import multiprocessing
import sys
import warnings
from typing import TYPE_CHECKING, Any

import pytest

import stalwart

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        sys.platform == "win32", reason="no fork context: nothing to replace"
    ),
]

TIMEOUT = 30.0  # seconds; reached only when something hangs
# mp_context="fork" forks this multi-threaded test process, which 3.12+ warn about.
FORKS_FROM_THREADS = pytest.mark.filterwarnings(
    "ignore:This process .* use of fork\\(\\):DeprecationWarning"
)
FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")


# ----------------------------------------------------------- run in the workers


def keep(primitive: Any) -> Any:
    """Initializer: the primitive becomes the worker's state."""
    return primitive


def keep_first_of(container: Any) -> Any:
    """Initializer: initargs[0] is a container holding the primitive first."""
    return container["lock"] if isinstance(container, dict) else container[0]


def describe_state() -> tuple[str, int | None]:
    """The kind of primitive this worker got, and a semaphore's value."""
    primitive = stalwart.worker_state()
    value = primitive.get_value() if hasattr(primitive, "get_value") else None
    return type(primitive).__name__, value


def try_lock() -> bool:
    """Whether the worker's lock was free (it is released again at once)."""
    lock = stalwart.worker_state()
    acquired = bool(lock.acquire(False))
    if acquired:
        lock.release()
    return acquired


def hold_lock(held: Any, release: Any) -> bool:
    """Hold the worker's lock until the test sets ``release``."""
    lock = stalwart.worker_state()
    with lock:
        held.set()
        return bool(release.wait(TIMEOUT))


def opened(initializer: Callable[..., Any], *initargs: Any, **kwargs: Any) -> Any:
    """A two-worker executor; the RuntimeWarning about a replaced lock is let
    through to ``pytest.warns`` around this call, or else to the test's log."""
    return stalwart.ProcessPoolExecutor(
        2, initializer=initializer, initargs=initargs, **kwargs
    )


def replacing(kind: str) -> Any:
    return pytest.warns(
        RuntimeWarning, match=rf"initargs\[0\] is a multiprocessing {kind}"
    )


# --------------------------------------------------- locks and semaphores: shared


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: FORK.Lock(), ("Lock", None)),
        (lambda: FORK.RLock(), ("RLock", None)),
        (lambda: FORK.Semaphore(3), ("Semaphore", 3)),
        (lambda: FORK.BoundedSemaphore(2), ("BoundedSemaphore", 2)),
    ],
    ids=["Lock", "RLock", "Semaphore", "BoundedSemaphore"],
)
def test_fork_context_primitive_reaches_workers_as_the_same_kind(
    make: Callable[[], Any], expected: tuple[str, int | None]
) -> None:
    with replacing(expected[0]), opened(keep, make()) as executor:
        assert executor.submit(describe_state).result(TIMEOUT) == expected


def test_replaced_lock_is_shared_by_the_workers(manager: Any) -> None:
    held, release = manager.Event(), manager.Event()
    with replacing("RLock"), opened(keep, FORK.RLock()) as executor:
        holder = executor.submit(hold_lock, held, release)
        assert held.wait(TIMEOUT)
        try:
            # The one other worker is idle: this runs there, and finds it held.
            assert executor.submit(try_lock).result(TIMEOUT) is False
        finally:
            release.set()
        assert holder.result(TIMEOUT) is True
        assert executor.submit(try_lock).result(TIMEOUT) is True


def test_replaced_lock_is_not_shared_with_the_parent() -> None:
    lock = FORK.Lock()
    with replacing("Lock"), opened(keep, lock) as executor, lock:
        assert executor.submit(try_lock).result(TIMEOUT) is True


def test_the_same_lock_is_shared_across_executors(manager: Any) -> None:
    """tqdm hands its one class-level lock to every process_map."""
    lock = FORK.Lock()
    held, release = manager.Event(), manager.Event()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        first, second = opened(keep, lock), opened(keep, lock)
    with first, second:
        holder = first.submit(hold_lock, held, release)
        assert held.wait(TIMEOUT)
        try:
            assert second.submit(try_lock).result(TIMEOUT) is False
        finally:
            release.set()
        assert holder.result(TIMEOUT) is True


@pytest.mark.parametrize(
    ("container", "path"),
    [
        (lambda lock: (lock, "label"), r"initargs\[0\]\[0\]"),
        (lambda lock: [lock], r"initargs\[0\]\[0\]"),
        (lambda lock: {"lock": lock}, r"initargs\[0\]\['lock'\]"),
    ],
    ids=["tuple", "list", "dict"],
)
def test_lock_inside_a_plain_container_is_replaced_too(
    container: Callable[[Any], Any], path: str
) -> None:
    lock = FORK.Lock()
    with pytest.warns(RuntimeWarning, match=path) as record:
        executor = opened(keep_first_of, container(lock))
    with executor, lock:
        assert executor.submit(try_lock).result(TIMEOUT) is True
    assert record[0].filename == __file__  # points at the constructor's caller


def test_warning_says_how_to_share_with_the_parent() -> None:
    with pytest.warns(RuntimeWarning) as record:
        opened(keep, FORK.RLock()).shutdown()
    message = str(record[0].message)
    assert "not with this process" in message
    assert "get_context('spawn').RLock()" in message
    assert "mp_context='fork'" in message


def test_spawn_context_lock_is_shared_with_the_parent() -> None:
    """The fix the warning names: no warning, and the parent's lock is the workers'."""
    lock = SPAWN.Lock()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        executor = opened(keep, lock)
    with executor, lock:
        assert executor.submit(try_lock).result(TIMEOUT) is False


@FORKS_FROM_THREADS
def test_fork_start_method_inherits_the_lock_itself() -> None:
    """The other fix: a fork worker inherits the parent's very lock, as the stdlib."""
    lock = FORK.Lock()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        executor = opened(keep, lock, mp_context="fork")
    with executor, lock:
        assert executor.submit(try_lock).result(TIMEOUT) is False


# ---------------------------------------- what holds a fork-context lock: refused


@pytest.mark.parametrize(
    ("make", "type_name", "factory"),
    [
        (lambda: FORK.Queue(), "multiprocessing.queues.Queue", "Queue"),
        (
            lambda: FORK.SimpleQueue(),
            "multiprocessing.queues.SimpleQueue",
            "SimpleQueue",
        ),
        (lambda: FORK.Event(), "multiprocessing.synchronize.Event", "Event"),
        (
            lambda: FORK.Condition(),
            "multiprocessing.synchronize.Condition",
            "Condition",
        ),
        (lambda: FORK.Barrier(2), "multiprocessing.synchronize.Barrier", "Barrier"),
        (
            lambda: FORK.Value("i", 0),
            "multiprocessing.sharedctypes.Synchronized",
            "Value",
        ),
        (
            lambda: FORK.Array("i", 3),
            "multiprocessing.sharedctypes.SynchronizedArray",
            "Array",
        ),
    ],
    ids=["Queue", "SimpleQueue", "Event", "Condition", "Barrier", "Value", "Array"],
)
def test_fork_context_object_is_refused_by_the_constructor(
    make: Callable[[], Any], type_name: str, factory: str
) -> None:
    obj = make()
    with pytest.raises(stalwart.PicklingError) as caught:
        opened(keep, "first", obj)
    error = caught.value
    assert error.path == "initargs[1]"
    assert error.unpicklable_type is type(obj)
    message = str(error)
    assert f"initargs[1] is a {type_name} made in a 'fork' context" in message
    assert f"multiprocessing.get_context('spawn').{factory}(...)" in message
    assert "mp_context='fork'" in message
    assert "multiprocessing.Manager()" in message


def test_object_nested_in_a_container_is_named_by_its_path() -> None:
    with pytest.raises(stalwart.PicklingError) as caught:
        opened(keep, {"events": [FORK.Event()]})
    assert caught.value.path == "initargs[0]['events'][0]"


class Holder:
    def __init__(self, lock: Any) -> None:
        self.lock = lock


def test_lock_held_by_another_object_is_refused_naming_the_attribute() -> None:
    """Only locks given directly (or in tuples, lists, dicts) are replaced."""
    with pytest.raises(stalwart.PicklingError) as caught:
        opened(keep, Holder(FORK.Lock()))
    assert caught.value.path == "initargs[0].lock"
    assert "multiprocessing.synchronize.Lock made in a 'fork' context" in str(
        caught.value
    )


def test_refused_by_get_reusable_executor_too() -> None:
    with pytest.raises(stalwart.PicklingError, match=r"initargs\[0\]"):
        stalwart.get_reusable_executor(
            max_workers=2, initializer=keep, initargs=(FORK.Event(),)
        )


@FORKS_FROM_THREADS
def test_fork_start_method_accepts_every_fork_context_object() -> None:
    queue = FORK.Queue()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        executor = opened(keep, queue, mp_context="fork")
    with executor:
        assert executor.submit(describe_state).result(TIMEOUT) == ("Queue", None)
