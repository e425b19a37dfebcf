"""PoolManager: warm pools reused across calls, safe for services."""

from __future__ import annotations

import functools
import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pool_helpers
import pytest

import amorsize
from amorsize import (
    PoolManager,
    PoolManagerClosedError,
    WorkerCrashedError,
    get_global_pool_manager,
    managed_pool,
    shutdown_global_pool_manager,
)

START_METHODS = ("fork", "forkserver", "spawn")
TESTS_DIR = Path(__file__).parent


class Events:
    """Records what a manager tells its ``on_event`` observer."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, tuple, dict]] = []

    def __call__(self, event: str, key: tuple, stats: dict) -> None:
        self.seen.append((event, key, stats))

    def names(self) -> list[str]:
        return [event for event, _, _ in self.seen]


@pytest.fixture
def events():
    return Events()


@pytest.fixture
def manager(events):
    with PoolManager(on_event=events) as m:
        yield m


def kill_a_worker_during(pool, seconds: float = 0.3) -> threading.Timer:
    timer = threading.Timer(seconds, os.kill, (pool.worker_pids()[0], signal.SIGKILL))
    timer.start()
    return timer


@pytest.mark.parametrize("n_jobs, error", [
    (0, ValueError), (-2, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError),
    (None, TypeError),
])
def test_get_pool_rejects_a_bad_n_jobs_naming_it(manager, n_jobs, error):
    with pytest.raises(error, match="n_jobs"):
        manager.get_pool(n_jobs, "thread")


@pytest.mark.parametrize("executor_type, error", [("gpu", ValueError), (3, TypeError), ("", ValueError)])
def test_get_pool_rejects_an_unknown_executor_type_naming_it(manager, executor_type, error):
    with pytest.raises(error, match="executor_type"):
        manager.get_pool(1, executor_type)


@pytest.mark.parametrize("idle_timeout, error", [
    (-1, ValueError), (float("nan"), ValueError), ("300", TypeError), (None, TypeError),
])
def test_a_bad_idle_timeout_is_rejected_naming_it(idle_timeout, error):
    with pytest.raises(error, match="idle_timeout"):
        PoolManager(idle_timeout=idle_timeout)


def test_a_bad_start_method_is_rejected_naming_it(manager):
    with pytest.raises(ValueError, match="start_method"):
        PoolManager(start_method="vfork")
    with pytest.raises(ValueError, match="start_method"):
        manager.get_pool(1, "process", start_method="threads")


def test_unhashable_initargs_are_rejected_naming_them(manager):
    with pytest.raises(TypeError, match="initargs"):
        manager.get_pool(1, "serial", initializer=pool_helpers.set_marker, initargs=([1],))


def test_release_pool_checks_its_arguments_too(manager):
    with pytest.raises(ValueError, match="n_jobs"):
        manager.release_pool(0, "thread")
    with pytest.raises(ValueError, match="executor_type"):
        manager.release_pool(1, "gpu")


def test_same_key_returns_the_same_warm_pool(manager):
    first = manager.get_pool(2, "thread")
    assert manager.get_pool(2, "thread") is first
    assert manager.get_pool(3, "thread") is not first
    assert manager.get_pool(1, "serial") is not first


def test_force_new_replaces_the_pool_and_closes_the_old_one(manager, events):
    old = manager.get_pool(2, "thread")
    new = manager.get_pool(2, "thread", force_new=True)
    assert new is not old and old.closed
    assert manager.get_pool(2, "thread") is new
    assert ("evicted", {"reason": "force_new"}) in [
        (e, {"reason": s.get("reason")}) for e, _, s in events.seen]
    assert set(events.names()) <= {"created", "reused", "evicted", "broken", "shutdown"}


def test_initializer_and_start_method_are_part_of_the_key(manager):
    plain = manager.get_pool(1, "serial")
    marked = manager.get_pool(1, "serial", initializer=pool_helpers.set_marker, initargs=("a",))
    other = manager.get_pool(1, "serial", initializer=pool_helpers.set_marker, initargs=("b",))
    assert len({id(plain), id(marked), id(other)}) == 3
    assert manager.get_pool(1, "serial", initializer=pool_helpers.set_marker, initargs=("b",)) is other
    keys = {manager._checked_key(1, "process", m, None, ()) for m in START_METHODS}
    assert len(keys) == 3


def test_serial_pool_has_the_same_methods_so_a_serial_plan_needs_no_special_case(manager):
    pool = manager.get_pool(1, "serial")
    assert pool.map(pool_helpers.square, range(4), chunksize=3) == [0, 1, 4, 9]
    future = pool.submit(pool_helpers.fail_with_value_error, "x")
    with pytest.raises(ValueError, match="bad item 'x'"):
        future.result()


def test_stats_count_hits_misses_creations_and_startups(manager):
    manager.get_pool(2, "thread")
    manager.get_pool(2, "thread")
    manager.get_pool(2, "thread")
    manager.get_pool(1, "serial")
    stats = manager.get_stats()
    assert (stats["hits"], stats["misses"], stats["creations"]) == (2, 2, 2)
    assert (stats["evictions"], stats["replacements"]) == (0, 0)
    assert set(stats["pools"]) == {"thread:2", "serial:1"}
    assert [s["key"] for s in stats["startups"]] == ["thread:2", "serial:1"]
    assert all(s["startup_seconds"] >= 0 for s in stats["startups"])
    assert stats["pools"]["thread:2"]["startup_seconds"] > 0


def test_create_false_only_peeks_and_counts_nothing(manager):
    assert manager.get_pool(2, "thread", create=False) is None
    pool = manager.get_pool(2, "thread")
    assert manager.get_pool(2, "thread", create=False) is pool
    stats = manager.get_stats()
    assert (stats["hits"], stats["misses"], stats["creations"]) == (0, 1, 1)


def test_idle_pools_are_evicted_when_another_pool_is_requested(events):
    with PoolManager(idle_timeout=0.05, on_event=events) as manager:
        idle = manager.get_pool(2, "thread")
        time.sleep(0.1)
        manager.get_pool(1, "serial")
        assert idle.closed
        stats = manager.get_stats()
        assert set(stats["pools"]) == {"serial:1"}
        assert stats["evictions"] == 1 and stats["evictions_by_reason"]["idle"] == 1
        assert ("evicted", "idle") in [(e, s.get("reason")) for e, _, s in events.seen]


def test_idle_pools_are_evicted_even_when_the_request_is_a_warm_hit():
    with PoolManager(idle_timeout=0.05) as manager:
        busy_key_pool = manager.get_pool(1, "serial")
        idle = manager.get_pool(2, "thread")
        time.sleep(0.1)
        assert manager.get_pool(1, "serial") is busy_key_pool
        assert idle.closed
        assert manager.get_stats()["evictions"] == 1


def test_a_pool_running_tasks_is_never_idle_evicted():
    release = threading.Event()
    with PoolManager(idle_timeout=0.05) as manager:
        pool = manager.get_pool(1, "thread")
        future = pool.submit(release.wait, 30)   # runs until the test has looked
        time.sleep(0.1)   # past the idle timeout
        manager.get_pool(1, "serial")
        assert not pool.closed
        release.set()
        future.result()


def test_the_requested_pool_itself_is_reused_not_evicted_after_idling():
    with PoolManager(idle_timeout=0.05) as manager:
        pool = manager.get_pool(2, "thread")
        time.sleep(0.1)
        assert manager.get_pool(2, "thread") is pool


def test_release_pool_shuts_that_pool_down_now_and_the_next_request_starts_another(manager, events):
    pool = manager.get_pool(2, "thread")
    future = pool.submit(time.sleep, 0.1)
    assert manager.release_pool(2, "thread") is True
    assert future.done() and pool.closed
    assert manager.release_pool(2, "thread") is False
    assert manager.get_pool(2, "thread") is not pool
    assert manager.get_stats()["evictions_by_reason"]["released"] == 1
    assert ("evicted", "released") in [(e, s.get("reason")) for e, _, s in events.seen]


def test_events_report_each_stage_of_a_pools_life(manager, events):
    manager.get_pool(1, "thread")
    manager.get_pool(1, "thread")
    manager.release_pool(1, "thread")
    manager.get_pool(1, "serial")
    manager.shutdown()
    assert events.names() == ["created", "reused", "evicted", "created", "shutdown"]
    created = events.seen[0]
    assert created[1][:2] == ("thread", 1) and created[2]["startup_seconds"] > 0


def test_a_failing_observer_does_not_keep_pools_open():
    def observer(event, key, stats):
        raise RuntimeError("observer broke")

    manager = PoolManager(on_event=observer)
    with pytest.warns(RuntimeWarning, match="observer broke"):
        first = manager.get_pool(1, "thread")
        second = manager.get_pool(2, "thread")
    with pytest.warns(RuntimeWarning):
        manager.shutdown()
    assert first.closed and second.closed


def test_get_pool_after_shutdown_raises_a_clear_error(manager):
    manager.get_pool(1, "serial")
    manager.shutdown()
    with pytest.raises(PoolManagerClosedError, match="shut down"):
        manager.get_pool(1, "serial")
    assert manager.get_stats()["closed"] is True


def test_clear_closes_every_pool_but_keeps_the_manager_usable(manager):
    pool = manager.get_pool(2, "thread")
    manager.clear()
    assert pool.closed and manager.get_stats()["pools"] == {}
    assert manager.get_pool(2, "thread") is not pool


def test_context_manager_shuts_the_manager_down_on_exit():
    with PoolManager() as manager:
        pool = manager.get_pool(1, "thread")
    assert pool.closed
    with pytest.raises(PoolManagerClosedError):
        manager.get_pool(1, "thread")


def test_an_unreferenced_manager_is_not_kept_alive_by_exit_cleanup():
    manager = PoolManager(enable_auto_cleanup=True)
    manager.get_pool(1, "serial")
    ref = weakref.ref(manager)
    del manager
    gc.collect()
    assert ref() is None


def test_managed_pool_lends_a_warm_pool_from_the_given_manager(manager):
    with managed_pool(2, "thread", manager=manager) as pool:
        assert pool.map(pool_helpers.square, [2]) == [4]
    assert not pool.closed and manager.get_pool(2, "thread") is pool


def test_managed_pool_defaults_to_the_global_manager():
    with managed_pool(1, "serial") as pool:
        assert get_global_pool_manager().get_pool(1, "serial") is pool


def test_managed_pool_without_global_uses_a_private_pool_closed_on_exit():
    with managed_pool(2, "thread", use_global=False) as pool:
        assert pool.map(pool_helpers.square, [3]) == [9]
        assert get_global_pool_manager().get_pool(2, "thread", create=False) is not pool
    assert pool.closed


def test_the_global_manager_is_one_object_for_all_threads():
    shutdown_global_pool_manager()
    with ThreadPoolExecutor(32) as threads:
        managers = list(threads.map(lambda _: get_global_pool_manager(), range(64)))
    assert len({id(m) for m in managers}) == 1


def test_after_global_shutdown_a_new_global_manager_is_created_on_next_use():
    old = get_global_pool_manager()
    pool = old.get_pool(1, "thread")
    shutdown_global_pool_manager()
    assert pool.closed
    new = get_global_pool_manager()
    assert new is not old and new.get_pool(1, "thread") is not pool


def test_global_manager_events_reach_the_pool_event_hook():
    seen = []

    class Observer:
        @amorsize.hookimpl
        def amorsize_pool_event(self, event, key, stats):
            seen.append((event, key[:2]))

    shutdown_global_pool_manager()
    name = amorsize.register_plugin(Observer(), name="test-pool-observer")
    try:
        get_global_pool_manager().get_pool(1, "serial")
        get_global_pool_manager().get_pool(1, "serial")
        shutdown_global_pool_manager()
    finally:
        amorsize.unregister_plugin(name=name)
    assert seen == [("created", ("serial", 1)), ("reused", ("serial", 1)),
                    ("shutdown", ("serial", 1))]


@pytest.mark.timeout(120)
def test_32_threads_mapping_on_the_global_manager_get_correct_results_and_one_pool():
    shutdown_global_pool_manager()
    errors = []
    results = {}
    barrier = threading.Barrier(32)

    def use(i):
        try:
            barrier.wait()
            pool = get_global_pool_manager().get_pool(2, "process")
            results[i] = pool.map(pool_helpers.square, range(i, i + 20), chunksize=5)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=use, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert errors == []
    assert results == {i: [x * x for x in range(i, i + 20)] for i in range(32)}
    stats = get_global_pool_manager().get_stats()
    assert stats["creations"] == 1 and stats["hits"] == 31 and stats["misses"] == 1


@pytest.mark.timeout(120)
def test_the_optimize_then_get_pool_pattern_works_as_written():
    from amorsize import get_global_pool_manager, optimize

    func = pool_helpers.square
    datasets = [list(range(200)), list(range(50, 300))]
    manager = get_global_pool_manager()
    for dataset in datasets:
        result = optimize(func, dataset)
        pool = manager.get_pool(result.n_jobs, result.executor_type)
        results = pool.map(func, result.data, chunksize=result.chunksize)
        assert results == [func(x) for x in dataset]
    for dataset in datasets:
        result = optimize(func, dataset, executor="process", n_jobs=2)
        pool = manager.get_pool(result.n_jobs, result.executor_type)
        results = pool.map(func, result.data, chunksize=result.chunksize)
        assert results == [func(x) for x in dataset]
    key = f"process:2:{manager.start_method}"
    assert key in manager.get_stats()["pools"]
    assert [s["key"] for s in manager.get_stats()["startups"]].count(key) == 1


@pytest.mark.timeout(60)
def test_a_task_that_exits_its_worker_raises_worker_crashed_and_the_next_pool_works(manager, events):
    pool = manager.get_pool(1, "process")
    with pytest.raises(WorkerCrashedError):
        pool.map(pool_helpers.exit_abruptly, range(6))
    fresh = manager.get_pool(1, "process")
    assert fresh is not pool and fresh.map(pool_helpers.exit_abruptly, [1, 2]) == [1, 2]
    assert manager.get_stats()["replacements"] == 1
    assert "broken" in events.names()


@pytest.mark.timeout(60)
def test_a_broken_pool_of_another_key_is_closed_on_the_next_slow_request(manager):
    pool = manager.get_pool(1, "process")
    with pytest.raises(WorkerCrashedError):
        pool.submit(pool_helpers.exit_abruptly, 3).result(timeout=30)
    manager.get_pool(1, "serial")
    assert manager.get_stats()["pools"].keys() == {"serial:1"}
    assert manager.get_stats()["replacements"] == 1


@pytest.mark.timeout(60)
def test_shutdown_force_terminates_busy_workers():
    manager = PoolManager()
    pool = manager.get_pool(1, "process")
    pids = pool.worker_pids()
    future = pool.submit(pool_helpers.sleep_then_return, 1, 3600)   # waiting would time out
    time.sleep(0.2)
    manager.shutdown(force=True)
    assert future.done()
    assert pool_helpers.alive(pids) == set()


@pytest.mark.timeout(60)
def test_shutdown_waits_for_running_tasks(tmp_path):
    manager = PoolManager()
    pool = manager.get_pool(1, "process")
    started = str(tmp_path / "started")
    future = pool.submit(pool_helpers.mark_started_then_sleep, started, "done", 0.5)
    pool_helpers.wait_for_file(started)
    manager.shutdown()
    assert future.result(timeout=0) == "done"
    assert pool_helpers.alive(pool.worker_pids() or []) == set()


@pytest.fixture(scope="module", params=START_METHODS)
def method_manager(request):
    manager = PoolManager(start_method=request.param)
    yield manager
    manager.shutdown(force=True)


@pytest.mark.timeout(60)
def test_under_each_start_method_a_pool_maps_lambdas_and_closures(method_manager):
    pool = method_manager.get_pool(2, "process")
    scale = 3
    assert pool.map(lambda x: x * scale, range(7), chunksize=2) == [x * 3 for x in range(7)]
    assert pool.map(pool_helpers.square, range(5)) == [0, 1, 4, 9, 16]
    assert pool.start_method == method_manager.start_method
    assert len(set(pool.worker_pids())) == 2
    assert method_manager.get_pool(2, "process") is pool


@pytest.mark.timeout(60)
def test_under_each_start_method_a_killed_worker_raises_and_is_replaced(method_manager):
    pool = method_manager.get_pool(2, "process")
    replaced_before = method_manager.get_stats()["replacements"]
    kill_a_worker_during(pool)
    with pytest.raises(WorkerCrashedError):  # the tasks would sleep for an hour
        pool.map(functools.partial(pool_helpers.sleep_then_return, seconds=3600), range(4))
    fresh = method_manager.get_pool(2, "process")
    assert fresh is not pool and not fresh.broken
    assert fresh.map(pool_helpers.square, range(3)) == [0, 1, 4]
    assert method_manager.get_stats()["replacements"] == replaced_before + 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start_method", START_METHODS)
def test_under_each_start_method_shutdown_leaves_no_worker(start_method):
    before = pool_helpers.live_children()
    manager = PoolManager(start_method=start_method)
    pool = manager.get_pool(2, "process")
    pids = set(pool.worker_pids())
    assert pool_helpers.alive(pids) == pids
    manager.shutdown()
    assert pool_helpers.alive(pids) == set()
    assert pool_helpers.live_children() - before == set()


@pytest.mark.timeout(60)
def test_a_forked_child_never_uses_its_parents_pools(manager):
    parent_pool = manager.get_pool(1, "process")
    parent_pids = parent_pool.worker_pids()
    global_thread_pool = get_global_pool_manager().get_pool(2, "thread")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        report: dict = {}
        try:
            os.close(read_end)
            child_pool = manager.get_pool(1, "process")
            report["new_pool"] = child_pool is not parent_pool
            report["map"] = child_pool.map(pool_helpers.square, [1, 2, 3])
            report["own_workers"] = not set(child_pool.worker_pids()) & set(parent_pids)
            child_threads = get_global_pool_manager().get_pool(2, "thread")
            report["new_thread_pool"] = child_threads is not global_thread_pool
            report["thread_map"] = child_threads.map(pool_helpers.square, [4])
            manager.shutdown()
            get_global_pool_manager().shutdown()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            report["error"] = repr(exc)
        finally:
            os.write(write_end, json.dumps(report).encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        report = json.loads(f.read())
    os.waitpid(pid, 0)
    assert report == {"new_pool": True, "map": [1, 4, 9], "own_workers": True,
                      "new_thread_pool": True, "thread_map": [16]}
    assert manager.get_pool(1, "process") is parent_pool
    assert parent_pool.map(pool_helpers.square, [5]) == [25]
    assert pool_helpers.alive(parent_pids) == set(parent_pids)


@pytest.mark.timeout(60)
def test_shutdown_in_a_forked_child_does_not_touch_the_parents_workers():
    manager = PoolManager(enable_auto_cleanup=False)
    try:
        pool = manager.get_pool(1, "process")
        pids = set(pool.worker_pids())
        pid = os.fork()
        if pid == 0:
            try:
                manager.shutdown(force=True)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        assert pool_helpers.alive(pids) == pids
        assert manager.get_pool(1, "process") is pool
        assert pool.map(pool_helpers.square, [6]) == [36]
    finally:
        manager.shutdown(force=True)


EXIT_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[2])
    import amorsize
    import pool_helpers

    if __name__ == "__main__":
        manager = amorsize.PoolManager(start_method=sys.argv[1])
        pools = [manager.get_pool(2, "process"),
                 amorsize.get_global_pool_manager().get_pool(1, "process", start_method=sys.argv[1])]
        assert pools[0].map(pool_helpers.square, [3]) == [9]
        print(json.dumps([pid for p in pools for pid in p.worker_pids()]), flush=True)
""")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_pools_left_open_are_shut_down_at_interpreter_exit(tmp_path, start_method):
    script = tmp_path / "leave_pools_open.py"
    script.write_text(EXIT_SCRIPT)
    done = subprocess.run([sys.executable, str(script), start_method, str(TESTS_DIR)],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert "error" not in done.stderr.lower(), done.stderr
    pids = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(pids) == 3
    assert pool_helpers.wait_until_gone(pids, timeout=10) == set()
