"""Beyond one machine: work sized by amorsize, run by ``dask.distributed``.

amorsize does not re-invent a cluster. It measures the function on a worker of the cluster, and
what a task costs there, decides how many items travel per task for the cluster's threads, and
streams the batches through ``dask.distributed``; every run's batch timings correct the next
call's plan. Moving from one machine to a cluster is passing a ``Client`` (or its scheduler's
address). The parts: ``cluster_client`` (which Client), ``cluster_measure`` (measuring on the
cluster), ``cluster_plan`` (the sizing rules and the plan), ``cluster_shared`` (a large
function sent once), ``cluster_run`` (the batches in flight), ``cluster_worker`` (what runs on
the workers).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from amorsize import plugins
from amorsize.errors import check_positive_int, check_timeout
from amorsize.optimizer.learned import function_key
from amorsize.plan import Plan
from amorsize.run import log
from amorsize.run.control import RunProgress, announce_planning
from amorsize.run.report import RunReport
from amorsize.workload import Workload
from amorsize_dask.cluster_client import (
    check_client,
    close_local_cluster,
    connected,
    current_client,
    default_client,
)
from amorsize_dask.cluster_measure import (
    SAMPLE_ITEMS,
    burst_seconds,
    cluster_facts,
    learn_from_run,
    measure_on_worker,
    transfer_costs,
)
from amorsize_dask.cluster_plan import (
    BATCH_BYTES,
    RunSizes,
    batch_sizes,
    batches_in_flight,
    cluster_plan,
)
from amorsize_dask.cluster_run import BatchRun, numbered_batches
from amorsize_dask.cluster_shared import shipped
from amorsize_dask.cluster_worker import SharedFunction

SOURCE = "dask.distributed"

__all__ = [
    "batch_size",
    "bag",
    "check_client",
    "close_local_cluster",
    "connected",
    "current_client",
    "default_client",
    "imap",
    "imap_unordered",
    "map",
]


def map(func: Callable, data: Iterable, client: Any = None, *, batch: int | None = None,
        progress: bool = False, retries: int | None = None,
        timeout: float | None = None) -> list:
    """``[func(x) for x in data]`` on a ``dask.distributed`` cluster, in batches amorsize sizes
    for it (``imap``, collected).

    ``client`` is the cluster: a ``Client``; its scheduler's address (such as
    ``"tcp://10.0.0.5:8786"``), connected for this call and closed after it; or None: the
    active Client (``distributed.get_client()``), else a ``LocalCluster`` on 127.0.0.1 started
    on first use and kept. ``batch`` forces the items per task; ``progress=True`` reports items
    done to the ``amorsize_run_progress`` hook; ``retries`` is passed to ``client.submit``
    (a batch whose worker died is re-run by the cluster in any case); ``timeout`` limits the
    batches, from the first sent to the last result, in seconds (``amorsize.TimeoutError``).
    Errors raised by ``func`` reach the caller with their original type, and every batch still
    queued or running is cancelled.
    """
    return list(imap(func, data, client, batch=batch, progress=progress, retries=retries,
                     timeout=timeout))


def imap(func: Callable, data: Iterable, client: Any = None, *, batch: int | None = None,
         progress: bool = False, retries: int | None = None,
         timeout: float | None = None) -> Iterator:
    """``map``'s results one by one, in input order, as the batches complete; ``data`` is read
    lazily, with a bounded number of batches in flight, so an input of any length runs in
    bounded memory. Stopping early (``close()``, ``break``) cancels the batches in flight."""
    _check(client, batch, progress, retries, timeout)
    return _results(func, data, client, True, batch, progress, retries, timeout)


def imap_unordered(func: Callable, data: Iterable, client: Any = None, *,
                   batch: int | None = None, progress: bool = False, retries: int | None = None,
                   timeout: float | None = None) -> Iterator:
    """``imap``, but each batch's results as soon as it completes, whatever its place."""
    _check(client, batch, progress, retries, timeout)
    return _results(func, data, client, False, batch, progress, retries, timeout)


def _check(client: Any, batch: Any, progress: Any, retries: Any, timeout: Any) -> None:
    """Every option, on every call, before anything is measured or connected."""
    from amorsize.errors import InvalidArgumentError, InvalidArgumentTypeError

    check_client(client)
    check_positive_int("batch", batch, allow_none=True)
    if not isinstance(progress, bool):
        raise InvalidArgumentTypeError(f"progress must be True or False, got {progress!r}")
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int)):
        raise InvalidArgumentTypeError(f"retries must be an int >= 0 or None, got {retries!r}")
    if retries is not None and retries < 0:
        raise InvalidArgumentError(f"retries must be an int >= 0 or None, got {retries!r}")
    check_timeout(timeout)


