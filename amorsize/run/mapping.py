"""``amorsize.map`` and ``amorsize.imap``: plan, then run on warm pools, then report.

Every item's function call happens exactly once: items run while measuring keep their results
and are skipped here. Results come back in input order; the first error in the user's function
reaches the caller with its own type; a worker that dies raises ``WorkerCrashedError``.
"""

from __future__ import annotations

import collections
import itertools
import math
import operator
import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sized
from concurrent import futures
from typing import Any, Unpack

from amorsize import plugins
from amorsize.errors import (
    InvalidArgumentTypeError,
)
from amorsize.optimizer import optimize
from amorsize.optimizer.learned import function_key
from amorsize.options import MapOptions, complete
from amorsize.plan import Plan
from amorsize.pools import worker
from amorsize.pools.watch import WATCH_SECONDS
from amorsize.pools.worker import Star
from amorsize.run.control import (
    PROGRESS_CHUNK_SECONDS,
    Run,
    announce_cancelled,
    announce_planning,
)

_SERIAL_BLOCK = 4096
_LAZY_BLOCK_SECONDS = 0.01


def map(func: Callable, data: Iterable, **options: Unpack[MapOptions]) -> list:  # noqa: A001
    """``[func(x) for x in data]``, run the fastest way amorsize can find (see ``optimize``).

    ``timeout`` limits each item to that many seconds: an item running longer raises
    ``amorsize.TimeoutError`` (a ``TimeoutError``) naming its index, and the call is cancelled.
    ``progress=True`` reports progress to the ``amorsize_run_progress`` hook (a tqdm bar by
    default). Ctrl-C, or an error in ``func``, cancels the call the same way: nothing more
    runs, and workers still busy with it are stopped. ``initializer(*initargs)`` runs once in
    each worker before its first item, never in this process unless the plan is serial (items
    measured run where it has run); it travels by value, so a lambda or a ``__main__``
    function works. With
    ``max_tasks_per_child``, a process worker is replaced by a fresh one after that many tasks
    (chunks), as in ``multiprocessing.Pool(maxtasksperchild=...)``, to bound what a leaking
    function holds; thread and serial plans ignore it. Not with the "fork" start method.
    """
    given = complete("map", options)
    plan, shown = _plan(func, data, "map", given)
    return _listed(_run(func, plan, given["timeout"], given["progress"], shown))


def imap(func: Callable, data: Iterable, **options: Unpack[MapOptions]) -> Iterator:
    """Lazy, ordered ``map``: items are read and results produced as they go, with a bounded
    number of chunks in flight, so a generator or a huge input never sits in memory whole.

    Over an iterator of unknown length, chunks start small (about 10 ms of work) and grow, so
    the first results come after about the first chunk's time. Closing the iterator (``break``
    out of the loop, ``close()``, or dropping it) cancels the run: nothing more is computed.
    """
    given = complete("imap", options)
    plan, shown = _plan(func, data, "imap", given)
    return _flatten(_run(func, plan, given["timeout"], given["progress"], shown))


def imap_unordered(func: Callable, data: Iterable, *, with_index: bool = False,
                   **options: Unpack[MapOptions]) -> Iterator:
    """``imap`` whose results come as they complete, not in input order (as
    ``multiprocessing.Pool.imap_unordered``); ``with_index=True`` yields ``(index, result)``
    pairs, the index being the item's position in ``data``. Takes ``imap``'s keyword
    arguments."""
    given = complete("imap_unordered", options)
    plan, shown = _plan(func, data, "imap", given)
    return _flatten(_run(func, plan, given["timeout"], given["progress"], shown, unordered=True,
                         with_index=with_index))


def starmap(func: Callable, data: Iterable, **options: Unpack[MapOptions]) -> list:
    """``[func(*args) for args in data]`` (as ``multiprocessing.Pool.starmap``); takes
    ``map``'s keyword arguments. For fixed extra arguments, ``functools.partial`` works too."""
    _check_callable(func)
    return map(Star(func), data, **options)


def istarmap(func: Callable, data: Iterable, **options: Unpack[MapOptions]) -> Iterator:
    """Lazy, ordered ``starmap``; takes ``imap``'s keyword arguments."""
    _check_callable(func)
    return imap(Star(func), data, **options)


def _check_callable(func: Any) -> None:
    if not callable(func):
        raise InvalidArgumentTypeError(
            f"func must be callable (a function, lambda or object with __call__), "
            f"got {type(func).__name__}")


