"""amorsize.map against the tools people use instead, on the core workloads and two more.

Run by hand (the machine is shared and noisy; nothing here is asserted):

    python3 benchmarks/bench_core.py [--repeat 100] [--rounds 3] [--only NAME ...] [--chart F.svg]

Every tool must return exactly the loop's results. Each cell is the best of ``--rounds`` runs
(one run when a run takes over 2 s); "amorsize 1st" is the very first call in this process,
which measures the function and may start a pool; "amorsize" is a later call on warm pools.
The last column is amorsize (warm) divided by the best time of any tool: 1.00 means amorsize
was the fastest.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import time
from collections.abc import Callable


def _serial(func, data):
    return [func(x) for x in data]


def _mp_pool(func, data):
    import multiprocessing

    with multiprocessing.Pool(os.cpu_count()) as pool:
        return pool.map(func, data)


def _process_pool_executor(func, data):
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(os.cpu_count()) as ex:
        return list(ex.map(func, data))


def _joblib(func, data, **kw):
    from joblib import Parallel, delayed

    return Parallel(n_jobs=-1, **kw)(delayed(func)(x) for x in data)


def _dask_processes(func, data):
    import dask.bag as db

    return db.from_sequence(data).map(func).compute(scheduler="processes")


def _amorsize(func, data):
    import amorsize

    return amorsize.map(func, data)


TOOLS: dict[str, Callable] = {
    "serial": _serial,
    "mp.Pool": _mp_pool,
    "ProcessPoolEx": _process_pool_executor,
    "joblib": _joblib,
    "joblib threads": functools.partial(_joblib, prefer="threads"),
    "dask processes": _dask_processes,
    "amorsize": _amorsize,
}


def grows(x: int, unit: int = 40) -> int:
    """Cost grows with the item: sorted data whose first items are cheap and last ones dear."""
    from amorsize.demo_workloads import burn

    return burn(x, unit * x)


def mixed(x: int, loops: int) -> int:
    """Half waiting, half computing, as a request handler that parses what it fetched."""
    from amorsize.demo_workloads import burn

    time.sleep(0.001)
    return burn(x, loops)


def workloads(repeat: int) -> list:
    from amorsize import demo_workloads as dw

    out = dw.standard(repeat)
    out.append(dw.DemoCase("sorted-cost", "300 items, cost rising 0 → 3 ms with the index",
                           grows, lambda: list(range(300))))
    out.append(dw.DemoCase("mixed-io-cpu", "300 calls: 1 ms wait + 1 ms CPU",
                           functools.partial(mixed, loops=dw.loops_for(0.001)),
                           lambda: list(range(300))))
    return out


def time_tool(tool: Callable, func: Callable, data: list, repeat: int, rounds: int,
              expected: list) -> float:
    best = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeat):
            result = tool(func, data)
        took = time.perf_counter() - t0
        if result != expected:
            raise AssertionError(f"{tool} returned different results")
        best = min(best, took)
        if took > 2.0:
            break
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=100, help="calls in the repeated workload")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="workload names to run")
    parser.add_argument("--skip-tools", nargs="*", default=[], help="tool names to leave out")
    parser.add_argument("--chart", help="also draw the speedups to this .svg/.png (needs the "
                                        "bench extra: matplotlib)")
    args = parser.parse_args()

    import amorsize
    from amorsize import system

    print(f"# {system.describe()}\n")
    tools = {k: v for k, v in TOOLS.items() if k not in args.skip_tools}
    cols = ["amorsize 1st", *tools]
    print("| workload | " + " | ".join(cols) + " | amorsize plan | amorsize / best |")
    print("|---" * (len(cols) + 3) + "|")
    charted: dict[str, dict[str, float]] = {}
    for w in workloads(args.repeat):
        if args.only and w.name not in args.only:
            continue
        data = w.make_data()
        expected = _serial(w.func, data)
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        for _ in range(w.repeat):
            first = _amorsize(w.func, data)
        times["amorsize 1st"] = time.perf_counter() - t0
        assert first == expected
        for name, tool in tools.items():
            times[name] = time_tool(tool, w.func, data, w.repeat, args.rounds, expected)
        plan = amorsize.optimize(w.func, data)
        best = min(v for k, v in times.items() if k != "amorsize 1st")
        cells = [f"{times[c]:.3f}" + ("**" if times[c] == best else "") for c in cols]
        shape = f"{plan.executor_type} x{plan.n_jobs} c{plan.chunksize}"
        print(f"| {w.name} | " + " | ".join(cells) + f" | {shape} | "
              f"{times['amorsize'] / best:.2f} |", flush=True)
        charted[w.name] = times
    if args.chart:
        from charts import speedup_chart

        drawn = speedup_chart("amorsize.map against the usual tools", charted, "serial",
                              args.chart, system.describe())
        print(f"\nchart: {drawn}")

    seen = workloads(1)[0]
    amorsize.optimize(seen.func, seen.make_data())
    data = seen.make_data()
    t0 = time.perf_counter()
    for _ in range(200):
        amorsize.optimize(seen.func, data)
    per_call = (time.perf_counter() - t0) / 200
    print(f"\noptimize() on a function it has seen: {per_call * 1e6:.0f} µs per call")
    amorsize.shutdown_global_pool_manager()


if __name__ == "__main__":
    main()
