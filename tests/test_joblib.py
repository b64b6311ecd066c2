"""joblib's ``backend="stalwart"``, driven the way scikit-learn users drive it:
``parallel_config(backend=..., n_jobs=2)`` around real estimators."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest

import stalwart
from stalwart import _memory
from tests._tasks import TIMEOUT
from tests.conftest import _session_helpers, wait_until

joblib = pytest.importorskip("joblib")
pytest.importorskip("sklearn")
pytest.importorskip("threadpoolctl")

from joblib.externals.loky import reusable_executor as loky_reusable  # noqa: E402
from joblib.externals.loky.process_executor import TerminatedWorkerError  # noqa: E402
from sklearn.datasets import make_classification  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402

from tests import _joblib_tasks  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.timeout(120)

GRID = {"C": [0.01, 0.1, 1.0, 10.0]}
IDLE_S = 1.0
"""Parked workers' idle_timeout here: warm for the next Parallel call, gone
before the leak check gives up."""


@pytest.fixture
def loky_ends() -> Iterator[None]:
    """joblib's loky backend keeps its workers for 300 s: end them after the test."""
    yield
    executor = loky_reusable._executor  # not get_reusable_executor(): no new one
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)
    # A loky pool that lost a worker can leave its call queue's feeder thread
    # blocked for good: loky's, not ours; the leak check lets it be.
    _session_helpers.update(
        thread for thread in threading.enumerate() if thread.name == "QueueFeederThread"
    )


def config(backend: str, **options: Any) -> Any:
    """``parallel_config`` for two workers (stalwart's park for IDLE_S)."""
    if backend == "stalwart":
        options.setdefault("idle_timeout", IDLE_S)
    return joblib.parallel_config(backend=backend, n_jobs=2, **options)


@pytest.fixture(scope="module")
def data() -> tuple[Any, Any]:
    return make_classification(n_samples=300, n_features=12, random_state=0)


def search(estimator: Any, data: tuple[Any, Any], backend: str, **options: Any) -> Any:
    with config(backend, **options):
        return GridSearchCV(estimator, GRID, cv=3).fit(*data)


@pytest.mark.usefixtures("loky_ends")
def test_cross_val_score_and_grid_search_match_the_loky_backend(
    data: tuple[Any, Any],
) -> None:
    scores = {}
    searches = {}
    for backend in ("loky", "stalwart"):
        with config(backend):
            scores[backend] = cross_val_score(
                LogisticRegression(max_iter=200), *data, cv=5
            ).tolist()
        searches[backend] = search(LogisticRegression(max_iter=200), data, backend)
    assert scores["stalwart"] == scores["loky"]
    assert searches["stalwart"].best_params_ == searches["loky"].best_params_
    assert (
        searches["stalwart"].cv_results_["mean_test_score"].tolist()
        == searches["loky"].cv_results_["mean_test_score"].tolist()
    )


@pytest.mark.usefixtures("loky_ends")
def test_a_fit_whose_worker_is_killed_once_is_run_again_with_retries(
    data: tuple[Any, Any], tmp_path: Path
) -> None:
    """On loky the whole search fails; on stalwart with retries=1 the fold
    that lost its worker runs again and the search ends as if nothing died."""
    expected = search(LogisticRegression(max_iter=200), data, "loky")
    estimator = _joblib_tasks.DiesOnceLogistic(marker=str(tmp_path / "loky-died"))
    with pytest.raises(TerminatedWorkerError):
        search(estimator, data, "loky")
    estimator = _joblib_tasks.DiesOnceLogistic(marker=str(tmp_path / "died"))
    found = search(estimator, data, "stalwart", retries=1)
    assert (tmp_path / "died").exists(), "no worker died: the test proved nothing"
    assert found.best_params_ == expected.best_params_
    assert (
        found.cv_results_["mean_test_score"].tolist()
        == expected.cv_results_["mean_test_score"].tolist()
    )


def test_a_fit_killed_by_the_oom_killer_is_run_again_and_the_search_goes_on(
    data: tuple[Any, Any], tmp_path: Path, memory_cgroup_of_64_mib: Path
) -> None:
    """A real kernel OOM kill (the worker moves itself into a 64 MiB cgroup and
    allocates 1 GiB): with retries=1 the search completes, as if nothing died."""
    expected = search(LogisticRegression(max_iter=200), data, "stalwart")
    estimator = _joblib_tasks.OomOnceLogistic(
        cgroup=str(memory_cgroup_of_64_mib), marker=str(tmp_path / "oom")
    )
    found = search(estimator, data, "stalwart", retries=1)
    assert (tmp_path / "oom").exists(), "no fit went over the limit"
    version = 1 if (memory_cgroup_of_64_mib / "memory.oom_control").exists() else 2
    counted = _memory.read_cgroup_memory(str(memory_cgroup_of_64_mib), version)
    assert counted.oom_kills, "the kernel's OOM killer ended that fit's worker"
    assert found.best_params_ == expected.best_params_
    assert (
        found.cv_results_["mean_test_score"].tolist()
        == expected.cv_results_["mean_test_score"].tolist()
    )