def _plan(func: Callable, data: Iterable, source: str,
          given: MapOptions) -> tuple[Plan, int | None]:
    """Check every argument, then measure (or recall) and decide: what each entry point does
    before it runs. With progress, the call is shown from here, so that measuring counts in
    its time: the plan, and the id progress observers know the run by (else None)."""
    optimize.check_arguments(func, data, given)
    if source == "map" and not hasattr(data, "__len__"):
        data = list(data)  # map returns a list anyway: measure across all of it
    if not given["progress"]:
        return optimize.make(func, *optimize.split_items(data, given["sample_size"]), source,
                             given), None
    description = _name(func)
    total = len(data) if isinstance(data, Sized) else _last_count(function_key(func))
    shown = announce_planning(source, description, total)
    try:
        return optimize.make(func, *optimize.split_items(data, given["sample_size"]), source,
                             given), shown
    except BaseException:
        announce_cancelled(shown, source, description)
        raise


def run_plan(func: Callable, plan: Plan, *, timeout: float | None = None,
             progress: bool = False) -> list:
    """Run a plan made by ``optimize`` (with its sampled results reused): ordered results.

    A plan made from an iterator holds that iterator: it can be run once."""
    return _listed(_run(func, plan, timeout, progress))


def _listed(blocks: Iterator[list]) -> list:
    nonempty = [block for block in blocks if block]
    return nonempty[0] if len(nonempty) == 1 else list(itertools.chain.from_iterable(nonempty))


def _run(func: Callable, plan: Plan, timeout: float | None, progress: bool,
         shown: int | None = None, unordered: bool = False,
         with_index: bool = False) -> Generator[list, None, None]:
    """Yield blocks of results, ordered unless ``unordered`` (then ``(index, result)`` pairs
    ``with_index``); report the run to observers when it completes. ``shown``: the run's
    progress id, when it was shown while planning."""
    todo = _Todo(plan.data, plan.sampled_results)
    lazy = plan.workload.source == "imap"
    run = Run(plan, timeout=timeout, progress=progress, description=_name(func),
              total=_expected_items(plan) if progress else None, done=len(plan.sampled_results),
              run_id=shown)
    run.position_of = todo.position_of
    with run:
        if unordered and run.pool is not None:
            yield from _completed_blocks(run, func, todo, _chunk_sizes(plan, run, lazy, progress),
                                         with_index, plan)
        elif unordered:
            blocks = _serial_blocks(func, todo, run, _serial_block(plan, lazy, progress))
            yield from _indexed(blocks) if with_index else blocks
        elif run.pool is None:
            yield from _serial_blocks(func, todo, run, _serial_block(plan, lazy, progress))
        else:
            yield from _pool_blocks(run, func, todo, _chunk_sizes(plan, run, lazy, progress))
        todo.raise_input_error()
        # imap's wall time includes its consumer's pauses: no verdict on the prediction
        run.finish(predicted_seconds=None if lazy else plan.predicted_seconds)


def _flatten(blocks: Generator[list, None, None]) -> Generator:
    """The results of ``blocks`` one by one; closing this (or dropping it) closes the run."""
    try:
        for block in blocks:
            yield from block
    finally:
        blocks.close()


def _expected_items(plan: Plan) -> int | None:
    """Items to count to: the input's length, else the last input size of this function."""
    return plan.n_items if plan.n_items is not None else _last_count(plan.workload.key)


def _last_count(key: Any) -> int | None:
    """The last input size of the function known by ``key``, if it ran before."""
    learned = plugins.recall(key)
    return learned.last_n_items if learned is not None else None


def _name(func: Callable) -> str:
    return getattr(func, "__qualname__", None) or type(func).__name__


class _Todo:
    """The items not yet computed, as runs between the already-computed ones."""

    def __init__(self, data: Iterable, done: dict[int, Any]) -> None:
        # an input that raises as it is read ends there: the results of the items before it
        # come out first, then its error, as from the builtin map (``take``)
        self.input_errors: list[Exception] = []
        self.it = iter(data)
        self.done = sorted(done)
        self.done_results = done
        # what the input's iterator has left (-1: it does not tell), to find the item a
        # serial call failed on without counting items as they go (``taken``)
        self._size = operator.length_hint(self.it, -1)
        self.sized = self._size >= 0

    def taken(self) -> int:
        """How many items were read from a sized input so far (the computed ones included)."""
        return self._size - operator.length_hint(self.it)

    def take(self, items: Iterator, n: int) -> list:
        """Up to ``n`` of ``items``; where reading them raises, the items before it, and the
        input's error kept for ``raise_input_error`` (nothing is read after it)."""
        taken: list = []
        if self.input_errors:
            return taken
        try:
            taken.extend(itertools.islice(items, n))  # what was read stays, even if it raises
        except Exception as exc:  # noqa: BLE001 - raised once the results before it are out
            self.input_errors.append(exc)
        return taken

    def raise_input_error(self) -> None:
        """Raise what the input raised, if it did (once every result before it is out)."""
        if self.input_errors:
            raise self.input_errors[0]

    def position_of(self, n: int) -> int:
        """The input position of the ``n``-th item ``runs`` yields (counting from 0)."""
        position = n
        for index in self.done:
            if index > position:
                break
            position += 1
        return position

    def runs(self) -> Iterator[tuple[Iterator, int | None]]:
        """Yield (items of a run, index of the computed item that follows it or None)."""
        pos = 0
        for index in self.done:
            yield itertools.islice(self.it, index - pos), index
            next(self.it, None)
            pos = index + 1
        yield self.it, None

    def positions(self) -> Iterator[int]:
        """The input positions of the items ``runs`` yields, in the same order."""
        start = 0
        for index in self.done:
            yield from range(start, index)
            start = index + 1
        yield from itertools.count(start)


