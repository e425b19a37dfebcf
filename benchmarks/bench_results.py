"""Large results coming back from process workers (issue 21): through the pipe, as before, or
through a file of shared memory the caller lends each call (``amorsize.pools.shared``).

Each case maps a function returning a numpy array (or ``bytes``) of the given size over the
items, on a warm 2-worker process pool, ``--repeat`` times each way, round robin (a change in
the machine's load falls on both alike); the pipe way is the same pool with no result file
lent (``shared.LENT_RESULT_FILES = 0``). The caller touches every result (a sum), so a lazy
transport could not look faster than it is.

Run: ``python benchmarks/bench_results.py [--repeat 5] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from amorsize.pools import shared
from amorsize.pools.manager import PoolManager

MB = 2**20


def array_of(mb_and_i: tuple[float, int]) -> np.ndarray:
    mb, i = mb_and_i
    return np.full(int(mb * MB) // 8, float(i))


def bytes_of(mb_and_i: tuple[float, int]) -> bytes:
    mb, i = mb_and_i
    return bytes([i % 256]) * int(mb * MB)


CASES = [  # (name, function, MB per result, results, chunk size)
    ("16 x 32 MB arrays, 1 per chunk", array_of, 32, 16, 1),
    ("200 x 1 MB arrays, 1 per chunk", array_of, 1, 200, 1),
    ("200 x 1 MB arrays, 10 per chunk", array_of, 1, 200, 10),
    ("16 x 32 MB bytes, 1 per chunk", bytes_of, 32, 16, 1),
    ("200 x 1 MB bytes, 1 per chunk", bytes_of, 1, 200, 1),
]


def run_once(pool, func, mb: float, count: int, chunksize: int, through_files: bool) -> float:
    shared.LENT_RESULT_FILES = 64 if through_files else 0
    t0 = time.perf_counter()
    results = pool.map(func, [(mb, i) for i in range(count)], chunksize=chunksize)
    for r in results:  # touched: every page read
        np.frombuffer(r, dtype=np.uint8).sum() if isinstance(r, bytes) else r.sum()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print(f"{args.workers} workers, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f} at start\n")
    print("| case | pipe median s | shared memory median s | pipe / shared | all pipe s | all shared s |")
    print("|---|---|---|---|---|---|")
    with PoolManager() as manager:
        pool = manager.get_pool(args.workers, "process")
        for name, func, mb, count, chunksize in CASES:
            times: dict[bool, list[float]] = {False: [], True: []}
            run_once(pool, func, mb, count, chunksize, True)  # warm: the files exist
            for _ in range(args.repeat):
                for way in (False, True):
                    times[way].append(run_once(pool, func, mb, count, chunksize, way))
            pipe, files = statistics.median(times[False]), statistics.median(times[True])
            print(f"| {name} | {pipe:.3f} | {files:.3f} | {pipe / files:.2f} | "
                  f"{' '.join(f'{t:.3f}' for t in times[False])} | "
                  f"{' '.join(f'{t:.3f}' for t in times[True])} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    main()
