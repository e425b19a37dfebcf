"""Sub-interpreters as a fourth executor (Python 3.14+): results, the choice, and refusals.

Below 3.14 the kind does not exist, and asking for it says which Python it needs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from differential_helpers import plus_offset, set_offset

import amorsize
from amorsize import plugins
from amorsize.errors import EXECUTOR_TYPES, INTERPRETERS_AVAILABLE
from amorsize.optimizer import cost_model, decision, overheads
from amorsize.optimizer.learned import function_key

needs_interpreters = pytest.mark.skipif(
    not INTERPRETERS_AVAILABLE, reason="sub-interpreters need Python 3.14+")


def injective(x: int) -> int:
    return 7 * x * x + x


def spin(n: int) -> int:
    """Pure-Python CPU work."""
    total = 0
    for i in range(n):
        total += i * i
    return total


def with_numpy(n: int) -> int:
    """CPU work of a function whose module (numpy) refuses to load in a sub-interpreter."""
    import numpy as np

    return spin(n) + int(np.int64(1))


def fails_on_five(x: int) -> int:
    if x == 5:
        raise ValueError(f"item {x} is bad")
    return x


@pytest.mark.skipif(INTERPRETERS_AVAILABLE, reason="this Python has sub-interpreters")
def test_interpreter_executor_is_refused_below_3_14_naming_the_python_it_needs():
    assert "interpreter" not in EXECUTOR_TYPES
    with pytest.raises(amorsize.InvalidArgumentError, match=r"executor='interpreter' needs Python 3\.14"):
        amorsize.map(injective, range(10), executor="interpreter")
    with pytest.raises(amorsize.InvalidArgumentError, match=r"Python 3\.14"):
        amorsize.PoolManager().get_pool(2, "interpreter")


@needs_interpreters
def test_interpreter_is_an_executor_kind_where_python_has_them():
    assert "interpreter" in EXECUTOR_TYPES


@needs_interpreters
@pytest.mark.parametrize("entry", ["map", "imap", "imap_unordered"])
def test_forced_interpreters_give_the_builtin_maps_answer(entry):
    data = [(i * 37) % 101 - 50 for i in range(200)]
    offset = 3

    def closure(x):
        return injective(x) + offset

    for func in (injective, closure, lambda x: x - 2):
        got = list(getattr(amorsize, entry)(func, data, executor="interpreter", n_jobs=2))
        expected = list(map(func, data))
        assert (sorted(got) if entry == "imap_unordered" else got) == (
            sorted(expected) if entry == "imap_unordered" else expected)
        assert amorsize.last_plan().executor_type == "interpreter"


@needs_interpreters
def test_an_error_in_an_interpreter_is_raised_with_its_type_and_names_the_item():
    with pytest.raises(ValueError, match="item 5 is bad") as caught:
        amorsize.map(fails_on_five, range(20), executor="interpreter", n_jobs=2, chunksize=3)
    assert any("item 5" in note and "on interpreter worker" in note
               for note in caught.value.__notes__)


@needs_interpreters
def test_an_initializer_runs_in_each_interpreter_before_its_items():
    got = amorsize.map(plus_offset, range(30), executor="interpreter", n_jobs=2,
                       initializer=set_offset, initargs=(100,))
    assert got == [x + 100 for x in range(30)]


@needs_interpreters
def test_a_nested_map_inside_an_interpreter_runs_serially_there():
    got = amorsize.map(_nested, [3, 4], executor="interpreter", n_jobs=2)
    assert got == [[injective(i) for i in range(3)], [injective(i) for i in range(4)]]


def _nested(n: int) -> list:
    return amorsize.map(injective, range(n))


def _in_interpreter(pool, fn, *args):
    """``fn(*args)`` run in an interpreter of ``pool`` (a function pickle sends by reference
    from a module that does not import amorsize, so the call itself imports nothing more)."""
    return pool.submit(fn, *args).result()


@needs_interpreters
def test_an_interpreter_imports_only_the_worker_modules_of_amorsize_and_no_cloudpickle():
    import operator

    with amorsize.PoolManager() as manager:
        pool = manager.get_pool(1, "interpreter")
        assert pool.map(operator.neg, range(6), chunksize=2) == [-x for x in range(6)]
        loaded = _in_interpreter(pool, eval, "sorted(__import__('sys').modules)")
    assert "amorsize.pools.worker" in loaded
    assert not [m for m in loaded if m.startswith(("amorsize.optimizer", "amorsize.run",
                                                    "pluggy", "cloudpickle"))]


@needs_interpreters
def test_amorsize_asked_for_a_name_in_an_interpreter_is_all_there():
    with amorsize.PoolManager() as manager:
        pool = manager.get_pool(1, "interpreter")
        got = _in_interpreter(pool, eval, "__import__('amorsize').map(abs, [-1, -2])")
        version = _in_interpreter(pool, eval, "__import__('amorsize').__version__")
    assert got == [1, 2]
    assert version == amorsize.__version__


def test_the_interpreters_start_up_counts_loading_cloudpickle_in_each(monkeypatch):
    import types

    monkeypatch.setattr(overheads, "_cache", {})
    monkeypatch.setattr(overheads, "_round_trips", lambda pool: {
        "latency": 1e-4, "per_chunk": 1e-4, "per_byte": 1e-9})
    monkeypatch.setattr(overheads, "by_value_loading", lambda pool, latency: 0.25)
    pool = types.SimpleNamespace(startup_seconds=0.2, n_jobs=2)
    figures = overheads.measure_interpreters(pool, "forkserver")
    assert figures.interpreter_start == pytest.approx(0.2 / 2 + 0.25)


@needs_interpreters
def test_the_start_up_probe_makes_an_interpreter_load_cloudpickle():
    with amorsize.PoolManager() as manager:
        pool = manager.get_pool(1, "interpreter")
        overheads.by_value_loading(pool, 0.0)
        loaded = _in_interpreter(pool, eval, "'cloudpickle' in __import__('sys').modules")
    assert loaded


_ASK_AT_ONCE = """
import threading
got, errors = [], []
def ask():
    try:
        import amorsize
        got.append(amorsize.Plan.__name__)
    except BaseException as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=ask) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert (errors, got) == ([], ["Plan"] * 4), (errors, got)