def _serial_block(plan: Plan, lazy: bool, progress: bool) -> int:
    """Items per block in the calling thread: all at once for ``map`` (a plain loop); about 10 ms
    of work for ``imap`` (so it yields promptly); at most half a second of work with a bar."""
    per_item = max(plan.profile.per_item_seconds, 1e-9)
    block = sys.maxsize if not (lazy or progress) else _SERIAL_BLOCK
    if lazy:
        block = min(block, int(_LAZY_BLOCK_SECONDS / per_item))
    if progress:
        block = min(block, int(PROGRESS_CHUNK_SECONDS / per_item))
    return max(1, block)


def _chunk_sizes(plan: Plan, run: Run, lazy: bool, progress: bool) -> Iterator[int]:
    """Chunk sizes, one per chunk: the plan's, at most half a second of work with a progress
    bar; a serial plan run on a thread (for a time limit) in serial blocks; over an iterator of
    unknown length, starting at about 10 ms of work and doubling each wave of chunks."""
    per_item = max(plan.profile.per_item_seconds, 1e-9)
    size = plan.chunksize
    if plan.executor_type == "serial":
        size = _serial_block(plan, lazy, progress)
    elif progress:
        size = max(1, min(size, int(PROGRESS_CHUNK_SECONDS / per_item)))
    if not (lazy and plan.n_items is None):
        return itertools.repeat(size)
    first = max(1, min(size, math.ceil(_LAZY_BLOCK_SECONDS / per_item)))
    wave = max(1, run.pool.n_jobs)
    return itertools.chain.from_iterable(
        itertools.repeat(min(size, first << k), wave) for k in itertools.count())


def _serial_blocks(func: Callable, todo: _Todo, run: Run, block: int) -> Iterator[list]:
    """Runs in blocks of at most ``block`` items, so ``imap`` over a generator reads only as
    far as its consumer has asked."""
    start = 0  # the input position of the block's first item
    for items, follower in todo.runs():
        while True:
            t0 = time.perf_counter()
            # a plain loop when the block is everything (islice costs a trivial call's time);
            # an input of unknown length is read a block ahead, so a failure's item is known,
            # and so is an error of the input's own
            read = 0
            block_items: Iterator
            if block == sys.maxsize:
                block_items = items
            elif todo.sized:
                block_items = itertools.islice(items, block)
            else:
                listed = todo.take(items, block)
                read, block_items = len(listed), iter(listed)
            try:
                results = [func(x) for x in block_items]
            except Exception as exc:
                # the failing item is the last one read: from a sized input, or from this block
                index = (todo.taken() - 1 if todo.sized else None if not read
                         else start + read - operator.length_hint(block_items) - 1)
                worker.note_item_here(exc, index, run.plan.n_items)
                raise
            start += len(results)
            run.record(len(results), time.perf_counter() - t0)
            if len(results) < block:
                if follower is not None:
                    results.append(todo.done_results[follower])
                    start += 1
                yield results
                break
            yield results


def _submitted(run: Run, func: Callable, todo: _Todo, sizes: Iterator[int],
               with_indices: bool) -> Iterator[tuple[Any, list[int] | None]]:
    """Chunks of the items not yet computed, each submitted to the run as it is asked for:
    ``(future, the items' input positions or None)``. Reading the input lazily is what keeps
    ``imap`` over a generator bounded."""
    remaining = itertools.chain.from_iterable(items for items, _ in todo.runs())
    positions = todo.positions() if with_indices else None
    prepared = run.pool.prepare(func)
    for size in sizes:
        chunk = todo.take(remaining, size)
        if not chunk:
            return
        indices = None if positions is None else list(itertools.islice(positions, len(chunk)))
        yield run.submit_chunk(prepared, chunk, indices), indices


