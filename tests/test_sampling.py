"""Measuring a function on a few items: where, what, and that nothing is computed twice."""

from __future__ import annotations

import contextlib
import functools
import itertools
import threading

import pytest
from core_helpers import FakeClock, nap, square

from amorsize.optimizer import sampling
from amorsize.pools.threads import ThreadPool


def test_spread_indices_take_one_item_from_each_stratum():
    assert sampling.spread_indices(100, 4) == [12, 37, 62, 87]
    assert sampling.spread_indices(3, 8) == [0, 1, 2]


def test_measured_items_keep_their_results():
    data = list(range(50))
    sample = sampling.measure(square, data, [5, 25, 45])
    assert sample.results == {5: 25, 25: 625, 45: 2025}
    assert sample.profile.n_measured == 3


def test_waiting_is_told_from_computing(monkeypatch):
    waiting = FakeClock().install(monkeypatch)
    waits = sampling.measure(waiting.wait, list(range(10)), [1, 5, 9]).profile
    computing = FakeClock().install(monkeypatch)
    computes = sampling.measure(computing.compute, list(range(10)), [1, 5, 9]).profile
    assert waits.io_bound and waits.cpu_ratio == 0.0
    assert not computes.io_bound and computes.cpu_ratio == 1.0


def test_two_thread_test_sees_waits_overlap_and_gil_work_not(monkeypatch):
    pool = ThreadPool(2)
    try:
        data = list(range(40))
        lease = lambda: contextlib.nullcontext(pool)  # noqa: E731
        waiting = FakeClock().install(monkeypatch)
        waits = sampling.measure(waiting.wait, data, [0, 10, 20], lease, list(range(21, 40)))
        computing = FakeClock().install(monkeypatch)
        gil = sampling.measure(computing.compute, data, [0, 10, 20], lease, list(range(21, 40)))
    finally:
        pool.shutdown()
    assert waits.profile.thread_scaling == pytest.approx(2.0, rel=0.01)  # less timing overhead
    assert gil.profile.thread_scaling == 1.0
    assert set(waits.results) >= {0, 10, 20} and len(waits.results) > 3


def test_pickled_sizes_are_measured():
    profile = sampling.measure(len, [bytes(10_000)] * 4, [0, 2]).profile
    assert 10_000 <= profile.arg_bytes < 11_000
    assert profile.picklable


def test_unpicklable_function_is_flagged_with_the_reason():
    lock = threading.Lock()
    profile = sampling.measure(lambda x: (lock, x)[1], [1, 2, 3], [0, 1]).profile
    assert not profile.picklable
    assert "function" in profile.unpicklable_reason


def test_sampling_stops_early_on_expensive_items():
    slow = functools.partial(nap, seconds=0.03)
    sample = sampling.measure(slow, list(range(100)), list(range(0, 100, 10)))
    assert sample.profile.n_measured == 2
    assert list(sample.results) == sampling.shuffled(list(range(0, 100, 10)))[:2]
    assert all(sample.results[i] == i for i in sample.results)


def test_items_are_timed_out_of_input_order_so_drift_in_time_is_no_cost_trend(monkeypatch):
    """Calls that get slower with time (a warming cache, a CPU's clock) on items that cost the
    same looked like costs rising along the input when items were timed in input order."""
    indices = sampling.spread_indices(100, 8)
    order = sampling.shuffled(indices)
    assert sorted(order) == indices and order != indices
    assert order == sampling.shuffled(indices)  # the same every call
    calls = itertools.count()
    clock = FakeClock().install(monkeypatch)
    drifting = sampling.measure(lambda x: clock.wait(x, next(calls) * 1e-3),
                                list(range(100)), indices)
    assert abs(drifting.profile.cost_trend) < 0.5
    rising = sampling.measure(lambda x: clock.wait(x, x * 8e-5), list(range(100)), indices)
    assert rising.profile.cost_trend > 0.7
    assert rising.results == {i: i for i in indices}
