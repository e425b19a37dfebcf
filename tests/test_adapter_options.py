"""The joblib backend, the Dask scheduler and ``amorsize_dask.map``/``bag`` refuse a bad option
on every call, naming it; ``client=`` takes a scheduler's address; progress reports say how
many tasks there are whenever that is known, and the bar counts joblib's and Dask's work in
tasks."""

from __future__ import annotations

import cloudpickle
import dask
import dask.bag as db
import distributed
import joblib
import joblib_helpers
import pytest
from control_helpers import ProgressRecorder
from dask_helpers import square
from joblib import Parallel, delayed
from plugin_helpers import registered

import amorsize
import amorsize_dask
import amorsize_joblib  # noqa: F401 - registers the backend
from amorsize.errors import InvalidArgumentError, InvalidArgumentTypeError
from amorsize.plugins import progress_bar
from amorsize.run.control import RunProgress
from amorsize_joblib import AmorsizeBackend

cloudpickle.register_pickle_by_value(joblib_helpers)

pytestmark = pytest.mark.timeout(120)

N = 40


@pytest.fixture(scope="module")
def cluster():
    """A real scheduler and worker in this process, reachable at a tcp:// address."""
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  protocol="tcp://", host="127.0.0.1", dashboard_address=None,
                                  scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}
                                  ) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def client(cluster):
    with distributed.Client(cluster, set_as_default=False) as client:
        yield client


class Remembered:
    """Records what the front ends remember (the profile their next plan starts from)."""

    def __init__(self) -> None:
        self.keys: list = []

    @amorsize.hookimpl
    def amorsize_remember(self, key, profile):
        self.keys.append(key)


def joblib_config(client, /, **options):
    with joblib.parallel_config(backend="amorsize", **options):
        return Parallel(n_jobs=2)(delayed(joblib_helpers.square)(i) for i in range(N))


def joblib_parallel(client, /, **options):
    return Parallel(n_jobs=2, backend="amorsize", **options)(
        delayed(joblib_helpers.square)(i) for i in range(N))


def dask_scheduler(client, /, **options):
    total = db.from_sequence(range(N), npartitions=8).map(square).sum()
    return total.compute(scheduler="amorsize", **options)


def dask_map(client, /, **options):
    return amorsize_dask.map(square, range(N), **{"client": client, **options})


def dask_bag(client, /, **options):
    return amorsize_dask.bag(square, range(N), **{"client": client, **options}).compute(
        scheduler="sync")


BAD_OPTIONS = [
    (joblib_config, {"min_speedup": "x"}, InvalidArgumentTypeError),
    (joblib_config, {"min_speedup": 0.5}, InvalidArgumentError),
    (joblib_config, {"executor": "gpu"}, InvalidArgumentError),
    (joblib_config, {"executor": 3}, InvalidArgumentTypeError),
    (joblib_config, {"progress": "yes"}, InvalidArgumentTypeError),
    (joblib_config, {"inner_max_num_threads": 0}, InvalidArgumentError),
    (joblib_config, {"n_jobs_cap": 0}, InvalidArgumentError),
    (joblib_config, {"min_speedp": 2}, InvalidArgumentTypeError),
    (joblib_config, {"client": "tcp://127.0.0.1:8786"}, InvalidArgumentTypeError),
    (joblib_parallel, {"executor": "thread"}, InvalidArgumentTypeError),
    (joblib_parallel, {"min_speedup": 2}, InvalidArgumentTypeError),
    (joblib_parallel, {"progress": True}, InvalidArgumentTypeError),
    (joblib_parallel, {"inner_max_num_threads": 2}, InvalidArgumentTypeError),
    (joblib_parallel, {"client": False}, InvalidArgumentTypeError),
    (dask_scheduler, {"chunksize": 0}, InvalidArgumentError),
    (dask_scheduler, {"chunksize": "4"}, InvalidArgumentTypeError),
    (dask_scheduler, {"num_workers": -5}, InvalidArgumentError),
    (dask_scheduler, {"num_workers": 2.5}, InvalidArgumentTypeError),
    (dask_scheduler, {"executor": "gpu"}, InvalidArgumentError),
    (dask_scheduler, {"progress": "yes"}, InvalidArgumentTypeError),
    (dask_map, {"batch": 0}, InvalidArgumentError),
    (dask_map, {"batch": "3"}, InvalidArgumentTypeError),
    (dask_map, {"client": 5}, InvalidArgumentTypeError),
    (dask_map, {"client": ""}, InvalidArgumentError),
    (dask_bag, {"client": 3.5}, InvalidArgumentTypeError),
]


@pytest.mark.parametrize(
    ("call", "options", "error"), BAD_OPTIONS,
    ids=[f"{call.__name__}-{name}={value!r}" for call, bad, _ in BAD_OPTIONS
         for name, value in bad.items()])
def test_a_bad_option_is_refused_by_name_on_the_first_call_and_after_a_plan_is_remembered(
        client, call, options, error):
    (name,) = options
    with pytest.raises(error, match=name):
        call(client, **options)
    with registered(Remembered()) as remembered:
        assert call(client) == call(client)
    assert remembered.keys, "the good calls remembered nothing: the test proves nothing"
    with pytest.raises(error, match=name):
        call(client, **options)


