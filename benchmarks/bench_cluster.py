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

``--weak-scaling [--per-worker 500]``: ``--per-worker`` 2 ms sleep items per worker on new
clusters of 1, 2, 4 and 8 single-thread workers (``dask worker --nworkers N --nthreads 1``), each
from a new interpreter: amorsize's first call and the median of the next ``--repeats``, and the
grid's best batch size; efficiency is T(1 worker) / T(N workers). ``--kill N_ITEMS``:
``amorsize_dask.imap`` of N_ITEMS 2 ms sleep items on ``--workers`` workers, one SIGKILLed once
25%, 50%, 75% of the results are in; each execution is logged to a file, so the items run again
are counted, against the run's largest batch.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
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


def logged_sleep_2ms(x: int, path: str) -> int:
    """``sleep_2ms``, each execution noted in ``path`` (one line, appended by any process)."""
    with open(path, "a") as f:
        f.write(f"{x}\n")
    return sleep_2ms(x)


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
def cli_cluster(n_workers: int, *, nanny: bool = False) -> Iterator[str]:
    """A scheduler and ``n_workers`` single-thread workers from the ``dask`` command line, on
    loopback only; yields the scheduler's address. Without ``nanny``, one ``dask worker
    --no-nanny`` process per worker (a killed worker stays dead); with it, one ``dask worker
    --nworkers n_workers`` command, its workers under nannies."""
    dask_cli = str(Path(sys.executable).with_name("dask"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")])}
    worker = [dask_cli, "worker", "--nthreads", "1", "--host", "127.0.0.1",
              "--dashboard-address", "127.0.0.1:0"]
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
            commands = ([[*worker, "--scheduler-file", file, "--nworkers", str(n_workers)]]
                        if nanny else
                        [[*worker, "--scheduler-file", file, "--nworkers", "1", "--no-nanny"]]
                        * n_workers)
            procs += [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL) for command in commands]
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
    best, best_size = min((median(functools.partial(batches_of, client, func, items, s)), s)
                          for s in grid(len(items)))
    first = timed(lambda: amorsize_dask.map(func, items, client=client), expected)
    ours = median(lambda: amorsize_dask.map(func, items, client=client))
    return (f"| {name} | {first:.2f} s | {ours:.2f} s | {per_item:.2f} s | {bag:.2f} s | "
            f"{jl:.2f} s | {best:.2f} s ({best_size}) | {ours / best:.2f}x |")


WEAK_WORKERS = (1, 2, 4, 8)


def weak_point(n_workers: int, per_worker: int, repeats: int) -> dict:
    """``per_worker`` 2 ms sleep items per worker on a new cluster of ``n_workers``: amorsize's
    first call, the median of the next ``repeats``, and each grid batch size's median."""
    from distributed import Client

    import amorsize
    import amorsize_dask

    items = list(range(n_workers * per_worker))
    with cli_cluster(n_workers, nanny=True) as address, \
            Client(address, set_as_default=False) as client:
        client.wait_for_workers(n_workers, timeout=120)
        first = timed(lambda: amorsize_dask.map(sleep_2ms, items, client=client), items)
        first_plan = amorsize.last_plan()
        ours = statistics.median(
            timed(lambda: amorsize_dask.map(sleep_2ms, items, client=client), items)
            for _ in range(repeats))
        plan = amorsize.last_plan()
        by_size = {size: statistics.median(
            timed(functools.partial(batches_of, client, sleep_2ms, items, size), items)
            for _ in range(repeats)) for size in grid(len(items))}
    best_size = min(by_size, key=by_size.__getitem__)
    return {"workers": n_workers, "items": len(items), "first": first, "ours": ours,
            "best": by_size[best_size], "best_size": best_size,
            "plans": [batches_line(p) for p in (first_plan, plan)],
            "per_item": plan.profile.per_item_seconds if plan is not None else 0.0}


def batches_line(plan) -> str:
    """The line of a plan's explanation that gives its batches."""
    lines = plan.explain().splitlines() if plan is not None else []
    return next((line.strip(" -") for line in lines if " batches on " in line), "")


def weak_scaling(per_worker: int, repeats: int) -> None:
    """Each cluster size in a new interpreter (so every first call is one), then the table:
    efficiency is T(1 worker) / T(N workers), the work per worker fixed."""
    import json

    points = []
    for n in WEAK_WORKERS:
        out = subprocess.run(
            [sys.executable, __file__, "--weak-point", str(n), "--per-worker", str(per_worker),
             "--repeats", str(repeats)], check=True, capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
                "PYTHONPATH", "")])}).stdout
        points.append(json.loads(out.strip().splitlines()[-1]))
        for when, line in zip(("first", "then"), points[-1]["plans"]):
            print(f"    {n} workers, {when}: {line}", flush=True)
    one = points[0]
    print(f"weak scaling: {per_worker} x 2 ms sleep items per single-thread worker; "
          f"medians of {repeats}")
    print("| workers | items | amorsize first | eff. | amorsize | eff. | best grid batch (size) "
          "| eff. | an item on a worker | amorsize's threads busy |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p in points:
        print(f"| {p['workers']} | {p['items']:,} | {p['first']:.2f} s | "
              f"{one['first'] / p['first']:.0%} | {p['ours']:.2f} s | "
              f"{one['ours'] / p['ours']:.0%} | {p['best']:.2f} s ({p['best_size']}) | "
              f"{one['best'] / p['best']:.0%} | {p['per_item'] * 1e3:.2f} ms | "
              f"{p['items'] * p['per_item'] / (p['workers'] * p['ours']):.0%} |")


KILL_AT = (0.25, 0.5, 0.75)
# batches this small keep the most batches in flight (MAX_IN_FLIGHT_PER_THREAD): a worker holds
# several queued behind the one it runs
KILL_SMALL_BATCH = 2


def kill_runs(n_workers: int, n_items: int) -> None:
    """``amorsize_dask.imap`` of ``n_items`` 2 ms sleep items, one worker SIGKILLed once a
    share of the results is in (its nanny starts another): the items run again, against the
    run's largest batch; last, the same in forced batches of ``KILL_SMALL_BATCH``."""
    import signal

    from distributed import Client

    import amorsize
    import amorsize_dask
    from amorsize_dask import cluster_plan

    items = list(range(n_items))
    with cli_cluster(n_workers, nanny=True) as address, \
            Client(address, set_as_default=False) as client, \
            tempfile.TemporaryDirectory() as tmp:
        client.wait_for_workers(n_workers, timeout=120)
        amorsize_dask.map(sleep_2ms, items, client=client)  # measured and planned once
        print(f"cluster: {n_workers} workers x 1 thread; {n_items:,} x 2 ms sleep items, "
              "amorsize_dask.imap; one worker SIGKILLed once a share of the results is in")
        print("| killed at | in order | items run again | largest batch | batches in flight "
              "| batches the killed worker held | wall |")
        print("|---|---|---|---|---|---|---|")
        for batch, at in [(None, at) for at in KILL_AT] + [(KILL_SMALL_BATCH, 0.5)]:
            client.wait_for_workers(n_workers, timeout=120)
            path = os.path.join(tmp, f"runs-{at}-{batch}.txt")
            victim, pid = min(client.run(os.getpid).items(), key=lambda kv: kv[1])
            func = functools.partial(logged_sleep_2ms, path=path)
            out = []
            held = 0
            start = time.perf_counter()
            for x in amorsize_dask.imap(func, items, client=client, batch=batch):
                out.append(x)
                if len(out) == int(at * n_items):
                    held = len(client.processing([victim]).get(victim, ()))
                    os.kill(pid, signal.SIGKILL)
            wall = time.perf_counter() - start
            plan = amorsize.last_plan()
            assert plan is not None
            with open(path) as f:
                runs = f.read().split()
            in_flight = cluster_plan.batches_in_flight(
                plan.n_jobs, plan.chunksize * plan.profile.per_item_seconds,
                plan.cluster.round_trip_seconds if plan.cluster else 0.0)
            forced = "" if batch is None else f" (batch={batch})"
            print(f"| {at:.0%}{forced} | {out == items} | {len(runs) - n_items} "
                  f"| {plan.chunksize} | {in_flight} | {held} | {wall:.2f} s |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weak-scaling", action="store_true",
                        help="2 ms sleep items, --per-worker per worker, on 1, 2, 4, 8 workers")
    parser.add_argument("--per-worker", type=int, default=500)
    parser.add_argument("--kill", type=int, metavar="N_ITEMS",
                        help="SIGKILL a worker mid-run, N_ITEMS 2 ms sleep items: items re-run")
    parser.add_argument("--weak-point", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.weak_point:
        import json

        print(json.dumps(weak_point(args.weak_point, args.per_worker, args.repeats)))
        return
    if args.kill:
        kill_runs(args.workers, args.kill)
        return
    if args.weak_scaling:
        weak_scaling(args.per_worker, args.repeats)
        return

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
