"""The three front ends reach the same decision for the same function: one probe, one optimizer."""

from __future__ import annotations

import pytest
from core_helpers import burn, nap
from plugin_helpers import registered

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


@pytest.mark.timeout(120)
@pytest.mark.parametrize("func, make_items, expected", [
    (nap, lambda: list(range(200)), "thread"),
    # 0.5 s of work: processes win even with a cold pool, so no call's margin is thin
    (burn, lambda: list(range(400)), "process"),
    # all three measure with the probe's overlap test: the joblib backend asks for one batch
    # of two threads' worth of tasks while measuring, the Dask scheduler runs root tasks
    (hash_block, _blocks, "thread"),
], ids=["waiting", "computing", "c-code-releasing-the-gil"])
def test_map_joblib_and_dask_choose_the_same_executor(func, make_items, expected):
    items = make_items()
    decided = {}
    for front in ("map", "joblib", "dask"):
        LEARNED.forget()
        _DECISIONS.forget()
        with registered(Executors()) as spy:
            _run(front, func, items)
            assert _run(front, func, items) == [func(x) for x in items]
        decided[front] = spy.seen[-1]
    assert decided == {"map": expected, "joblib": expected, "dask": expected}


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
