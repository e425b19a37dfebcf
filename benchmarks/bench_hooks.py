"""What going through the plugin layer costs each ``amorsize.map`` call, in microseconds.

Each hook is timed through the relay (``amorsize.plugins``) and, for comparison, as a direct call
of the function the built-in plugin would run, with 0, 1 and 5 extra observer plugins registered
(each implementing ``amorsize_pool_event`` and ``amorsize_run_finished`` and doing nothing). The
plan maker is a stub that returns a ready plan, so the figure is the dispatch, not the optimizer.

A ``map`` call makes one ``make_plan`` (with its ``adjust_plan`` chain), asks ``get_pool`` about
three times (the optimizer checks which pools are warm, then the run takes one), emits one pool
event ("reused") and one ``run_finished``: the "per map call" row adds those up.

Run: ``python benchmarks/bench_hooks.py``.
"""

from __future__ import annotations

import timeit

import amorsize
from amorsize import plugins
from amorsize.optimizer import decision
from amorsize.pools.manager import get_global_pool_manager
from amorsize.run.report import RunReport

CALLS_PER_MAP = {"make_plan": 1, "get_pool": 3, "pool_event": 1, "run_finished": 1}


class Observer:
    @amorsize.hookimpl
    def amorsize_pool_event(self, event, key, stats):
        pass

    @amorsize.hookimpl
    def amorsize_run_finished(self, plan, report):
        pass


class StubPlanner:
    def __init__(self, plan: amorsize.Plan) -> None:
        self.plan = plan

    @amorsize.hookimpl(tryfirst=True)
    def amorsize_make_plan(self):
        return self.plan


def square(x: int) -> int:
    return x * x


def _best_us(stmt, number: int = 5_000, repeat: int = 7) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e6


def measure(n_observers: int) -> dict[str, tuple[float, float]]:
    """(relay µs, direct µs) per hook with ``n_observers`` extra observers registered."""
    workload = amorsize.Workload(1000, key=square.__code__)
    profile = amorsize.Profile(1e-6)
    plan = amorsize.Plan("thread", 2, 10, 1.0, ["bench"], profile, workload)
    report = RunReport("map", "thread", 2, 10, 1000, 100, 0.01, 0.001, 0.01, 1.0)
    manager = get_global_pool_manager()
    manager.get_pool(2, "thread")
    stub = StubPlanner(plan)
    observers = [Observer() for _ in range(n_observers)]
    for plugin in (stub, *observers):
        amorsize.register_plugin(plugin)
    try:
        return {
            "make_plan": (_best_us(lambda: plugins.make_plan(square, profile, workload)),
                          _best_us(lambda: stub.amorsize_make_plan())),
            "get_pool": (_best_us(lambda: plugins.get_pool(2, "thread", create=False)),
                         _best_us(lambda: manager.get_pool(2, "thread", create=False))),
            "pool_event": (_best_us(lambda: plugins.pool_event("reused", ("thread", 2), {})),
                           0.0),
            "run_finished": (_best_us(lambda: plugins.run_finished(plan, report), number=2_000),
                             _best_us(lambda: decision.learn(square.__code__, report),
                                      number=2_000)),
        }
    finally:
        for plugin in (stub, *observers):
            amorsize.unregister_plugin(plugin)


def map_call_us() -> float:
    """A whole ``amorsize.map`` of 100 cheap items on a function already measured, for scale."""
    data = list(range(100))
    amorsize.map(square, data)
    return _best_us(lambda: amorsize.map(square, data), number=500)


def main() -> None:
    columns = (0, 1, 5)
    results = {n: measure(n) for n in columns}
    print("hook dispatch, µs per call: relay (direct call of the built-in) -> overhead")
    header = f"{'hook':<24}" + "".join(f"{f'{n} extra observers':>28}" for n in columns)
    print(header)
    print("-" * len(header))
    totals = dict.fromkeys(columns, 0.0)
    for hook, times in CALLS_PER_MAP.items():
        cells = []
        for n in columns:
            relay, direct = results[n][hook]
            totals[n] += times * (relay - direct)
            cells.append(f"{relay:8.2f} ({direct:6.2f}) -> {relay - direct:6.2f}")
        print(f"{hook + f' x{times}':<24}" + "".join(f"{c:>28}" for c in cells))
    print("-" * len(header))
    print(f"{'overhead per map call':<24}" + "".join(f"{totals[n]:>28.2f}" for n in columns))
    print(f"\nfor scale: amorsize.map over 100 cheap items of a known function: {map_call_us():.0f} µs")
    amorsize.shutdown_global_pool_manager()


if __name__ == "__main__":
    main()
