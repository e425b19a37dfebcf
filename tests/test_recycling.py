"""Worker recycling: ``max_tasks_per_child`` and the memory-growth rule (loky's)."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pool_helpers
import pytest

import amorsize
from amorsize import InvalidArgumentError, InvalidArgumentTypeError, PoolManager
from amorsize.pools import worker
from amorsize.system import default_start_method

pytestmark = pytest.mark.timeout(60)

MB = 1024 * 1024
_kept: list[bytes] = []  # what keep_memory holds in a worker, from task to task


def item_and_pid(x: int) -> tuple[int, int]:
    return x, os.getpid()


def keep_memory(x: int) -> int:
    """Leak 16 MB (touched, so resident) into a module-level list of the worker."""
    _kept.append(b"\x01" * (16 * MB))
    return x


def use_memory_then_free(x: int) -> int:
    """Use 64 MB for the duration of the call only: a peak, not growth."""
    block = b"\x01" * (64 * MB)
    return x + len(block) - len(block)


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.fixture
def events():
    seen: list[tuple[str, tuple, dict]] = []
    return seen


@pytest.fixture
def manager(events):
    with PoolManager(on_event=lambda event, key, stats: events.append((event, key, stats)),
                     max_memory_growth_mb=24) as m:
        yield m


def test_max_tasks_per_child_replaces_workers_and_keeps_results_in_order():
    # one item measured (one task), then nine chunks of one item: at least five workers
    results = amorsize.map(item_and_pid, range(10), executor="process", n_jobs=2, chunksize=1,
                           sample_size=1, max_tasks_per_child=2)
    assert [x for x, _ in results] == list(range(10))
    assert len({pid for _, pid in results}) > 2
    stats = amorsize.get_global_pool_manager().get_stats()["pools"]
    recycling = [s for name, s in stats.items() if name.endswith(":max_tasks_per_child=2")]
    assert recycling and recycling[0]["max_tasks_per_child"] == 2
    assert recycling[0]["workers_replaced"] >= 2


@pytest.mark.timeout(30)
def test_queued_tasks_never_wait_forever_for_a_retired_worker(manager):
    """CPython's executor can skip a replacement and leave queued tasks without a worker
    (gh-115634, up to Python 3.15); amorsize's replaces every retired worker."""
    pool = manager.get_pool(1, "process", max_tasks_per_child=2)
    futures = [pool.submit(pool_helpers.square, x) for x in range(12)]
    assert [f.result(timeout=20) for f in futures] == [x * x for x in range(12)]


def test_a_replacement_worker_takes_the_free_slot_of_the_one_it_replaces(manager):
    pool = manager.get_pool(1, "process", max_tasks_per_child=1)
    pids = pool.map(pool_helpers.worker_pid, range(3), chunksize=1)
    assert len(set(pids)) == 3
    assert len(pool.board) == worker.SLOT  # one worker, one slot, reused by each replacement
    deadline = time.monotonic() + 10
    while pool.workers_replaced < 3 and time.monotonic() < deadline:  # the 4th is starting
        time.sleep(0.01)
    assert pool.workers_replaced == 3
    assert int(pool.board[worker.OWNER]) not in pids  # held by the worker now waiting
    [stats] = manager.get_stats()["pools"].values()
    assert stats["max_tasks_per_child"] == 1 and stats["workers_replaced"] == 3


needs_forkserver = pytest.mark.skipif(
    "forkserver" not in multiprocessing.get_all_start_methods(),
    reason="the fork server sends each worker's exit status through a pipe, read once")
RECYCLING_FORKSERVER = dict(start_method="forkserver", max_tasks_per_child=1)


@needs_forkserver
def test_a_retired_worker_exits_cleanly_however_many_threads_wait_for_it(manager, tmp_path):
    """A fork-server worker's exit status is read once from a pipe: of several threads waiting
    for the worker (the executor joining it, anyone asking whether the pool is broken), all
    but one used to read end-of-file, taken for exit code 255 -- a crash (CPython gh-130895)."""
    pool = manager.get_pool(1, "process", **RECYCLING_FORKSERVER)
    [retiring] = [p for p in multiprocessing.active_children() if p.pid in pool.worker_pids()]
    go = tmp_path / "go"
    task = pool.submit(pool_helpers.wait_for_file, str(go))  # its only task: then it retires
    judged_broken = []

    def ask_whether_broken() -> None:
        while retiring.pid in pool.worker_pids():
            judged_broken.append(pool.broken)
            time.sleep(0.001)

    waiters = [threading.Thread(target=retiring.join) for _ in range(3)]
    waiters.append(threading.Thread(target=ask_whether_broken))
    for waiter in waiters:
        waiter.start()
    go.touch()
    assert task.result(timeout=30) is None
    for waiter in waiters:
        waiter.join(timeout=30)
    assert retiring.exitcode == 0
    assert not any(judged_broken) and not pool.broken
    assert manager.get_pool(1, "process", **RECYCLING_FORKSERVER) is pool
    assert pool.submit(pool_helpers.square, 3).result(timeout=30) == 9


