"""The core workloads (docs/benchmarks.md) and two of bench_decisions.py's through joblib: "amorsize"
against a small grid of joblib's own configurations, and a plain loop.

The grid: ``n_jobs=1``, loky (the default backend) with ``n_jobs=-1``, and the threading backend
with ``n_jobs=-1`` and with 8 and 32 threads (``batch_size="auto"`` throughout). Each tool runs
each workload ``--repeat`` times (the same call again, as a program calling a library in a loop
does), in rounds of one run per tool, so the machine's drifting load falls on every tool alike; a
configuration over 4x the best first run in its row is timed once. The table shows
the median, the first call separately, and the ratio to the best
joblib configuration (the plain loop is shown, not counted: no backend can beat building no
``delayed`` calls). Results are checked equal to the loop's.
Run: ``python benchmarks/bench_joblib.py [--repeat N] [--only WORDS]``.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import random
import statistics
import time

from amorsize.demo_workloads import cpu_func


def square(x):
    return x * x


def total(a):
    return float(a.sum())


def wait_2ms(x):
    time.sleep(0.002)
    return x


def sha256_hex(block):
    """hashlib releases the GIL on large buffers."""
    return hashlib.sha256(block).hexdigest()


def similarity(pair):
    return difflib.SequenceMatcher(None, pair[0], pair[1]).ratio()


def _pairs(count, length=100):
    rng = random.Random(5)

    def s():
        return "".join(rng.choice("abcdefgh ") for _ in range(length))

    return [(s(), s()) for _ in range(count)]


def workloads():
    """(name, function, items, calls per run): the same rows as bench_core.py's."""
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = [rng.random(131_072) for _ in range(200)]
    return [
        ("100k trivial calls (x*x)", square, list(range(100_000)), 1),
        ("200 × 1 MB numpy arrays, sum", total, arrays, 1),
        ("1k calls waiting 2 ms (I/O)", wait_2ms, list(range(1000)), 1),
        # a fixed count of pure-Python operations, not a spin on the clock (threads would
        # finish such spins together on a busy machine)
        ("400 × 2 ms CPU", cpu_func(0.002), list(range(400)), 1),
        ("400 × 17 ms CPU", cpu_func(0.017), list(range(400)), 1),
        ("same call 100× on 500 × 40 µs", cpu_func(40e-6), list(range(500)), 100),
        ("sha256 of 16 × 8 MB (C, releases the GIL)", sha256_hex,
         [random.Random(1).randbytes(8 << 20) for _ in range(16)], 1),
        ("difflib ratio of 300 pairs of 100 chars", similarity, _pairs(300), 1),
    ]


def tools():
    from joblib import Parallel, delayed

    import amorsize_joblib  # noqa: F401 - registers "amorsize"

    def loop(f, items):
        return [f(x) for x in items]

    def joblib_with(backend, n_jobs=-1):
        def run(f, items):
            return Parallel(n_jobs=n_jobs, backend=backend)(delayed(f)(x) for x in items)
        return run

    return {
        "plain loop": loop,
        "joblib n_jobs=1": lambda f, items: Parallel(n_jobs=1)(delayed(f)(x) for x in items),
        "joblib loky (default)": joblib_with(None),
        "joblib threading": joblib_with("threading"),
        "threading x8": joblib_with("threading", 8),
        "threading x32": joblib_with("threading", 32),
        "joblib amorsize": joblib_with("amorsize"),
    }


AMORSIZE = "joblib amorsize"
HOPELESS = 4  # a configuration this many times slower than the best so far is timed once


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
    parser.add_argument("--only", nargs="+", metavar="WORD",
                        help="run the workloads whose name contains one of these words")
    parser.add_argument("--chart", help="also draw the speedups to this .svg/.png (needs the "
                                        "bench extra: matplotlib)")
    args = parser.parse_args()
    from amorsize import system

    print(f"usable CPUs: {system.usable_cpus()}, start method: {system.default_start_method()}, "
          f"{args.repeat} runs each (median; first run in brackets)\n")
    names = list(tools())
    print("| workload | " + " | ".join(names)
          + " | best joblib configuration | amorsize / best | amorsize vs loky |")
    print("|---" * (len(names) + 4) + "|")
    charted: dict[str, dict[str, float]] = {}
    for name, f, items, calls in workloads():
        if args.only and not any(word in name for word in args.only):
            continue
        expected = [f(x) for x in items]
        # Rounds, each tool once per round: a shared machine's load drifts over the seconds a
        # row takes, and in rounds every tool meets the same drift.
        runs = tools()
        times: dict[str, list[float]] = {tool: [] for tool in runs}
        fastest = float("inf")
        for tool, run in runs.items():
            times[tool].append(measure(run, f, items, calls, expected))
            if tool != "plain loop":
                fastest = min(fastest, times[tool][0])
        contenders = [tool for tool in runs
                      if times[tool][0] <= HOPELESS * fastest or tool == AMORSIZE]
        for _ in range(args.repeat - 1):
            for tool in contenders:
                times[tool].append(measure(runs[tool], f, items, calls, expected))
        rows = {tool: (statistics.median(t), t[0]) for tool, t in times.items()}
        grid = {tool: m for tool, (m, _) in rows.items() if tool not in ("plain loop", AMORSIZE)}
        best_tool = min(grid, key=grid.__getitem__)
        best = grid[best_tool]
        ours = rows[AMORSIZE][0]
        cells = [f"{m:.3f} s ({first:.3f})" + (" **best**" if tool == best_tool else "")
                 for tool, (m, first) in rows.items()]
        print(f"| {name} | " + " | ".join(cells) + f" | {best_tool} | {ours / best:.2f}x | "
              f"{rows['joblib loky (default)'][0] / ours:.1f}x faster |", flush=True)
        # the chart's amorsize bar first: its name must start with "amorsize"
        charted[name] = {("amorsize" if tool == AMORSIZE else tool): m
                         for tool, (m, _) in rows.items()}
    if args.chart:
        from charts import speedup_chart

        print(f"\nchart: {speedup_chart('joblib backends', charted, 'plain loop', args.chart)}")


if __name__ == "__main__":
    main()
