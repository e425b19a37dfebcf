"""An amorsize plugin that caps the workers of every plan, for a host shared with other jobs.

Whatever amorsize decides -- for ``amorsize.map``, joblib or Dask -- no plan gets more than
``max_workers`` workers; a plan left with one worker runs serially, since one worker is a loop
plus the cost of a pool. The cap comes from the constructor or from ``AMORSIZE_MAX_WORKERS``.

Run it: ``python examples/cap_workers.py``: for a function that mostly waits, amorsize would run
dozens of threads on any machine; under the cap it runs two. Publish it through an entry point with
``plugin = WorkerCap.from_environment()`` as the object to load (see docs/plugins.md).
"""

from __future__ import annotations

import os
import time

import amorsize


class WorkerCap:
    """Never more than ``max_workers`` workers in a plan."""

    def __init__(self, max_workers: int) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be an int >= 1, got {max_workers!r}")
        self.max_workers = max_workers

    @classmethod
    def from_environment(cls, default: int = 2) -> WorkerCap:
        """The cap named by ``AMORSIZE_MAX_WORKERS``, else ``default``."""
        return cls(int(os.environ.get("AMORSIZE_MAX_WORKERS", default)))

    @amorsize.hookimpl
    def amorsize_adjust_plan(self, plan: amorsize.Plan) -> amorsize.Plan | None:
        if plan.n_jobs <= self.max_workers:
            return None
        if self.max_workers == 1:
            return plan.replace(executor_type="serial", n_jobs=1)
        return plan.replace(n_jobs=self.max_workers)


def wait_for_io(x: int) -> int:
    """5 ms of waiting (a network or disk call): threads overlap it, so amorsize picks many of
    them however few cores there are, and the cap binds on any machine."""
    time.sleep(0.005)
    return x * x


def main() -> None:
    data = range(100)
    free = amorsize.optimize(wait_for_io, data)
    print(f"without the cap: {free.executor_type} x{free.n_jobs}  ({free.reasons[-1]})")
    cap = WorkerCap(max_workers=2)
    amorsize.register_plugin(cap, name="cap-workers")
    try:
        capped = amorsize.optimize(wait_for_io, data)
        print(f"with the cap:    {capped.executor_type} x{capped.n_jobs}  ({capped.reasons[-1]})")
        results = amorsize.map(wait_for_io, data)
        assert results == [x * x for x in data]
        print(f"amorsize.map under the cap: {len(results)} results, identical to the loop")
    finally:
        amorsize.unregister_plugin(cap)


if __name__ == "__main__":
    main()