@needs_forkserver
def test_calls_from_several_threads_never_fail_while_workers_retire(manager, events):
    """The issue as callers saw it: each request for the pool checks whether its workers died,
    while the executor joins those that retired; a retirement taken for a crash broke the pool
    and failed the other threads' calls with WorkerCrashedError."""
    pool = manager.get_pool(2, "process", **RECYCLING_FORKSERVER)
    calls_done = threading.Event()
    handed_out = []

    def ask_for_the_pool() -> None:
        while not calls_done.is_set():
            handed_out.append(manager.get_pool(2, "process", **RECYCLING_FORKSERVER))
            time.sleep(0)  # let the callers and the executor run meanwhile

    def call(start: int) -> list[int]:
        return [pool.submit(pool_helpers.square, x).result(timeout=30)
                for x in range(start, start + 50)]

    results: dict[int, list[int]] = {}
    asker = threading.Thread(target=ask_for_the_pool)
    callers = [threading.Thread(target=lambda s=s: results.update({s: call(s)}))
               for s in (0, 50, 100)]
    asker.start()
    try:
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
    finally:
        calls_done.set()
        asker.join()
    assert [x for s in (0, 50, 100) for x in results.get(s, [])] == [x * x for x in range(150)]
    assert "broken" not in [event for event, _, _ in events]
    assert all(handed is pool for handed in handed_out)
    assert pool.workers_replaced >= 140


_TERMINATE_WHILE_RETIRING = """
import json, os, sys, threading
sys.path.insert(0, sys.argv[2])
import pool_helpers
from concurrent.futures import CancelledError
from amorsize.errors import PoolClosedError, WorkerCrashedError
from amorsize.pools.processes import ProcessPool

pool = ProcessPool(2, "forkserver", max_tasks_per_child=1)
outcomes = []

def ask_then_terminate():
    for _ in range(int(sys.argv[1])):  # asking whether it is broken keeps the interpreter busy
        pool.broken
    pool.terminate()

def call(start):
    for x in range(start, start + 500):
        try:
            future = pool.submit(pool_helpers.square, x)
        except PoolClosedError:
            outcomes.append("refused")
            return
        except WorkerCrashedError:  # the pool was found broken as the call was handed over
            outcomes.append("crashed")
            return
        try:
            future.result(timeout=10)
        except WorkerCrashedError:
            outcomes.append("crashed")
            return
        except CancelledError:  # 3.14+: terminate_workers cancels what had not started
            outcomes.append("cancelled")
            return
        except TimeoutError:
            outcomes.append("never settled")
            return
    outcomes.append("all done")

threads = [threading.Thread(target=call, args=(s,)) for s in (0, 500, 1000)]
threads.append(threading.Thread(target=ask_then_terminate))
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(outcomes), flush=True)
"""


