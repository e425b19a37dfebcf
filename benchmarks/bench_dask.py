"""The core workloads as Dask graphs, on "processes", "threads", "sync" and "amorsize".

Run: ``python benchmarks/bench_dask.py [--repeats N] [--computes N]``. Each workload is built
the way a Dask user writes it (``dask.bag`` with its default partitioning, or ``dask.delayed``);
every scheduler computes it ``--repeats`` times and the best time is kept, except the
repeated-compute workload, which times ``--computes`` computes in a row in total. Results are
checked equal to the "sync" scheduler's. amorsize's first compute of each workload (when it
measures) is printed in its own column.
"""

from __future__ import annotations

import argparse
import time

SCHEDULERS = ("processes", "threads", "sync", "amorsize")


def square(x):
    return x * x


def array_sum(a):
    return float(a.sum())


def wait_io(x):
    time.sleep(0.002)
    return x


def cpu_2ms(x):
    end = time.process_time() + 0.002
    while time.process_time() < end:
        pass
    return x


def cpu_40us(x):
    end = time.perf_counter() + 40e-6
    while time.perf_counter() < end:
        pass
    return x


def workloads() -> list[tuple[str, object, int]]:
    """(name, collection, repetitions) for each row of the table."""
    import dask
    import dask.bag as db
    import numpy as np

    arrays = [np.full(131_072, float(i)) for i in range(200)]
    return [
        ("100k trivial calls (bag)", db.from_sequence(range(100_000)).map(square).sum(), 1),
        ("200 x 1 MB arrays, cheap sum (bag)",
         db.from_sequence(arrays, npartitions=200).map(array_sum).sum(), 1),
        ("1k calls waiting 2 ms on I/O (bag)",
         db.from_sequence(range(1000), npartitions=100).map(wait_io).sum(), 1),
        ("400 x 2 ms CPU (delayed)", dask.delayed(sum)([dask.delayed(cpu_2ms)(i)
                                                         for i in range(400)]), 1),
        ("10k tiny tasks (delayed)", dask.delayed(sum)([dask.delayed(square)(i)
                                                         for i in range(10_000)]), 1),
        ("repeated: 500 x 40 us (bag)",
         db.from_sequence(range(500)).map(cpu_40us).sum(), 0),
    ]


def time_compute(collection, scheduler: str, times: int) -> tuple[float, object]:
    start = time.perf_counter()
    for _ in range(times):
        result = collection.compute(scheduler=scheduler)
    return time.perf_counter() - start, result


def main() -> None:
    import amorsize_dask  # noqa: F401 - registers scheduler="amorsize"

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--computes", type=int, default=100)
    parser.add_argument("--chart", help="also draw the speedups to this .svg/.png (needs the "
                                        "bench extra: matplotlib)")
    args = parser.parse_args()
    rows = []
    for name, collection, per_run in workloads():
        expected = collection.compute(scheduler="sync")
        times: dict[str, float] = {}
        first = None
        for scheduler in SCHEDULERS:
            if per_run == 0:
                seconds, result = time_compute(collection, scheduler, args.computes)
            else:
                runs = [time_compute(collection, scheduler, 1) for _ in range(args.repeats)]
                if scheduler == "amorsize":
                    first = runs[0][0]
                seconds, result = min(runs, key=lambda r: r[0])
            assert result == expected, (name, scheduler)
            times[scheduler] = seconds
        rows.append((name, times, first))
        print(_row(name, times, first), flush=True)
    print()
    print(_table(rows, args))
    if args.chart:
        from charts import speedup_chart

        charted = {name: dict(times) for name, times, _ in rows}
        print(f"\nchart: {speedup_chart('Dask schedulers', charted, 'sync', args.chart)}")


def _row(name: str, times: dict[str, float], first: float | None) -> str:
    best = min(v for k, v in times.items() if k != "amorsize")
    return (f"{name}: " + ", ".join(f"{k} {v:.3f}s" for k, v in times.items())
            + f"; amorsize/best-other {times['amorsize'] / best:.2f}x"
            + ("" if first is None else f"; amorsize first compute {first:.3f}s"))


def _table(rows: list, args: argparse.Namespace) -> str:
    head = ("| workload | " + " | ".join(f'`"{s}"`' for s in SCHEDULERS)
            + " | amorsize / best other | amorsize vs processes | amorsize, first compute |")
    lines = [head, "|" + "---|" * (len(SCHEDULERS) + 4)]
    for name, times, first in rows:
        best = min(v for k, v in times.items() if k != "amorsize")
        cells = []
        for s in SCHEDULERS:
            text = f"{times[s]:.3f} s"
            cells.append(f"**{text}**" if times[s] == min(times.values()) else text)
        lines.append(
            f"| {name} | " + " | ".join(cells)
            + f" | {times['amorsize'] / best:.2f}x"
            + f" | {times['processes'] / times['amorsize']:.1f}x faster"
            + f" | {'-' if first is None else f'{first:.3f} s'} |"
        )
    lines.append("")
    lines.append(f"Best of {args.repeats} computes per cell; the repeated row is "
                 f"{args.computes} computes in a row, in total.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
