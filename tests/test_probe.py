"""The one probe: observations of real calls in, a profile out, the same for every front end."""

from __future__ import annotations

import threading
import time

import pytest
from core_helpers import FakeClock, burn

from amorsize.optimizer import probe
from amorsize.pools import worker
from amorsize.pools.threads import ThreadPool


def test_a_call_off_the_cpu_that_never_blocked_was_preempted_not_waiting():
    busy = probe.Probe("test")
    for _ in range(3):
        busy.observe(0.010, 0.004, blocked=0)
    assert busy.profile().cpu_ratio == 1.0
    waiting = probe.Probe("test")
    for _ in range(3):
        waiting.observe(0.010, 0.004, blocked=2)
    assert waiting.profile().cpu_ratio == pytest.approx(0.4)


def test_the_cpu_ratio_is_not_capped_for_calls_that_use_several_cores():
    p = probe.Probe("test")
    p.observe(0.010, 0.030)
    assert p.profile().cpu_ratio == pytest.approx(3.0)


def test_the_profile_tells_whether_costs_follow_the_input_order():
    """Rank correlation with the order of the calls after the first (which pays for warm-up);
    fewer than 7 of them say nothing, ties share their rank."""
    assert probe.rank_correlation([9.0, 1, 2, 3, 5, 8, 13, 21]) == pytest.approx(1.0)
    assert probe.rank_correlation([0.0, 7, 6, 5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    assert probe.rank_correlation([0.0, 1, 2, 3, 4, 5]) == 0.0   # too few to tell
    assert probe.rank_correlation([0.0, 1, 1, 1, 1, 1, 1, 1]) == 0.0  # all tied
    rising, shuffled = probe.Probe("test"), probe.Probe("test")
    for ms in (9, 1, 2, 3, 4, 5, 6, 7):
        rising.observe(ms * 1e-3, ms * 1e-3)
    for ms in (5, 1, 8, 3, 6, 2, 7, 4):
        shuffled.observe(ms * 1e-3, ms * 1e-3)
    assert rising.profile().cost_trend == pytest.approx(1.0)
    assert abs(shuffled.profile().cost_trend) < 0.5
    # observed out of input order: what counts is each call's position in the input
    out_of_order = probe.Probe("test")
    for position, ms in zip((3, 0, 7, 1, 6, 2, 5, 4), (9, 1, 8, 2, 7, 3, 6, 5)):
        out_of_order.observe(ms * 1e-3, ms * 1e-3, position=position)
    assert out_of_order.profile().cost_trend == pytest.approx(1.0)
    assert probe.rank_correlation([9.0, 1, 2, 3, 4, 5, 6, 7], [0, 7, 6, 5, 4, 3, 2, 1]) == \
        pytest.approx(-1.0)


def test_sizes_are_measured_with_the_serializer_the_pools_use():
    shipped = probe.shipping(len, [(lambda: 1, 1)])   # plain pickle cannot send a lambda
    assert shipped["arg_bytes"] > 0 and "picklable" not in shipped
    lock = threading.Lock()
    assert probe.shipping(len, [(lock, 1)])["picklable"] is False


def test_waits_counts_the_times_a_thread_blocked():
    before = worker.waits()
    if before < 0:
        pytest.skip("this system does not count context switches per thread")
    time.sleep(0.01)
    assert worker.waits() > before


@pytest.fixture(scope="module")
def pair_pool():
    pool = ThreadPool(2)
    yield pool
    pool.shutdown()


def test_overlap_tells_waiting_and_gil_work_apart(pair_pool, monkeypatch):
    waiting = FakeClock().install(monkeypatch)
    waits = probe.Probe("test")
    waits.overlap(pair_pool, [lambda: waiting.wait(0, 0.02), lambda: waiting.wait(1, 0.02)], 0.04)
    computing = FakeClock().install(monkeypatch)
    gil = probe.Probe("test")
    gil.overlap(pair_pool, [lambda: computing.compute(0, 0.02),
                            lambda: computing.compute(1, 0.02)], 0.04)
    assert waits.thread_scaling == 2.0
    assert gil.thread_scaling == 1.0


def test_only_calls_that_compute_are_pinned_to_a_core_each_for_the_overlap_test(
        pair_pool, monkeypatch):
    """Calls that mostly wait are woken wherever a core is free first, in a run and when timed
    one at a time: pinned to cores busy with other work, their overlap read as none."""
    import contextlib

    pinned: list[int] = []
    monkeypatch.setattr(probe, "_pinned",
                        lambda core: pinned.append(core) or contextlib.nullcontext())
    waits, computes = probe.Probe("test"), probe.Probe("test")
    for _ in range(4):
        waits.observe(0.003, 0.0, blocked=1)
        computes.observe(0.003, 0.003, blocked=0)
    waits.overlap(pair_pool, [lambda: 1, lambda: 2], 0.006)
    assert pinned == []
    computes.overlap(pair_pool, [lambda: 1, lambda: 2], 0.006)
    assert len(pinned) == 2 or probe._two_cores() == [None, None]


def test_overlap_of_computing_work_needs_no_serial_baseline(pair_pool, monkeypatch):
    """A baseline measured under other load is wrong; the threads' CPU time is what counts."""
    computing = FakeClock().install(monkeypatch)
    gil = probe.Probe("test")
    gil.overlap(pair_pool, [lambda: computing.compute(0, 0.02),
                            lambda: computing.compute(1, 0.02)], 10.0)
    assert gil.thread_scaling == 1.0


def test_on_real_threads_calls_that_hold_the_gil_never_look_overlapped(pair_pool):
    """On the real clocks, only what load cannot change: the threads' CPU time, summed, never
    exceeds their wall time by much while the GIL lets one run at a time (load can only hide
    the overlap of waiting calls, so theirs is not judged here)."""
    gil = probe.Probe("test")
    gil.overlap(pair_pool, [lambda: burn(0, 200_000), lambda: burn(1, 200_000)], 0.04)
    assert gil.thread_scaling < 1.3


def test_an_overlap_short_of_clear_is_measured_again_on_other_calls(pair_pool, monkeypatch):
    """The machine can only hide overlap (a busy core, a thread woken onto the wrong core):
    the test is made again on other calls until one overlaps clearly, and the best is kept."""
    figures = iter([0.98, 1.3, 1.9, 1.0])
    monkeypatch.setattr(probe, "_two_at_once", lambda pool, runs, s, pin=True: (
        [r() for r in runs],
                                                                    next(figures)))
    p = probe.Probe("test")
    more = [[lambda: 3, lambda: 4], [lambda: 5, lambda: 6], [lambda: 7, lambda: 8]]
    made = p.overlap(pair_pool, [lambda: 1, lambda: 2], 1.0, more)
    assert made == [[1, 2], [3, 4], [5, 6]] and p.thread_scaling == 1.9


def test_a_broken_start_claims_no_overlap(pair_pool):
    """Both runs of the test must start together; when the pool's other thread is busy they
    cannot, and one after the other is not evidence of overlap."""
    import threading

    blocker = threading.Event()
    busy = pair_pool.submit(blocker.wait, 5)
    try:
        outcomes, scaling = probe._two_at_once(pair_pool, [lambda: 1, lambda: 2], 1.0)
    finally:
        blocker.set()
        busy.result()
    assert outcomes == [1, 2] and scaling == 1.0


def test_the_overlap_test_runs_here_when_the_pools_threads_are_all_busy():
    """A caller that is itself one of the pool's threads (a nested call) must not wait for a
    thread that never comes: the runs the pool did not start run in the caller, and no
    overlap is claimed."""
    import threading

    pool = ThreadPool(2)
    release = threading.Event()
    busy = [pool.submit(release.wait, 10) for _ in range(2)]
    try:
        outcomes, scaling = probe._two_at_once(pool, [lambda: 1, lambda: 2], 1.0)
    finally:
        release.set()
        for f in busy:
            f.result()
        pool.shutdown()
    assert outcomes == [1, 2] and scaling == 1.0


def test_overlap_tests_group_two_threads_worth_of_calls_at_most_three_times():
    assert probe.overlap_tests(list(range(100)), 1e-3) == [[0, 1], [2, 3], [4, 5]]
    assert probe.overlap_tests(list(range(20)), 0.25e-3) == [list(range(8)), list(range(8, 16))]
    assert probe.overlap_tests(list(range(7)), 0.25e-3) == []      # not one group's worth
    assert probe.overlap_tests(list(range(100)), 1e-6) == []       # too short to test
    assert probe.overlap_tests(list(range(100)), 1.0) == []        # too long to test


def test_overlap_on_runs_half_of_each_group_per_thread_and_keeps_results_in_order(
        pair_pool, monkeypatch):
    figures = iter([1.0, 1.9])
    monkeypatch.setattr(probe, "_two_at_once", lambda pool, runs, s, pin=True: (
        [r() for r in runs],
                                                                    next(figures)))
    p = probe.Probe("test")
    p.observe(1e-3, 1e-3)
    made = p.overlap_on(pair_pool, [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]],
                        lambda keys: [10 * k for k in keys])
    assert made == [[10, 20, 30, 40], [50, 60, 70, 80]]   # the third group: overlap was clear
    assert p.thread_scaling == 1.9 and p.n_overlap == 8