def _pool_blocks(run: Run, func: Callable, todo: _Todo, sizes: Iterator[int]) -> Iterator[list]:
    """All remaining items go through one stream of chunks, with at most four per worker in
    flight; already-computed results are slotted back in at their positions as chunks return."""
    limit = 4 * run.pool.n_jobs
    merger = _Merger(todo.done_results)
    pending: collections.deque[Any] = collections.deque()
    for future, _ in _submitted(run, func, todo, sizes, run.timeout is not None):
        pending.append(future)
        if len(pending) >= limit:
            yield merger.feed(_collect(run, pending.popleft()))
    while pending:
        yield merger.feed(_collect(run, pending.popleft()))
    yield merger.rest()


def _completed_blocks(run: Run, func: Callable, todo: _Todo, sizes: Iterator[int],
                      with_index: bool, plan: Plan) -> Iterator[list]:
    """The results of chunks as they complete. The results of the items measured while planning
    come out as if those items had started with the run: each once the run has gone on as long
    as its call took, so a slow measured item does not come before faster ones finished since;
    any still held come out when the last chunk does."""
    held = _Held(todo.done_results, plan.sampled_seconds, plan.profile.per_item_seconds)
    chunks = _submitted(run, func, todo, sizes, True)
    pending = dict(itertools.islice(chunks, 4 * run.pool.n_jobs))
    while pending:
        wait = held.seconds_to_next()
        if run.timeout is not None:
            wait = WATCH_SECONDS if wait is None else min(wait, WATCH_SECONDS)
        finished, _ = futures.wait(pending, timeout=wait, return_when=futures.FIRST_COMPLETED)
        if run.timeout is not None:  # also while other chunks keep completing
            run.check_time_limit()
        for future in finished:
            indices = pending.pop(future)
            results = _collect(run, future)
            yield list(zip(indices, results)) if with_index else results
        released = held.due()
        if released:
            yield released if with_index else [result for _, result in released]
        pending.update(itertools.islice(chunks, len(finished)))
    rest = held.due(everything=True)
    yield rest if with_index else [result for _, result in rest]


class _Held:
    """Results computed while measuring, each due once the run has gone on for as long as its
    call took (``seconds``; ``default`` for a call not timed alone)."""

    def __init__(self, results: dict[int, Any], seconds: dict[int, float], default: float) -> None:
        self.start = time.perf_counter()
        self.waiting = sorted(((seconds.get(i, default), i, r) for i, r in results.items()),
                              key=lambda entry: entry[0], reverse=True)

    def seconds_to_next(self) -> float | None:
        """How long until the next result is due (None: none is held)."""
        if not self.waiting:
            return None
        return max(0.0, self.waiting[-1][0] - (time.perf_counter() - self.start))

    def due(self, everything: bool = False) -> list[tuple[int, Any]]:
        """The ``(index, result)`` pairs due now (all of them with ``everything``)."""
        elapsed = time.perf_counter() - self.start
        out = []
        while self.waiting and (everything or self.waiting[-1][0] <= elapsed):
            _, index, result = self.waiting.pop()
            out.append((index, result))
        return out


def _indexed(blocks: Iterator[list]) -> Iterator[list]:
    """``(index, result)`` pairs of blocks of ordered results."""
    start = 0
    for block in blocks:
        yield list(enumerate(block, start))
        start += len(block)


def _collect(run: Run, future: Any) -> list:
    results: list
    results, seconds = run.result(future)
    run.record(len(results), seconds)
    return results


class _Merger:
    """Interleaves a stream of new results with the results computed while sampling."""

    def __init__(self, done: dict[int, Any]) -> None:
        self.done = done
        self.order = sorted(done)
        self.next = 0
        self.pos = 0

    def feed(self, results: list) -> list:
        if self.next == len(self.order):  # nothing left to slot in
            self.pos += len(results)
            return results
        out: list = []
        i = 0
        while i < len(results) or self._due():
            if self._due():
                out.append(self.done[self.order[self.next]])
                self.next += 1
                self.pos += 1
                continue
            upcoming = self.order[self.next] if self.next < len(self.order) else None
            take = len(results) - i if upcoming is None else min(len(results) - i,
                                                                  upcoming - self.pos)
            out.extend(results[i:i + take])
            i += take
            self.pos += take
        return out

    def _due(self) -> bool:
        return self.next < len(self.order) and self.order[self.next] == self.pos

    def rest(self) -> list:
        out = [self.done[i] for i in self.order[self.next:]]
        self.next = len(self.order)
        return out
