"""Sub-interpreters against serial, threads and processes, and what amorsize chooses (3.14+).

For each workload -- pure-Python CPU work of ``--items`` x ``--item-ms`` and ``--small-items`` x
``--small-item-us``, and the first one calling numpy (which refuses to load in a
sub-interpreter) -- prints a Markdown table: a list comprehension, ``amorsize.map`` forced on
threads, processes and interpreters, and ``amorsize.map`` left to choose, each as the first call
(measuring and starting its pool) and the median of ``--repeats`` later calls on warm pools.

Run: ``python benchmarks/bench_interpreters.py [--items 400] [--item-ms 2] [--small-items 2000]
[--small-item-us 200] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time

import amorsize
from amorsize import system
from amorsize.errors import EXECUTOR_TYPES


def spin(rounds: int) -> int:
    """Pure-Python CPU work: holds the GIL all along."""
    total = 0
    for i in range(rounds):
        total += i * i % 7
    return total


def spin_with_numpy(rounds: int) -> int:
    """The same work, ending in a numpy call: its module refuses sub-interpreters."""
    import numpy as np

    return spin(rounds) + int(np.int64(1))


def rounds_for(seconds: float) -> int:
    """How many rounds of ``spin`` take ``seconds`` here (the fastest of three timings: load
    from elsewhere only makes it slower)."""
    rounds = 10_000
    while True:
        took = min(timed(functools.partial(spin, rounds)) for _ in range(3))
        if took > 0.05:
            return max(1, int(rounds * seconds / took))
        rounds *= 2


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def bench(name: str, func, items: list, repeats: int) -> None:
    expected = [func(x) for x in items]
    rows = []
    serial = [timed(lambda: [func(x) for x in items]) for _ in range(repeats)]
    rows.append(("list comprehension", serial[0], statistics.median(serial), "serial"))
    for executor in ("thread", "process", "interpreter", None):
        amorsize.shutdown_global_pool_manager()  # every row starts its own pool
        times = []
        failure = ""
        for _ in range(repeats + 1):
            try:
                start = time.perf_counter()
                got = amorsize.map(func, items, executor=executor, resample=not times)
                times.append(time.perf_counter() - start)
                assert got == expected
            except Exception as exc:  # noqa: BLE001 - the row says what went wrong
                failure = f"fails: {type(exc).__name__}"
                break
        plan = amorsize.last_plan()
        chosen = (failure or f"{plan.executor_type}, n_jobs={plan.n_jobs}, "
                  f"chunksize={plan.chunksize}")
        label = f"amorsize.map(executor={executor!r})" if executor else "amorsize.map (its choice)"
        if failure:
            rows.append((label, float("nan"), float("nan"), chosen))
        else:
            rows.append((label, times[0], statistics.median(times[1:]), chosen))
        if executor is None:
            excluded = [r for r in plan.reasons if "interpreters excluded" in r]
            if excluded:
                rows.append(("  why not interpreters", float("nan"), float("nan"),
                             excluded[0][:110]))
    ideal = statistics.median(serial) / system.usable_cpus()
    print(f"\n### {name}\n")
    print(f"{system.usable_cpus()} usable CPUs; serial {_ms(statistics.median(serial))}, "
          f"ideal on every CPU {_ms(ideal)}\n")
    print("| run | first call (ms) | warm, median (ms) | speed-up (warm) | plan |")
    print("|---|---:|---:|---:|---|")
    for label, first, warm, plan in rows:
        speedup = statistics.median(serial) / warm if warm == warm and warm > 0 else float("nan")
        print(f"| {label} | {_ms(first)} | {_ms(warm)} | "
              f"{'' if speedup != speedup else f'{speedup:.2f}x'} | {plan} |")


def _ms(seconds: float) -> str:
    return "" if seconds != seconds else f"{seconds * 1e3:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--item-ms", type=float, default=2.0)
    parser.add_argument("--small-items", type=int, default=2_000)
    parser.add_argument("--small-item-us", type=float, default=200.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if "interpreter" not in EXECUTOR_TYPES:
        sys.exit(f"sub-interpreters need Python 3.14+; this is {sys.version.split()[0]}")
    print(f"Python {sys.version.split()[0]}, {system.usable_cpus()} usable CPUs")
    big = rounds_for(args.item_ms / 1e3)
    small = rounds_for(args.small_item_us / 1e6)
    bench(f"{args.items} x {args.item_ms:g} ms of pure-Python work", spin,
          [big] * args.items, args.repeats)
    bench(f"{args.small_items} x {args.small_item_us:g} µs of pure-Python work", spin,
          [small] * args.small_items, args.repeats)
    bench(f"{args.items} x {args.item_ms:g} ms, calling numpy", spin_with_numpy,
          [big] * args.items, args.repeats)


if __name__ == "__main__":
    main()
