"""``amorsize.map`` and ``amorsize.imap``: plan, then run on warm pools, then report.

Every item's function call happens exactly once: items run while measuring keep their results
and are skipped here. Results come back in input order; the first error in the user's function
reaches the caller with its own type; a worker that dies raises ``WorkerCrashedError``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from amorsize import planning, plugins, sampling
from amorsize.plan import Plan
from amorsize.report import RunReport

_SERIAL_BLOCK = 4096
_LAZY_BLOCK_SECONDS = 0.01


def map(  # noqa: A001 - the name users expect, as multiprocessing.Pool.map
    func: Callable,
    data: Iterable,
    *,
    n_jobs: int | None = None,
    executor: str | None = None,
    chunksize: int | None = None,
    min_speedup: float = 1.2,
    sample_size: int = sampling.DEFAULT_SAMPLE_SIZE,
    resample: bool = False,
    start_method: str | None = None,
) -> list:
    """``[func(x) for x in data]``, run the fastest way amorsize can find (see ``optimize``)."""
    planning.check_arguments(func, data, n_jobs, executor, chunksize, min_speedup, sample_size)
    items = data if hasattr(data, "__len__") else list(data)
    plan = planning.make(
        func, *planning.split_items(items, sample_size), "map", n_jobs=n_jobs,
        executor=executor, chunksize=chunksize, min_speedup=min_speedup,
        sample_size=sample_size, resample=resample, start_method=start_method)
    return run_plan(func, plan)


def imap(
    func: Callable,
    data: Iterable,
    *,
    n_jobs: int | None = None,
    executor: str | None = None,
    chunksize: int | None = None,
    min_speedup: float = 1.2,
    sample_size: int = sampling.DEFAULT_SAMPLE_SIZE,
    resample: bool = False,
    start_method: str | None = None,
) -> Iterator:
    """Lazy, ordered ``map``: items are read and results produced as they go, with a bounded
    number of chunks in flight, so a generator or a huge input never sits in memory whole."""
    planning.check_arguments(func, data, n_jobs, executor, chunksize, min_speedup, sample_size)
    plan = planning.make(
        func, *planning.split_items(data, sample_size), "imap", n_jobs=n_jobs,
        executor=executor, chunksize=chunksize, min_speedup=min_speedup,
        sample_size=sample_size, resample=resample, start_method=start_method)
    return itertools.chain.from_iterable(_run(func, plan))


def run_plan(func: Callable, plan: Plan) -> list:
    """Run a plan made by ``optimize`` (with its sampled results reused): ordered results.

    A plan made from an iterator holds that iterator: it can be run once."""
    out: list = []
    for block in _run(func, plan):
        out.extend(block)
    return out


def _run(func: Callable, plan: Plan) -> Iterator[list]:
    """Yield blocks of ordered results; report the run to observers when it completes."""
    todo = _Todo(plan.data, plan.sampled_results)
    lazy = plan.workload.source == "imap"
    start = time.perf_counter()
    counts = {"items": 0, "chunks": 0, "compute": 0.0}
    if plan.executor_type == "serial" or plan.n_jobs == 1 and plan.executor_type != "process":
        block = _serial_block_size(plan.profile.per_item_seconds) if lazy else _SERIAL_BLOCK
        yield from _serial_blocks(func, todo, counts, block)
    else:
        pool = plugins.get_pool(plan.executor_type, plan.n_jobs,
                                start_method=plan.machine.get("start_method"))
        with pool.lease():
            yield from _pool_blocks(pool, func, todo, plan.chunksize, counts)
    wall = time.perf_counter() - start
    report = RunReport(
        source=plan.workload.source,
        executor_type=plan.executor_type,
        n_jobs=plan.n_jobs,
        chunksize=plan.chunksize,
        n_items=counts["items"],
        n_chunks=counts["chunks"],
        wall_seconds=wall,
        compute_seconds=counts["compute"],
        # imap's wall time includes its consumer's pauses: no verdict on the prediction
        predicted_seconds=None if lazy else plan.predicted_seconds,
        predicted_speedup=plan.estimated_speedup,
    )
    plugins.run_finished(plan, report)


class _Todo:
    """The items not yet computed, as runs between the already-computed ones."""

    def __init__(self, data: Iterable, done: dict[int, Any]) -> None:
        self.it = iter(data)
        self.done = sorted(done)
        self.done_results = done

    def runs(self) -> Iterator[tuple[Iterator, int | None]]:
        """Yield (items of a run, index of the computed item that follows it or None)."""
        pos = 0
        for index in self.done:
            yield itertools.islice(self.it, index - pos), index
            next(self.it, None)
            pos = index + 1
        yield self.it, None


def _serial_block_size(per_item_seconds: float) -> int:
    """Items per block for a lazy serial run: about 10 ms of work, so ``imap`` yields promptly."""
    return max(1, min(_SERIAL_BLOCK, int(_LAZY_BLOCK_SECONDS / max(per_item_seconds, 1e-9))))


def _serial_blocks(func: Callable, todo: _Todo, counts: dict, block: int) -> Iterator[list]:
    """Runs in blocks of at most ``block`` items, so ``imap`` over a generator reads only as
    far as its consumer has asked."""
    for run, follower in todo.runs():
        while True:
            t0 = time.perf_counter()
            results = [func(x) for x in itertools.islice(run, block)]
            counts["compute"] += time.perf_counter() - t0
            counts["items"] += len(results)
            counts["chunks"] += 1
            if len(results) < block:
                if follower is not None:
                    results.append(todo.done_results[follower])
                yield results
                break
            yield results


def _pool_blocks(
    pool: Any, func: Callable, todo: _Todo, chunksize: int, counts: dict
) -> Iterator[list]:
    """All remaining items go through one stream of chunks, with a bounded number in flight;
    already-computed results are slotted back in at their positions as chunks return."""
    remaining = itertools.chain.from_iterable(run for run, _ in todo.runs())
    merger = _Merger(todo.done_results)
    for results, seconds in pool.imap_chunks(func, remaining, chunksize):
        counts["compute"] += seconds
        counts["items"] += len(results)
        counts["chunks"] += 1
        yield merger.feed(results)
    yield merger.rest()


class _Merger:
    """Interleaves a stream of new results with the results computed while sampling."""

    def __init__(self, done: dict[int, Any]) -> None:
        self.done = done
        self.order = sorted(done)
        self.next = 0
        self.pos = 0

    def feed(self, results: list) -> list:
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
