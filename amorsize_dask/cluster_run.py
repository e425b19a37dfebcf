"""Running batches on a cluster: the input read lazily, a bounded number of batches in flight,
results as batches complete (``distributed.as_completed``), every batch timed on its worker,
and everything still queued or running cancelled when the caller stops, fails or runs out of
time.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import itertools
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

from amorsize.errors import TimeoutError
from amorsize_dask.cluster_measure import scatter_direct
from amorsize_dask.cluster_plan import SCATTER_BYTES
from amorsize_dask.cluster_shared import published, shipped
from amorsize_dask.cluster_worker import run_batch

WATCH_SECONDS = 1.0


class BatchRun:
    """One call's batches on ``client``: ``results()`` yields ``(first_index, results)`` per
    batch; the figures of the batches that completed are kept for the report
    (``n_items``, ``n_batches``, ``compute_seconds`` summed over workers, ``wall_seconds``).

    At most ``in_flight`` batches are sent and not done, and as many done ahead of an earlier
    one: bounded memory for any input. A batch whose items pickle to more than
    ``SCATTER_BYTES`` goes to the cluster as data of its own (``client.scatter``, those sent
    at once in one call); a large function goes once and is kept by the workers
    (``cluster_shared``): no task carries them inside the graph.

    Given ``threads`` (the cluster's, as planned) and ``on_threads``, the run follows the
    cluster's threads (``_watch``, at most every ``WATCH_SECONDS``); when workers joined or
    left, ``on_threads(new)`` re-plans what is not yet sent and returns the batches to keep in
    flight from then on.
    """

    def __init__(self, client: Any, func: Callable, *, in_flight: int, retries: int | None,
                 timeout: float | None, arg_bytes: float,
                 on_batch: Callable[[int], None] | None = None, threads: int = 0,
                 on_threads: Callable[[int], int] | None = None) -> None:
        self.client = client
        self.func = shipped(client, func)
        self.in_flight = max(1, in_flight)
        self.retries = retries
        self.timeout = timeout
        self.arg_bytes = arg_bytes
        self.on_batch = on_batch
        self.threads = threads
        self.on_threads = on_threads
        self.n_items = 0
        self.n_batches = 0
        self.compute_seconds = 0.0
        self.batch_seconds: list[tuple[int, float]] = []
        self.started = time.perf_counter()
        self.finished: float | None = None
        self._watched = self.started
        self._asked: concurrent.futures.Future | None = None

    @property
    def wall_seconds(self) -> float:
        return (self.finished or time.perf_counter()) - self.started

    def results(self, batches: Iterable[tuple[int, list]], ordered: bool
                ) -> Generator[tuple[int, list], None, None]:
        """Send ``batches`` (each ``(first_index, items)``) and yield their results, in input
        order when ``ordered``, else as they complete. Leaving early -- the caller stops
        reading, a batch fails, the time limit passes, Ctrl-C -- cancels every batch sent and
        not yet handed out, queued or running."""
        from distributed import as_completed

        source = iter(batches)
        sent: dict[Any, tuple[int, int]] = {}  # future -> (its position among batches, first index)
        early: dict[int, tuple[int, list]] = {}  # completed out of order, by position
        positions = itertools.count()
        next_out = 0
        exhausted = False
        # results fetched by the event loop: waiting for one is then no ``sync()`` call, which
        # Ctrl-C at the wrong moment turns into a NameError logged by tornado (distributed 2026.8)
        completed = as_completed(loop=self.client.loop, timeout=self.timeout, with_results=True)
        with published(self.client, self.func):
            try:
                while True:
                    # completed batches waiting for an earlier one do not hold back the next: a
                    # late batch would leave every other worker idle behind it
                    fill: list[tuple[int, list]] = []
                    while (not exhausted and len(sent) + len(fill) < self.in_flight
                           and len(early) < self.in_flight):
                        batch = next(source, None)
                        if batch is None:
                            exhausted = True
                            break
                        fill.append(batch)
                    for (first, items), data in zip(fill, self._scattered(fill)):
                        future = self._submit(items, data)
                        sent[future] = (next(positions), first)
                        completed.add(future)
                        del future  # held by ``sent`` alone (see below)
                    del fill
                    if ordered and next_out in early:
                        yield early.pop(next_out)
                        next_out += 1
                        continue
                    if not sent:
                        break
                    try:
                        future, (items, seconds) = next(completed)
                    except StopIteration:
                        break
                    except builtins.TimeoutError as exc:
                        raise TimeoutError(
                            f"the call ran past its timeout={self.timeout} s; its batches were "
                            "cancelled") from exc
                    position, first = sent.pop(future)
                    # no reference left in this frame: a frame kept alive by an exception's
                    # traceback (collected only when the cyclic GC runs) would keep the batch's
                    # result on the cluster
                    del future
                    self._note(len(items), seconds)
                    self._watch()
                    if ordered:
                        early[position] = (first, items)
                    else:
                        yield first, items
                self.finished = time.perf_counter()
            finally:
                if sent:
                    self.client.cancel(list(sent), force=True)
                    sent.clear()
                completed.clear()
                if self._asked is not None:
                    self._asked.cancel()

    def _scattered(self, batches: list[tuple[int, list]]) -> list[Any]:
        """What each batch's task takes: its items, or for a batch past ``SCATTER_BYTES`` the
        future of its items scattered to the cluster -- all such batches sent together in one
        ``client.scatter`` (one round trip, not one each), the way ``transfer_costs`` found
        cheaper for the Client (straight to the workers or through the scheduler)."""
        data: list[Any] = [items for _, items in batches]
        large = [i for i, items in enumerate(data) if self.arg_bytes * len(items) > SCATTER_BYTES]
        if large:
            futures = self.client.scatter([data[i] for i in large], hash=False,
                                          direct=scatter_direct(self.client))
            for i, future in zip(large, futures):
                data[i] = future
        return data

    def _submit(self, items: list, data: Any = None) -> Any:
        """Submit the batch of ``items``, which its task takes as ``data`` (the items
        themselves, or the future of their scattered copy)."""
        return self.client.submit(run_batch, self.func, items if data is None else data,
                                  pure=False, retries=self.retries)

    def _watch(self) -> None:
        """Follow the cluster's threads: at most every ``WATCH_SECONDS`` ask the scheduler
        (``client.nthreads``), and read the answer at a later batch's completion.

        Asked on the Client's event loop, not waited for: a blocking call (``sync()``) that
        Ctrl-C interrupts makes tornado log a traceback on the caller's stderr.
        """
        if self.on_threads is None:
            return
        asked = self._asked
        if asked is not None and asked.done():
            self._asked = None
            if not asked.cancelled() and asked.exception() is None:
                threads = sum(asked.result().values())
                if threads and threads != self.threads:
                    self.threads = threads
                    self.in_flight = max(1, self.on_threads(threads))
        now = time.perf_counter()
        if self._asked is None and now - self._watched >= WATCH_SECONDS:
            self._watched = now
            self._asked = asyncio.run_coroutine_threadsafe(
                self.client.nthreads(asynchronous=True), self.client.loop.asyncio_loop)

    def _note(self, n_items: int, seconds: float) -> None:
        self.n_items += n_items
        self.n_batches += 1
        self.compute_seconds += seconds
        self.batch_seconds.append((n_items, seconds))
        if self.on_batch is not None:
            self.on_batch(n_items)


def numbered_batches(items: Iterator, sizes: Iterator[int], start: int = 0
                     ) -> Iterator[tuple[int, list]]:
    """``(first_index, items)`` batches of ``items``, of the ``sizes`` in turn, read lazily."""
    index = start
    for size in sizes:
        batch = list(itertools.islice(items, size))
        if not batch:
            return
        yield index, batch
        index += len(batch)
