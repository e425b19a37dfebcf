"""The core workloads (docs/benchmarks.md) through joblib: ``Parallel(n_jobs=-1)`` with the default backend
(loky), the threading backend and "amorsize", against a plain loop.

Each tool runs each workload ``--repeat`` times in a row (the same call again, as a program calling
a library in a loop does); the table shows the median, the first call separately, and the ratio
to the best tool. Results are checked equal to the loop's. Run: ``python benchmarks/bench_joblib.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time


def square(x):
    return x * x


def total(a):
    return float(a.sum())


def wait_2ms(x):
    time.sleep(0.002)
    return x


def _spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def cpu_2ms(x):
    _spin(0.002)
    return x


def cpu_40us(x):
    _spin(40e-6)
    return x


def workloads():
    """(name, function, items, calls per run): the same rows as bench_core.py's."""
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = [rng.random(131_072) for _ in range(200)]
    return [
        ("100k trivial calls (x*x)", square, list(range(100_000)), 1),
        ("200 × 1 MB numpy arrays, sum", total, arrays, 1),
        ("1k calls waiting 2 ms (I/O)", wait_2ms, list(range(1000)), 1),
        ("400 × 2 ms CPU", cpu_2ms, list(range(400)), 1),
        ("same call 100× on 500 × 40 µs", cpu_40us, list(range(500)), 100),
    ]


def tools():
    from joblib import Parallel, delayed

    import amorsize_joblib  # noqa: F401 - registers "amorsize"

    def loop(f, items):
        return [f(x) for x in items]

    def joblib_with(backend):
        def run(f, items):
            return Parallel(n_jobs=-1, backend=backend)(delayed(f)(x) for x in items)
        return run

    return {
        "plain loop": loop,
        "joblib n_jobs=1": lambda f, items: Parallel(n_jobs=1)(delayed(f)(x) for x in items),
        "joblib loky (default)": joblib_with(None),
        "joblib threading": joblib_with("threading"),
        "joblib amorsize": joblib_with("amorsize"),
    }


def measure(run, f, items, calls, expected):
    start = time.perf_counter()
    for _ in range(calls):
        out = run(f, items)
    seconds = time.perf_counter() - start
    if out != expected:
        raise AssertionError(f"{run} gave different results")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from amorsize import system

    print(f"usable CPUs: {system.usable_cpus()}, start method: {system.default_start_method()}, "
          f"{args.repeat} runs each (median; first run in brackets)\n")
    names = list(tools())
    print("| workload | " + " | ".join(names) + " | amorsize vs best | amorsize vs loky |")
    print("|---" * (len(names) + 3) + "|")
    for name, f, items, calls in workloads():
        expected = [f(x) for x in items]
        rows = {}
        for tool, run in tools().items():
            times = [measure(run, f, items, calls, expected) for _ in range(args.repeat)]
            rows[tool] = (statistics.median(times), times[0])
        best = min(m for m, _ in rows.values())
        ours = rows["joblib amorsize"][0]
        cells = [f"{m:.3f} s ({first:.3f})" + (" **best**" if m == best else "")
                 for m, first in rows.values()]
        print(f"| {name} | " + " | ".join(cells)
              + f" | {ours / best:.2f}x | {rows['joblib loky (default)'][0] / ours:.1f}x faster |")


if __name__ == "__main__":
    main()
