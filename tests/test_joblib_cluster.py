"""joblib on a dask.distributed cluster: inside ``with Client(...)`` the backend "amorsize" runs
its batches on the cluster's workers, sized by amorsize_dask's cluster plan; outside, nothing
changes.

One cluster of two single-thread worker processes serves every test here; each test opens its
own Client on it (the current one while its ``with`` block lasts).
"""

from __future__ import annotations

import multiprocessing
import os
import warnings

import joblib
import joblib_helpers as h
import numpy
import pytest
from control_helpers import ProgressRecorder
from dask_helpers import CustomError, injected_cluster, raise_custom, recorded, where
from distributed import Client, LocalCluster
from joblib import Parallel, delayed, parallel_config
from plugin_helpers import Measured, registered

import amorsize
import amorsize_joblib  # noqa: F401 - registers the backend "amorsize"
from amorsize_dask.cluster_plan import batch_sizes
from amorsize_joblib import AmorsizeBackend

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None,
                      scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as cluster:
        yield cluster


@pytest.fixture
def client(cluster):
    with Client(cluster) as client:
        yield client


def worker_pids(client) -> set[int]:
    return set(client.run(os.getpid).values())


def test_results_come_back_correct_and_in_order(client):
    with parallel_config(backend="amorsize"):
        out = Parallel()(delayed(h.wait)(i, 0.001 * (i % 3)) for i in range(200))
    assert out == list(range(200))


def test_the_batches_run_on_the_cluster_workers(client):
    with parallel_config(backend="amorsize"):
        pids = Parallel(n_jobs=-1)(delayed(h.pid)(i) for i in range(40))
        addresses = Parallel(n_jobs=-1)(delayed(where)(i) for i in range(40))
    assert set(pids) <= worker_pids(client)
    assert os.getpid() not in pids
    assert set(addresses) <= set(client.nthreads())


def test_the_plan_is_the_cluster_plan_and_says_so(client):
    backend = AmorsizeBackend()
    out = Parallel(n_jobs=-1, backend=backend)(delayed(h.square)(i) for i in range(300))
    assert out == [i * i for i in range(300)]
    plan = backend.plan
    assert plan is not None and plan.cluster is not None
    assert plan.cluster.threads == dict(client.nthreads())
    assert "cluster: 2 workers × 1 thread" in plan.explain()
    assert amorsize.last_plan().cluster is not None


def test_n_jobs_minus_one_means_every_thread_of_the_cluster(client, monkeypatch):
    monkeypatch.setattr(amorsize.system, "usable_cpus", lambda: 7)  # unlike the cluster's 2
    with parallel_config(backend="amorsize"):
        assert joblib.effective_n_jobs(-1) == sum(client.nthreads().values())


def test_an_error_in_a_task_raises_its_own_type(client):
    with parallel_config(backend="amorsize"), pytest.raises(CustomError):
        Parallel()(delayed(raise_custom)(i) for i in range(20))


def test_an_error_after_the_plan_raises_its_own_type(client):
    with parallel_config(backend="amorsize"), pytest.raises(h.TaskError):
        Parallel()(delayed(h.fail_on)(i, 150) for i in range(200))


def test_return_as_generator_yields_results_in_order(client):
    with parallel_config(backend="amorsize"):
        gen = Parallel(return_as="generator")(delayed(h.square)(i) for i in range(100))
        assert not isinstance(gen, list)
        assert list(gen) == [i * i for i in range(100)]


def test_return_as_generator_unordered_yields_every_result(client):
    with parallel_config(backend="amorsize"):
        gen = Parallel(return_as="generator_unordered")(
            delayed(h.wait)(i, 0.001 * (5 - i % 5)) for i in range(60))
        assert sorted(gen) == list(range(60))


def test_a_generator_dropped_early_cancels_its_tasks_on_the_cluster(client, monkeypatch):
    cancelled = recorded(monkeypatch, client, "cancel", lambda args, kwargs: args[0])
    with parallel_config(backend="amorsize"):
        gen = Parallel(return_as="generator")(delayed(h.wait)(i, 0.2) for i in range(20))
        assert next(gen) == 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # joblib: tasks "have been cancelled"
            gen.close()
    assert cancelled


def test_a_timeout_raises_timeout_error_and_cancels_the_tasks(client, monkeypatch):
    cancelled = recorded(monkeypatch, client, "cancel", lambda args, kwargs: args[0])
    with parallel_config(backend="amorsize"), pytest.raises(multiprocessing.TimeoutError):
        Parallel(timeout=0.2)(delayed(h.wait)(i, 1.0) for i in range(4))
    assert cancelled


def test_outside_a_client_the_call_runs_on_this_machine(cluster):
    with Client(cluster) as client:
        workers = worker_pids(client)
    backend = AmorsizeBackend(executor="process")
    pids = Parallel(n_jobs=2, backend=backend)(delayed(h.pid)(i) for i in range(20))
    assert not set(pids) & workers
    assert backend.plan is not None and backend.plan.cluster is None


