"""Beyond one machine: work sized by amorsize, run by ``dask.distributed``.

amorsize does not re-invent a cluster. It measures the function on a few items (as
``amorsize.optimize`` does everywhere), measures what one task costs on the given ``Client``,
and from those two numbers decides how many items travel per task; ``dask.distributed`` does
the rest. Moving from one machine to a cluster is passing a ``Client`` (or its scheduler's
address).
"""

from __future__ import annotations

import atexit
import contextlib
import math
import statistics
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

from amorsize.errors import InvalidArgumentError, InvalidArgumentTypeError, check_positive_int

OVERHEAD_SHARE = 0.05
BATCHES_PER_WORKER = 4
_ROUND_TRIPS = 5

_local: dict[str, Any] = {}
_local_lock = threading.Lock()
_overheads: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()


def batch_size(
    per_item_seconds: float,
    n_items: int,
    n_workers: int,
    task_overhead: float,
    overhead_share: float = OVERHEAD_SHARE,
    batches_per_worker: int = BATCHES_PER_WORKER,
) -> int:
    """Items per task: enough that a task's overhead is at most ``overhead_share`` of its work,
    and otherwise small enough for ``batches_per_worker`` tasks per worker (so a slow worker or
    an uneven item does not leave the others idle at the end)."""
    if n_items <= 1:
        return 1
    per_item = max(per_item_seconds, 1e-9)
    amortized = math.ceil(task_overhead / (overhead_share * per_item))
    balanced = math.ceil(n_items / (max(1, n_workers) * batches_per_worker))
    return max(1, min(n_items, max(amortized, balanced)))


def task_overhead(client: Any) -> float:
    """Seconds one task costs on this cluster with nothing to do (median of a few round trips),
    measured once per client."""
    known = _overheads.get(client)
    if known is None:
        times = []
        for i in range(_ROUND_TRIPS):
            start = time.perf_counter()
            client.submit(_noop, i, pure=False).result()
            times.append(time.perf_counter() - start)
        known = _overheads[client] = statistics.median(times)
    return known


def n_workers(client: Any) -> int:
    """Threads the cluster runs tasks on, over all its workers."""
    return max(1, sum(client.nthreads().values()))


def map(
    func: Callable,
    data: Iterable,
    client: Any = None,
    *,
    batch: int | None = None,
) -> list:
    """``[func(x) for x in data]`` on a ``dask.distributed`` cluster, in batches amorsize sizes.

    ``client`` is the cluster to use: a ``Client``, or its scheduler's address (such as
    ``"tcp://10.0.0.5:8786"``), connected for this call and closed after it; without one, the
    default Client if there is one, else a ``LocalCluster`` started on first use and kept for the
    next calls. ``batch`` forces the number of items per task. The options are checked on every
    call, before anything runs. The items measured to size the batches are not computed again.
    Errors raised by ``func`` reach the caller with their original type.
    """
    import amorsize

    check_client(client)
    check_positive_int("batch", batch, allow_none=True)
    # Measure only: a serial plan starts no local pool, which the cluster would not use.
    plan = amorsize.optimize(func, data, executor="serial")
    items = list(plan.data)
    done = dict(plan.sampled_results)
    todo = [i for i in range(len(items)) if i not in done]
    with connected(client) as client:
        size = batch or batch_size(
            plan.profile.per_item_seconds, len(todo), n_workers(client), task_overhead(client)
        )
        chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
        futures = client.map(
            partial(_apply, func), [[items[i] for i in chunk] for chunk in chunks], pure=False
        )
        try:
            for chunk, results in zip(chunks, client.gather(futures)):
                done.update(zip(chunk, results))
        finally:
            client.cancel(futures)
    return [done[i] for i in range(len(items))]


def bag(func: Callable, data: Iterable, client: Any = None) -> Any:
    """A ``dask.bag`` of ``func(x)`` over ``data``, partitioned so each partition is one
    well-sized task on ``client`` (a ``Client`` or a scheduler's address, connected only to
    measure it), or without one on the default Client, else on this machine's CPUs.

    Use it to go on with bag operations (``.filter``, ``.fold``, ...) under any scheduler.
    The few items measured to size the partitions are computed again inside the bag.
    """
    import dask.bag as db

    import amorsize

    check_client(client)
    items = list(data)
    plan = amorsize.optimize(func, items, executor="serial")
    if client is None:
        client = current_client()
    if client is None:
        workers, overhead = amorsize.system.usable_cpus(), plan.overheads.get(
            "process_per_chunk", 1e-3)
    else:
        with connected(client) as client:
            workers, overhead = n_workers(client), task_overhead(client)
    size = batch_size(plan.profile.per_item_seconds, len(items), workers, overhead)
    return db.from_sequence(items, partition_size=size).map(func)


_CLIENT_FORMS = ("a distributed.Client, its scheduler's address (such as "
                 "'tcp://127.0.0.1:8786'), or None for the default Client")


def check_client(client: object) -> None:
    """Refuse what cannot name a cluster, before any work: the message names ``client`` and
    what it may be."""
    if client is None:
        return
    if isinstance(client, str):
        if not client.strip():
            raise InvalidArgumentError(f"client must be {_CLIENT_FORMS}, got an empty address")
        return
    wrong = InvalidArgumentTypeError(
        f"client must be {_CLIENT_FORMS}, got {type(client).__name__} {client!r}")
    try:
        from distributed import Client
    except ImportError:  # then nothing but an address can name a cluster
        raise wrong from None
    if not isinstance(client, Client):
        raise wrong


@contextlib.contextmanager
def connected(client: Any) -> Iterator[Any]:
    """The Client a call runs on: ``client`` itself; for an address, a Client connected to it
    for the call and closed after it (not made the default, so it redirects no ``.compute()``
    meanwhile); for None, ``default_client()``."""
    if isinstance(client, str):
        from distributed import Client

        with Client(client, set_as_default=False) as own:
            yield own
    else:
        yield default_client() if client is None else client


def current_client() -> Any:
    """The default ``dask.distributed`` Client if one is set, else None."""
    try:
        from distributed import default_client as _default
    except ImportError:
        return None
    try:
        return _default()
    except ValueError:
        return None


def default_client() -> Any:
    """The default Client, or one on a ``LocalCluster`` started once and kept until exit.

    The local one is not made the default (``set_as_default=False``), so starting it does not
    redirect the user's ``.compute()`` calls to it; its scheduler listens on 127.0.0.1 only and
    it starts no dashboard.
    """
    client = current_client()
    if client is not None:
        return client
    with _local_lock:
        client = _local.get("client")
        if client is None or client.status in ("closed", "closing"):
            from distributed import Client, LocalCluster

            # Loopback only and no dashboard: nothing reachable from other machines.
            cluster = LocalCluster(host="127.0.0.1", dashboard_address=None)
            client = Client(cluster, set_as_default=False)
            _local.update(client=client, cluster=cluster)
            atexit.register(close_local_cluster)
        return client


def close_local_cluster() -> None:
    """Close the LocalCluster ``map`` started, if any."""
    with _local_lock:
        client, cluster = _local.pop("client", None), _local.pop("cluster", None)
    if client is not None:
        client.close()
    if cluster is not None:
        cluster.close()


def _apply(func: Callable, items: list) -> list:
    return [func(x) for x in items]


def _noop(i: int) -> int:
    return i
