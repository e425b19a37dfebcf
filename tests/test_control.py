"""A running call can be stopped, time-limited, watched and shared safely.

Signals and faults run in a subprocess with a hard timeout, so a regression fails instead of
hanging the suite or killing it.
"""

from __future__ import annotations

import functools
import itertools
import signal
import threading
import time

import psutil
import pytest
from control_helpers import (
    Counter,
    ProgressRecorder,
    block_on,
    fail_fast_then_sleep,
    run_script,
    sleep_on,
    spin_on,
)
from plugin_helpers import registered

import amorsize
from amorsize.run.control import Run


@pytest.fixture
def progress():
    with registered(ProgressRecorder(), name="test-progress") as recorder:
        yield recorder


# --- Ctrl-C -------------------------------------------------------------------------------

CTRL_C = """
import sys, time, amorsize
from control_helpers import spin_on
kind = sys.argv[1]
amorsize.map(spin_on, range(2), executor=kind, n_jobs=2)          # warm the pool
print("ready", flush=True)
try:
    # every item but the first (measured) computes for an hour on the pool
    amorsize.map(lambda x: spin_on(x, slow=-1, others=3600.0), range(8), executor=kind,
                 n_jobs=2, chunksize=1, sample_size=1)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    out = amorsize.map(spin_on, [0, 1, 2, 3], executor=kind, n_jobs=2)
    print("next", out == [0, 1, 2, 3], flush=True)
    raise
"""


@pytest.mark.parametrize("kind", ["process", "thread"])
@pytest.mark.timeout(60)
def test_ctrl_c_stops_the_call_and_the_process_exits_promptly_leaving_no_worker(kind):
    proc = run_script(CTRL_C, args=[kind])
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    time.sleep(1.0)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGINT)
    # the items run for an hour: waiting for any of them would outlast the test's timeout
    assert proc.stdout.readline().strip() == "interrupted"
    out = proc.stdout.readline().split()
    proc.wait(30)
    assert out == ["next", "True"], out + [proc.stderr.read()]   # the next call works
    deadline = time.monotonic() + 20
    while True:
        alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert alive == []


# --- cancellation -------------------------------------------------------------------------

def test_an_error_cancels_the_rest_of_a_thread_run():
    counter = Counter(0.05)

    def fail_on_three(x):
        if x == 3:
            raise KeyError(x)
        return counter(x)

    with pytest.raises(KeyError):
        amorsize.map(fail_on_three, range(200), executor="thread", n_jobs=2, chunksize=1)
    settled = counter.calls
    time.sleep(0.3)
    # nothing more is dispatched or run (a thread past its stop check may make one call)
    assert counter.calls <= settled + 2 and settled < 40


def test_an_error_stops_this_runs_busy_process_workers_and_the_pool_is_replaced():
    manager = amorsize.get_global_pool_manager()
    manager.clear()  # pools other tests left behind are not this test's to count
    amorsize.map(sleep_on, range(2), executor="process", n_jobs=2)
    pool = manager.get_pool(2, "process")
    pids = pool.worker_pids()
    before = manager.get_stats()["evictions_by_reason"]["cancelled"]
    with pytest.raises(ValueError, match="item 0 fails"):
        amorsize.map(fail_fast_then_sleep, [1, 2, 3, 0, 4, 5, 6, 7] * 4, executor="process",
                     n_jobs=2, chunksize=1, sample_size=1)
    assert pool.broken and all(not psutil.pid_exists(p) or
                               psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids)
    assert manager.get_pool(2, "process") is not pool
    assert manager.get_stats()["evictions_by_reason"]["cancelled"] == before + 1


def test_a_run_that_finished_its_work_leaves_the_shared_pool_alone():
    with Run(amorsize.optimize(sleep_on, range(5), executor="thread", n_jobs=2)) as run:
        pool = run.pool
        assert run.result(run.submit(sleep_on, 1)) == 1
        run.cancel()
    assert not pool.broken and not pool.closed


def test_a_cancelled_run_refuses_more_work():
    with Run(amorsize.optimize(sleep_on, range(5), executor="thread", n_jobs=2)) as run:
        run.cancel()
        with pytest.raises(amorsize.RunCancelledError):
            run.submit(sleep_on, 1)


def test_breaking_out_of_imap_stops_the_run():
    counter = Counter(0.01)
    for i, _ in enumerate(amorsize.imap(counter, iter(range(4000)), executor="thread",
                                        n_jobs=2)):
        if i == 50:
            break
    settled = counter.calls
    time.sleep(0.3)
    assert counter.calls <= settled + 2   # a thread past its stop check may start one more call
    assert settled < 400


