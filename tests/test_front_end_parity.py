"""The three front ends reach the same decision for the same function: one probe, one optimizer."""

from __future__ import annotations

import pytest
from core_helpers import burn, nap, square
from plugin_helpers import Measured, registered

import amorsize
from amorsize.optimizer.decision import _DECISIONS
from amorsize.optimizer.learned import LEARNED

joblib = pytest.importorskip("joblib")
dask = pytest.importorskip("dask")
import amorsize_dask  # noqa: E402,F401 - registers the scheduler
import amorsize_joblib  # noqa: E402,F401 - registers the backend


class Executors:
    def __init__(self) -> None:
        self.seen: list[str] = []

    @amorsize.hookimpl
    def amorsize_run_finished(self, plan, report):
        self.seen.append(plan.executor_type)


def _run(front: str, func, items: list) -> list:
    if front == "map":
        return amorsize.map(func, items)
    if front == "joblib":
        with joblib.parallel_config(backend="amorsize"):
            return joblib.Parallel(n_jobs=-1)(joblib.delayed(func)(x) for x in items)
    return list(dask.compute(*[dask.delayed(func)(x) for x in items], scheduler="amorsize"))


def hash_block(block: bytes) -> str:
    """C code that releases the GIL: threads overlap, nothing is pickled."""
    import hashlib

    return hashlib.sha256(block).hexdigest()


def _blocks() -> list:
    import os

    return [os.urandom(2**20) for _ in range(64)]


class Remembered:
    """Records the profiles the front ends measured."""

    def __init__(self) -> None:
        self.profiles: list[amorsize.Profile] = []

    @amorsize.hookimpl
    def amorsize_remember(self, key, profile):
        self.profiles.append(profile)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("func, make_items, measured, expected", [
    (nap, lambda: list(range(200)),
     amorsize.Profile(per_item_seconds=3e-3, cpu_ratio=0.0, thread_scaling=2.0, n_measured=8),
     "thread"),
    # 2 s of pure-Python work (as measured; the real calls are quick): processes win however
    # costly a cold pool is
    (square, lambda: list(range(100)),
     amorsize.Profile(per_item_seconds=20e-3, cpu_ratio=1.0, thread_scaling=1.0, arg_bytes=30,
                      result_bytes=30, pickle_seconds=1e-6, n_measured=8),
     "process"),
    # a megabyte to ship per call and the GIL released: threads
    (hash_block, _blocks,
     amorsize.Profile(per_item_seconds=3e-3, cpu_ratio=1.0, thread_scaling=2.0,
                      arg_bytes=2**20, result_bytes=64, pickle_seconds=5e-4, n_measured=8),
     "thread"),
], ids=["waiting", "computing", "c-code-releasing-the-gil"])
def test_map_joblib_and_dask_choose_the_same_executor(func, make_items, measured, expected):
    items = make_items()
    expected_results = [func(x) for x in items]
    decided = {}
    for front in ("map", "joblib", "dask"):
        LEARNED.forget()
        _DECISIONS.forget()
        with registered(Executors()) as spy, registered(Measured(measured), name="measured"):
            _run(front, func, items)
            assert _run(front, func, items) == expected_results
        decided[front] = spy.seen[-1]
    assert decided == {"map": expected, "joblib": expected, "dask": expected}


@pytest.mark.timeout(120)
def test_map_joblib_and_dask_all_measure_with_the_probes_overlap_test():
    """The joblib backend asks for one batch of two threads' worth of tasks while measuring,
    the Dask scheduler runs root tasks: all three make the overlap test (its figure is the
    machine's to lower, so only that it was made is checked)."""
    items = _blocks()
    expected_results = [hash_block(x) for x in items]
    for front in ("map", "joblib", "dask"):
        LEARNED.forget()
        _DECISIONS.forget()
        with registered(Remembered(), name="remembered") as remembered:
            assert _run(front, hash_block, items) == expected_results
        profile = remembered.profiles[0]   # the measured one (corrected ones may follow)
        assert profile.thread_scaling is not None and 0.5 <= profile.thread_scaling <= 2.0, front


def test_joblib_with_a_fixed_batch_size_still_decides_without_the_overlap_test():
    """joblib does not ask the backend for batch sizes when the caller fixed one: measuring
    must not wait for the overlap test's batch forever."""
    LEARNED.forget()
    _DECISIONS.forget()
    with registered(Executors()) as spy, joblib.parallel_config(backend="amorsize"):
        out = joblib.Parallel(n_jobs=2, batch_size=1)(joblib.delayed(burn)(i) for i in range(60))
    assert out == [burn(i) for i in range(60)]
    assert spy.seen, "no plan was made: every task was measured"


NESTED = '''
import hashlib, os, sys
import amorsize, amorsize_dask, amorsize_joblib, dask, joblib

blocks = [os.urandom(2**18) for _ in range(48)]

def digest(block):
    return hashlib.sha256(block).hexdigest()

from amorsize.optimizer.learned import LEARNED

def with_joblib(i):
    LEARNED.forget()  # every inner call measures, in whichever thread it runs
    with joblib.parallel_config(backend="amorsize"):
        return joblib.Parallel(n_jobs=2)(joblib.delayed(digest)(b) for b in blocks)

def with_dask(i):
    LEARNED.forget()
    return list(dask.compute(*[dask.delayed(digest)(b) for b in blocks], scheduler="amorsize"))

expected = [digest(b) for b in blocks]
for outer in (with_joblib, with_dask):
    results = amorsize.map(outer, range(12), executor="thread", n_jobs=2, sample_size=2)
    assert results == [expected] * 12, outer.__name__
print("ok")
'''


@pytest.mark.timeout(150)
def test_front_ends_nested_in_amorsize_threads_do_not_wait_for_those_threads(tmp_path):
    """joblib or Dask called inside a task of a two-thread amorsize pool: their overlap test
    needs two threads of that pool, which are the callers waiting on it. It is skipped there,
    and the test itself never waits for a thread that does not come."""
    import subprocess
    import sys

    script = tmp_path / "nested.py"
    script.write_text(NESTED)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
