"""A tour of stalwart: every feature below runs for real when you run this file.

pip install nox && nox -s demo
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tour_tasks import (
    DiesOnceLogistic,
    Model,
    Validator,
    allocate_in,
    chatty,
    crunch,
    element,
    fetch,
    first_and_sum,
    hang_with_a_child,
    leak,
    load_model,
    ones,
    predict,
    run_model,
    segfault,
    slow_square,
    take_seconds,
    tiny,
    where_am_i,
)

import stalwart


def section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 66 - len(title)))


def segfault_is_isolated() -> None:
    section("1. A segfault fails one task, not the pool")
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        futures = [ex.submit(slow_square, i) for i in range(8)]
        crash = ex.submit(segfault)
        futures += [ex.submit(slow_square, i) for i in range(8, 16)]
        try:
            crash.result()
        except stalwart.WorkerCrashedError as error:
            print(
                f"the crashing task raised WorkerCrashedError (signal {error.signal}):"
            )
            print(f"  {error}")
        print(f"the other 16 tasks: {[f.result() for f in futures]}")
        print(
            f"and the executor keeps working: 6 * 7 = {ex.submit(int.__mul__, 6, 7).result()}"
        )
    print(
        "(with concurrent.futures, every one of those futures would have raised "
        "BrokenProcessPool)"
    )


def rlock_is_refused_at_submit() -> None:
    section("2. An unpicklable argument is refused at submit(), with its path")
    validator = Validator(Model())
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        try:
            ex.submit(run_model, validator)
        except stalwart.PicklingError as error:
            print(f"stalwart.PicklingError: {error}")
            print(
                f"  .path = {error.path!r}, .unpicklable_type = {error.unpicklable_type}"
            )


def state_lives_in_each_worker() -> None:
    section("3. The initializer builds the model once per worker: worker_state()")
    with stalwart.ProcessPoolExecutor(
        max_workers=2, initializer=load_model, initargs=("sentiment-v2",)
    ) as ex:
        results = list(ex.map(predict, ["good", "bad", "fine", "great", "meh", "ok"]))
    for text, label, pid, loads in results:
        print(f"  {text!r:8} -> {label:9} (worker {pid}, model loaded {loads}x there)")
    print("the model holds an RLock and never crossed a process boundary")


def hung_task_is_killed() -> None:
    section("4. task_timeout kills a hung task (and the process it started)")
    with stalwart.ProcessPoolExecutor(max_workers=2, task_timeout=1.0) as ex:
        hung = ex.submit(hang_with_a_child)
        others = [ex.submit(slow_square, i) for i in range(10)]
        started = time.perf_counter()
        try:
            hung.result()
        except stalwart.TaskTimeoutError as error:
            waited = time.perf_counter() - started
            print(f"TaskTimeoutError after {waited:.1f} s: {error}")
        print(f"the other tasks: {[f.result() for f in others]}")
    print(
        "(with concurrent.futures, that task would hold a worker, and shutdown(), "
        "forever)"
    )


def lambdas_and_tracebacks() -> None:
    section("5. Lambdas travel; worker exceptions keep their traceback")
    with stalwart.ProcessPoolExecutor(max_workers=1) as ex:
        print(f"a lambda ran in a worker: {ex.submit(lambda x: x**2, 12).result()}")
        try:
            ex.submit(int, "not a number").result()
        except ValueError as error:
            cause = error.__cause__
            print(f"ValueError: {error}")
            print(
                f"  with the worker's traceback attached: {type(cause).__name__}, "
                f"{len(str(cause).splitlines())} lines"
            )


def drop_in_throughput() -> None:
    section(
        "6. Same code, one import changed: 10k tiny tasks via submit + as_completed"
    )
    n = 10_000
    for name, executor_type in [
        ("concurrent.futures", cf.ProcessPoolExecutor),
        ("stalwart", stalwart.ProcessPoolExecutor),
    ]:
        with executor_type(max_workers=2) as ex:
            list(ex.map(tiny, range(4)))  # start the workers first
            started = time.perf_counter()
            futures = [ex.submit(tiny, i) for i in range(n)]
            total = sum(f.result() for f in cf.as_completed(futures))
            elapsed = time.perf_counter() - started
        print(f"  {name:20} {n / elapsed:8.0f} tasks/s  (sum={total})")


def change_one_word() -> None:
    section("7. CPU-bound? IO-bound? Change one word: executor(kind)")
    urls = [f"https://example.org/page/{i}" for i in range(40)]
    jobs = [3_000_000] * 4
    for kind in ("process", "thread"):
        with stalwart.executor(kind, max_workers=20 if kind == "thread" else 2) as ex:
            list(ex.map(tiny, range(4)))  # start the workers first
            started = time.perf_counter()
            list(ex.map(fetch, urls))
            io_s = time.perf_counter() - started
            started = time.perf_counter()
            list(ex.map(crunch, jobs))
            cpu_s = time.perf_counter() - started
        print(
            f"  executor({kind!r:9}): 40 waits {io_s:5.2f} s   4 crunches {cpu_s:5.2f} s"
        )
    print(
        "threads win at waiting, processes at computing (the GIL); STALWART_EXECUTOR="
        "thread switches without touching the code"
    )


def map_superpowers() -> None:
    section("8. map: chunksize='auto', ordered=False, buffersize, progress")
    n = 100_000
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        list(ex.map(tiny, range(4)))
        for chunksize in (1, "auto"):
            started = time.perf_counter()
            total = sum(ex.map(tiny, range(n), chunksize=chunksize))
            elapsed = time.perf_counter() - started
            print(
                f"  map(chunksize={chunksize!r:6}) {n / elapsed:10,.0f} items/s (sum={total})"
            )
        first = next(ex.map(take_seconds, [0.5, 0.01, 0.02], ordered=False))
        print(
            f"  ordered=False: the first result is the {first} s task, not the 0.5 s one"
        )
        endless = itertools.count()
        results = ex.map(tiny, endless, buffersize=8, chunksize="auto")
        taken = list(itertools.islice(results, 200_000))
        results.close()
        print(
            f"  buffersize=8 over an endless generator: took {len(taken):,} results, "
            f"read {next(endless):,} items (the rest was never read)"
        )
        print("  progress=True (tqdm when installed, else a 'done i/n' line):")
        sum(ex.map(slow_square, range(40), progress=True))


def warm_workers() -> None:
    section("9. reuse=True: the next with block adopts warm workers, model and all")
    blocks = 5
    for reuse in (False, True):
        started = time.perf_counter()
        pids: set[int] = set()
        for _ in range(blocks):
            with stalwart.ProcessPoolExecutor(
                max_workers=2,
                initializer=load_model,
                initargs=("sentiment-v2",),
                reuse=reuse,
                idle_timeout=5,
            ) as ex:
                pids |= {pid for _, _, pid, _ in ex.map(predict, ["good"] * 8)}
        elapsed = time.perf_counter() - started
        last = ex.stats()
        print(
            f"  reuse={reuse!s:5}: {blocks} with blocks in {elapsed:.2f} s, "
            f"{len(pids)} worker processes in all; the last block started "
            f"{last.workers_started}, reused {last.workers_reused}, "
            f"parked {last.workers_parked}"
        )
    print(
        "each reuse=False block starts workers and loads the model again; with "
        "reuse=True they are parked at shutdown and adopted by the next block "
        "(they exit after idle_timeout unused, or at interpreter exit)"
    )


def on_a_cluster() -> None:
    section("10. From a laptop to a cluster: the same code on dask")
    try:
        import distributed  # noqa: F401 - only to see whether the extra is there
    except ImportError:
        print("dask is not installed here: pip install 'stalwart[dask]' to see this")
        return
    started = time.perf_counter()
    # No address: a local dask cluster of 2 worker processes, started and closed
    # by the executor. DaskExecutor("tcp://host:8786") reaches a running one.
    with stalwart.executor(
        "dask", max_workers=2, initializer=load_model, initargs=("sentiment-v2",)
    ) as ex:
        ready = time.perf_counter() - started
        rows = list(ex.map(where_am_i, range(8), chunksize="auto"))
        pids = sorted({pid for _, _, pid in rows})
        print(
            f"  a local dask cluster started in {ready:.1f} s; 8 items ran on dask "
            f"workers {pids}, each with its own model: {rows[0][1]!r}"
        )
        try:
            ex.submit(int, "not a number").result()
        except ValueError as error:
            print(f"  a task's exception comes back as itself: ValueError: {error}")
        try:
            ex.submit(run_model, Validator(Model()))
        except stalwart.PicklingError as error:
            print(f"  and submit() refuses an RLock the same way: {error.path}")
    print("  shutdown() closed the cluster it started; a cluster you give it is yours")


def cancel_is_exact() -> None:
    section("11. cancel() is exact, and no call waits behind a long one")
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        list(ex.map(tiny, range(3000)))  # tiny tasks: calls now travel in batches
        started = time.perf_counter()
        futures = [ex.submit(take_seconds, 2.0)]
        futures += [ex.submit(take_seconds, 0.25) for _ in range(12)]
        cf.wait(futures)
        elapsed = time.perf_counter() - started
        print(
            f"  one 2 s call and twelve 0.25 s calls on 2 workers: {elapsed:.1f} s "
            f"(ideal 2.5 s); {ex.stats().tasks_rebalanced} calls sent ahead to the "
            "busy worker were taken back by the idle one"
        )
        batch = [ex.submit(take_seconds, 0.05) for _ in range(40)]
        batch[0].result()
        cancelled = [f for f in batch if f.cancel()]
        cf.wait(batch)
        ran = [f for f in batch if not f.cancelled()]
        print(
            f"  of 40 calls, {len(cancelled)} were cancelled (never run, though many "
            f"had been sent ahead to a worker) and {len(ran)} had started and ran"
        )


def large_data() -> None:
    section("12. Large data: NumPy arrays cross in shared memory, as snapshots")
    try:
        import numpy as np
    except ImportError:
        print("  (needs numpy: pip install numpy)")
        return
    array = np.zeros(100 * 2**20 // 8)  # 100 MiB of float64
    for name, pool in (
        ("stdlib", cf.ProcessPoolExecutor(max_workers=2)),
        ("stalwart", stalwart.ProcessPoolExecutor(max_workers=2)),
    ):
        with pool as ex:
            ex.submit(tiny, 0).result()  # workers up
            started = time.perf_counter()
            futures = []
            for i in range(4):
                array[0] = i  # changed after each submit()
                futures.append(ex.submit(first_and_sum, array))
            firsts = [f.result()[0] for f in futures]
            elapsed = time.perf_counter() - started
            print(
                f"  {name:8}: four calls with a 100 MiB argument: {elapsed:.2f} s; "
                f"array[0] was set to 0, 1, 2, 3 before each submit(), the "
                f"tasks saw {firsts}"
            )
    with stalwart.ProcessPoolExecutor(max_workers=2) as ex:
        frozen = stalwart.shared(array)  # copied once, read-only everywhere
        started = time.perf_counter()
        values = list(ex.map(element, itertools.repeat(frozen, 1000), range(1000)))
        elapsed = time.perf_counter() - started
        print(
            f"  stalwart.shared(): 1,000 tasks each read one 100 MiB array, in "
            f"{elapsed * 1000:.0f} ms ({elapsed:.2f} ms per task; "
            f"{len(values)} values back): the array was copied once, not 1,000 times"
        )
        big = ex.submit(ones, 50 * 2**20 // 8).result()
        print(
            f"  a 50 MiB result arrives as a writable array of {big.nbytes // 2**20} "
            f"MiB (writeable={big.flags.writeable}), mapped, not copied"
        )


def joblib_and_scikit_learn() -> None:
    section("13. scikit-learn's n_jobs= on stalwart: joblib backend 'stalwart'")
    try:
        import joblib
        from sklearn.datasets import make_classification
        from sklearn.model_selection import GridSearchCV
    except ImportError:
        print("  (needs scikit-learn: pip install scikit-learn)")
        return
    import tempfile

    X, y = make_classification(n_samples=400, n_features=10, random_state=0)
    grid = {"C": [0.1, 1.0, 10.0]}
    with tempfile.TemporaryDirectory() as scratch:
        for backend, options in (("loky", {}), ("stalwart", {"retries": 1})):
            marker = os.path.join(scratch, backend)
            search = GridSearchCV(DiesOnceLogistic(marker=marker), grid, cv=3)
            started = time.perf_counter()
            try:
                with joblib.parallel_config(backend=backend, n_jobs=2, **options):
                    search.fit(X, y)
                outcome = f"best C = {search.best_params_['C']}, all 9 fits done"
            except Exception as error:  # noqa: BLE001 - shown, that is the point
                outcome = f"the whole search failed: {type(error).__name__}"
            print(
                f"  {backend:8} {options or ''}: one fit's worker SIGKILLed -> "
                f"{outcome} ({time.perf_counter() - started:.1f} s)"
            )
        from joblib.externals.loky import reusable_executor

        if reusable_executor._executor is not None:  # end loky's warm workers
            reusable_executor._executor.shutdown(wait=True, kill_workers=True)


def seeing_inside() -> None:
    section("14. Seeing inside: prints, log records, memory, the OOM killer named")
    import contextlib
    import io
    import logging
    import uuid

    # A handler the parent configured: worker records come through it, once.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        logging.Formatter("  parent's handler: %(process)d %(message)s")
    )
    logging.getLogger("tour").addHandler(handler)
    captured = io.StringIO()  # as a Jupyter cell, or pytest's capture
    with (
        contextlib.redirect_stdout(captured),
        stalwart.ProcessPoolExecutor(2, prefix_output=True) as ex,
    ):
        list(ex.map(chatty, range(2)))
    logging.getLogger("tour").removeHandler(handler)
    print("  the parent's (redirected) sys.stdout received:")
    for line in captured.getvalue().splitlines():
        print(f"    {line}")

    with stalwart.ProcessPoolExecutor(2, max_memory_per_child="300MB") as ex:
        pids = set(ex.map(leak, [50] * 40))
        stats = ex.stats()
    print(
        f"  40 calls leaking 50 MB each, max_memory_per_child='300MB': "
        f"{stats.workers_over_memory} workers replaced, {len(pids)} ran them, "
        f"peak {max(w.peak_memory or 0 for w in stats.workers) / 1e6:.0f} MB"
    )
    print("  stats() reads:")
    for line in str(stats).splitlines()[:5]:
        print(f"    {line}")

    group = Path("/sys/fs/cgroup/memory") / f"stalwart-tour-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(64 * 2**20))
        with contextlib.suppress(OSError):  # no swap accounting
            (group / "memory.memsw.limit_in_bytes").write_text(str(64 * 2**20))
    except OSError as error:
        print(f"  (no memory cgroup to be had here, the OOM kill is skipped: {error})")
        return
    try:
        with stalwart.ProcessPoolExecutor(1) as ex:
            try:
                ex.submit(allocate_in, str(group), 256).result()
            except stalwart.WorkerCrashedError as error:
                print(f"  a task past its 64 MiB cgroup: {error}")
    finally:
        deadline = time.monotonic() + 10
        while (group / "cgroup.procs").read_text().strip():
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)  # the killed worker leaves the cgroup
        group.rmdir()


def main() -> None:
    print(
        f"stalwart tour on Python {sys.version.split()[0]}, pid {os.getpid()}, "
        f"{threading.active_count()} thread(s)"
    )
    segfault_is_isolated()
    rlock_is_refused_at_submit()
    state_lives_in_each_worker()
    hung_task_is_killed()
    lambdas_and_tracebacks()
    drop_in_throughput()
    change_one_word()
    map_superpowers()
    warm_workers()
    on_a_cluster()
    cancel_is_exact()
    large_data()
    joblib_and_scikit_learn()
    seeing_inside()
    print("\nAll sections ran for real. The guides in docs/ tell the rest.")


if __name__ == "__main__":
    main()