def test_without_retries_the_crash_names_the_task_and_comes_at_once(
    data: tuple[Any, Any], tmp_path: Path
) -> None:
    estimator = _joblib_tasks.DiesOnceLogistic(marker=str(tmp_path / "died"))
    started = time.monotonic()
    with pytest.raises(stalwart.WorkerCrashedError) as caught:
        search(estimator, data, "stalwart")
    assert time.monotonic() - started < TIMEOUT / 2, (
        "the crash was not reported at once"
    )
    assert caught.value.signal == "SIGKILL"
    assert "SIGKILL" in str(caught.value)
    assert "_fit_and_score" in str(caught.value), str(caught.value)


def test_a_hung_fit_times_out_and_its_worker_tree_is_killed(
    data: tuple[Any, Any], tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    estimator = _joblib_tasks.HangsLogistic(hang_at=1.0, pid_file=str(pid_file))
    with pytest.raises(stalwart.TaskTimeoutError):
        search(estimator, data, "stalwart", task_timeout=3)
    assert pid_file.exists(), "the hanging fit never ran"
    children = [int(line) for line in pid_file.read_text().split()]
    wait_until(
        lambda: not any(alive(pid) for pid in children),
        "the hung fits' child processes to die with their workers",
    )


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.usefixtures("loky_ends")
def test_an_array_changed_between_calls_is_never_sent_stale() -> None:
    """The same array passed to every call, changed before each: loky's
    memmapping (by identity, once per Parallel call) sends data older than the
    call; the stalwart backend shares an array once, but checks it has not
    changed before sending it again."""
    numpy = pytest.importorskip("numpy")
    array = numpy.zeros(2**18)  # 2 MiB

    def calls() -> Iterator[Any]:
        for i in range(10):
            array[0] = i
            yield joblib.delayed(_joblib_tasks.first_and_writeable)(array)

    seen = {}
    for backend in ("loky", "stalwart"):
        with config(backend):
            seen[backend] = joblib.Parallel(batch_size=1)(calls())
    # joblib pulls calls from the generator a little ahead of sending them, so
    # a call may see a later change (as with any executor): never an older one.
    stalwart_seen = [first for first, _ in seen["stalwart"]]
    assert all(first >= i for i, first in enumerate(stalwart_seen)), stalwart_seen
    assert not any(writeable for _, writeable in seen["stalwart"])  # as memmaps
    # what the stalwart backend fixes (if loky's ever changes, this says so):
    loky_seen = [first for first, _ in seen["loky"]]
    assert any(first < i for i, first in enumerate(loky_seen)), loky_seen


def test_a_call_writing_to_a_large_array_is_told_why_it_is_read_only() -> None:
    """Large arrays reach the calls read-only, as with loky's memmapping; the
    error says so and what to do."""
    numpy = pytest.importorskip("numpy")
    with config("stalwart"), pytest.raises(ValueError, match="read-only") as info:
        joblib.Parallel()(
            joblib.delayed(_joblib_tasks.write_first)(numpy.zeros(2**18))
            for _ in range(2)
        )
    text = "\n".join([str(info.value), *getattr(info.value, "__notes__", ())])
    assert "joblib" in text
    assert "copy" in text


def test_workers_stay_warm_between_parallel_calls() -> None:
    """The second ``Parallel`` call runs on the workers the first one started."""
    with config("stalwart"):
        joblib.Parallel()(joblib.delayed(_joblib_tasks.pid)(i) for i in range(20))
        started = {p.pid for p in psutil.Process().children(recursive=True)}
        second = joblib.Parallel()(
            joblib.delayed(_joblib_tasks.pid)(i) for i in range(20)
        )
    assert set(second) <= started


def test_blas_pools_in_workers_are_limited_to_their_share_of_the_cpus() -> None:
    expected = max(1, joblib.cpu_count() // 2)
    with config("stalwart"):
        counts = joblib.Parallel()(
            joblib.delayed(_joblib_tasks.blas_threads)(i) for i in range(4)
        )
    assert all(count <= expected for found in counts for count in found), counts


def test_the_initializer_s_state_reaches_every_batch() -> None:
    with config("stalwart", initializer=_joblib_tasks.load_model, initargs=("tiny",)):
        names = joblib.Parallel()(
            joblib.delayed(_joblib_tasks.model_name)(i) for i in range(10)
        )
    assert all(name.startswith("model tiny in ") for name in names), names


def test_an_unknown_option_is_refused_with_the_ones_it_takes() -> None:
    with pytest.raises(TypeError, match="retries"):
        with config("stalwart", retry=1):
            joblib.Parallel()(joblib.delayed(abs)(-1) for _ in range(2))


@pytest.mark.parametrize("first", ["stalwart", "joblib"])
def test_the_backend_is_known_whichever_is_imported_first(first: str) -> None:
    second = "joblib" if first == "stalwart" else "stalwart"
    code = textwrap.dedent(
        f"""
        import {first}, {second}
        with joblib.parallel_config(backend="stalwart", n_jobs=2):
            print(sum(joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(5))))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "10"
