"""A function too large to travel inside every task -- a ``functools.partial`` or closure over
a big array or model -- sent to the cluster once per content and kept by each worker.

dask would otherwise pickle it into every batch's task (and warn "Sending large graph" past
10 MB). Here the caller scatters one copy and keeps its ``Future`` (so the copy lives as long
as the Client, or until newer functions replace it); each task carries a ``SharedFunction``
naming it, and each worker fetches the copy on its first task and keeps it
(``cluster_worker.loaded``). The copy is known by the digest of the function's pickled bytes,
so a later call with an equal function -- the same partial, or a new one over the same array
-- sends nothing, and one whose data changed in place is sent again.
"""

from __future__ import annotations

import contextlib
import hashlib
import pickle
import threading
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle

from amorsize_dask.cluster_plan import SHARED_BYTES
from amorsize_dask.cluster_worker import KEPT_FUNCTIONS, SharedFunction, forget, in_this_process

_shipped: weakref.WeakKeyDictionary[Any, OrderedDict[str, Any]] = weakref.WeakKeyDictionary()
_published: weakref.WeakKeyDictionary[Any, Counter[str]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def shipped(client: Any, func: Callable) -> Callable:
    """What a task on ``client`` carries to call ``func``: ``func`` itself when it pickles to at
    most ``SHARED_BYTES``; else a ``SharedFunction`` naming one copy on the cluster, scattered
    on the first call with this content and kept for the next ones (the ``KEPT_FUNCTIONS``
    used last per Client; an older one leaves the cluster and its workers' memory). Tasks that
    carry it run inside ``published``."""
    if isinstance(func, SharedFunction):
        return func
    nbytes, digest = pickled_size(func)
    if nbytes <= SHARED_BYTES:
        return func
    with _lock:
        kept = _shipped.setdefault(client, OrderedDict())
        future = kept.pop(digest, None)
        if future is None or future.status != "finished":  # first sent, or its worker was lost
            future = client.scatter([func], hash=False)[0]
        kept[digest] = future
        with contextlib.suppress(TypeError):  # a callable that takes no weak reference
            in_this_process[digest] = func
        while len(kept) > KEPT_FUNCTIONS:
            old, _ = kept.popitem(last=False)
            with contextlib.suppress(Exception):  # the workers drop it anyway, least used first
                client.run(forget, old)
    return SharedFunction(digest, future.key, nbytes, keep=future)


@contextlib.contextmanager
def published(client: Any, func: Callable) -> Iterator[None]:
    """While a call's tasks may fetch ``func`` (a ``SharedFunction``; anything else needs
    nothing): its copy published on the scheduler under ``func.dataset``, where a worker's task
    finds it (``client.publish_dataset``), and unpublished when the last call of ``client``
    using it ends, so nothing outlives the Client on a cluster that does."""
    if not isinstance(func, SharedFunction):
        yield
        return
    with _lock:
        calls = _published.setdefault(client, Counter())
        if not calls[func.dataset]:
            client.publish_dataset(func.keep, name=func.dataset, override=True)
        calls[func.dataset] += 1
    try:
        yield
    finally:
        with _lock:
            calls[func.dataset] -= 1
            if not calls[func.dataset]:
                del calls[func.dataset]
                with contextlib.suppress(Exception):  # the Client closed meanwhile
                    client.unpublish_dataset(func.dataset)


def pickled_size(func: Callable) -> tuple[int, str]:
    """The bytes ``func`` pickles to, and for more than ``SHARED_BYTES`` a digest of them.

    Pickled with out-of-band buffers (protocol 5), so a large array is measured and hashed
    where it lies, never copied.
    """
    buffers: list[pickle.PickleBuffer] = []
    head = cloudpickle.dumps(func, protocol=5, buffer_callback=buffers.append)
    views = [buffer.raw() for buffer in buffers]
    nbytes = len(head) + sum(view.nbytes for view in views)
    if nbytes <= SHARED_BYTES:
        return nbytes, ""
    digest = hashlib.sha1(head, usedforsecurity=False)
    for view in views:
        digest.update(view)
    return nbytes, digest.hexdigest()
