"""The scale-out path: amorsize sizes the batches for the cluster, dask.distributed runs them.

One in-process cluster of two single-thread workers serves every test here; decisions are
checked from injected figures (``injected_cluster``, ``Measured``), never from timings.
"""

from __future__ import annotations

import gc
import itertools
import threading
import time
import warnings
from collections import Counter
from functools import partial

import dask
import dask.bag as db
import pytest
from control_helpers import ProgressRecorder
from dask.base import get_scheduler
from dask_helpers import (
    GATE,
    CustomError,
    Payload,
    fail_at,
    injected_cluster,
    nap,
    payload_unpickled,
    raise_custom,
    recorded,
    size_of,
    spin,
    square,
    where,
    with_payload,
)
from distributed import Client, LocalCluster
from plugin_helpers import Measured, registered

import amorsize
import amorsize_dask
from amorsize_dask import ClientBypassedWarning, cluster_plan, cluster_run
from amorsize_dask.cluster_measure import SAMPLE_ITEMS

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, protocol="tcp://",
                      host="127.0.0.1", dashboard_address=None,
                      scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(cluster):
    with Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture
def busy_cluster(client):
    """The cluster as planned from made-up task costs: 0.1 ms a task when busy, 1 ms alone."""
    injected_cluster(client)
    yield client
    injected_cluster(client)  # other tests too plan from these, not from a burst on a busy machine


@pytest.fixture
def gate(client):
    """``GATE`` closed for the test (functions wait on it on the in-process workers), opened
    however the test ends, and the workers' threads free again before the next test (a
    cancelled batch runs on to its end on its thread)."""
    GATE.clear()
    yield GATE
    GATE.set()
    deadline = time.monotonic() + 30
    while any(client.run(lambda dask_worker: dask_worker.state.executing_count).values()) \
            and time.monotonic() < deadline:
        time.sleep(0.02)


def costing(seconds: float, **more) -> Measured:
    """Every function recalled as costing ``seconds`` per item."""
    return Measured(amorsize.Profile(per_item_seconds=seconds, n_measured=8,
                                     measured_by="a cluster worker", **more))


class Finished:
    """Records every ``amorsize_run_finished`` call."""

    def __init__(self) -> None:
        self.runs: list = []

    @amorsize.hookimpl
    def amorsize_run_finished(self, plan, report):
        self.runs.append((plan, report))


def test_map_on_a_cluster_returns_results_in_order(client):
    assert amorsize_dask.map(square, range(500), client=client) == [x * x for x in range(500)]


def test_map_ships_lambdas_and_closures(client):
    offset = 5
    assert amorsize_dask.map(lambda x: x + offset, range(50), client=client) == [
        x + 5 for x in range(50)]


def test_map_of_an_empty_input_is_empty(client):
    assert amorsize_dask.map(square, [], client=client) == []


def test_map_errors_reach_the_caller_with_their_type(client):
    with pytest.raises(CustomError):
        amorsize_dask.map(raise_custom, range(10), client=client)


def test_map_forced_batch_is_respected(busy_cluster, monkeypatch):
    sent = record_batches(monkeypatch)
    assert amorsize_dask.map(square, range(40), client=busy_cluster, batch=3) == [
        x * x for x in range(40)]
    assert set(sent[:-1]) == {3}


# --- the plan -------------------------------------------------------------------------------

def record_batches(monkeypatch) -> list[int]:
    """The number of items of each batch sent, in order."""
    sent: list[int] = []
    submit = cluster_run.BatchRun._submit

    def recording(self, items, *rest):
        sent.append(len(items))
        return submit(self, items, *rest)

    monkeypatch.setattr(cluster_run.BatchRun, "_submit", recording)
    return sent


def test_thousands_of_tiny_items_still_use_every_thread(busy_cluster, monkeypatch):
    sent = record_batches(monkeypatch)
    with registered(costing(50e-6)):
        amorsize_dask.map(square, range(20_000), client=busy_cluster)
    assert len(sent) >= 2
    assert max(sent) <= 10_000


def test_the_plan_says_which_cluster_it_was_made_for(busy_cluster):
    with registered(costing(2e-3)):
        amorsize_dask.map(square, range(400), client=busy_cluster)
    plan = amorsize.last_plan()
    assert plan.cluster is not None and plan.n_jobs == 2
    text = plan.explain()
    assert "cluster: 2 workers × 1 thread" in text
    assert "a task costs 100.0 µs when the cluster is busy" in text