"""


@needs_interpreters
def test_threads_asking_an_interpreters_amorsize_at_once_all_get_the_whole_package():
    from concurrent import interpreters

    from amorsize.pools.interpreters import bootstrap

    interp = interpreters.create()
    try:
        bootstrap(interp)
        interp.exec(_ASK_AT_ONCE)  # raises if a thread saw the package before it was whole
    finally:
        interp.close()


def _local_object(x: int) -> object:
    class Local:  # pickle cannot send it by reference: it comes back by value
        def __init__(self, value: int) -> None:
            self.value = value

    return Local(x)


@needs_interpreters
def test_a_result_that_pickle_cannot_send_comes_back_from_an_interpreter_by_value():
    got = amorsize.map(_local_object, range(4), executor="interpreter", n_jobs=2)
    assert [r.value for r in got] == [0, 1, 2, 3]
    assert type(got[0]).__name__ == "Local"


def _overheads(**figures: float) -> overheads.Overheads:
    return overheads.Overheads(measured=("thread", "process", "interpreter"), **figures)


class _WarmPools:
    """Every pool warm, none to be started: the decision reads only the injected figures."""

    def is_warm(self, n_jobs, executor_type, start_method):
        return True

    def lease(self, n_jobs, executor_type, start_method):
        raise AssertionError("no pool is started: every pool is warm and measured")


def _plan(monkeypatch, figures: overheads.Overheads, profile: amorsize.Profile,
          source: str = "map", executors: tuple = EXECUTOR_TYPES) -> amorsize.Plan:
    monkeypatch.setattr(overheads, "current", lambda start_method: figures)
    workload = amorsize.Workload(2_000, source=source, executors=executors, key=object())
    return decision.decide(spin, profile, workload, pools=_WarmPools(), learned=None)


_CPU_BOUND = amorsize.Profile(2e-3, cpu_ratio=1.0, thread_scaling=1.0, arg_bytes=2_000,
                              result_bytes=2_000)
# moving a byte costs one pool 500 times what it costs the other: 4 KB an item decides
_CHEAP_INTERPRETERS = _overheads(process_per_byte=1e-6, interpreter_per_byte=2e-9)
_CHEAP_PROCESSES = _overheads(process_per_byte=2e-9, interpreter_per_byte=1e-6)


@needs_interpreters
def test_cpu_bound_work_is_planned_on_interpreters_when_they_are_predicted_fastest(monkeypatch):
    plan = _plan(monkeypatch, _CHEAP_INTERPRETERS, _CPU_BOUND)
    assert plan.executor_type == "interpreter"
    assert plan.predictions["interpreter"] < plan.predictions["process"]


@needs_interpreters
def test_cpu_bound_work_is_planned_on_processes_when_they_are_predicted_fastest(monkeypatch):
    plan = _plan(monkeypatch, _CHEAP_PROCESSES, _CPU_BOUND)
    assert plan.executor_type == "process"


@needs_interpreters
def test_waiting_work_is_never_considered_for_interpreters(monkeypatch):
    waiting = amorsize.Profile(2e-3, cpu_ratio=0.05, thread_scaling=2.0)
    plan = _plan(monkeypatch, _CHEAP_INTERPRETERS, waiting)
    assert plan.executor_type == "thread"
    assert "interpreter" not in plan.predictions


@needs_interpreters
@pytest.mark.parametrize("source", ["joblib", "dask"])
def test_joblib_and_dask_get_interpreters_only_when_they_ask_for_them(monkeypatch, source):
    assert _plan(monkeypatch, _CHEAP_INTERPRETERS, _CPU_BOUND, source).executor_type != "interpreter"
    forced = _plan(monkeypatch, _CHEAP_INTERPRETERS, _CPU_BOUND, source, ("interpreter",))
    assert forced.executor_type == "interpreter"


def test_the_cost_model_never_offers_interpreters_for_a_function_that_does_not_pickle():
    profile = amorsize.Profile(2e-3, cpu_ratio=1.0, thread_scaling=1.0, picklable=False)
    found = cost_model.best_candidates(profile, 2_000, 2, _CHEAP_INTERPRETERS,
                                       ["serial", "thread", "process", "interpreter"])
    assert "interpreter" not in found


@needs_interpreters
def test_a_numpy_function_is_never_planned_on_interpreters_and_the_plan_says_why(monkeypatch):
    monkeypatch.setattr(overheads, "current", lambda method: _CHEAP_INTERPRETERS)
    for func in (with_numpy, spin):  # the same measured profile, from an earlier call
        plugins.remember(function_key(func), _CPU_BOUND)
    for _ in range(2):  # the first call tries an item in an interpreter, the next remembers
        plan = amorsize.optimize(with_numpy, [20_000] * 400)
        assert plan.executor_type != "interpreter"
        why = " ".join(plan.reasons)
        assert "interpreters excluded" in why
        assert "subinterpreters" in why  # numpy's own words: it does not load in one
    assert amorsize.optimize(spin, [20_000] * 400).executor_type == "interpreter"


_CHILD = """
import os, sys, threading, time
sys.path.insert(0, {tests!r})
import amorsize

