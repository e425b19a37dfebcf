"""A large input shared by every item (issue 21): items of GIL-holding work over slices of one
big array, the array passed in a ``functools.partial``, or as an argument of every joblib task.

Five ways, each timed ``--repeat`` times (median, and the first call apart for amorsize.map and
the joblib backend, which start their pool, measure the function and place the array in shared
memory):

1. fork + module global (the floor): a fresh fork pool per call, the array in a module global
   the workers inherit, nothing pickled;
2. joblib with loky, which memory-maps large arrays (``max_nbytes``) on every call;
3. a serial loop;
4. ``amorsize.map`` over the partial: the array crosses once per worker, through shared memory,
   and a later call sends nothing again (the segments held are printed: one);
5. ``Parallel(backend="amorsize")`` over ``delayed(work)(array, i)``: the array, an argument of
   every task, crosses once per worker the same way.

Run: ``python benchmarks/bench_shared.py [--mb 200] [--items 400] [--item-ms 4] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import amorsize
from amorsize.pools import shared, worker

DATA: np.ndarray | None = None
LOOPS = 1


def work(data: np.ndarray, i: int, n_items: int = 400) -> float:
    """Pure-Python (GIL-holding) work over item ``i``'s slice of ``data``."""
    step = len(data) // n_items
    values = data[i * step:i * step + 2000].tolist()
    total = 0.0
    for _ in range(LOOPS):
        for v in values:
            total += v * v
    return total + float(data[i * step + step - 1])  # touches the slice's far end too


def work_global(i: int, n_items: int = 400) -> float:
    assert DATA is not None
    return work(DATA, i, n_items)


def calibrate(data: np.ndarray, item_ms: float) -> int:
    global LOOPS
    LOOPS = 1
    t0 = time.perf_counter()
    for i in range(20):
        work(data, i)
    one = (time.perf_counter() - t0) / 20
    LOOPS = max(1, round(item_ms / 1e3 / one))
    return LOOPS


def timed(run, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        out.append(time.perf_counter() - t0)
    return out


def fork_global(n_items: int, workers: int) -> list:
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(functools.partial(work_global, n_items=n_items), range(n_items),
                        chunksize=max(1, n_items // (4 * workers)))


def main() -> None:
    global DATA, LOOPS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--item-ms", type=float, default=4.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--loops", type=int, default=0,
                        help="passes over each item's slice (default: calibrated to --item-ms)")
    args = parser.parse_args()
    n = args.items
    DATA = np.random.default_rng(0).random(int(args.mb * 2**20 / 8))
    if args.loops:
        LOOPS = loops = args.loops
    else:
        calibrate(DATA, args.item_ms)  # the first pass warms up
        loops = calibrate(DATA, args.item_ms)
    func = functools.partial(work, DATA, n_items=n)
    items = range(n)
    expected = [func(i) for i in items]
    workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{args.mb:.0f} MB array, {n} items of ~{args.item_ms} ms ({loops} loops), "
          f"{workers} CPUs, load average {os.getloadavg()[0]:.2f} at start\n")

    def check(results: list) -> None:
        assert list(results) == expected

    ways: dict[str, Callable[[], None]] = {
        "fork + module global (floor)": lambda: check(fork_global(n, workers or 2)),
    }
    try:
        from joblib import Parallel, delayed

        def loky() -> None:
            check(Parallel(n_jobs=workers)(delayed(work)(DATA, i, n) for i in items))

        loky()  # the executor starts once, as amorsize's pools do
        ways["joblib loky (memory-maps the array)"] = loky
    except ImportError:
        pass
    ways["serial loop"] = lambda: check([func(i) for i in items])
    plans: dict[str, Any] = {}

    def amorsize_map() -> None:
        check(amorsize.map(func, items))
        plans["amorsize.map"] = amorsize.last_plan()

    first = timed(amorsize_map, 1)
    ways["amorsize.map, later calls"] = amorsize_map
    joblib_first: list[float] = []
    try:
        from joblib import Parallel, delayed

        import amorsize_joblib  # noqa: F401 - registers the backend "amorsize"

        def joblib_amorsize() -> None:
            check(Parallel(n_jobs=workers, backend="amorsize")(
                delayed(work)(DATA, i, n) for i in items))
            plans["joblib backend amorsize"] = amorsize.last_plan()

        joblib_first = timed(joblib_amorsize, 1)
        ways["joblib backend amorsize, later calls"] = joblib_amorsize
    except ImportError:
        pass
    # round robin: a change in the machine's load falls on every way alike
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.repeat):
        for name, run in ways.items():
            times[name] += timed(run, 1)
    rows = list(times.items())
    at = [name for name, _ in rows].index("amorsize.map, later calls")
    rows.insert(at, ("amorsize.map, first call (starts, measures, places)", first))
    if joblib_first:
        rows.insert(at + 2, ("joblib backend amorsize, first call (measures, places)",
                             joblib_first))
    floor = statistics.median(rows[0][1])
    print("| way | median s | x floor | all s |")
    print("|---|---|---|---|")
    for name, laps in rows:
        m = statistics.median(laps)
        print(f"| {name} | {m:.3f} | {m / floor:.2f} | {' '.join(f'{t:.3f}' for t in laps)} |")
    per_chunk = len(worker.ByValue(worker.PickledFunction(func)).data)
    live = shared.live_tokens()
    print(f"\nshared segments held: {0 if live is None else len(live[1])}; the partial crosses "
          f"with each chunk as {per_chunk} bytes; load average {os.getloadavg()[0]:.2f} at end")
    for name, plan in plans.items():
        if plan is not None:
            print(f"\n{name}'s plan: {plan.executor_type}, n_jobs={plan.n_jobs}, "
                  f"chunksize={plan.chunksize}; reasons:", *plan.reasons, sep="\n  ")
    amorsize.shutdown_global_pool_manager()


if __name__ == "__main__":
    main()
