"""The pools behind one interface: serial, thread and process pools as used directly."""

from __future__ import annotations

import ast
import gc
import itertools
import json
import os
import signal
import threading
import time
import weakref
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pool_helpers
import pytest
from control_helpers import run_script

from amorsize import WorkerCrashedError
from amorsize.pools import compat
from amorsize.pools.processes import ProcessPool
from amorsize.pools.threads import ThreadPool
from amorsize.pools.worker_pool import SerialPool
from amorsize.system import default_start_method


@pytest.fixture(scope="module")
def process_pool():
    pool = ProcessPool(2, default_start_method())
    yield pool
    pool.shutdown(force=True)


@pytest.fixture(scope="module")
def thread_pool():
    pool = ThreadPool(2)
    yield pool
    pool.shutdown()


def test_every_kind_of_pool_is_a_WorkerPool_the_one_name_amorsize_pools_exports():
    import amorsize.pools

    assert amorsize.pools.__all__ == ["WorkerPool"]
    for kind in (SerialPool, ThreadPool, ProcessPool):
        assert issubclass(kind, amorsize.pools.WorkerPool)


def test_amorsize_Pool_is_the_only_class_called_Pool():
    """``amorsize.Pool`` is the ``multiprocessing.Pool`` look-alike; the warm pools' base is
    ``WorkerPool``, so an import of ``Pool`` means one thing."""
    root = Path(__file__).resolve().parents[1]
    defined = [str(path.relative_to(root)) for package in ("amorsize", "amorsize_joblib", "amorsize_dask")
               for path in sorted((root / package).rglob("*.py"))
               for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
               if isinstance(node, ast.ClassDef) and node.name == "Pool"]
    assert defined == ["amorsize/run/multiprocessing_pool.py"]


def test_serial_submit_delivers_the_exception_through_the_future():
    future = SerialPool().submit(pool_helpers.fail_with_value_error, 7)
    assert isinstance(future, Future) and future.done()
    with pytest.raises(ValueError, match="bad item 7"):
        future.result()


def test_serial_submit_returns_a_done_future_with_the_result():
    future = SerialPool().submit(pow, 2, exp=10)
    assert future.result(timeout=0) == 1024


def test_serial_map_is_ordered_and_checks_chunksize():
    pool = SerialPool()
    assert pool.map(pool_helpers.square, range(5), chunksize=2) == [0, 1, 4, 9, 16]
    with pytest.raises(ValueError, match="chunksize"):
        pool.map(pool_helpers.square, range(5), chunksize=0)


def test_thread_pool_map_is_ordered_with_any_chunksize(thread_pool):
    for chunksize in (1, 3, 100):
        assert thread_pool.map(lambda x: -x, range(10), chunksize=chunksize) == [-x for x in range(10)]


def test_thread_pool_runs_its_initializer_in_each_thread():
    seen = []
    pool = ThreadPool(2, initializer=lambda tag: seen.append(tag), initargs=("init",))
    try:
        assert seen == ["init", "init"]
    finally:
        pool.shutdown()


def test_imap_chunks_reads_input_lazily(thread_pool):
    consumed = itertools.count()

    def items():
        for i in range(1000):
            next(consumed)
            yield i

    chunks = thread_pool.imap_chunks(lambda x: x, items(), chunksize=10, max_inflight=2)
    first, _ = next(chunks)
    assert first == list(range(10))
    assert next(consumed) <= 40
    chunks.close()


@pytest.mark.parametrize("kind", ["serial", "thread"])
def test_a_pool_refuses_work_after_shutdown(kind):
    pool = SerialPool() if kind == "serial" else ThreadPool(1)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="was shut down"):
        pool.map(abs, [1])
    with pytest.raises(RuntimeError, match="was shut down"):
        pool.submit(abs, 1)


def test_process_pool_runs_lambdas_closures_and_importable_functions(process_pool):
    offset = 10
    assert process_pool.map(lambda x: x + offset, range(5), chunksize=2) == [10, 11, 12, 13, 14]
    assert process_pool.map(pool_helpers.square, range(4)) == [0, 1, 4, 9]
    assert process_pool.submit(lambda a, b=0: a * b, 6, b=7).result(timeout=30) == 42


def test_process_pool_passes_user_exceptions_through_with_their_type(process_pool):
    with pytest.raises(ValueError, match="bad item 1"):
        process_pool.map(pool_helpers.fail_with_value_error, [1, 2])
    future = process_pool.submit(pool_helpers.fail_with_value_error, 5)
    with pytest.raises(ValueError):
        future.result(timeout=30)
    assert not process_pool.broken


