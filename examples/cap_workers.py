"""An amorsize plugin that caps the workers of every plan, for a host shared with other jobs.

Whatever amorsize decides -- for ``amorsize.map``, joblib or Dask -- no plan gets more than
``max_workers`` workers; a plan left with one worker runs serially, since one worker is a loop
plus the cost of a pool. The cap comes from the constructor or from ``AMORSIZE_MAX_WORKERS``.

Run it: ``python examples/cap_workers.py``. Publish it through an entry point with
``plugin = WorkerCap.from_environment()`` as the object to load (see docs/plugins.md).
"""

from __future__ import annotations

import os

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


def busy(x: int) -> int:
    """About a millisecond of pure-Python work."""
    total = 0
    for i in range(20_000):
        total += i * x % 7
    return total


def main() -> None:
    data = range(100)
    forced = amorsize.optimize(busy, data, executor="thread", n_jobs=4, chunksize=10)
    print(f"without the cap: {forced.executor_type} x{forced.n_jobs}")
    cap = WorkerCap(max_workers=2)
    amorsize.register_plugin(cap, name="cap-workers")
    try:
        capped = amorsize.optimize(busy, data, executor="thread", n_jobs=4, chunksize=10)
        print(f"with the cap:    {capped.executor_type} x{capped.n_jobs}  ({capped.reasons[-1]})")
        results = amorsize.map(busy, data, executor="thread", n_jobs=4)
        assert results == [busy(x) for x in data]
        print(f"amorsize.map under the cap: {len(results)} results, identical to the loop")
    finally:
        amorsize.unregister_plugin(cap)


if __name__ == "__main__":
    main()
