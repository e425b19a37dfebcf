"""Warm pools against a fresh pool per call.

Three measurements, printed as Markdown tables:

1. ``--calls`` (50) calls of ``amorsize.map`` on a ~50 ms CPU workload (25 items of 2 ms of
   pure-Python work), on the global manager's warm pools, against the same work on a fresh
   ``ProcessPoolExecutor`` / ``multiprocessing.Pool`` per call, with the per-call overhead of each
   (wall time per call minus the ideal: serial time divided by the workers).
2. The optimize-then-get_pool pattern (``optimize`` then ``manager.get_pool(...)`` then ``pool.map``) with
   the global manager's warm pool, against the same with a fresh ``PoolManager`` per dataset.
3. What ``get_pool`` costs on a warm pool, in microseconds.

Run: ``python benchmarks/bench_pools.py [--calls 50] [--items 25] [--item-ms 2]``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import amorsize
from amorsize import PoolManager, demo_workloads, get_global_pool_manager, optimize, system


def timed_calls(run, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def bench_map(func, items: list, calls: int, n_workers: int) -> tuple[list[tuple], float]:
    expected = [func(x) for x in items]
    serial = timed_calls(lambda: [func(x) for x in items], calls)
    ideal = statistics.mean(serial) / n_workers
    rows = [("serial list comprehension (baseline)", serial)]

    def check(results: list) -> None:
        assert results == expected

    chunksize = max(1, len(items) // (4 * n_workers))
    amorsize.shutdown_global_pool_manager()
    rows.append(("amorsize.map, warm pools (global manager)",
                 timed_calls(lambda: check(amorsize.map(func, items)), calls)))
    plan = optimize(func, items)
    rows[-1] = (rows[-1][0] + f" (plan: {plan.executor_type}, n_jobs={plan.n_jobs})", rows[-1][1])
    with PoolManager() as manager:
        manager.get_pool(n_workers, "process")
        rows.append((f"warm PoolManager process pool({n_workers}), pool.map per call",
                     timed_calls(lambda: check(manager.get_pool(n_workers, "process").map(
                         func, items, chunksize=chunksize)), calls)))
    for method in ("forkserver", "fork"):
        ctx = multiprocessing.get_context(method)

        def fresh_executor(ctx=ctx) -> None:
            with ProcessPoolExecutor(n_workers, mp_context=ctx) as ex:
                check(list(ex.map(func, items, chunksize=chunksize)))

        def fresh_mp_pool(ctx=ctx) -> None:
            with ctx.Pool(n_workers) as pool:
                check(pool.map(func, items, chunksize=chunksize))

        rows.append((f"fresh ProcessPoolExecutor({n_workers}) per call, {method}",
                     timed_calls(fresh_executor, calls)))
        rows.append((f"fresh multiprocessing.Pool({n_workers}) per call, {method}",
                     timed_calls(fresh_mp_pool, calls)))
    return rows, ideal


def bench_optimize_then_get_pool(func, datasets: list[list], **pin: object) -> list[tuple]:
    rows = []

    def warm() -> None:
        manager = get_global_pool_manager()
        for dataset in datasets:
            result = optimize(func, dataset, **pin)
            pool = manager.get_pool(result.n_jobs, result.executor_type)
            assert pool.map(func, result.data, chunksize=result.chunksize) == [func(x) for x in dataset]

    def fresh() -> None:
        for dataset in datasets:
            result = optimize(func, dataset, **pin)
            with PoolManager() as manager:
                pool = manager.get_pool(result.n_jobs, result.executor_type)
                assert pool.map(func, result.data, chunksize=result.chunksize) == [func(x) for x in dataset]

    plan = optimize(func, datasets[0], **pin)
    rows.append((f"warm: global manager ({plan.executor_type}, n_jobs={plan.n_jobs})",
                 timed_calls(warm, 1)[0] / len(datasets)))
    rows.append(("fresh: a new PoolManager per dataset", timed_calls(fresh, 1)[0] / len(datasets)))
    return rows


def bench_lookup(n: int = 20_000) -> list[tuple[str, float]]:
    rows = []
    with PoolManager() as plain:
        for executor, n_jobs in (("serial", 1), ("thread", 2), ("process", 2)):
            plain.get_pool(n_jobs, executor)
            start = time.perf_counter()
            for _ in range(n):
                plain.get_pool(n_jobs, executor)
            rows.append((f"PoolManager().get_pool({n_jobs}, {executor!r})",
                         (time.perf_counter() - start) / n))
    manager = get_global_pool_manager()
    manager.get_pool(2, "process")
    start = time.perf_counter()
    for _ in range(n):
        manager.get_pool(2, "process")
    rows.append(("global manager get_pool(2, 'process'), events to plugins",
                 (time.perf_counter() - start) / n))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--items", type=int, default=25)
    parser.add_argument("--item-ms", type=float, default=2.0)
    parser.add_argument("--datasets", type=int, default=20)
    args = parser.parse_args()
    func = demo_workloads.cpu_func(args.item_ms / 1000)
    items = list(range(args.items))
    n_workers = min(2, system.usable_cpus()) if system.usable_cpus() > 1 else 1
    info = system.describe()
    print(f"Python {info['python']}, {info['usable_cpus']} usable CPUs, default start method "
          f"{info['start_method']}; workload: {args.items} items x {args.item_ms:g} ms CPU "
          f"(~{args.items * args.item_ms:g} ms serial)\n")

    rows, ideal = bench_map(func, items, args.calls, n_workers)
    print(f"{args.calls} calls; ideal per call on {n_workers} workers = serial / {n_workers} = "
          f"{ideal * 1e3:.1f} ms\n")
    print("| how | total | per call (mean) | per call (median) | overhead per call vs ideal |")
    print("|---|---|---|---|---|")
    for name, times in rows:
        mean = statistics.mean(times)
        print(f"| {name} | {sum(times):.2f} s | {mean * 1e3:.1f} ms | "
              f"{statistics.median(times) * 1e3:.1f} ms | {(mean - ideal) * 1e3:+.1f} ms |")
    warm_first = rows[1][1][0]
    print(f"\n(amorsize.map's first call, which measures the function and starts the pool: "
          f"{warm_first * 1e3:.0f} ms; included above)\n")

    datasets = [list(range(i * args.items, (i + 1) * args.items)) for i in range(args.datasets)]
    print(f"Seed usage pattern (optimize, get_pool, pool.map) over {args.datasets} datasets of "
          f"{args.items} items\n")
    print("| plan | how | per dataset |")
    print("|---|---|---|")
    for label, pin in (("as optimize decides", {}),
                       ("pinned: executor='process', n_jobs=2", {"executor": "process", "n_jobs": 2})):
        for name, seconds in bench_optimize_then_get_pool(func, datasets, **pin):
            print(f"| {label} | {name} | {seconds * 1e3:.1f} ms |")

    print("\nWarm get_pool lookup\n")
    print("| call | time per call |")
    print("|---|---|")
    for name, seconds in bench_lookup():
        print(f"| {name} | {seconds * 1e6:.2f} µs |")
    amorsize.shutdown_global_pool_manager()


if __name__ == "__main__":
    main()