@pytest.mark.timeout(60)
def test_process_pool_future_can_be_cancelled_while_queued():
    pool = ProcessPool(1, default_start_method())
    try:
        running = pool.submit(pool_helpers.sleep_then_return, "a", 0.5)
        queued = [pool.submit(pool_helpers.square, i) for i in range(20)]
        cancelled = [f for f in queued if f.cancel()]
        assert cancelled and all(f.cancelled() for f in cancelled)
        assert running.result(timeout=30) == "a"
        assert all(f.result(timeout=30) == i * i for i, f in enumerate(queued) if not f.cancelled())
    finally:
        pool.shutdown(force=True)


@pytest.mark.timeout(60)
def test_submit_future_raises_worker_crashed_when_its_worker_dies():
    pool = ProcessPool(1, default_start_method())
    try:
        future = pool.submit(pool_helpers.exit_abruptly, 3)
        with pytest.raises(WorkerCrashedError, match="died"):
            future.result(timeout=30)
        assert pool.broken
    finally:
        pool.shutdown(force=True)


@pytest.mark.timeout(60)
def test_map_on_an_already_broken_pool_raises_worker_crashed_not_a_bare_broken_pool():
    pool = ProcessPool(1, default_start_method())
    try:
        os.kill(pool.worker_pids()[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not compat.found_broken(pool._executor) and time.monotonic() < deadline:
            time.sleep(0.02)
        with pytest.raises(WorkerCrashedError) as info:
            pool.map(pool_helpers.square, range(3))
        assert isinstance(info.value, BrokenProcessPool)
        with pytest.raises(WorkerCrashedError):
            pool.submit(pool_helpers.square, 1)
    finally:
        pool.shutdown(force=True)


@pytest.mark.timeout(60)
def test_failing_initializer_raises_worker_crashed_and_leaves_no_process():
    before = pool_helpers.live_children()
    with pytest.raises(WorkerCrashedError, match="initializer"):
        ProcessPool(1, default_start_method(), initializer=pool_helpers.failing_initializer)
    assert pool_helpers.wait_until_gone(pool_helpers.live_children() - before) == set()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["thread", "process"])
def test_a_pool_refuses_work_in_a_forked_child_instead_of_hanging(kind, thread_pool, process_pool):
    pool = thread_pool if kind == "thread" else process_pool
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            try:
                pool.map(pool_helpers.square, [1])
                outcome = "ran"
            except RuntimeError as exc:
                outcome = str(exc)
            os.write(write_end, json.dumps(outcome).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        outcome = json.loads(f.read())
    os.waitpid(pid, 0)
    assert "forked child" in outcome
    assert pool.map(pool_helpers.square, [3]) == [9]


def test_thread_pool_is_usable_from_many_threads_at_once(thread_pool):
    results = {}

    def use(i):
        results[i] = thread_pool.map(pool_helpers.square, range(i, i + 5))

    threads = [threading.Thread(target=use, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: [x * x for x in range(i, i + 5)] for i in range(16)}


@pytest.mark.timeout(90)
def test_an_executor_collected_on_its_own_manager_thread_does_not_hang_the_interpreter():
    """Regression: CPython gh-125451 (3.12.0-3.12.7 and 3.13.0, where the manager thread joins
    its queue holding the shutdown lock; 3.11 cannot hang this way) hung one CI run at exit. A
    pool shut down without waiting was collected by a garbage collection that started on its
    executor's manager thread while that thread held the executor's shutdown lock; the
    executor's weakref callback then waited for the same lock. Here the collection is made to
    start there."""
    script = run_script("""
        import gc
        import os
        from amorsize.pools.processes import ProcessPool
        from amorsize.system import default_start_method
        import pool_helpers

        pool = ProcessPool(1, default_start_method())
        assert pool.map(pool_helpers.square, [2]) == [4]
        manager = pool._executor.manager
        queue = pool._executor._call_queue  # the fault is made inside the executor
        join_queue = queue.join_thread

        def collect_then_join():  # runs on the manager thread, holding the shutdown lock
            gc.collect()
            join_queue()

        queue.join_thread = collect_then_join
        gc.disable()
        pool.itself = pool  # only a garbage collection frees it
        pool.shutdown(wait=False)
        del pool, queue
        manager.join(20)
        if manager.is_alive():
            print("hung", flush=True)
            os._exit(1)  # the interpreter's exit would wait for the thread forever
        print("ended", flush=True)
    """)
    try:
        out, err = script.communicate(timeout=60)
    finally:
        script.kill()
    assert out.strip() == "ended", err
    assert script.returncode == 0, err


@pytest.mark.timeout(60)
def test_a_pool_shut_down_without_waiting_lets_go_of_its_initializer_arguments():
    """Held until its manager thread ends (see the test above), and not longer."""
    marker = pool_helpers.Marker()
    watch = weakref.ref(marker)
    pool = ProcessPool(1, default_start_method(), initializer=pool_helpers.set_marker,
                       initargs=(marker,))
    manager = pool._executor.manager
    pool.shutdown(wait=False)
    del pool, marker
    manager.join(20)
    deadline = time.monotonic() + 10
    while watch() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    assert watch() is None