def slow(x):
    import time
    time.sleep(x)
    return x

{body}
"""


def _run_child(body: str) -> subprocess.CompletedProcess:
    import pathlib

    code = _CHILD.format(tests=str(pathlib.Path(__file__).parent), body=textwrap.dedent(body))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


@needs_interpreters
def test_an_item_past_its_time_limit_stops_the_call_and_the_exit_does_not_wait_for_it():
    """An interpreter cannot be stopped: the call raises at the limit, the item goes on in the
    background, and the process exits without waiting for it (the item would take 600 s)."""
    done = _run_child("""
        started = time.monotonic()
        try:
            amorsize.map(slow, [0.01] * 4 + [600] + [0.01] * 4, executor="interpreter",
                         n_jobs=2, chunksize=1, timeout=1.0)
        except amorsize.TimeoutError as exc:
            print("timeout", exc.index, round(time.monotonic() - started))
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:2] == ["timeout", "4"], done.stdout + done.stderr


@needs_interpreters
def test_ctrl_c_stops_the_call_at_once_and_the_exit_does_not_wait_for_the_running_items():
    done = _run_child("""
        import signal
        threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            amorsize.map(slow, [600] * 4, executor="interpreter", n_jobs=2, chunksize=1)
        except KeyboardInterrupt:
            print("interrupted")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "interrupted", done.stdout + done.stderr


@needs_interpreters
def test_a_pool_of_interpreters_closes_them_all_when_shut_down():
    from concurrent import interpreters

    before = len(interpreters.list_all())
    with amorsize.PoolManager() as manager:
        pool = manager.get_pool(2, "interpreter")
        assert pool.map(injective, range(10), chunksize=2) == [injective(x) for x in range(10)]
        assert len(interpreters.list_all()) == before + 2
    assert len(interpreters.list_all()) == before



@needs_interpreters
def test_the_joblib_backend_refuses_interpreters_naming_why():
    joblib = pytest.importorskip("joblib")
    import amorsize_joblib  # noqa: F401

    with pytest.raises(amorsize.InvalidArgumentError, match="executor='interpreter'.*joblib"):
        with joblib.parallel_config(backend="amorsize", executor="interpreter"):
            joblib.Parallel(n_jobs=2)(joblib.delayed(abs)(-x) for x in range(4))


@needs_interpreters
def test_the_dask_scheduler_runs_on_interpreters_when_asked():
    bag = pytest.importorskip("dask.bag")
    import amorsize_dask  # noqa: F401

    tasks = bag.from_sequence(range(20), npartitions=4).map(injective)
    assert tasks.compute(scheduler="amorsize", executor="interpreter") == [
        injective(x) for x in range(20)]
    assert amorsize.last_plan().executor_type == "interpreter"