def test_client_false_keeps_the_call_on_this_machine(client):
    backend = AmorsizeBackend(client=False)
    Parallel(n_jobs=2, backend=backend)(delayed(h.square)(i) for i in range(20))
    assert backend.plan is not None and backend.plan.cluster is None


def test_client_given_runs_on_that_cluster_though_it_is_not_the_current_one(cluster):
    with Client(cluster, set_as_default=False) as client:
        with parallel_config(backend="amorsize", client=client):
            pids = Parallel()(delayed(h.pid)(i) for i in range(20))
        assert set(pids) <= worker_pids(client)


def test_require_sharedmem_keeps_the_call_in_this_process(client):
    with parallel_config(backend="amorsize"):
        pids = Parallel(require="sharedmem")(delayed(h.pid)(i) for i in range(20))
    assert set(pids) == {os.getpid()}


def test_prefer_threads_is_a_hint_the_cluster_takes_as_joblibs_dask_backend_does(client):
    with parallel_config(backend="amorsize"):
        pids = Parallel(prefer="threads")(delayed(h.pid)(i) for i in range(20))
    assert set(pids) <= worker_pids(client)


def test_n_jobs_1_is_a_plain_loop_here(client):
    with parallel_config(backend="amorsize"):
        pids = Parallel(n_jobs=1)(delayed(h.pid)(i) for i in range(5))
    assert set(pids) == {os.getpid()}


def inner_pids(n: int, backend: str | None = None) -> tuple[int, set[int]]:
    """The pid of the task, and those of the tasks of a Parallel call it makes."""
    inner = Parallel(n_jobs=-1, backend=backend)(delayed(os.getpid)() for _ in range(n))
    return os.getpid(), set(inner)


@pytest.mark.parametrize("backend", [None, "amorsize"])
def test_a_nested_call_inside_a_task_runs_on_its_worker(client, backend):
    with parallel_config(backend="amorsize"):
        out = Parallel()(delayed(inner_pids)(4, backend) for _ in range(6))
    assert {pid for pid, _ in out} <= worker_pids(client)
    assert all(inner == {pid} for pid, inner in out)


def test_a_function_run_before_is_planned_from_what_was_learned(client):
    with parallel_config(backend="amorsize"):
        Parallel()(delayed(h.busy)(i, 0.001) for i in range(100))
    backend = AmorsizeBackend()
    Parallel(backend=backend)(delayed(h.busy)(i, 0.001) for i in range(100))
    assert backend.plan is not None and backend.plan.workload.recalled


def test_a_large_argument_many_tasks_pass_goes_to_the_cluster_once(client, monkeypatch):
    scattered = recorded(monkeypatch, client, "scatter", lambda args, kwargs: args[0])
    table = numpy.arange(200_000, dtype=numpy.float64)  # 1.6 MB, as scikit-learn's X
    with parallel_config(backend="amorsize"):
        out = Parallel()(delayed(numpy.take)(table, i) for i in range(30))
    assert out == [float(i) for i in range(30)]
    assert sum(1 for data in scattered if data[0] is table) == 1


def test_small_arguments_and_those_of_one_task_travel_inside_the_batches(client, monkeypatch):
    scattered: list = []
    monkeypatch.setattr(client, "scatter", lambda data, *a, **k: scattered.append(data))
    tables = [numpy.full(20_000, float(i)) for i in range(10)]
    with parallel_config(backend="amorsize"):
        out = Parallel()(delayed(numpy.max)(t) for t in tables)
        out += Parallel()(delayed(pow)(i, 2) for i in range(10))
    assert out == [float(i) for i in range(10)] + [i * i for i in range(10)]
    assert scattered == []


def test_progress_counts_the_tasks_run_on_the_cluster(client):
    with registered(ProgressRecorder(), name="test-joblib-cluster-progress") as recorder:
        with parallel_config(backend="amorsize", progress=True):
            Parallel()([delayed(h.square)(i) for i in range(50)])
    assert recorder.states()[0] == "started" and recorder.states()[-1] == "finished"
    assert {p.source for p in recorder.seen} == {"dask.distributed"}
    assert (recorder.last().n_done, recorder.last().n_total) == (50, 50)


def test_the_batches_follow_the_plan_to_the_end_of_the_input(client):
    """joblib would cut the last tasks of a call into batches ten times smaller than asked."""
    injected_cluster(client, task_seconds=1e-3)
    backend = AmorsizeBackend()
    profile = amorsize.Profile(per_item_seconds=2e-3, n_measured=8, measured_by="a cluster worker")
    with registered(Measured(profile)):
        Parallel(backend=backend)([delayed(h.square)(i) for i in range(500)])
    plan = backend.plan
    planned = batch_sizes(500, 2e-3, plan.cluster.n_threads, 1e-3, plan.profile.arg_bytes)
    # joblib sizes its first batches (2 * n_jobs, pre-dispatched) before the backend has seen
    # a task, so before the function's plan is recalled: one task each
    first = 2 * plan.n_jobs
    assert backend.batch_sizes[:first] == [1] * first
    after = backend.batch_sizes[first:]
    assert len(after) <= len(planned) + plan.n_jobs
    assert min(after) >= min(planned) // 2
