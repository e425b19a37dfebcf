"""The "amorsize" Dask scheduler: Dask's contract, every collection, callbacks, errors, pools."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from concurrent.futures.process import BrokenProcessPool
from functools import partial

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask.base import named_schedulers
from dask.diagnostics import Profiler, ProgressBar
from dask.utils_test import GetFunctionTestMixin, inc
from dask_helpers import CustomError, die, fail, pid, raise_custom, spin, square
from plugin_helpers import Measured, registered

import amorsize
import amorsize_dask
from amorsize.errors import InvalidArgumentError, WorkerCrashedError
from amorsize.plugins.hookspecs import hookimpl

pytestmark = pytest.mark.timeout(120)


class RunSpy:
    """A plugin recording every finished run's plan and report, through the public hooks."""

    def __init__(self) -> None:
        self.runs: list = []

    @hookimpl
    def amorsize_run_finished(self, plan, report):
        if report.source == "dask":
            self.runs.append((plan, report))


@pytest.fixture
def spy():
    with registered(RunSpy(), name="dask-test-spy") as plugin:
        yield plugin


class TestDaskConformance(GetFunctionTestMixin):
    """Dask's own specification of a scheduler ``get``, with amorsize choosing the executor."""

    get = staticmethod(amorsize_dask.get)


class TestDaskConformanceOnThreads(GetFunctionTestMixin):
    """The same specification with every task on amorsize's thread pool."""

    get = staticmethod(partial(amorsize_dask.get, executor="thread"))


def test_import_registers_the_scheduler_under_amorsize():
    assert named_schedulers["amorsize"] is amorsize_dask.get


def test_register_is_idempotent_and_restores_a_removed_entry():
    amorsize_dask.unregister()
    assert "amorsize" not in named_schedulers
    amorsize_dask.register()
    amorsize_dask.register()
    assert named_schedulers["amorsize"] is amorsize_dask.get


def test_config_scheduler_amorsize_is_used_by_compute(spy):
    with dask.config.set(scheduler="amorsize"):
        assert dask.delayed(inc)(1).compute() == 2
    assert len(spy.runs) == 1


def test_delayed_graph_computes_like_sync():
    parts = [dask.delayed(square)(i) for i in range(50)]
    total = dask.delayed(sum)(parts)
    assert total.compute(scheduler="amorsize") == total.compute(scheduler="sync")


def test_bag_computes_like_sync():
    b = db.from_sequence(range(1000), npartitions=8).map(square).filter(lambda x: x % 3)
    assert b.sum().compute(scheduler="amorsize") == b.sum().compute(scheduler="sync")
    assert b.compute(scheduler="amorsize") == b.compute(scheduler="sync")


def test_array_computes_like_sync():
    x = da.arange(10_000, chunks=1_000).reshape(100, 100).rechunk(25)
    y = (x + x.T).sum(axis=0)
    np.testing.assert_array_equal(y.compute(scheduler="amorsize"), y.compute(scheduler="sync"))


def test_dataframe_computes_like_sync():
    pdf = pd.DataFrame({"k": np.arange(1000) % 7, "v": np.arange(1000.0)})
    ddf = dd.from_pandas(pdf, npartitions=5)
    result = ddf.groupby("k").v.sum().compute(scheduler="amorsize")
    pd.testing.assert_series_equal(result, pdf.groupby("k").v.sum())


def test_several_collections_in_one_compute():
    a = dask.delayed(square)(3)
    b = db.from_sequence([1, 2, 3]).map(inc).sum()
    assert dask.compute(a, b, scheduler="amorsize") == (9, 9)


@pytest.mark.parametrize("executor", ["serial", "thread", "process"])
def test_every_executor_gives_the_same_results(executor):
    b = db.from_sequence(range(200), npartitions=10).map(square)
    assert b.compute(scheduler="amorsize", executor=executor) == [x * x for x in range(200)]


def test_lambdas_and_closures_run_on_processes():
    offset = 7
    b = db.from_sequence(range(20), npartitions=4).map(lambda x: x + offset)
    assert b.compute(scheduler="amorsize", executor="process") == [x + 7 for x in range(20)]