def test_batches_shrink_toward_the_end_of_the_run(busy_cluster, monkeypatch):
    sent = record_batches(monkeypatch)
    with registered(costing(2e-3)):
        amorsize_dask.map(square, range(400), client=busy_cluster)
    assert sent == sorted(sent, reverse=True)
    assert sent[-1] < sent[0]


def test_equal_workers_share_the_items_evenly(busy_cluster):
    with registered(costing(2e-3)):
        ran_on = amorsize_dask.map(partial(where_after, seconds=2e-3), range(200),
                                   client=busy_cluster)
    shares = Counter(ran_on)
    assert len(shares) == 2
    assert max(shares.values()) <= 0.6 * 200


def where_after(_: int, seconds: float) -> str:
    nap(0, seconds)
    return where()


def test_the_function_is_measured_on_a_worker_not_in_the_caller(client):
    amorsize_dask.map(where, range(20), client=client)
    assert amorsize.last_plan().profile.measured_by == "a cluster worker"


# --- streaming ------------------------------------------------------------------------------

def test_imap_yields_in_input_order_from_a_generator(busy_cluster):
    with registered(costing(1e-3)):
        assert list(amorsize_dask.imap(nap, (x for x in range(100)), client=busy_cluster,
                                       batch=7)) == list(range(100))


def test_imap_unordered_yields_every_result_once(busy_cluster):
    with registered(costing(1e-3)):
        out = list(amorsize_dask.imap_unordered(nap, iter(range(100)), client=busy_cluster,
                                                batch=7))
    assert sorted(out) == list(range(100))


def test_an_endless_input_is_read_only_a_bounded_way_ahead(busy_cluster):
    pulled = itertools.count()

    def endless():
        while True:
            yield next(pulled)

    # on 2 threads: the batches sent and not done, as many done ahead of an earlier one, 1 read
    bound = (cluster_plan.MAX_IN_FLIGHT_PER_THREAD * 2 * 2 + 1) * 5 + SAMPLE_ITEMS
    results = amorsize_dask.imap(square, endless(), client=busy_cluster, batch=5)
    for i, result in zip(range(200), results):
        assert result == i * i
    read = next(pulled)
    results.close()
    assert read <= 200 + bound


def held_if_first(x: int) -> int:
    if x == 0:
        GATE.wait(30)
    return x


def test_batches_done_behind_a_held_one_do_not_stop_the_next_being_sent(client, gate):
    run = cluster_run.BatchRun(client, held_if_first, in_flight=2, retries=None, timeout=None,
                               arg_bytes=0.0)
    batches = cluster_run.numbered_batches(iter(range(10)), itertools.repeat(1))
    out: list = []
    reader = threading.Thread(target=lambda: out.extend(
        x for _, results in run.results(batches, ordered=True) for x in results))
    reader.start()
    deadline = time.monotonic() + 30
    while run.n_batches < 2 and time.monotonic() < deadline:  # batch 0 held on one thread
        time.sleep(0.01)
    done_while_held = run.n_batches
    gate.set()
    reader.join(30)
    assert done_while_held == 2  # batch 1, then batch 2 sent while 1 waited for 0
    assert out == list(range(10))


