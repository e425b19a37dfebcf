"""The scale-out path: amorsize sizes the batches, dask.distributed runs them."""

from __future__ import annotations

from functools import partial

import dask
import dask.bag as db
import pytest
from dask.base import get_scheduler
from dask_helpers import CustomError, raise_custom, spin, square
from distributed import Client, LocalCluster

import amorsize_dask
from amorsize_dask import ClientBypassedWarning, batch_size

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                      dashboard_address=":0") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(cluster):
    with Client(cluster, set_as_default=False) as client:
        yield client


def test_batch_of_tiny_items_amortises_the_task_overhead():
    assert batch_size(1e-6, 100_000, n_workers=4, task_overhead=1e-3) == 20_000


def test_batch_of_slow_items_leaves_several_tasks_per_worker():
    assert batch_size(0.1, 1_000, n_workers=4, task_overhead=1e-3) == 63


def test_batch_is_never_larger_than_the_data():
    assert batch_size(1e-9, 10, n_workers=2, task_overhead=1.0) == 10
    assert batch_size(1.0, 0, n_workers=2, task_overhead=1.0) == 1


def test_map_on_a_cluster_returns_results_in_order(client):
    assert amorsize_dask.map(square, range(500), client=client) == [x * x for x in range(500)]


def test_map_ships_lambdas_and_closures(client):
    offset = 5
    assert amorsize_dask.map(lambda x: x + offset, range(50), client=client) == [
        x + 5 for x in range(50)]


def test_map_sends_few_large_batches_of_tiny_items(client, monkeypatch):
    sent = []
    original = client.map

    def counting_map(func, batches, **kwargs):
        sent.extend(batches)
        return original(func, batches, **kwargs)

    monkeypatch.setattr(client, "map", counting_map)
    assert amorsize_dask.map(square, range(20_000), client=client)[-1] == 19_999**2
    assert 1 <= len(sent) <= 4 * amorsize_dask.distributed.n_workers(client)


def test_map_errors_reach_the_caller_with_their_type(client):
    with pytest.raises(CustomError):
        amorsize_dask.map(raise_custom, range(10), client=client)


def test_map_forced_batch_is_respected(client):
    assert amorsize_dask.map(square, range(10), client=client, batch=3) == [
        x * x for x in range(10)]


def test_map_without_client_uses_the_default_client(cluster):
    with Client(cluster) as default:
        assert amorsize_dask.distributed.default_client() is default
        assert amorsize_dask.map(square, range(20)) == [x * x for x in range(20)]


def test_bag_partitions_are_sized_for_the_client(client, monkeypatch):
    # The round trip fixed at a quiet machine's: measured beside busy neighbours it was once long
    # enough (over 19 ms) that all 20 items made one partition, which is then the right answer.
    monkeypatch.setattr(amorsize_dask.distributed, "task_overhead", lambda client: 1e-3)
    b = amorsize_dask.bag(partial(spin, seconds=0.02), range(20), client=client)
    assert isinstance(b, db.Bag)
    assert 1 < b.npartitions <= 20
    assert b.compute(scheduler=client) == list(range(20))


def test_a_client_created_after_a_global_amorsize_setting_wins(cluster):
    with dask.config.set(scheduler="amorsize"):
        assert get_scheduler() is amorsize_dask.get
        with Client(cluster) as c:
            assert get_scheduler() == c.get
        assert get_scheduler() is amorsize_dask.get


def test_amorsize_chosen_while_a_client_is_default_runs_locally_and_warns_once(cluster):
    with Client(cluster):
        with dask.config.set(scheduler="amorsize"):
            with pytest.warns(ClientBypassedWarning, match="scheduler=client"):
                assert dask.delayed(square)(3).compute() == 9
            assert dask.delayed(square)(4).compute() == 16


def test_map_without_any_client_starts_a_local_cluster_once():
    try:
        first = amorsize_dask.map(square, range(10))
        client = amorsize_dask.distributed.default_client()
        assert amorsize_dask.map(square, range(10)) == first == [x * x for x in range(10)]
        assert amorsize_dask.distributed.default_client() is client
    finally:
        amorsize_dask.close_local_cluster()


def test_map_on_a_cluster_starts_no_local_pool(client):
    import amorsize

    manager = amorsize.get_global_pool_manager()
    before = manager.get_stats()["creations"]
    assert amorsize_dask.map(partial(spin, seconds=0.002), range(200), client=client)[:2] == [0, 1]
    assert manager.get_stats()["creations"] == before
