"""A function over a large object on a cluster: what crosses to the workers, first call and next.

Run: ``python benchmarks/bench_cluster_shared.py [--mb 100] [--items 400] [--batch 5]``. A
``LocalCluster`` of two single-thread worker processes on 127.0.0.1 runs
``amorsize_dask.map(partial(func, big), items)`` twice, in batches of ``--batch`` items (many
batches). Two objects: ``tests/dask_helpers.Payload`` (bytes that count, in each worker
process, how often they were unpickled there: each time is one crossing) and a numpy array of
the same size. Printed per call: wall time, and for the payload the unpicklings per worker.
Run it against another checkout (``PYTHONPATH=<checkout>``) to compare.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
import warnings
from functools import partial

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))


def array_item(x: int, array) -> float:
    return float(array[x % len(array)]) + x


def main() -> None:
    import numpy
    from dask_helpers import Payload, payload_unpickled, with_payload
    from distributed import Client, LocalCluster

    import amorsize_dask

    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--batch", type=int, default=5)
    args = parser.parse_args()
    nbytes = args.mb * 2**20
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        amorsize_dask.map(abs, range(10), client=client)  # the cluster measured, workers warm
        cases = [("payload", partial(with_payload, payload=Payload(nbytes))),
                 ("numpy array", partial(array_item, array=numpy.ones(nbytes // 8)))]
        for name, func in cases:
            for call in (1, 2):
                before = client.run(payload_unpickled)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    start = time.perf_counter()
                    amorsize_dask.map(func, range(args.items), client=client, batch=args.batch)
                    seconds = time.perf_counter() - start
                after = client.run(payload_unpickled)
                crossed = sorted(after[w] - before[w] for w in after)
                large = sum("large graph" in str(w.message) for w in caught)
                print(f"{args.mb} MB {name}, call {call}: {seconds:.3f} s"
                      + (f", unpickled per worker {crossed}" if name == "payload" else "")
                      + (f", {large} 'large graph' warnings" if large else ""))


if __name__ == "__main__":
    main()
