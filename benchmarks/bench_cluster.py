"""``amorsize_dask.map`` on a cluster started from the command line, against the usual ways.

Run: ``python benchmarks/bench_cluster.py [--workers 2] [--repeats 3]``. It starts
``dask scheduler`` and ``--workers`` ``dask worker --nworkers 1 --nthreads 1`` processes, all on
127.0.0.1 (dashboards on free loopback ports), and stops them at the end. Each workload runs
under: ``amorsize_dask.map`` (the first call in its own column: it measures; then the median of
``--repeats`` calls, planned from the runs before), ``client.map`` + ``gather`` (one task per
item), ``dask.bag`` ``.map().compute()`` with its default partitions, joblib's ``"dask"``
backend, and ``client.map`` over batches of each size of a grid (the best kept, with its size).
Every result is checked against a plain loop. Last, the share of items each worker ran under
``amorsize_dask.map``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu(x: int, seconds: float) -> int:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    return x


def cpu_50us(x: int) -> int:
    return cpu(x, 50e-6)


def cpu_2ms(x: int) -> int:
    return cpu(x, 2e-3)


def cpu_50ms(x: int) -> int:
    return cpu(x, 50e-3)


def sleep_2ms(x: int) -> int:
    time.sleep(2e-3)
    return x


def array_sum(a) -> float:
    return float(a.sum())


def where_2ms(x: int) -> str:
    import distributed

    cpu(x, 2e-3)
    return distributed.get_worker().address


def workloads() -> list[tuple[str, Callable, list]]:
    import numpy as np

    return [
        ("2,000 x 50 us CPU", cpu_50us, list(range(2000))),
        ("500 x 2 ms CPU", cpu_2ms, list(range(500))),
        ("100 x 50 ms CPU", cpu_50ms, list(range(100))),
        ("500 x 2 ms sleep", sleep_2ms, list(range(500))),
        ("100 x 1 MiB array", array_sum, [np.full(131_072, float(i)) for i in range(100)]),
    ]


@contextlib.contextmanager
def cli_cluster(n_workers: int) -> Iterator[str]:
    """A scheduler and ``n_workers`` single-thread workers from the ``dask`` command line, on
    loopback only; yields the scheduler's address."""
    dask_cli = str(Path(sys.executable).with_name("dask"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")])}
    with tempfile.TemporaryDirectory() as tmp:
        file = os.path.join(tmp, "scheduler.json")
        procs = [subprocess.Popen(
            [dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--dashboard-address", "127.0.0.1:0", "--scheduler-file", file],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        try:
            while not os.path.exists(file):
                time.sleep(0.1)
            time.sleep(0.2)
            procs += [subprocess.Popen(
                [dask_cli, "worker", "--scheduler-file", file, "--nworkers", "1", "--nthreads",
                 "1", "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0",
                 "--no-nanny"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for _ in range(n_workers)]
            import json

            with open(file) as f:
                yield json.load(f)["address"]
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                p.wait(timeout=30)


def timed(run: Callable[[], list], expected: list) -> float:
    start = time.perf_counter()
    out = run()
    seconds = time.perf_counter() - start
    if out != expected:
        raise AssertionError("results differ from a plain loop")
    return seconds


def grid(n: int) -> list[int]:
    sizes = {max(1, n // k) for k in (1, 2, 4, 8, 16, 32, 64, 128)}
    return sorted(sizes, reverse=True)


def batches_of(client, func: Callable, items: list, size: int) -> list:
    def run_batch(batch: list) -> list:
        return [func(x) for x in batch]

    futures = client.map(run_batch, [items[i:i + size] for i in range(0, len(items), size)],
                         pure=False)
    return [r for batch in client.gather(futures) for r in batch]


def row(client, name: str, func: Callable, items: list, repeats: int) -> str:
    """One workload under every way, as a row of the table (amorsize's plan is the last)."""
    import dask.bag as db
    import joblib

    import amorsize_dask

    expected = [func(x) for x in items] if func is array_sum else list(items)

    def median(run: Callable[[], list]) -> float:
        return statistics.median(timed(run, expected) for _ in range(repeats))

    per_item = median(lambda: client.gather(client.map(func, items, pure=False)))
    bag = median(lambda: db.from_sequence(items).map(func).compute(scheduler=client))
    with client.as_current(), joblib.parallel_config(backend="dask"):
        jl = median(lambda: joblib.Parallel()(joblib.delayed(func)(x) for x in items))
    best, best_size = min((median(lambda s=s: batches_of(client, func, items, s)), s)
                          for s in grid(len(items)))
    first = timed(lambda: amorsize_dask.map(func, items, client=client), expected)
    ours = median(lambda: amorsize_dask.map(func, items, client=client))
    return (f"| {name} | {first:.2f} s | {ours:.2f} s | {per_item:.2f} s | {bag:.2f} s | "
            f"{jl:.2f} s | {best:.2f} s ({best_size}) | {ours / best:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from distributed import Client

    import amorsize
    import amorsize_dask

    with cli_cluster(args.workers) as address, Client(address, set_as_default=False) as client:
        client.wait_for_workers(args.workers, timeout=120)
        print(f"cluster: {args.workers} workers x 1 thread at {address}; medians of "
              f"{args.repeats}")
        print("| workload | amorsize first | amorsize | client.map+gather | bag | joblib dask "
              "| best grid batch (size) | amorsize / best |")
        print("|---|---|---|---|---|---|---|---|")
        for name, func, items in workloads():
            print(row(client, name, func, items, args.repeats), flush=True)
            plan = amorsize.last_plan()
            if plan is not None:
                print("    amorsize: " + plan.explain().splitlines()[-1].strip(), flush=True)
        counts: Counter[str] = Counter()
        for _ in range(args.repeats):
            counts.update(amorsize_dask.map(where_2ms, range(500), client=client))
        shares = ", ".join(f"{n / sum(counts.values()):.0%}" for n in counts.values())
        print(f"items per worker under amorsize_dask.map, 500 x 2 ms CPU: {shares}")


if __name__ == "__main__":
    main()