def test_closing_an_imap_iterator_stops_the_run():
    counter = Counter(0.01)
    results = amorsize.imap(counter, iter(range(4000)), executor="thread", n_jobs=2)
    next(results)
    results.close()
    settled = counter.calls
    time.sleep(0.3)
    # a thread past its stop check may start one more call
    assert counter.calls <= settled + 2 and settled < 400


def test_dropping_an_imap_iterator_stops_the_run():
    counter = Counter(0.01)
    results = amorsize.imap(counter, iter(range(4000)), executor="thread", n_jobs=2)
    next(results)
    del results
    settled = counter.calls
    time.sleep(0.3)
    # a thread past its stop check may start one more call
    assert counter.calls <= settled + 2 and settled < 400


def test_imap_over_a_generator_streams_its_first_results_after_about_one_item():
    given_first_result = threading.Event()

    def items():
        # sampling runs a few items one by one, then chunks that start at one item and grow
        # (at most eight in flight): not chunks sized for 10,000 assumed items
        yield from range(100)
        if not given_first_result.wait(60):
            raise AssertionError("imap read 100 items before giving its first result")
        yield from range(100, 140)

    results = amorsize.imap(lambda x: sleep_on(x, slow=-1, others=0.02), items(), n_jobs=2)
    first = next(results)
    given_first_result.set()
    assert first == 0
    results.close()


def test_imap_chunks_start_small_and_grow_for_an_iterator_of_unknown_length():
    plan = amorsize.optimize(sleep_on, iter(range(6, 10_006)), executor="thread", n_jobs=2,
                             chunksize=64)
    from amorsize.run.mapping import _chunk_sizes

    with Run(plan) as run:
        sizes = list(itertools.islice(_chunk_sizes(plan, run, lazy=True, progress=False), 16))
    assert sizes[0] == 1 and sizes == sorted(sizes) and sizes[-1] == 64


# --- time limits --------------------------------------------------------------------------

@pytest.mark.parametrize("executor", ["thread", "process", None])
@pytest.mark.timeout(60)
def test_timeout_raises_naming_the_item_that_would_never_finish(executor):
    release = threading.Event()
    # item 5 computes for an hour in a process, or waits in a thread until the test ends (a
    # function holding an Event cannot be pickled, so executor=None cannot choose processes)
    func = (functools.partial(spin_on, seconds=3600.0) if executor == "process"
            else functools.partial(block_on, release=release))
    try:
        with pytest.raises(TimeoutError, match="item 5 ran longer than timeout=1 s") as caught:
            amorsize.map(func, range(12), executor=executor, n_jobs=2, timeout=1)
    finally:
        release.set()
    assert isinstance(caught.value, amorsize.TimeoutError) and caught.value.index == 5


@pytest.mark.timeout(30)
def test_timeout_covers_the_items_measured_before_the_plan():
    with pytest.raises(amorsize.TimeoutError) as caught:
        amorsize.map(sleep_on, [5, 1, 2], timeout=0.5)
    assert caught.value.index == 0


def test_a_generous_timeout_changes_no_result():
    def quick(x):
        return sleep_on(x, slow=-1)

    assert amorsize.map(quick, range(20), n_jobs=2, timeout=5) == list(range(20))
    assert list(amorsize.imap(quick, iter(range(20)), timeout=5)) == list(range(20))


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf")])
def test_timeout_must_be_positive_seconds(bad):
    with pytest.raises(amorsize.InvalidArgumentError, match="timeout must be a number"):
        amorsize.map(sleep_on, range(3), timeout=bad)


def test_timeout_of_the_wrong_type_names_the_argument():
    with pytest.raises(amorsize.InvalidArgumentTypeError, match="timeout"):
        amorsize.imap(sleep_on, range(3), timeout="1")


# --- progress -----------------------------------------------------------------------------

def test_progress_counts_items_to_n_of_n_for_a_list(progress):
    amorsize.map(Counter(0.001), list(range(300)), n_jobs=2, progress=True)
    assert progress.states()[0] == "started" and progress.states()[-1] == "finished"
    assert progress.seen[0].n_total == 300
    assert (progress.last().n_done, progress.last().n_total) == (300, 300)
    done = [p.n_done for p in progress.seen]
    assert done == sorted(done)


def test_progress_of_an_iterator_counts_to_the_last_size_of_a_known_function(progress):
    counter = Counter()
    amorsize.map(counter, list(range(120)))
    list(amorsize.imap(counter, iter(range(120)), progress=True))
    assert progress.seen[0].n_total == 120
    assert (progress.last().n_done, progress.last().n_total) == (120, 120)


