"""The three front ends reach the same decision for the same function: one probe, one optimizer."""

from __future__ import annotations

import pytest
from core_helpers import burn, nap

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


def _run(front: str, func, n: int) -> None:
    if front == "map":
        amorsize.map(func, range(n))
    elif front == "joblib":
        with joblib.parallel_config(backend="amorsize"):
            joblib.Parallel(n_jobs=-1)(joblib.delayed(func)(i) for i in range(n))
    else:
        dask.compute(*[dask.delayed(func)(i) for i in range(n)], scheduler="amorsize")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("func, expected", [(nap, "thread"), (burn, "process")])
def test_map_joblib_and_dask_choose_the_same_executor(func, expected):
    decided = {}
    for front in ("map", "joblib", "dask"):
        LEARNED.forget()
        _DECISIONS.forget()
        spy = Executors()
        amorsize.register_plugin(spy, name="parity-spy")
        try:
            _run(front, func, 200)
            _run(front, func, 200)
        finally:
            amorsize.unregister_plugin(name="parity-spy")
        decided[front] = spy.seen[-1]
    assert decided == {"map": expected, "joblib": expected, "dask": expected}