def test_a_dask_config_num_workers_is_checked_too():
    with dask.config.set(num_workers=0), pytest.raises(InvalidArgumentError,
                                                       match="num_workers"):
        dask_scheduler(None)


def test_a_joblib_option_changed_on_the_backend_between_calls_is_checked():
    backend = AmorsizeBackend()
    Parallel(n_jobs=2, backend=backend)(delayed(joblib_helpers.square)(i) for i in range(N))
    backend.min_speedup = "x"
    with pytest.raises(InvalidArgumentTypeError, match="min_speedup"):
        Parallel(n_jobs=2, backend=backend)(delayed(joblib_helpers.square)(i) for i in range(N))


def test_a_joblib_option_is_checked_even_when_n_jobs_1_runs_a_plain_loop():
    with pytest.raises(InvalidArgumentTypeError, match="min_speedup"), \
            joblib.parallel_config(backend="amorsize", min_speedup="x"):
        Parallel(n_jobs=1)(delayed(joblib_helpers.square)(i) for i in range(N))


# --- client= ------------------------------------------------------------------------------

@pytest.fixture
def opened_clients(monkeypatch):
    """Every Client amorsize_dask connects itself."""
    opened: list[distributed.Client] = []

    class RecordedClient(distributed.Client):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            opened.append(self)

    monkeypatch.setattr(distributed, "Client", RecordedClient)
    return opened


def test_map_takes_a_scheduler_address_and_closes_the_client_it_opened(cluster, opened_clients):
    address = cluster.scheduler_address
    assert address.startswith("tcp://")
    assert amorsize_dask.map(square, range(N), client=address) == [x * x for x in range(N)]
    assert len(opened_clients) == 1
    assert opened_clients[0].status == "closed"


def fail_on_a_worker(x: int) -> int:
    """Returns ``x`` where it is measured, fails where the cluster runs it."""
    try:
        distributed.get_worker()
    except ValueError:
        return x
    raise LookupError(f"failed on the cluster: {x}")


def test_a_client_opened_for_an_address_is_closed_when_the_function_fails(cluster,
                                                                          opened_clients):
    with pytest.raises(LookupError, match="on the cluster"):
        amorsize_dask.map(fail_on_a_worker, range(N), client=cluster.scheduler_address)
    assert [c.status for c in opened_clients] == ["closed"]


def test_bag_takes_a_scheduler_address_and_closes_the_client_it_opened(cluster, opened_clients):
    bag = amorsize_dask.bag(square, range(N), client=cluster.scheduler_address)
    assert bag.compute(scheduler="sync") == [x * x for x in range(N)]
    assert [c.status for c in opened_clients] == ["closed"]


def test_map_never_closes_a_client_it_was_given(client):
    amorsize_dask.map(square, range(N), client=client)
    assert client.status == "running"


# --- progress -----------------------------------------------------------------------------

@pytest.fixture
def progress():
    with registered(ProgressRecorder(), name="test-adapter-progress") as recorder:
        yield recorder


def joblib_progress(tasks):
    with joblib.parallel_config(backend="amorsize", progress=True):
        return Parallel(n_jobs=2)(tasks)


def square_tasks(n):
    return (delayed(joblib_helpers.square)(i) for i in range(n))


def test_joblib_progress_of_a_list_of_tasks_has_its_length_from_the_first_call(progress):
    joblib_progress(list(square_tasks(N)))
    assert progress.seen[0].state == "started"
    assert {p.n_total for p in progress.seen} == {N}
    assert (progress.last().state, progress.last().n_done) == ("finished", N)


def test_joblib_progress_of_a_generator_has_the_last_calls_count_from_the_second_call(
        progress):
    joblib_progress(square_tasks(N))
    assert progress.seen[0].n_total is None  # a generator's length: known only at its end
    assert (progress.last().n_done, progress.last().n_total) == (N, N)
    progress.seen.clear()
    joblib_progress(square_tasks(N))
    assert {p.n_total for p in progress.seen} == {N}


def test_dask_progress_counts_every_task_of_the_graph(progress):
    graph = {f"square-{i}": (square, i) for i in range(N)}
    graph["total"] = (sum, list(graph))
    n_tasks = N + 1
    assert amorsize_dask.get(graph, "total", progress=True) == sum(x * x for x in range(N))
    assert {p.source for p in progress.seen} == {"dask"}
    assert {p.n_total for p in progress.seen} == {n_tasks}
    assert (progress.last().state, progress.last().n_done) == ("finished", n_tasks)


@pytest.mark.parametrize(("source", "unit"), [("dask", "task"), ("joblib", "task"),
                                              ("map", "item")])
def test_the_bar_counts_in_the_unit_of_the_front_end(capsys, source, unit):
    for state, done in (("started", 0), ("advanced", 2), ("finished", 3)):
        progress_bar.amorsize_run_progress(RunProgress(-1, source, "work", state, done, 3))
    assert f"{unit}/s" in capsys.readouterr().err


def test_a_dask_compute_shows_a_bar_of_tasks(capsys):
    db.from_sequence(range(N), npartitions=8).map(square).sum().compute(
        scheduler="amorsize", progress=True)
    err = capsys.readouterr().err
    assert "task/s" in err and "item/s" not in err