def test_progress_of_an_unknown_iterator_is_an_open_count_that_closes_at_the_end(progress):
    list(amorsize.imap(Counter(), iter(range(50)), progress=True))
    assert progress.seen[0].n_total is None
    assert (progress.last().n_done, progress.last().n_total) == (50, 50)


def test_progress_moves_during_a_long_run(progress):
    amorsize.map(lambda x: sleep_on(x, slow=-1, others=0.05), list(range(60)), n_jobs=2,
                 executor="thread", progress=True)
    advanced = [p for p in progress.seen if p.state == "advanced"]
    assert len(advanced) >= 5


def test_no_progress_is_reported_unless_asked(progress):
    amorsize.map(Counter(), list(range(100)))
    assert progress.seen == []


def test_a_cancelled_run_reports_cancelled(progress):
    with pytest.raises(KeyError):
        amorsize.map(lambda x: {}[x] if x == 30 else x, list(range(100)), progress=True)
    assert progress.states()[-1] == "cancelled"


def test_the_built_in_bar_shows_n_of_n(capsys):
    amorsize.map(Counter(), list(range(75)), progress=True)
    assert "75/75" in capsys.readouterr().err


# --- sharing pools ------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_concurrent_calls_never_fail_while_another_thread_clears_the_pools():
    manager = amorsize.get_global_pool_manager()
    failures: list[BaseException] = []
    stop = threading.Event()

    def clear_in_a_loop():
        while not stop.is_set():
            manager.clear()
            time.sleep(0.002)

    def call(i):
        try:
            for _ in range(5):
                executor = ("thread", "process", None)[i % 3]
                out = amorsize.map(lambda x: sleep_on(x, slow=-1, others=0.001), range(40),
                                   executor=executor, n_jobs=2)
                assert out == list(range(40))
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            failures.append(exc)

    clearer = threading.Thread(target=clear_in_a_loop)
    clearer.start()
    callers = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(50)
    stop.set()
    clearer.join(10)
    assert failures == []


def test_a_pool_shut_down_by_its_user_is_replaced_not_handed_out_again():
    with amorsize.PoolManager() as manager:
        pool = manager.get_pool(2, "thread")
        pool.shutdown()
        fresh = manager.get_pool(2, "thread")
        assert fresh is not pool and fresh.map(abs, [-1]) == [1]
        assert manager.get_stats()["evictions_by_reason"]["closed"] == 1


def test_release_pool_waits_for_the_run_that_holds_the_pool():
    with amorsize.PoolManager() as manager:
        pool = manager.get_pool(2, "thread")
        with pool.lease():
            assert manager.release_pool(2, "thread")
            assert not pool.closed
            assert pool.submit(abs, -2).result() == 2
            assert manager.get_pool(2, "thread") is not pool
        assert pool.closed


def test_a_retired_pool_refuses_a_new_lease():
    with amorsize.PoolManager() as manager:
        pool = manager.get_pool(1, "thread")
        manager.clear()
        with pytest.raises(amorsize.PoolClosedError), pool.lease():
            pass


def _beside_a_failing_run(steady) -> list:
    """``steady()``'s results, run on a thread while another run on the same warm 2-process
    pool fails and kills that pool's workers."""
    amorsize.map(sleep_on, range(2), executor="process", n_jobs=2)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(out=steady()))
    thread.start()
    time.sleep(0.3)
    with pytest.raises(ValueError):
        amorsize.map(fail_fast_then_sleep, [1, 2, 3, 0, 4, 5] * 4, executor="process", n_jobs=2,
                     chunksize=1, sample_size=1)
    thread.join(30)
    return outcome["out"]


def test_another_runs_cancel_does_not_fail_a_run_on_the_same_pool():
    assert _beside_a_failing_run(lambda: amorsize.map(
        lambda x: sleep_on(x, slow=-1, others=0.05), range(40), executor="process", n_jobs=2,
        chunksize=1)) == list(range(40))


def test_another_runs_cancel_does_not_fail_an_adapters_batches_on_the_same_pool():
    """The joblib backend's batches are futures that send themselves again (``_RunFuture``),
    where ``map`` collects its chunks and sends them again itself: both take one way."""
    joblib = pytest.importorskip("joblib")
    import amorsize_joblib  # noqa: F401

    def steady() -> list:
        with joblib.parallel_config(backend="amorsize", executor="process"):
            return joblib.Parallel(n_jobs=2, batch_size=1)(
                joblib.delayed(sleep_on)(x, slow=-1, others=0.05) for x in range(40))

    assert _beside_a_failing_run(steady) == list(range(40))


