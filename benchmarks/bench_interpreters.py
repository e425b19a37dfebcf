"""Sub-interpreters against serial, threads and processes, and what amorsize chooses (3.14+).

For each workload -- pure-Python CPU work of ``--items`` x ``--item-ms`` and ``--small-items`` x
``--small-item-us``, and the first one calling numpy (which refuses to load in a
sub-interpreter) -- prints a Markdown table: a list comprehension, ``amorsize.map`` forced on
threads, processes and interpreters, and ``amorsize.map`` left to choose, each as the first call
(measuring and starting its pool) and the median of ``--repeats`` later calls on warm pools;
and the best of a grid of chunk sizes on processes and on interpreters (every CPU). The warm
calls take turns, round after round, so the ratios compare runs made under the same load.

Run: ``python benchmarks/bench_interpreters.py [--items 400] [--item-ms 2] [--small-items 2000]
[--small-item-us 200] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

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


def grid(n: int, cpus: int) -> list[int]:
    """Chunk sizes a grid search tries: from one chunk per worker to 32 per worker."""
    return sorted({max(1, n // (cpus * k)) for k in (1, 2, 4, 8, 16, 32)})


def bench(name: str, func, items: list, repeats: int) -> None:
    """One table: every run is timed once per round, the runs taking turns round after round,
    so load from elsewhere that comes and goes weighs on them alike; medians of the rounds."""
    expected = [func(x) for x in items]
    cpus = system.usable_cpus()
    runs: dict[str, Callable[[], Any]] = {"list comprehension": lambda: [func(x) for x in items]}
    first: dict[str, float] = {}
    plans: dict[str, str] = {"list comprehension": "serial"}
    amorsize.shutdown_global_pool_manager()
    for executor in ("thread", "process", "interpreter", None):
        label = f"amorsize.map(executor={executor!r})" if executor else "amorsize.map (its choice)"
        call = functools.partial(amorsize.map, func, items, executor=executor)
        try:
            amorsize.shutdown_global_pool_manager()  # the first call starts its own pool
            first[label] = timed(lambda: _check(call(resample=True), expected))  # noqa: B023
        except Exception as exc:  # noqa: BLE001 - the row says what went wrong
            plans[label] = f"fails: {type(exc).__name__}: {_gist(str(exc))}"
            continue
        plan = amorsize.last_plan()
        plans[label] = f"{plan.executor_type}, n_jobs={plan.n_jobs}, chunksize={plan.chunksize}"
        runs[label] = call
        if executor is None:
            plans["  why not interpreters"] = ""  # said once the warm calls ran
    for executor in ("process", "interpreter"):
        for chunksize in grid(len(items), cpus):
            label = f"grid: {executor}, n_jobs={cpus}, chunksize={chunksize}"
            call = functools.partial(amorsize.map, func, items, executor=executor, n_jobs=cpus,
                                     chunksize=chunksize)
            try:
                _check(call(), expected)  # its pool warm, its plan remembered
            except Exception:  # noqa: BLE001, S112 - a kind that cannot run it has no grid
                break
            runs[label] = call
    times: dict[str, list[float]] = {label: [] for label in runs}
    for _ in range(repeats):
        for label, call in runs.items():
            times[label].append(timed(call))
            if label.startswith("amorsize.map"):  # the plan the warm calls ran
                plan = amorsize.last_plan()
                plans[label] = (f"{plan.executor_type}, n_jobs={plan.n_jobs}, "
                                f"chunksize={plan.chunksize}")
                if label == "amorsize.map (its choice)":
                    plans["  why not interpreters"] = _why_not_interpreters(plan)
    if not plans.get("  why not interpreters", True):
        del plans["  why not interpreters"]
    warm = {label: statistics.median(t) for label, t in times.items()}
    rows = [(label, first.get(label, float("nan")), warm.get(label, float("nan")), plan)
            for label, plan in plans.items()]
    for executor in ("process", "interpreter"):
        tried = [label for label in runs if label.startswith(f"grid: {executor},")]
        if tried:
            best = min(tried, key=warm.__getitem__)
            rows.append((f"{executor}es, grid best" if executor == "process"
                         else f"{executor}s, grid best", float("nan"), warm[best],
                         best.removeprefix("grid: ")))
    serial = warm["list comprehension"]
    print(f"\n### {name}\n")
    print(f"{cpus} usable CPUs; serial {_ms(serial)} ms, ideal on every CPU {_ms(serial / cpus)} "
          f"ms; medians of {repeats} rounds\n")
    print("| run | first call (ms) | warm, median (ms) | speed-up (warm) | plan |")
    print("|---|---:|---:|---:|---|")
    for label, first_call, median, plan in rows:
        speedup = serial / median if median == median and median > 0 else float("nan")
        print(f"| {label} | {_ms(first_call)} | {_ms(median)} | "
              f"{'' if speedup != speedup else f'{speedup:.2f}x'} | {plan} |")


def _why_not_interpreters(plan: amorsize.Plan) -> str:
    """What the plan says of interpreters when it did not choose them: why they were left out,
    or each kind's predicted time."""
    if plan.executor_type == "interpreter":
        return ""
    excluded = [r for r in plan.reasons if "interpreters excluded" in r]
    if excluded:
        return _gist(excluded[0])
    return "predicted: " + ", ".join(f"{kind} {seconds * 1e3:.0f} ms"
                                     for kind, seconds in sorted(plan.predictions.items()))


def _gist(text: str) -> str:
    """The line of an error that says why (numpy's ImportError starts with a blank line and
    says "does not support loading in subinterpreters" a few lines on)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    said = [line for line in lines if "subinterpreter" in line]
    return (said or lines or [""])[0][:200]


def _check(got: list, expected: list) -> None:
    if got != expected:
        raise AssertionError("amorsize.map gave another answer than the list comprehension")


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
