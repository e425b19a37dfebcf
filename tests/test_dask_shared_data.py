"""A large array the tasks of a Dask graph carry crosses to the ``"amorsize"`` scheduler's
process workers once per compute, through shared memory, not with every batch
(``amorsize_dask/scheduler.py``)."""

from __future__ import annotations

import dask
import numpy as np
import pytest
from shm_helpers import big_array, count_sent, held

import amorsize_dask  # noqa: F401 - registers the scheduler "amorsize"
from amorsize.optimizer import probe
from amorsize.pools import shared
from amorsize_dask.graph import as_graph, needed_work
from amorsize_dask.measure import measure

pytestmark = [pytest.mark.skipif(not shared.available(), reason="shared memory needs Linux"),
              pytest.mark.timeout(120)]

N_TASKS = 16


@pytest.fixture
def sent(monkeypatch) -> list[int]:
    """The pickled size of what each chunk sent to a worker carries (but the function)."""
    return count_sent(monkeypatch)


def slice_sum(array: np.ndarray, i: int) -> float:
    return float(array[i * 1000:(i + 1) * 1000].sum())


def read_only(array: np.ndarray, i: int) -> bool:
    return not array.flags.writeable


def tasks_over(func, array: np.ndarray, dependency: bool = False) -> list:
    """``func(array, i)`` for each task: the array a literal of every task, or the value of a
    task they all depend on."""
    source = dask.delayed(lambda a: a)(array) if dependency else array
    return [dask.delayed(func)(source, i) for i in range(N_TASKS)]


@pytest.mark.parametrize("dependency", [False, True], ids=["literal", "dependency"])
def test_the_array_does_not_travel_with_each_batch(sent, dependency):
    x = big_array(4, seed=1)
    before = held()
    out = dask.compute(*tasks_over(slice_sum, x, dependency), scheduler="amorsize",
                       executor="process", chunksize=1)
    assert list(out) == [slice_sum(x, i) for i in range(N_TASKS)]
    assert len(sent) >= N_TASKS // 2 and max(sent) < 20_000
    if not dependency:  # else the value comes back from a worker as a new array, placed anew
        assert len(held() - before) == 1


def test_workers_read_the_array_read_only():
    out = dask.compute(*tasks_over(read_only, big_array(2, seed=2)), scheduler="amorsize",
                       executor="process", chunksize=1)
    assert all(out)


def test_a_second_compute_over_the_same_array_places_nothing_new():
    x = big_array(4, seed=3)
    dask.compute(*tasks_over(slice_sum, x), scheduler="amorsize", executor="process")
    after_first = held()
    again = dask.compute(*tasks_over(slice_sum, x), scheduler="amorsize", executor="process")
    assert held() - after_first == set()
    assert list(again) == [slice_sum(x, i) for i in range(N_TASKS)]


def test_measuring_counts_an_array_both_tasks_carry_once(monkeypatch):
    seen: list[bool] = []
    shipping = probe.shipping

    def spying(func, pairs, shared_arguments=False):
        seen.append(shared_arguments)
        return shipping(func, pairs, shared_arguments)

    monkeypatch.setattr(probe, "shipping", spying)
    x = big_array(2, seed=4)
    graph = as_graph(dask.delayed(sum)(tasks_over(slice_sum, x)).__dask_graph__())
    sample = measure(needed_work(graph, list(graph.keys()), None), None)
    assert seen == [True]
    assert sample is not None and sample.profile.shared_bytes == x.nbytes
    assert sample.profile.arg_bytes < 10_000