def _results(func: Callable, data: Iterable, client: Any, ordered: bool, batch: int | None,
             progress: bool, retries: int | None, timeout: float | None) -> Iterator:
    n_items = len(data) if hasattr(data, "__len__") else None  # type: ignore[arg-type]
    items = iter(data)
    description = getattr(func, "__qualname__", type(func).__name__)
    run_id = announce_planning(SOURCE, description, n_items) if progress else None
    finished = False
    n_done = 0
    try:
        with connected(client) as cluster_client:
            sent = shipped(cluster_client, func)
            plan, sizes, measured, head, transfer = _plan(cluster_client, func, sent, items,
                                                          n_items, batch, retries)
            log.started(plan, description)
            n_done = len(measured)
            yield from measured

            def advanced(n: int) -> None:
                nonlocal n_done
                n_done += n
                if run_id is not None:
                    plugins.run_progress(RunProgress(run_id, SOURCE, description, "advanced",
                                                     n_done, n_items))

            profile = plan.profile
            round_trip = plan.cluster.round_trip_seconds if plan.cluster else 0.0
            in_flight = batches_in_flight(plan.n_jobs, plan.chunksize * profile.per_item_seconds,
                                          round_trip)
            run_sizes = RunSizes(
                sizes, plan.chunksize, None if n_items is None else n_items - len(measured),
                profile.per_item_seconds, plan.cluster.task_seconds if plan.cluster else 0.0,
                profile.arg_bytes, forced=batch is not None,
                byte_seconds=None if transfer is None else transfer[1],
                scatter_seconds=0.0 if transfer is None else transfer[0])
            changes: list[int] = []  # the cluster's threads, each time they changed in the run

            def resized(threads: int) -> int:
                """Workers joined or left during the run: the batches not yet sent are sized
                for the threads there are now."""
                before = changes[-1] if changes else plan.n_jobs
                changes.append(threads)
                run_sizes.resize(threads)
                now_in_flight = batches_in_flight(
                    threads, run_sizes.chunksize * profile.per_item_seconds, round_trip)
                plan.reasons.append(
                    f"the cluster's threads went from {before} to {threads} during the run "
                    f"(after {run.n_batches} batches): the batches not yet sent were sized "
                    f"for them (up to {run_sizes.chunksize} items"
                    + (f", as asked: batch={batch}" if batch is not None else "")
                    + f"), {now_in_flight} in flight")
                return now_in_flight

            run = BatchRun(cluster_client, sent, in_flight=in_flight,
                           retries=retries, timeout=timeout, arg_bytes=profile.arg_bytes,
                           on_batch=advanced, threads=plan.n_jobs, on_threads=resized)
            batches = numbered_batches(itertools.chain(head, items), run_sizes,
                                       start=len(measured))
            with contextlib.closing(run.results(batches, ordered)) as completed:
                for _, results in completed:
                    yield from results
            finished = True
            if plan.cluster is not None and not changes:
                learn_from_run(cluster_client, plan.cluster, run.wall_seconds,
                               run.compute_seconds, run.n_batches,
                               0.0 if transfer is None else
                               run.n_items * profile.arg_bytes * transfer[1],
                               max((s for _, s in run.batch_seconds), default=0.0))
            report = _as_report(plan, run, predicted=not changes)
            # amorsize's optimizer folds it into what the next call on the cluster starts from
            plugins.run_finished(plan, report)
            log.finished(plan, description, report, n_done)
    finally:
        if run_id is not None:
            plugins.run_progress(RunProgress(run_id, SOURCE, description,
                                             "finished" if finished else "cancelled", n_done,
                                             n_done if finished else n_items))