def test_functions_from_main_run_on_processes(tmp_path):
    script = tmp_path / "main_script.py"
    script.write_text(textwrap.dedent("""
        import dask.bag as db
        import amorsize_dask

        def triple(x):
            return 3 * x

        if __name__ == "__main__":
            b = db.from_sequence(range(10), npartitions=5).map(triple)
            print(b.compute(scheduler="amorsize", executor="process"))
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=90, check=True)
    assert out.stdout.strip() == str([3 * x for x in range(10)])


@pytest.mark.parametrize("executor", [None, "serial", "thread", "process"])
def test_task_errors_reach_the_caller_with_their_type(executor):
    b = db.from_sequence(range(10), npartitions=5).map(raise_custom)
    with pytest.raises(CustomError, match="custom"):
        b.compute(scheduler="amorsize", executor=executor)


def test_builtin_error_types_are_kept_on_processes():
    b = db.from_sequence(range(4), npartitions=2).map(fail)
    with pytest.raises(ValueError, match="bad item"):
        b.compute(scheduler="amorsize", executor="process")


def test_killed_worker_raises_instead_of_hanging_and_next_compute_works():
    doomed = db.from_sequence(range(4), npartitions=4).map(die)
    with pytest.raises(BrokenProcessPool) as info:
        doomed.compute(scheduler="amorsize", executor="process")
    assert isinstance(info.value, WorkerCrashedError)
    b = db.from_sequence(range(8), npartitions=4).map(square)
    assert b.compute(scheduler="amorsize", executor="process") == [x * x for x in range(8)]


def test_second_compute_reuses_the_warm_process_pool():
    b = db.from_sequence(range(8), npartitions=8).map(pid)
    manager = amorsize.get_global_pool_manager()
    first = set(b.compute(scheduler="amorsize", executor="process", num_workers=2))
    created = manager.get_stats()["creations"]
    second = set(b.compute(scheduler="amorsize", executor="process", num_workers=2))
    assert manager.get_stats()["creations"] == created
    assert first | second <= set(manager.get_pool(2, "process").worker_pids())


def test_progress_bar_sees_the_whole_compute(capsys):
    b = db.from_sequence(range(100), npartitions=10).map(square).sum()
    with ProgressBar():
        assert b.compute(scheduler="amorsize") == sum(x * x for x in range(100))
    assert "100%" in capsys.readouterr().out


def test_profiler_records_every_task_on_first_and_later_computes():
    b = db.from_sequence(range(100), npartitions=10).map(square).sum()
    with Profiler() as reference:
        b.compute(scheduler="sync")
    for _ in range(2):
        with Profiler() as prof:
            b.compute(scheduler="amorsize")
        assert len(prof.results) == len(reference.results)


def test_a_graph_of_pure_python_cpu_work_runs_on_processes(spy):
    cpu_work = amorsize.Profile(per_item_seconds=20e-3, cpu_ratio=1.0, thread_scaling=1.0,
                                n_measured=8)
    b = db.from_sequence(range(200), npartitions=200).map(square)
    with registered(Measured(cpu_work), name="measured"):
        assert b.compute(scheduler="amorsize") == [x * x for x in range(200)]
    plan, report = spy.runs[-1]
    assert plan.executor_type == "process", plan.explain()


def test_many_tiny_tasks_run_serially(spy):
    tiny = amorsize.Profile(per_item_seconds=1e-6, cpu_ratio=1.0, thread_scaling=1.0, n_measured=8)
    parts = [dask.delayed(square)(i) for i in range(500)]
    with registered(Measured(tiny), name="measured"):
        assert dask.delayed(sum)(parts).compute(scheduler="amorsize") == sum(
            i * i for i in range(500))
    plan, report = spy.runs[-1]
    assert plan.executor_type == "serial", plan.explain()


def test_second_compute_is_planned_from_what_the_first_measured(spy):
    b = db.from_sequence(range(100), npartitions=20).map(square)
    b.compute(scheduler="amorsize")
    b.compute(scheduler="amorsize")
    first, second = spy.runs[-2][0], spy.runs[-1][0]
    assert first.profile.measured_by == "dask"
    assert second.workload.previous_runs == 1
    assert second.profile.measured_by == "runs"


def test_no_task_runs_twice_while_measuring():
    calls = []
    lock = threading.Lock()

    def record(x):
        with lock:
            calls.append(x)
        return x

    b = db.from_sequence(range(40), npartitions=40).map(record)
    assert b.compute(scheduler="amorsize", executor="thread") == list(range(40))
    assert sorted(calls) == list(range(40))


def test_compute_inside_a_task_runs_serially_instead_of_deadlocking():
    def nested(x):
        return dask.delayed(square)(x).compute(scheduler="amorsize")

    b = db.from_sequence(range(8), npartitions=8).map(nested)
    assert b.compute(scheduler="amorsize", executor="thread", num_workers=2) == [
        x * x for x in range(8)]


def test_unknown_executor_is_rejected_naming_the_argument():
    with pytest.raises(InvalidArgumentError, match="executor"):
        dask.delayed(inc)(1).compute(scheduler="amorsize", executor="gpu")


@pytest.mark.parametrize(("executor", "tested"), [(None, True), ("serial", False)])
def test_the_overlap_test_runs_only_where_threads_can_be_chosen(monkeypatch, executor, tested):
    """A compute that may not run on threads leases no two-thread pool to test them."""
    from amorsize import plugins

    leases = []
    real = plugins.leased_pool

    def counted(n_jobs, executor_type, *args, **kwargs):
        leases.append((n_jobs, executor_type))
        return real(n_jobs, executor_type, *args, **kwargs)

    monkeypatch.setattr(plugins, "leased_pool", counted)
    values = [dask.delayed(spin)(i, 0.001) for i in range(200)]
    options = {} if executor is None else {"executor": executor}
    assert dask.compute(*values, scheduler="amorsize", **options) == tuple(range(200))
    assert ((2, "thread") in leases) is tested


def _waits(x):
    import time

    time.sleep(0.005)
    return x


class _DaskPlans:
    """The executor of each Dask compute made on one of amorsize's worker threads (those made
    in the caller, while the outer map measures its first items, plan as usual)."""

    def __init__(self) -> None:
        self.executors: list[str] = []

    @amorsize.hookimpl
    def amorsize_run_finished(self, plan, report):
        from amorsize.pools.worker import inside_worker

        if plan.workload.source == "dask" and inside_worker():
            self.executors.append(plan.executor_type)


def test_a_compute_inside_an_amorsize_worker_runs_as_a_plain_loop():
    """The pool that would run it may be the one whose thread waits for it (as for map and
    the joblib backend there)."""
    def nested(i):  # calls that wait: on their own, they would run on threads
        total = dask.delayed(sum)([dask.delayed(_waits)(x) for x in range(20)])
        return total.compute(scheduler="amorsize")

    with registered(_DaskPlans()) as seen:
        assert amorsize.map(nested, range(12), executor="thread", n_jobs=2,
                            sample_size=2) == [190] * 12
    assert seen.executors and set(seen.executors) == {"serial"}
