"""Measuring on the cluster itself: what a task costs it, and what the function costs on a
worker (whose hardware, and whose reach to the data, may differ from the caller's)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle

from amorsize.optimizer.probe import Probe, Sample
from amorsize.plan import Cluster
from amorsize_dask.cluster_plan import SCATTER_BYTES
from amorsize_dask.cluster_shared import published, shipped
from amorsize_dask.cluster_worker import nothing, timed_calls

BURST_PER_THREAD = 8
BURST_MIN, BURST_MAX = 16, 128
SAMPLE_ITEMS = 8
SAMPLE_BUDGET_SECONDS = 0.1
MEASURED_BY = "a cluster worker"
TRANSFER_PROBE_BYTES = 4 * 2**20
DIRECT_PROBE_SECONDS = 2.0

_known: weakref.WeakKeyDictionary[Any, Cluster] = weakref.WeakKeyDictionary()
_burst: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
_transfer: weakref.WeakKeyDictionary[Any, tuple[float, float]] = weakref.WeakKeyDictionary()
_direct: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def cluster_facts(client: Any) -> Cluster:
    """The cluster's workers and threads, and what a task costs it, measured once per Client
    and again whenever its workers or their threads change; corrected by every run in between
    (``learn_from_run``)."""
    threads = dict(client.nthreads())
    known = _known.get(client)
    if known is not None and known.threads == threads:
        return known
    round_trip, task = task_costs(client, max(1, sum(threads.values())))
    _burst[client] = task
    facts = _known[client] = Cluster(address=str(client.scheduler.address), threads=threads,
                                     task_seconds=task, round_trip_seconds=round_trip)
    return facts


def learn_from_run(client: Any, facts: Cluster, wall_seconds: float, compute_seconds: float,
                   n_batches: int, transfer_seconds: float = 0.0,
                   longest_batch_seconds: float = 0.0) -> None:
    """Fold what a task cost in a finished run into what the next plan uses: the run's wall
    time past a round trip, its threads' share of the work, ``transfer_seconds`` (what its
    items took to reach the workers, as measured by ``transfer_costs``: a run of large items
    says nothing of the tasks of the next ones) and the threads' idle time at its end, which
    can reach its longest batch (``longest_batch_seconds``) on all but one thread: a run whose
    threads ended apart (one worker slowed by other work) says nothing of the tasks either,
    and counted would make the next plan's batches fewer, their ends further apart, and the
    figure higher still. Per batch (workers computing
    answer the scheduler more slowly than idle ones in the burst), halfway from the figure
    before, and never below the burst's: where the caller and the scheduler share the workers'
    cores, what they spend on each batch is taken from the batches' own times, so a run can
    show no cost at all. Runs of fewer batches than threads say little."""
    if n_batches < facts.n_threads or _known.get(client) is not facts:
        return
    idle = longest_batch_seconds * (facts.n_threads - 1) / facts.n_threads
    spent = (wall_seconds - facts.round_trip_seconds - compute_seconds / facts.n_threads
             - transfer_seconds - idle)
    observed = max(spent, 0.0) / n_batches
    burst = _burst.get(client, facts.task_seconds)
    task = max(burst, facts.task_seconds + 0.5 * (observed - facts.task_seconds))
    _known[client] = dataclasses.replace(facts, task_seconds=task)


def burst_seconds(client: Any) -> float | None:
    """What a task cost in the burst of empty tasks, before any run corrected it."""
    return _burst.get(client)


def task_costs(client: Any, threads: int) -> tuple[float, float]:
    """(one task alone, one more task in a burst): an empty task submitted and waited for, the
    best of two; then what one more task adds to a burst of empty tasks sent as a run sends
    its batches -- what a task costs when the cluster is busy, which is what a run pays.

    Each task of a burst is submitted on its own and its result fetched as it completes
    (``as_completed``), as a run does; the cost is the difference between a burst and one
    half as long, per task, so neither the round trip nor the first tasks on a new cluster
    (slower: the workers load the function) count in it.
    """
    _burst_run(client, max(1, threads))
    round_trip = min(_timed_round_trip(client) for _ in range(2))
    n = min(BURST_MAX, max(BURST_MIN, BURST_PER_THREAD * threads))
    half, whole = _burst_run(client, n // 2), _burst_run(client, n)
    return round_trip, max((whole - half) / (n - n // 2), whole / n / 10)


def _burst_run(client: Any, n: int) -> float:
    from distributed import as_completed

    start = time.perf_counter()
    futures = [client.submit(nothing, i, pure=False) for i in range(n)]
    for _ in as_completed(futures, loop=client.loop, with_results=True):
        pass
    return time.perf_counter() - start


def transfer_costs(client: Any) -> tuple[float, float]:
    """(a scatter call, one more byte in it): what data costs to reach a worker from here
    (``client.scatter``, as a run's large batches go), measured once per Client: one byte and
    ``TRANSFER_PROBE_BYTES`` scattered, the best of two each.

    Scattered through the scheduler, and straight to the workers too (``direct=True``) when
    they answer this process within ``DIRECT_PROBE_SECONDS``: a run scatters the cheaper
    way (``scatter_direct``). A Client made with ``direct_to_workers`` set keeps its way."""
    known = _transfer.get(client)
    if known is None:
        chosen = client.direct_to_workers
        ways = [bool(chosen)] if chosen is not None else [False, True]
        costs: dict[bool, tuple[float, float]] = {}
        for direct in ways:
            try:
                small, big = (min(_timed_scatter(client, n, direct) for _ in range(2))
                              for n in (1, TRANSFER_PROBE_BYTES))
            except Exception:  # workers this process cannot reach: the scheduler's way
                if not direct:
                    raise
                continue
            costs[direct] = (small, max(0.0, big - small) / TRANSFER_PROBE_BYTES)
        way = min(costs, key=lambda d: costs[d][0] + costs[d][1] * TRANSFER_PROBE_BYTES)
        _direct[client] = way
        known = _transfer[client] = costs[way]
    return known


def scatter_direct(client: Any) -> bool | None:
    """How a run scatters its large batches on ``client``: straight to the workers (True),
    through the scheduler (False), as ``transfer_costs`` found cheaper; None before it ran
    (dask's default)."""
    return _direct.get(client)


def _timed_scatter(client: Any, n_bytes: int, direct: bool) -> float:
    """Seconds to scatter ``n_bytes``; straight to the workers, given up after
    ``DIRECT_PROBE_SECONDS`` (a worker this process cannot reach would keep a connection
    trying for dask's connect timeout)."""
    payload = bytes(n_bytes)
    start = time.perf_counter()
    if direct:
        asked = asyncio.run_coroutine_threadsafe(
            client.scatter([payload], hash=False, direct=True, asynchronous=True),
            client.loop.asyncio_loop)
        try:
            future = asked.result(timeout=DIRECT_PROBE_SECONDS)[0]
        except BaseException:
            asked.cancel()
            raise
    else:
        future = client.scatter([payload], hash=False, direct=False)[0]
    elapsed = time.perf_counter() - start
    del future  # released on the cluster
    return elapsed


def _timed_round_trip(client: Any) -> float:
    start = time.perf_counter()
    client.submit(nothing, 0, pure=False).result()
    return time.perf_counter() - start


def measure_on_worker(client: Any, func: Callable, items: Sequence, retries: int | None) -> Sample:
    """Run the first of ``items`` on one worker, timed there (wall and the thread's CPU time),
    until ``SAMPLE_BUDGET_SECONDS`` are spent; the profile comes from the one probe, with the
    pickled sizes measured here (for a large function, those of what its tasks carry: see
    ``cluster_shared``). ``Sample.results`` maps each measured item's index to its result,
    which is never computed again."""
    func = shipped(client, func)
    first = len(cloudpickle.dumps(items[0])) if len(items) else 0
    sample = list(items[:max(1, min(SAMPLE_ITEMS, SCATTER_BYTES // max(1, first)))])
    # large items travel as data of their own, never inside the task
    payload = client.scatter([sample], hash=False)[0] if first * len(sample) > SCATTER_BYTES / 2 \
        else sample
    with published(client, func):
        calls = client.submit(timed_calls, func, payload, SAMPLE_BUDGET_SECONDS,
                              pure=False, retries=retries).result()
    probe = Probe(MEASURED_BY)
    for wall, cpu, _ in calls:
        probe.observe(wall, cpu)
    probe.observe_shipping(func, [(items[i], result) for i, (_, _, result) in enumerate(calls)])
    return Sample(probe.profile(), {i: result for i, (_, _, result) in enumerate(calls)},
                  {i: wall for i, (wall, _, _) in enumerate(calls)})