@needs_forkserver
@pytest.mark.parametrize("asks_first", [2000, 3000, 4000])
def test_terminating_a_pool_whose_workers_retire_fails_the_calls_in_flight_never_hangs(
        asks_first):
    """A call submitted while the pool's workers are being killed fails with WorkerCrashedError
    (or is refused with PoolClosedError): it used to be registered after the pool failed its
    open calls, and left to the executor, whose thread may already have died replacing a
    retired worker of a pool shut down. And the interpreter then exits: a worker retiring as
    the pool was killed used to make the executor's thread raise TypeError, or wait forever with
    calls and no worker, and the interpreter's exit joins that thread. Run in a subprocess with
    a hard timeout."""
    done = subprocess.run(
        [sys.executable, "-c", _TERMINATE_WHILE_RETIRING, str(asks_first),
         str(Path(__file__).parent)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    outcomes = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(outcomes) == 3 and "never settled" not in outcomes, outcomes


@pytest.mark.parametrize("stop", ["stop_replacing", "shutdown_without_waiting"])
def test_a_worker_retiring_once_replacing_stopped_fails_the_queued_calls_and_ends_the_thread(
        tmp_path, stop):
    """Left without a worker, queued calls used to wait forever, and so did the interpreter's
    exit, which joins the executor's thread (or that thread raised TypeError, replacing a
    worker of an executor shut down): now the retirement breaks the pool, as a death would.
    Where the executor replaces retired workers itself (Python 3.14+, gh-119592 fixed), the
    queued call runs on a replacement instead: either way it settles, and the thread ends."""
    from concurrent.futures.process import BrokenProcessPool

    from amorsize.pools import compat

    executor = compat.ReplacingExecutor(
        max_workers=1, max_tasks_per_child=1,
        mp_context=multiprocessing.get_context(default_start_method()))
    go = tmp_path / "go"
    try:
        running = executor.submit(pool_helpers.wait_for_file, str(go))
        queued = executor.submit(pool_helpers.square, 3)
        manager = executor.manager
        if stop == "stop_replacing":
            executor.stop_replacing()
        else:
            executor.shutdown(wait=False)
        go.touch()
        assert running.result(timeout=30) is None
        try:
            assert queued.result(timeout=30) == 9          # replaced by the executor itself
            executor.shutdown(wait=False)                  # a live executor keeps its thread
        except BrokenProcessPool:
            assert sys.version_info < (3, 14) or stop != "shutdown_without_waiting"
        assert manager is not None
        manager.join(30)
        assert not manager.is_alive()
    finally:
        executor.shutdown(wait=True)


def test_a_time_limit_still_works_on_a_replacement_worker():
    manager = amorsize.get_global_pool_manager()
    # n_jobs=1 would be a serial plan (run on a thread with a time limit)
    options = dict(executor="process", n_jobs=2, chunksize=1, sample_size=1, max_tasks_per_child=1)
    amorsize.map(nap, [0.0] * 6, **options)  # the pool's first workers have retired by now
    with pytest.raises(amorsize.TimeoutError) as caught:  # item 4 would sleep for an hour
        amorsize.map(nap, [0.0, 0.0, 0.0, 0.0, 3600.0], timeout=0.5, resample=True, **options)
    assert caught.value.index == 4
    [stats] = [s for s in manager.get_stats()["pools"].values() if s["max_tasks_per_child"] == 1
               and s["n_jobs"] == 2]
    assert stats["workers_replaced"] >= 4


@pytest.mark.parametrize("entry", ["imap", "imap_unordered", "starmap", "istarmap"])
def test_every_entry_point_takes_max_tasks_per_child(entry):
    data = [(x,) for x in range(6)] if "star" in entry else range(6)
    results = list(getattr(amorsize, entry)(pool_helpers.square, data, executor="process",
                                            n_jobs=2, chunksize=1, max_tasks_per_child=2))
    assert sorted(results) == [x * x for x in range(6)]


def test_fork_with_max_tasks_per_child_is_refused_naming_both():
    with pytest.raises(InvalidArgumentError, match="max_tasks_per_child.*fork"):
        amorsize.map(pool_helpers.square, range(4), start_method="fork", max_tasks_per_child=2)
    with PoolManager(start_method="fork") as forking:
        with pytest.raises(InvalidArgumentError, match="max_tasks_per_child.*fork"):
            forking.get_pool(1, "process", max_tasks_per_child=2)


@pytest.mark.parametrize("value, error", [(0, InvalidArgumentError), (-1, InvalidArgumentError),
                                          ("2", InvalidArgumentTypeError),
                                          (True, InvalidArgumentTypeError),
                                          (1.5, InvalidArgumentTypeError)])
def test_a_bad_max_tasks_per_child_is_refused_naming_it(manager, value, error):
    with pytest.raises(error, match="max_tasks_per_child must be an int >= 1"):
        amorsize.map(pool_helpers.square, range(4), max_tasks_per_child=value)
    with pytest.raises(error, match="max_tasks_per_child must be an int >= 1"):
        manager.get_pool(1, "thread", max_tasks_per_child=value)


def test_thread_and_serial_pools_ignore_max_tasks_per_child(manager):
    assert manager.get_pool(2, "thread", max_tasks_per_child=3) is manager.get_pool(2, "thread")
    assert manager.get_pool(1, "serial", max_tasks_per_child=3) is manager.get_pool(1, "serial")


def test_a_worker_whose_memory_grew_past_the_limit_has_its_pool_recycled(manager, events):
    pool = manager.get_pool(1, "process")
    assert pool.map(keep_memory, range(5), chunksize=1) == list(range(5))
    # the baseline is taken after the first task; 2 more tasks of 16 MB pass the 24 MB limit,
    # seen as the next task starts
    assert pool.recycle_due
    fresh = manager.get_pool(1, "process")
    assert fresh is not pool and not fresh.recycle_due and pool.closed
    assert ("evicted", "recycled") in [(e, s.get("reason")) for e, _, s in events]
    assert manager.get_stats()["evictions_by_reason"]["recycled"] == 1
    assert fresh.map(pool_helpers.square, range(3)) == [0, 1, 4]


def test_memory_used_only_during_a_task_is_not_growth(manager):
    pool = manager.get_pool(1, "process")
    assert pool.map(use_memory_then_free, range(5), chunksize=1) == list(range(5))
    assert not pool.recycle_due
    assert manager.get_pool(1, "process") is pool


def test_a_leased_pool_due_for_recycling_closes_when_its_run_ends(manager):
    pool = manager.get_pool(1, "process")
    with pool.lease():
        pool.map(keep_memory, range(5), chunksize=1)
        assert manager.get_pool(1, "process") is not pool
        assert not pool.closed  # the run holding it goes on
        assert pool.map(pool_helpers.square, range(3)) == [0, 1, 4]
    assert pool.closed


def test_the_memory_limit_is_checked_and_can_be_turned_off():
    with pytest.raises(InvalidArgumentError, match="max_memory_growth_mb must be a number"):
        PoolManager(max_memory_growth_mb=0)
    with pytest.raises(InvalidArgumentTypeError, match="max_memory_growth_mb must be a number"):
        PoolManager(max_memory_growth_mb="300")
    with PoolManager(max_memory_growth_mb=None) as unlimited:
        pool = unlimited.get_pool(1, "process")
        pool.map(keep_memory, range(5), chunksize=1)
        assert not pool.recycle_due
        assert unlimited.get_pool(1, "process") is pool
