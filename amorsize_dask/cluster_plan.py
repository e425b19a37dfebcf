"""How many items travel per task on a ``dask.distributed`` cluster: pure functions of measured
figures (the per-item time measured on a worker, what a task costs the cluster, its threads,
the bytes of an item), so every rule can be checked with made-up numbers.

The rules: the tasks' overhead is at most ``OVERHEAD_SHARE`` of the run's work; within that, up
to ``WAVES`` batches per thread, so a slow item or a slow worker does not leave the others idle
at the end; and the last wave is cut in batches half as large where the overhead still allows,
so the run ends evenly and a worker lost near the end re-runs little (a cluster runs a batch at
least once, not exactly once).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from amorsize.plan import Cluster, Plan, format_bytes, format_seconds
from amorsize.workload import Profile, Workload

OVERHEAD_SHARE = 0.05
WAVES = 4
# below dask's "Sending large graph" warning (distributed.admin.large-graph-warning-threshold,
# 10 MB): a batch up to this size travels inside its task, one over it (a single larger item)
# as data of its own
BATCH_BYTES = 8 * 2**20
SCATTER_BYTES = BATCH_BYTES
# a function that pickles to more than this (a partial or closure over a large array or model)
# goes to the cluster once and is kept by each worker, instead of inside every batch's task
SHARED_BYTES = 2**20
IN_FLIGHT_PER_THREAD = 2
MAX_IN_FLIGHT_PER_THREAD = 8


def batch_count(n_items: int, per_item_seconds: float, threads: int, task_seconds: float) -> int:
    """Tasks for ``n_items``: ``WAVES`` per thread when their overhead stays within
    ``OVERHEAD_SHARE`` of the work, fewer waves when it does not, and for work too small to fill
    every thread, the number of tasks that makes it end soonest (each more task shortens the
    work per task and adds its cost)."""
    if n_items <= 1:
        return 1
    threads = max(1, threads)
    work = n_items * max(per_item_seconds, 1e-9)
    task = max(task_seconds, 1e-9)
    affordable = OVERHEAD_SHARE * work / task
    if affordable >= threads:
        count = threads * min(WAVES, int(affordable // threads))
    else:
        count = min(threads, max(1, round(math.sqrt(work / task))))
    return max(1, min(n_items, count))


def largest_batch(arg_bytes: float) -> int:
    """At most ``BATCH_BYTES`` of items per batch, so no task carries a giant payload."""
    return max(1, int(BATCH_BYTES // arg_bytes)) if arg_bytes > 0 else 2**62


def batch_sizes(n_items: int, per_item_seconds: float, threads: int, task_seconds: float,
                arg_bytes: float = 0.0) -> list[int]:
    """The batches of a run of ``n_items``, in the order they are sent: equal batches, then the
    last wave (one batch per thread) in batches half as large where the extra tasks keep within
    ``OVERHEAD_SHARE``. Sizes never grow along the run."""
    if n_items <= 0:
        return []
    threads = max(1, threads)
    count = batch_count(n_items, per_item_seconds, threads, task_seconds)
    steady = min(math.ceil(n_items / count), largest_batch(arg_bytes))
    count = math.ceil(n_items / steady)
    if count <= threads:
        return _split(n_items, count)
    sizes = []
    remaining = n_items
    while remaining > threads * steady:
        sizes.append(steady)
        remaining -= steady
    affordable = OVERHEAD_SHARE * n_items * max(per_item_seconds, 1e-9) / max(task_seconds, 1e-9)
    tail = 2 * threads if count + threads <= affordable else threads
    return sizes + _split(remaining, min(tail, remaining))


def streaming_batch(per_item_seconds: float, threads: int, task_seconds: float,
                    arg_bytes: float = 0.0) -> int:
    """The batch for an input of unknown length: the smallest whose work keeps a task's cost
    within ``OVERHEAD_SHARE`` of it on each thread (the whole cluster's tasks are handled by one
    scheduler, so a thread sees ``threads`` times the cost of one task)."""
    per_item = max(per_item_seconds, 1e-9)
    size = math.ceil(max(1, threads) * task_seconds / (OVERHEAD_SHARE * per_item))
    return max(1, min(size, largest_batch(arg_bytes)))


def sizes_for(n_items: int | None, per_item_seconds: float, threads: int, task_seconds: float,
              arg_bytes: float = 0.0) -> Iterator[int]:
    """Batch sizes for a run: ``batch_sizes`` when the length is known, else
    ``streaming_batch`` forever (the input's end decides where the run stops)."""
    if n_items is not None:
        yield from batch_sizes(n_items, per_item_seconds, threads, task_seconds, arg_bytes)
        return
    size = streaming_batch(per_item_seconds, threads, task_seconds, arg_bytes)
    while True:
        yield size


class RunSizes:
    """A run's batch sizes in the order they are sent: the ``planned`` ones, then
    ``chunksize`` for as long as the input lasts; ``resize`` plans the items not yet sent
    again for a new thread count (the same rules: ``batch_sizes`` for the ``todo`` items of an
    input of known length, ``streaming_batch`` for one of unknown length; a forced size stays).
    """

    def __init__(self, planned: list[int], chunksize: int, todo: int | None,
                 per_item_seconds: float, task_seconds: float, arg_bytes: float = 0.0,
                 forced: bool = False) -> None:
        self._planned = iter(planned)
        self.chunksize = chunksize
        self.todo = todo
        self.per_item_seconds = per_item_seconds
        self.task_seconds = task_seconds
        self.arg_bytes = arg_bytes
        self.forced = forced
        self.sent = 0

    def __iter__(self) -> RunSizes:
        return self

    def __next__(self) -> int:
        size = next(self._planned, self.chunksize)
        self.sent += size
        return size

    def resize(self, threads: int) -> None:
        if self.forced:
            return
        if self.todo is None:
            self.chunksize = streaming_batch(self.per_item_seconds, threads, self.task_seconds,
                                             self.arg_bytes)
            return
        sizes = batch_sizes(max(0, self.todo - self.sent), self.per_item_seconds, threads,
                            self.task_seconds, self.arg_bytes)
        self._planned = iter(sizes)
        self.chunksize = max(sizes, default=self.chunksize)


def batches_in_flight(threads: int, batch_seconds: float, round_trip_seconds: float) -> int:
    """How many batches may be sent and not yet handed out: per thread, the one it runs and
    enough queued behind it to cover a round trip (a batch's completion reaching the caller
    and the next batch reaching the worker), at least ``IN_FLIGHT_PER_THREAD`` and at most
    ``MAX_IN_FLIGHT_PER_THREAD``: the input is read only that far ahead."""
    behind = math.ceil(round_trip_seconds / max(batch_seconds, 1e-9))
    per_thread = min(MAX_IN_FLIGHT_PER_THREAD, max(IN_FLIGHT_PER_THREAD, 1 + behind))
    return max(1, threads) * per_thread


def predicted_seconds(n_items: int, per_item_seconds: float, threads: int, task_seconds: float,
                      round_trip_seconds: float, sizes: list[int]) -> float:
    """Wall time of the run: a round trip, the slowest thread's share of the batches (given out
    largest first to whichever thread is free), and the tasks' cost."""
    loads = [0.0] * max(1, threads)
    for size in sizes:
        i = loads.index(min(loads))
        loads[i] += size * per_item_seconds
    return round_trip_seconds + max(loads) + len(sizes) * task_seconds


def _split(n: int, parts: int) -> list[int]:
    """``n`` in ``parts`` sizes that differ by at most one, the larger first."""
    parts = max(1, min(parts, n))
    base, extra = divmod(n, parts)
    return [base + 1] * extra + [base] * (parts - extra)


def cluster_plan(profile: Profile, workload: Workload, cluster: Cluster, sizes: list[int] | None,
                 forced: int | None = None, correction: float = 1.0, runs: int = 0,
                 burst_seconds: float | None = None, shared_bytes: int = 0) -> Plan:
    """The ``amorsize.Plan`` of a run on ``cluster``: ``sizes`` are its batches when the input's
    length is known (None: streamed in batches of ``chunksize``); ``correction`` is the ratio of
    wall time to prediction learned from ``runs`` earlier runs on the cluster;
    ``burst_seconds`` what a task cost in the burst of empty tasks, when runs since corrected
    the cluster's figure; ``shared_bytes`` the pickled size of a function sent once and kept by
    the workers (``cluster_shared``), 0 when it travels inside each task."""
    threads = cluster.n_threads
    per_item = profile.per_item_seconds
    n = workload.n_items
    todo = None if n is None else max(0, n - workload.already_done)
    reasons = [f"{format_seconds(per_item)} per item, " + (
        f"from the batch timings of {runs} earlier run{'s' if runs != 1 else ''} on the cluster "
        f"(corrected by the last one); wall time {correction:.2f}x the model's"
        if workload.recalled and profile.measured_by == "runs" else
        f"recalled: measured on {profile.n_measured} items on a cluster worker in an earlier call"
        if workload.recalled else f"measured on {profile.n_measured} items on a cluster worker")]
    if burst_seconds is not None and abs(burst_seconds - cluster.task_seconds) > 1e-12:
        reasons.append(f"a task cost the cluster {format_seconds(cluster.task_seconds)} in the "
                       f"runs so far on it ({format_seconds(burst_seconds)} in the burst of "
                       "empty tasks, with its workers idle)")
    if forced is not None:
        chunksize = forced
        reasons.append(f"batches of {forced} items, as asked (batch={forced})")
    elif sizes is not None:
        chunksize = max(sizes, default=1)
        work = (todo or 0) * per_item
        share = len(sizes) * cluster.task_seconds / max(1e-12, work)
        if len(sizes) < threads:
            reasons.append(
                f"the work ({format_seconds(work)}) is too little to pay for a task per thread "
                f"(a task costs the cluster {format_seconds(cluster.task_seconds)} when busy): "
                f"{len(sizes)} batch{'es' if len(sizes) != 1 else ''} on {threads} threads, "
                "the count that ends soonest")
        else:
            reasons.append(
                f"a task costs the cluster {format_seconds(cluster.task_seconds)} when busy: "
                f"{len(sizes)} batches on {threads} threads ({len(sizes) / threads:.1f} per "
                f"thread), their overhead {share:.1%} of the work (at most "
                f"{OVERHEAD_SHARE:.0%}; up to {WAVES} per thread, so the run ends evenly)")
        if len(sizes) > 1 and sizes[-1] < sizes[0]:
            reasons.append(f"batches shrink from {sizes[0]} to {sizes[-1]} items toward the end: "
                           "the last wave ends evenly, and a worker lost then re-runs little")
    else:
        chunksize = streaming_batch(per_item, threads, cluster.task_seconds, profile.arg_bytes)
        reasons.append(f"input of unknown length: batches of {chunksize} items, the smallest "
                       f"whose overhead is at most {OVERHEAD_SHARE:.0%} of its work on each thread")
    if profile.arg_bytes * chunksize > SCATTER_BYTES:
        reasons.append(f"an item pickles to {format_bytes(profile.arg_bytes)}: each batch goes "
                       "to the cluster as data of its own (client.scatter), not inside its task")
    elif profile.arg_bytes * chunksize > SCATTER_BYTES / 8:
        reasons.append(f"an item pickles to {format_bytes(profile.arg_bytes)}: at most "
                       f"{largest_batch(profile.arg_bytes)} items a batch, so no task carries "
                       f"more than {format_bytes(BATCH_BYTES)}")
    if shared_bytes:
        reasons.append(f"the function pickles to {format_bytes(shared_bytes)}: it goes to the "
                       "cluster once and each worker keeps it (fetched on its first batch), not "
                       "inside every task; a later call with an equal function sends nothing")
    predictions: dict[str, float] = {}
    speedup = 1.0
    if todo is not None:
        batches = sizes if sizes is not None else [chunksize] * math.ceil(todo / chunksize)
        predicted = correction * predicted_seconds(todo, per_item, threads, cluster.task_seconds,
                                                   cluster.round_trip_seconds, batches)
        predictions["serial"] = predicted
        speedup = todo * per_item / predicted if predicted > 0 else 1.0
    return Plan(executor_type="serial", n_jobs=threads, chunksize=max(1, chunksize),
                estimated_speedup=speedup, reasons=reasons, profile=profile, workload=workload,
                predictions=predictions, cluster=cluster, decided_by="amorsize_dask")
