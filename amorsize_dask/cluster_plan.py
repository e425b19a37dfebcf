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

# each batch past one per thread is insurance (a slow item or worker, a worker lost): bought
# only while cheap, since where the caller and scheduler share the workers' cores every batch
# also takes their time from the work
OVERHEAD_SHARE = 0.025
WAVES = 4
# below dask's "Sending large graph" warning (distributed.admin.large-graph-warning-threshold,
# 10 MB): a batch up to this size travels inside its task, one over it (a single larger item)
# as data of its own
BATCH_BYTES = 8 * 2**20
SCATTER_BYTES = BATCH_BYTES
# a scattered batch lives whole in the caller (read ahead) and on a worker: bounded
MAX_BATCH_BYTES = 64 * 2**20
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
                arg_bytes: float = 0.0, byte_seconds: float | None = None,
                scatter_seconds: float = 0.0) -> list[int]:
    """The batches of a run of ``n_items``, in the order they are sent: equal batches, then the
    last wave (one batch per thread) in batches half as large where the extra tasks keep within
    ``OVERHEAD_SHARE``. Sizes never grow along the run.

    Items that would make a batch pass ``BATCH_BYTES``: without ``byte_seconds`` (a caller that
    sends every batch inside its task) at most ``BATCH_BYTES`` of them a batch; with it (what
    a byte costs to send from the caller to a worker; ``scatter_seconds`` what a scatter call
    costs past its bytes) the equal batches, up to ``MAX_BATCH_BYTES`` each, that end the run
    soonest (``sent_seconds``)."""
    if n_items <= 0:
        return []
    threads = max(1, threads)
    count = batch_count(n_items, per_item_seconds, threads, task_seconds)
    steady = math.ceil(n_items / count)
    if byte_seconds is not None and arg_bytes * steady > BATCH_BYTES:
        return large_batches(n_items, per_item_seconds, threads, task_seconds, arg_bytes,
                             byte_seconds, scatter_seconds, count)
    steady = min(steady, largest_batch(arg_bytes))
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


