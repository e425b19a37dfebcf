"""joblib batches on a run's pool: each split into the plan's chunks, timed in the worker, and
gathered back into one result list, in order, settling the future joblib waits on."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from amorsize.errors import WorkerCrashedError
from amorsize.pools.payloads import OutOfBand, Placed
from amorsize.pools.worker import now, where_running
from amorsize.run.control import Run
from amorsize_joblib import batches


def run_joblib_batch(batch: Any, inner_max_num_threads: int | None = None) -> tuple[list, float, float]:
    """Run a joblib batch where it lands (caller, pool thread or process worker), timed there.

    Returns the results, the wall seconds and the CPU seconds (the probe's clocks), so the optimizer
    learns compute time, not dispatch-to-callback time. On a process pool the batch, its results
    and its errors travel by value (cloudpickle, done by amorsize's pools), so lambdas,
    ``__main__`` functions and exception classes work as with loky; the batch comes as
    ``OutOfBand``, its tasks' large arguments waiting in shared memory (``PoolBatches``).
    """
    if isinstance(batch, OutOfBand):
        batch = batch.load()
    start, cpu0 = now()
    try:
        results = call_batch(batch, inner_max_num_threads)
    except Exception as exc:
        exc.add_note(f"a task of a joblib batch of {len(batch)}, run {where_running()}")
        raise
    end, cpu1 = now()
    return results, end - start, cpu1 - cpu0


def call_batch(batch: Any, inner_max_num_threads: int | None) -> list:
    """The batch's results, its BLAS and OpenMP pools capped as joblib caps them for the
    workers it starts (``inner_max_num_threads``; None: left as they are)."""
    if inner_max_num_threads is None:
        return batch()
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=inner_max_num_threads):
        return batch()


def settle(future: Future, result: Any = None, exception: BaseException | None = None) -> None:
    """Set a future's outcome unless an abort cancelled it first."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class PoolBatches:
    """Sends a call's batches to its run's pool, in chunks of the plan's size.

    To process workers, a chunk's large arguments (numpy arrays, pandas frames, ``bytes`` of
    ``amorsize.pools.shared.SHARED_MIN_BYTES`` or more: the ``X`` and ``y`` every task of a
    scikit-learn search carries) go out of band, each into a shared-memory segment placed once
    for the call (``Placed``) and kept for the next ones: what crosses with each chunk is the
    rest of its pickle, and each worker maps a segment once and reads the arrays without a
    copy, read-only."""

    def __init__(self, run: Run, inner_max_num_threads: int | None,
                 aborting: Callable[[], bool]) -> None:
        self.run = run
        self.inner_max_num_threads = inner_max_num_threads
        self.aborting = aborting
        self.runner = run.pool.prepare(run_joblib_batch)
        self.on_processes = bool(run.pool.uses_processes)
        self.placed = Placed() if self.on_processes else None
        self._helper: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def send(self, batch: Any, future: Future, prefix: list | None = None,
             leading: Future | None = None) -> None:
        """Split ``batch`` (None: nothing more) into the plan's chunks, at most one per worker
        so joblib's small tail batches still spread over the pool. ``future`` gets ``prefix``
        (results already computed), then ``leading``'s (a task still being measured), then the
        chunks', once all have come."""
        plan = self.run.plan
        size = 1 if batch is None else max(1, min(plan.chunksize, -(-len(batch) // plan.n_jobs)))
        chunks = [] if batch is None else batches.split(batch, size)
        parts = [leading] if leading is not None else []
        gather = Gather(self, future, len(parts) + len(chunks), prefix or [], len(parts))
        for index, part in enumerate(parts):
            part.add_done_callback(functools.partial(gather.part_done, index))
        for index, chunk in enumerate(chunks, start=len(parts)):
            if self.aborting():
                gather.cancel()
                return
            try:
                sent = chunk if self.placed is None else OutOfBand(chunk, self.placed)
                part = self.run.submit(self.runner, sent, self.inner_max_num_threads)
            except BaseException as exc:  # noqa: BLE001 - e.g. unpicklable task: joblib raises it
                gather.fail(exc)
                return
            part.add_done_callback(functools.partial(gather.part_done, index))

    def complete(self, future: Future, **outcome: Any) -> None:
        """Settle a batch; off a process pool's manager thread, so joblib's callback (which
        pickles and submits the next batch) never stalls the shared pool's result delivery."""
        if self.on_processes:
            try:
                self._helper_thread().submit(settle, future, **outcome)
                return
            except RuntimeError:
                pass
        settle(future, **outcome)

    def _helper_thread(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._helper is None:
                self._helper = ThreadPoolExecutor(max_workers=1,
                                                  thread_name_prefix="amorsize-joblib")
            return self._helper

    def close(self) -> None:
        helper, self._helper = self._helper, None
        if helper is not None:
            helper.shutdown(wait=False)


class Gather:
    """Collects the chunks of one joblib batch and settles its future once, in order."""

    def __init__(self, sender: PoolBatches, future: Future, n_parts: int, prefix: list,
                 n_measured: int = 0) -> None:
        self.sender = sender
        self.n_measured = n_measured
        self.future = future
        self.parts: list[list | None] = [None] * n_parts
        self.left = n_parts
        self.prefix = prefix
        self.finished = False
        self.lock = threading.Lock()

    def part_done(self, index: int, part: Future) -> None:
        if part.cancelled():
            self.cancel()
            return
        error = part.exception()
        if error is not None:
            if isinstance(error, BrokenProcessPool) and not isinstance(error, WorkerCrashedError):
                error = WorkerCrashedError(
                    f"a worker process died while running a joblib batch ({error}); the pool is "
                    "replaced on the next call")
            self.fail(error)
            return
        try:
            results, wall = part.result()[:2]
        except BaseException as exc:  # noqa: BLE001 - the task's own error, raised by joblib
            self.fail(exc)
            return
        if index >= self.n_measured:  # a measured task is counted as measured already
            self.sender.run.record(len(results), wall)
        with self.lock:
            self.parts[index] = results
            self.left -= 1
            if self.left or self.finished:
                return
            self.finished = True
        out = self.prefix
        for chunk in self.parts:
            out.extend(chunk or ())
        self.sender.complete(self.future, result=out)

    def fail(self, error: BaseException) -> None:
        with self.lock:
            if self.finished:
                return
            self.finished = True
        self.sender.complete(self.future, exception=error)

    def cancel(self) -> None:
        with self.lock:
            if self.finished:
                return
            self.finished = True
        self.future.cancel()


class Unsettled:
    """The batches of one call submitted and not settled yet, for the calling thread to wait
    on: until none is left (joblib's callback has then dispatched all there is), or one failed
    or was cancelled (joblib raises at once). One per call: a batch of an earlier, aborted call
    settling late counts for that call only."""

    def __init__(self) -> None:
        self.count = 0
        self.failed = False
        self._changed = threading.Condition()

    def add(self, future: Future) -> None:
        with self._changed:
            self.count += 1

    def settled(self, future: Future) -> None:
        with self._changed:
            self.count -= 1
            if future.cancelled() or future.exception() is not None:
                self.failed = True
            if self.count <= 0 or self.failed:
                self._changed.notify_all()

    def wait(self, given_up: Callable[[], bool]) -> None:
        """Return once no batch is unsettled, one failed, or ``given_up()`` (checked at least
        twice a second)."""
        with self._changed:
            while self.count > 0 and not self.failed and not given_up():
                self._changed.wait(0.5)