def test_items_too_large_for_a_task_travel_as_their_own_data(busy_cluster, monkeypatch):
    scattered = recorded(monkeypatch, busy_cluster, "scatter", lambda args, kwargs: args[0])
    items = [bytes(cluster_plan.BATCH_BYTES + 1) for _ in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Sending large graph of size ..." is a UserWarning
        assert amorsize_dask.map(size_of, items, client=busy_cluster) == [len(items[0])] * 3
    assert scattered


def test_large_items_never_travel_inside_a_task_past_dasks_large_graph_warning(busy_cluster,
                                                                               monkeypatch):
    sent = record_batches(monkeypatch)
    scattered = recorded(monkeypatch, busy_cluster, "scatter", lambda args, kwargs: args[0])
    items = [bytes(2**20) for _ in range(40)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Sending large graph of size ..." is a UserWarning
        assert amorsize_dask.map(size_of, items, client=busy_cluster) == [2**20] * 40
    large = [n for n in sent if n * 2**20 > cluster_plan.BATCH_BYTES]
    assert sorted(large) == sorted(len(batch) for call in scattered[1:] for batch in call)
    assert max(sent) * 2**20 <= cluster_plan.MAX_BATCH_BYTES


def test_large_batches_sent_at_once_are_scattered_in_one_call(busy_cluster, monkeypatch):
    scattered = recorded(monkeypatch, busy_cluster, "scatter", lambda args, kwargs: args[0])
    items = [bytes(2**20) for _ in range(30)]
    run = cluster_run.BatchRun(busy_cluster, size_of, in_flight=4, retries=None, timeout=None,
                               arg_bytes=2**20)
    batches = [(0, items[:10]), (10, items[10:20]), (20, items[20:])]
    assert [first for first, _ in run.results(batches, ordered=True)] == [0, 10, 20]
    assert [len(call) for call in scattered] == [3]


@pytest.fixture(scope="module")
def process_client():
    """Two worker processes: what crosses to a worker is unpickled there, and counted."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None,
                      scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield client


def test_a_large_function_crosses_to_each_worker_once_over_two_calls(process_client):
    func = partial(with_payload, payload=Payload(cluster_plan.BATCH_BYTES + 2**20))
    before = process_client.run(payload_unpickled)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Sending large graph of size ..." is a UserWarning
        for _ in range(2):
            assert amorsize_dask.map(func, range(100), client=process_client, batch=5)[:2] == [
                func(0), func(1)]
    after = process_client.run(payload_unpickled)
    assert {worker: after[worker] - before[worker] for worker in after} == dict.fromkeys(after, 1)


def test_a_function_whose_data_changed_is_sent_again(process_client):
    payload = Payload(2 * cluster_plan.SHARED_BYTES)
    func = partial(with_payload, payload=payload)
    amorsize_dask.map(func, range(20), client=process_client, batch=5)
    before = sum(process_client.run(payload_unpickled).values())
    payload.data = bytes(3 * cluster_plan.SHARED_BYTES)
    assert amorsize_dask.map(func, range(2), client=process_client) == [func(0), func(1)]
    assert sum(process_client.run(payload_unpickled).values()) > before


def test_an_in_process_worker_takes_the_callers_large_function_as_it_is(busy_cluster):
    func = partial(with_payload, payload=Payload(2 * cluster_plan.SHARED_BYTES))
    before = payload_unpickled()
    with registered(costing(1e-3)):
        assert amorsize_dask.map(func, range(20), client=busy_cluster, batch=5) == [
            func(x) for x in range(20)]
    assert payload_unpickled() <= before + 1  # at most the scattered copy, where it is held
    assert amorsize_dask.distributed.current_client() is None  # no worker made its own Client


def test_a_small_function_travels_inside_its_tasks(busy_cluster, monkeypatch):
    scattered = recorded(monkeypatch, busy_cluster, "scatter", lambda args, kwargs: args[0])
    with registered(costing(1e-3)):
        amorsize_dask.map(partial(with_payload, payload=Payload(1000)), range(20),
                          client=busy_cluster, batch=5)
    assert scattered == []


def test_the_plan_says_the_function_is_sent_once(process_client):
    with registered(costing(1e-3)):
        amorsize_dask.map(partial(with_payload, payload=Payload(2 * cluster_plan.SHARED_BYTES)),
                          range(20), client=process_client, batch=5)
    assert "it goes to the cluster once and each worker keeps it" in amorsize.last_plan().explain()


def test_progress_counts_items(busy_cluster):
    with registered(ProgressRecorder()) as seen, registered(costing(1e-3)):
        amorsize_dask.map(square, range(50), client=busy_cluster, batch=10, progress=True)
    assert seen.states()[0] == "started" and seen.states()[-1] == "finished"
    assert seen.last().n_done == seen.last().n_total == 50
    assert "advanced" in seen.states()


# --- workers joining and leaving ------------------------------------------------------------

@pytest.fixture
def growing():
    """A cluster of one single-thread worker, its Client, and the made-up task costs it is
    planned from; the test adds a worker."""
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://",
                      host="127.0.0.1", dashboard_address=None,
                      scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield cluster, client, injected_cluster(client)


def add_worker(cluster, client) -> None:
    cluster.scale(2)
    client.wait_for_workers(2, timeout=30)


def test_a_call_after_a_worker_joined_is_planned_for_its_threads(growing):
    cluster, client, _ = growing
    with registered(costing(2e-3)):
        amorsize_dask.map(square, range(400), client=client)
        assert amorsize.last_plan().n_jobs == 1
        add_worker(cluster, client)
        amorsize_dask.map(square, range(400), client=client)
    plan = amorsize.last_plan()
    assert plan.n_jobs == 2
    assert "cluster: 2 workers × 1 thread" in plan.explain()


def test_a_call_after_a_worker_left_is_planned_for_the_threads_left(growing):
    cluster, client, _ = growing
    add_worker(cluster, client)
    with registered(costing(2e-3)):
        amorsize_dask.map(square, range(400), client=client)
        assert amorsize.last_plan().n_jobs == 2
        cluster.scale(1)
        deadline = time.monotonic() + 30
        while len(client.nthreads()) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        amorsize_dask.map(square, range(400), client=client)
    assert amorsize.last_plan().n_jobs == 1


def test_a_streaming_run_resizes_its_batches_when_a_worker_joins(growing, monkeypatch):
    cluster, client, facts = growing
    monkeypatch.setattr(cluster_run, "WATCH_SECONDS", 0.0)
    sent = record_batches(monkeypatch)
    with registered(costing(1e-3)):
        results = amorsize_dask.imap(square, itertools.count(), client=client)
        assert next(results) == 0
        add_worker(cluster, client)
        for i, result in zip(range(1, 5000), results):
            assert result == i * i
            if sent[-1] != sent[0]:
                break
        results.close()
    assert sent[0] == cluster_plan.streaming_batch(1e-3, 1, facts.task_seconds)
    assert sent[-1] == cluster_plan.streaming_batch(1e-3, 2, facts.task_seconds)
    assert "the cluster's threads went from 1 to 2 during the run" in amorsize.last_plan().explain()


# --- failures and stopping ------------------------------------------------------------------

def test_an_error_cancels_every_batch_still_queued_or_running(busy_cluster, monkeypatch, gate):
    cancelled = recorded(monkeypatch, busy_cluster, "cancel", lambda args, kwargs: len(args[0]))
    with registered(costing(5e-3)), pytest.raises(CustomError):
        amorsize_dask.map(partial(held_after, first=4, bad=3), range(200), client=busy_cluster,
                          batch=4)
    assert sum(cancelled) == 4  # the failed batch, and the three held on their workers


def held_after(x: int, first: int, bad: int | None = None) -> int:
    if x == bad:
        raise CustomError(f"custom {x}")
    if x >= first:
        GATE.wait(30)
    return x


def test_an_error_leaves_nothing_on_stderr(busy_cluster, capfd):
    with registered(costing(5e-3)), pytest.raises(CustomError):
        amorsize_dask.map(partial(fail_at, bad=3, seconds=0.005), range(200),
                          client=busy_cluster, batch=4)
    gc.collect()
    assert capfd.readouterr().err == ""


def test_retries_are_passed_to_the_cluster(busy_cluster, monkeypatch):
    asked = recorded(monkeypatch, busy_cluster, "submit",
                      lambda args, kwargs: kwargs.get("retries"))
    with registered(costing(1e-3)):
        amorsize_dask.map(square, range(20), client=busy_cluster, batch=5, retries=2)
    assert asked and set(asked) == {2}


def test_a_call_past_its_timeout_raises_and_cancels(busy_cluster, gate):
    with registered(costing(1.0)), pytest.raises(amorsize.TimeoutError, match="timeout=0.3"):
        amorsize_dask.map(partial(held_after, first=0), range(4), client=busy_cluster, batch=1,
                          timeout=0.3)


def test_stopping_early_cancels_the_batches_in_flight(busy_cluster, monkeypatch, gate):
    cancelled = recorded(monkeypatch, busy_cluster, "cancel", lambda args, kwargs: len(args[0]))
    with registered(costing(1e-3)):
        results = amorsize_dask.imap(partial(held_after, first=10), range(1000),
                                     client=busy_cluster, batch=10)
        assert next(results) == 0
        results.close()
    # a full 4 in flight, held on their workers: the first, done, was replaced when it came back
    assert sum(cancelled) == 4


# --- learning -------------------------------------------------------------------------------

def test_a_finished_run_reports_its_cluster_figures(busy_cluster):
    with registered(Finished()) as finished:
        amorsize_dask.map(square, range(300), client=busy_cluster)
    ((plan, report),) = finished.runs
    assert plan.cluster is not None
    assert report.source == "dask.distributed"
    assert report.n_items + plan.workload.already_done == 300
    assert report.compute_seconds != 0.0  # the batches timed on the workers were added up


def test_the_second_call_is_planned_from_the_first_calls_cluster_timings(busy_cluster):
    func = partial(nap, seconds=1e-3)
    amorsize_dask.map(func, range(100), client=busy_cluster)
    first = amorsize.last_plan()
    amorsize_dask.map(func, range(100), client=busy_cluster)
    second = amorsize.last_plan()
    assert first.profile.measured_by == "a cluster worker"
    assert second.profile.measured_by == "runs"
    assert "from the batch timings of 1 earlier run on the cluster" in second.explain()
    assert second.workload.already_done == 0  # nothing measured again


def test_cluster_runs_are_learned_apart_from_local_runs(busy_cluster):
    amorsize.map(square, range(100))
    amorsize_dask.map(square, range(100), client=busy_cluster)
    assert amorsize.last_plan().profile.measured_by == "a cluster worker"


# --- entry points ---------------------------------------------------------------------------

def test_map_without_client_uses_the_active_client(cluster):
    with Client(cluster) as default:
        assert amorsize_dask.distributed.default_client() is default
        assert amorsize_dask.map(square, range(20)) == [x * x for x in range(20)]


def test_an_address_with_no_scheduler_fails_naming_it(monkeypatch):
    from amorsize_dask import cluster_client

    monkeypatch.setattr(cluster_client, "CONNECT_SECONDS", 1.0)
    with pytest.raises(amorsize.InvalidArgumentError, match="tcp://127.0.0.1:9"):
        amorsize_dask.map(square, range(10), client="tcp://127.0.0.1:9")


def test_bag_partitions_are_sized_for_the_client(busy_cluster):
    b = amorsize_dask.bag(partial(spin, seconds=0.02), range(20), client=busy_cluster)
    assert isinstance(b, db.Bag)
    assert 1 < b.npartitions <= 20
    assert b.compute(scheduler=busy_cluster) == list(range(20))


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


def test_map_on_a_cluster_starts_no_local_pool(client):
    manager = amorsize.get_global_pool_manager()
    before = manager.get_stats()["creations"]
    assert amorsize_dask.map(partial(spin, seconds=0.002), range(200), client=client)[:2] == [0, 1]
    assert manager.get_stats()["creations"] == before


def test_what_a_task_cost_in_a_run_corrects_the_next_plans_figure(busy_cluster):
    from amorsize_dask import cluster_measure

    facts = cluster_measure.cluster_facts(busy_cluster)
    cluster_measure.learn_from_run(busy_cluster, facts, wall_seconds=1.0 + facts.round_trip_seconds,
                                   compute_seconds=1.0, n_batches=10)
    # 0.5 s of the 1 s spent past the threads' work, over 10 batches: halfway to 50 ms a task
    assert cluster_measure.cluster_facts(busy_cluster).task_seconds == pytest.approx(
        facts.task_seconds + 0.5 * (0.05 - facts.task_seconds))
    with registered(costing(2e-3)):
        amorsize_dask.map(square, range(400), client=busy_cluster)
    assert "in the runs so far on it" in amorsize.last_plan().explain()


def test_what_a_runs_items_took_to_reach_the_workers_is_not_counted_as_task_cost(busy_cluster):
    from amorsize_dask import cluster_measure

    facts = cluster_measure.cluster_facts(busy_cluster)
    cluster_measure.learn_from_run(busy_cluster, facts, wall_seconds=1.0 + facts.round_trip_seconds,
                                   compute_seconds=1.0, n_batches=10, transfer_seconds=0.5)
    assert cluster_measure.cluster_facts(busy_cluster).task_seconds == facts.task_seconds


def test_a_client_set_to_scatter_through_the_scheduler_keeps_that_way(cluster):
    from amorsize_dask import cluster_measure

    with Client(cluster, set_as_default=False, direct_to_workers=False) as client:
        cluster_measure.transfer_costs(client)
        assert cluster_measure.scatter_direct(client) is False


def test_threads_ending_apart_are_not_counted_as_task_cost(busy_cluster):
    from amorsize_dask import cluster_measure

    facts = cluster_measure.cluster_facts(busy_cluster)
    # 2 batches of 0.5 s on 2 threads, the run 0.25 s longer than their share: one thread idle
    cluster_measure.learn_from_run(busy_cluster, facts, wall_seconds=0.75 + facts.round_trip_seconds,
                                   compute_seconds=1.0, n_batches=2, longest_batch_seconds=0.5)
    assert cluster_measure.cluster_facts(busy_cluster).task_seconds == facts.task_seconds