def large_batches(n_items: int, per_item_seconds: float, threads: int, task_seconds: float,
                  arg_bytes: float, byte_seconds: float, scatter_seconds: float,
                  fewest: int) -> list[int]:
    """Equal batches of large items: of the counts from ``fewest`` (or as many as keep each
    batch within ``MAX_BATCH_BYTES``) to as many as keep each within ``BATCH_BYTES``, the
    fewest batches whose run ends within ``OVERHEAD_SHARE`` of the soonest (``sent_seconds``,
    which lets a task's cost overlap the work: more batches than needed are not free)."""
    most = math.ceil(n_items / largest_batch(arg_bytes))
    least = min(most, max(fewest, math.ceil(n_items / max(1, int(MAX_BATCH_BYTES // arg_bytes)))))
    counts = sorted({least, most} | {c for c in _counts(threads, most) if least <= c <= most})
    seconds = {c: sent_seconds(_split(n_items, c), per_item_seconds, threads, task_seconds,
                               arg_bytes, byte_seconds, scatter_seconds) for c in counts}
    soonest = min(seconds.values())
    best = next(c for c in counts if seconds[c] <= (1 + OVERHEAD_SHARE) * soonest)
    return _split(n_items, best)


def _counts(threads: int, most: int) -> Iterator[int]:
    """Batch counts worth comparing: 1 to ``WAVES`` per thread, then doubling up to ``most``."""
    yield from range(1, min(threads, most) + 1)
    yield from (threads * waves for waves in range(1, WAVES + 1))
    count = threads * WAVES
    while count < most:
        count *= 2
        yield count


def sent_seconds(sizes: list[int], per_item_seconds: float, threads: int, task_seconds: float,
                 arg_bytes: float, byte_seconds: float, scatter_seconds: float) -> float:
    """Wall time of a run, past its first round trip, whose items cross from the caller one
    batch after another (each its bytes and a task's cost), each batch run by the first thread
    free once it has arrived. Batches past ``BATCH_BYTES`` are scattered first: the first
    ``IN_FLIGHT_PER_THREAD`` per thread in one call, each later one in a call of its own."""
    free = [0.0] * max(1, threads)
    arrived = 0.0
    scattered = 0
    for size in sizes:
        if arg_bytes * size > BATCH_BYTES:
            scattered += 1
            if scattered == 1 or scattered > IN_FLIGHT_PER_THREAD * len(free):
                arrived += scatter_seconds
        arrived += size * arg_bytes * byte_seconds + task_seconds
        i = free.index(min(free))
        free[i] = max(free[i], arrived) + size * per_item_seconds
    return max(free)


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
    input of known length, large items sized for ``byte_seconds`` as there,
    ``streaming_batch`` for one of unknown length; a forced size stays).
    """

    def __init__(self, planned: list[int], chunksize: int, todo: int | None,
                 per_item_seconds: float, task_seconds: float, arg_bytes: float = 0.0,
                 forced: bool = False, byte_seconds: float | None = None,
                 scatter_seconds: float = 0.0) -> None:
        self._planned = iter(planned)
        self.chunksize = chunksize
        self.todo = todo
        self.per_item_seconds = per_item_seconds
        self.task_seconds = task_seconds
        self.arg_bytes = arg_bytes
        self.forced = forced
        self.byte_seconds = byte_seconds
        self.scatter_seconds = scatter_seconds
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
                            self.task_seconds, self.arg_bytes, self.byte_seconds,
                            self.scatter_seconds)
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
                 burst_seconds: float | None = None, shared_bytes: int = 0,
                 byte_seconds: float | None = None, scatter_seconds: float = 0.0) -> Plan:
    """The ``amorsize.Plan`` of a run on ``cluster``: ``sizes`` are its batches when the input's
    length is known (None: streamed in batches of ``chunksize``); ``correction`` is the ratio of
    wall time to prediction learned from ``runs`` earlier runs on the cluster;
    ``burst_seconds`` what a task cost in the burst of empty tasks, when runs since corrected
    the cluster's figure; ``shared_bytes`` the pickled size of a function sent once and kept by
    the workers (``cluster_shared``), 0 when it travels inside each task; ``byte_seconds``
    and ``scatter_seconds`` what a byte and a scatter call cost to reach a worker, when they
    were measured for the run's large items."""
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
        if byte_seconds is not None and profile.arg_bytes * chunksize > BATCH_BYTES:
            pass  # sized for their transfer: the reason follows
        elif len(sizes) < threads:
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
                f"{OVERHEAD_SHARE:.1%}; up to {WAVES} per thread, so the run ends evenly)")
        if len(sizes) > 1 and sizes[-1] < sizes[0]:
            reasons.append(f"batches shrink from {sizes[0]} to {sizes[-1]} items toward the end: "
                           "the last wave ends evenly, and a worker lost then re-runs little")
    else:
        chunksize = streaming_batch(per_item, threads, cluster.task_seconds, profile.arg_bytes)
        reasons.append(f"input of unknown length: batches of {chunksize} items, the smallest "
                       f"whose overhead is at most {OVERHEAD_SHARE:.1%} of its work on each thread")
    large = (sizes is not None and forced is None and byte_seconds is not None
             and profile.arg_bytes * chunksize > BATCH_BYTES)
    if large:
        reasons.append(
            f"an item pickles to {format_bytes(profile.arg_bytes)}, which takes "
            f"{format_seconds(profile.arg_bytes * (byte_seconds or 0.0))} to reach a worker, "
            f"and a task costs the cluster {format_seconds(cluster.task_seconds)}: "
            f"{len(sizes or [])} batches on {threads} threads, the fewest that end the run "
            f"within {OVERHEAD_SHARE:.1%} of the soonest, the items crossing one batch after "
            "another while the workers run those arrived; each batch goes to the cluster as "
            "data of its own (client.scatter, those sent together in one call), not inside "
            "its task")
    elif profile.arg_bytes * chunksize > SCATTER_BYTES:
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
        predicted = correction * (
            cluster.round_trip_seconds + sent_seconds(
                batches, per_item, threads, cluster.task_seconds, profile.arg_bytes,
                byte_seconds or 0.0, scatter_seconds) if large else
            predicted_seconds(todo, per_item, threads, cluster.task_seconds,
                              cluster.round_trip_seconds, batches))
        predictions["serial"] = predicted
        speedup = todo * per_item / predicted if predicted > 0 else 1.0
    return Plan(executor_type="serial", n_jobs=threads, chunksize=max(1, chunksize),
                estimated_speedup=speedup, reasons=reasons, profile=profile, workload=workload,
                predictions=predictions, cluster=cluster, decided_by="amorsize_dask")
