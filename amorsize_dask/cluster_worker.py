"""What runs on a cluster's workers: the function over a batch, timed where it runs.

Workers import this module (they need amorsize installed, as for any function of a package
that a task calls); on import it imports only the standard library.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

KEPT_FUNCTIONS = 4

_kept: weakref.WeakKeyDictionary[Any, OrderedDict[str, Callable]] = weakref.WeakKeyDictionary()
_kept_lock = threading.Lock()
# the shared functions of the caller, when it is this process: an in-process worker
# (LocalCluster(processes=False)) takes them as they are, as its tasks take their arguments
in_this_process: weakref.WeakValueDictionary[str, Callable] = weakref.WeakValueDictionary()


class SharedFunction:
    """What a task carries instead of a function too large to travel inside every task (a
    ``functools.partial`` or closure over a big array or model): the digest of its pickled
    bytes, and the key of the one copy the caller scattered to the cluster. Each worker fetches
    that copy on the first task that needs it and keeps it (``loaded``), so the function
    crosses to each worker once, and not again for a later call with equal content.

    In the caller it also holds the copy's ``Future`` (``keep``), never pickled: the copy stays
    on the cluster as long as the caller keeps the function (``cluster_shared``).
    """

    def __init__(self, digest: str, key: Any, nbytes: int, keep: Any = None) -> None:
        self.digest = digest
        self.key = key
        self.nbytes = nbytes
        self.keep = keep

    @property
    def dataset(self) -> str:
        """The name under which a call publishes the copy while it runs, for workers to fetch:
        the copy's own (each Client scatters its own copy)."""
        return f"amorsize-function-{self.key}"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return loaded(self)(*args, **kwargs)

    def __reduce__(self) -> tuple:
        return SharedFunction, (self.digest, self.key, self.nbytes)

    def __repr__(self) -> str:
        return f"SharedFunction({self.digest[:12]}, {self.nbytes:,} bytes)"


def loaded(func: Callable) -> Callable:
    """``func``, or for a ``SharedFunction`` the function it names, as this worker keeps it.

    A worker keeps the ``KEPT_FUNCTIONS`` it used last, outside dask's memory: dask's Active
    Memory Manager drops the extra replicas of a key no task waits for within seconds
    (``ReduceReplicas``), so a copy kept as dask data would be fetched again by the next call.
    The worker holding the scattered copy takes it from its own memory; another fetches it
    once, from that worker, through the dataset the running call published (with the
    worker's Client, which an in-process worker would make the default of the caller's
    process: it takes the caller's function instead).
    """
    if not isinstance(func, SharedFunction):
        return func
    here = in_this_process.get(func.digest)
    if here is not None:
        return here
    import distributed

    worker = distributed.get_worker()
    with _kept_lock:
        kept = _kept.setdefault(worker, OrderedDict())
        found: Any = kept.get(func.digest)
        if found is None:
            if func.key in worker.data:
                found = worker.data[func.key]
            else:
                found = distributed.get_client().get_dataset(func.dataset).result()
            kept[func.digest] = found
            while len(kept) > KEPT_FUNCTIONS:
                kept.popitem(last=False)
        kept.move_to_end(func.digest)
    return found


def forget(digest: str, dask_worker: Any = None) -> None:
    """Drop this worker's copy of the shared function ``digest`` (the caller no longer keeps
    it); run on every worker with ``client.run``."""
    with _kept_lock:
        kept = _kept.get(dask_worker)
        if kept is not None:
            kept.pop(digest, None)


def run_batch(func: Callable, items: list) -> tuple[list, float]:
    """``[func(x) for x in items]`` and the seconds it took on the worker (not counting the
    first fetch of a shared function)."""
    func = loaded(func)
    start = time.perf_counter()
    results = [func(x) for x in items]
    return results, time.perf_counter() - start


def timed_calls(func: Callable, items: list, budget: float) -> list[tuple[float, float, Any]]:
    """(wall, CPU of this thread, result) of ``func`` on the items in order, until ``budget``
    seconds are spent (at least one call): the thread's CPU clock, since a worker's other
    threads (its communication, other tasks) share the process."""
    func = loaded(func)
    out = []
    spent = 0.0
    for item in items:
        t0, c0 = time.perf_counter(), time.thread_time()
        result = func(item)
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
        out.append((wall, cpu, result))
        spent += wall
        if spent >= budget:
            break
    return out


def nothing(x: Any) -> Any:
    return x