# --- forced executors while measuring -----------------------------------------------------

@pytest.mark.timeout(60)
def test_forced_processes_measure_in_a_worker_so_a_crash_never_kills_the_caller():
    proc = run_script("""
        import amorsize
        from control_helpers import exit_in_worker
        try:
            amorsize.map(exit_in_worker, range(8), executor="process", n_jobs=2)
        except amorsize.WorkerCrashedError:
            print("crashed in a worker")
        print(amorsize.map(abs, [-1, -2], executor="process", n_jobs=2))
    """)
    out, err = proc.communicate(timeout=50)
    assert proc.returncode == 0, err
    assert out.split("\n")[:2] == ["crashed in a worker", "[1, 2]"]


# --- adapters -----------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_after_a_joblib_timeout_the_next_call_runs_at_normal_speed():
    joblib = pytest.importorskip("joblib")
    from multiprocessing import TimeoutError as JoblibTimeout  # what joblib raises

    import amorsize_joblib  # noqa: F401

    release = threading.Event()
    try:
        # the tasks wait until the test ends: the next call must not wait for the ones left over
        with pytest.raises(JoblibTimeout):
            joblib.Parallel(n_jobs=2, backend="amorsize", timeout=0.5)(
                joblib.delayed(block_on)(i, release, slow=i, others=0) for i in range(6))
        assert joblib.Parallel(n_jobs=2, backend="amorsize")(
            joblib.delayed(spin_on)(i, slow=-1, others=0.01) for i in range(6)) == list(range(6))
    finally:
        release.set()


def test_joblib_reports_progress_to_the_same_hook(progress):
    joblib = pytest.importorskip("joblib")
    import amorsize_joblib  # noqa: F401

    with joblib.parallel_config(backend="amorsize", progress=True):
        joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-i) for i in range(200))
    assert progress.seen[-1].state == "finished" and progress.seen[-1].n_done == 200


def test_a_failed_dask_compute_cancels_its_run_and_reports_progress(progress):
    dask = pytest.importorskip("dask")
    import amorsize_dask  # noqa: F401

    counter = Counter(0.05)
    numbers = itertools.count(1)  # next() is atomic: each call gets its own number

    def fail_on_the_tenth_call(x):
        # numbered before the call: reading counter.calls after it raced with the other
        # thread's call, and neither saw 10 (the compute then did not fail)
        tenth = next(numbers) == 10
        counter(x)
        if tenth:
            raise KeyError(x)
        return x

    values = [dask.delayed(fail_on_the_tenth_call)(i) for i in range(100)]
    with pytest.raises(KeyError):
        dask.compute(*values, scheduler="amorsize", executor="thread", num_workers=2,
                     chunksize=1, progress=True)
    settled = counter.calls
    time.sleep(0.3)
    assert counter.calls <= settled + 2 and settled < 20   # the two running tasks may end
    assert progress.states()[-1] == "cancelled"
    ok = [dask.delayed(abs)(-i) for i in range(10)]
    assert dask.compute(*ok, scheduler="amorsize", progress=True) == tuple(range(10))
    assert progress.last().n_done == 10



def test_an_empty_input_with_a_timeout_starts_no_pool():
    manager = amorsize.get_global_pool_manager()
    before = manager.get_stats()["creations"]
    assert amorsize.map(sleep_on, [], timeout=1) == []
    assert manager.get_stats()["creations"] == before


@pytest.mark.timeout(30)
def test_imap_unordered_times_out_while_other_chunks_keep_completing():
    release = threading.Event()
    # endless items, one of which never finishes: only the time limit can end this call
    try:
        with pytest.raises(amorsize.TimeoutError) as caught:
            list(amorsize.imap_unordered(lambda x: block_on(x, release, slow=3, others=0.01),
                                         itertools.count(), executor="thread", n_jobs=2,
                                         chunksize=1, timeout=0.5))
    finally:
        release.set()
    assert caught.value.index == 3


def test_a_cancelled_process_run_leaves_no_stop_tokens_behind():
    from amorsize.pools import worker

    before = set(worker._STOPPED)
    with pytest.raises(ValueError):
        amorsize.map(fail_fast_then_sleep, [1, 2, 0, 3, 4, 5] * 3, executor="process", n_jobs=2,
                     chunksize=1, sample_size=1)
    assert worker._STOPPED <= before