def _plan(client: Any, func: Callable, sent: Callable, items: Iterator, n_items: int | None,
          batch: int | None, retries: int | None
          ) -> tuple[Plan, list[int], list, list, tuple[float, float] | None]:
    """The plan for this call, its batch sizes (for an input of known length; the plan's
    ``chunksize`` follows them), the results of the items measured for it (the first ones),
    the items read ahead but not yet run, and what a scatter call and a byte cost to reach a
    worker (``transfer_costs``, measured once per Client for a run whose items pass
    ``BATCH_BYTES`` together, else None). A function run on the cluster before is planned
    from what its runs there taught (``amorsize_recall``), not measured again. ``sent`` is what
    the tasks carry to call ``func`` (``cluster_shared.shipped``)."""
    facts = cluster_facts(client)
    key = (SOURCE, function_key(func))
    learned = plugins.recall(key)
    recalled = learned is not None
    measured: list = []
    head: list = []
    if learned is None:
        head = list(itertools.islice(items, SAMPLE_ITEMS))
        sample = measure_on_worker(client, sent, head, retries) if head else None
        if sample is not None:
            plugins.remember(key, sample.profile)
            measured = [sample.results[i] for i in range(len(sample.results))]
            head = head[len(measured):]
            learned = plugins.recall(key)
    if learned is None:  # nothing to measure: an empty input, or a plugin that keeps nothing
        from amorsize.workload import Profile

        profile, runs, correction = Profile(per_item_seconds=1e-3), 0, 1.0
    else:
        profile, runs = learned.profile, learned.runs
        correction = learned.corrections.get("serial", 1.0)
    workload = Workload(n_items=n_items, source=SOURCE, executors=("serial",), key=key,
                        already_done=len(measured), recalled=recalled,
                        previous_runs=runs, chunksize=batch)
    todo = None if n_items is None else n_items - len(measured)
    transfer = transfer_costs(client) if (
        todo is not None and batch is None and profile.arg_bytes * todo > BATCH_BYTES) else None
    scatter, per_byte = transfer if transfer is not None else (0.0, None)
    sizes = None if todo is None or batch is not None else batch_sizes(
        todo, profile.per_item_seconds, facts.n_threads, facts.task_seconds, profile.arg_bytes,
        per_byte, scatter)
    plan = cluster_plan(profile, workload, facts, sizes, forced=batch, correction=correction,
                        runs=runs, burst_seconds=burst_seconds(client),
                        shared_bytes=sent.nbytes if isinstance(sent, SharedFunction) else 0,
                        byte_seconds=per_byte, scatter_seconds=scatter)
    return plan, sizes or [], measured, head, transfer


def _as_report(plan: Plan, run: BatchRun, predicted: bool = True) -> RunReport:
    """What the run took, its batches' times summed as measured on the workers; without the
    prediction (nothing to correct it by) for a run whose workers changed."""
    prediction = plan.predicted_seconds if predicted else None
    return RunReport(source=SOURCE, executor_type="serial", n_jobs=plan.n_jobs,
                     chunksize=plan.chunksize, n_items=run.n_items, n_chunks=run.n_batches,
                     wall_seconds=run.wall_seconds, compute_seconds=run.compute_seconds,
                     predicted_seconds=prediction, predicted_speedup=plan.estimated_speedup)


def batch_size(per_item_seconds: float, n_items: int, n_threads: int,
               task_seconds: float) -> int:
    """The largest batch a run of ``n_items`` sends (``cluster_plan.batch_sizes``); for an
    input of unknown length (``n_items`` < 0 is not allowed) see ``streaming_batch``."""
    return max(batch_sizes(n_items, per_item_seconds, n_threads, task_seconds), default=1)


def bag(func: Callable, data: Iterable, client: Any = None) -> Any:
    """A ``dask.bag`` of ``func(x)`` over ``data``, partitioned so each partition is one
    well-sized task on ``client`` (a ``Client`` or a scheduler's address, connected only to
    measure it), or without one on the active Client, else on this machine's CPUs.

    Use it to go on with bag operations (``.filter``, ``.fold``, ...) under any scheduler.
    The few items measured to size the partitions are computed again inside the bag.
    """
    import dask.bag as db

    import amorsize

    check_client(client)
    items = list(data)
    if client is None:
        client = current_client()
    if client is None:
        plan = amorsize.optimize(func, items, executor="serial")
        size = batch_size(plan.profile.per_item_seconds, len(items), amorsize.system.usable_cpus(),
                          plan.overheads.get("process_per_chunk", 1e-3))
    else:
        with connected(client) as client:
            facts = cluster_facts(client)
            sample = measure_on_worker(client, func, items, None)
            plugins.remember((SOURCE, function_key(func)), sample.profile)
            size = batch_size(sample.profile.per_item_seconds, len(items), facts.n_threads,
                              facts.task_seconds)
    return db.from_sequence(items, partition_size=max(1, size)).map(func)
