"""The pools amorsize runs work on, behind one interface: ``WorkerPool``, their base, and the
serial pool.

Every pool has ``map(func, iterable, chunksize=1) -> list`` (ordered), ``submit(fn, *args,
**kwargs) -> Future`` and ``submit_chunk(func, items) -> Future[(results, compute_seconds)]``, so
a plan runs the same way whatever its executor (``pools.threads``, ``pools.processes``). Each
class declares what it is as class attributes (as joblib's backends do) rather than callers
testing types.

A pool belongs to the process that made it and lives until ``shutdown``: after either a
shutdown or a ``fork()`` it refuses work with a clear error instead of queueing tasks that no
worker will ever run.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Container, Iterable, Iterator
from concurrent.futures import Future, InvalidStateError
from typing import Any, ClassVar

from amorsize.errors import (
    ExecutorType,
    PoolClosedError,
    PoolManagerClosedError,
)
from amorsize.pools import worker


class WorkerPool:
    """Base of the pools: bookkeeping of use, leases and liveness shared by every kind."""

    executor_type: ClassVar[ExecutorType]
    uses_processes: ClassVar[bool] = False
    usable_after_fork: ClassVar[bool] = False

    def __init__(self, n_jobs: int) -> None:
        self.n_jobs = n_jobs
        self.created_at = time.monotonic()
        self.last_used = self.created_at
        self.startup_seconds = 0.0
        self.closed = False
        # set by its PoolManager's shutdown(): the pool's end is the manager's, not its own
        self.manager_shut_down = False
        self.board: Any = None
        self._pid = os.getpid()
        self._inflight = 0
        self._leases = 0
        self._retiring = False
        self._terminated = False
        self.terminated_by: int | None = None
        self._inflight_lock = threading.Lock()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "broken" if self.broken else "open"
        return f"<{type(self).__name__} n_jobs={self.n_jobs} {state}>"

    @property
    def busy(self) -> bool:
        return self._inflight > 0

    @contextlib.contextmanager
    def lease(self) -> Iterator[WorkerPool]:
        """Hold the pool for a whole run: it counts as busy (a paused ``imap`` is never closed
        as idle), and a manager that retires it meanwhile (``clear``, ``release_pool``, idle
        eviction) closes it only when the last lease ends. A pool already retired or closed
        raises ``PoolClosedError``: ask the manager again for its replacement."""
        with self._inflight_lock:
            if self.closed or self._retiring:
                raise self._closed_error()
            self._leases += 1
            self._inflight += 1
        try:
            yield self
        finally:
            with self._inflight_lock:
                self._leases -= 1
                self._inflight -= 1
                self.last_used = time.monotonic()
                close_now = self._retiring and self._leases == 0 and not self.closed
            if close_now:
                self.shutdown(wait=False)

    def retire(self, wait: bool = True, force: bool = False) -> bool:
        """Take the pool out of service: shut it down now, or, while a run holds a lease, when
        that run ends (its work is neither failed nor killed). True if it was closed now."""
        with self._inflight_lock:
            self._retiring = True
            deferred = self._leases > 0 and not force
        if not deferred:
            self.shutdown(wait=wait, force=force)
        return not deferred

    def terminate(self, by: int | None = None) -> None:
        """Stop now, for a cancelled run (its id ``by``) that still has work here: queued work is
        dropped, running work is killed (processes) or abandoned (threads cannot be killed); the
        pool is then broken, and its manager replaces it on the next request."""
        if not self.broken:  # a pool a worker's death broke stays "broken", not "cancelled"
            self.terminated_by = by if by is not None else 0
        self._terminated = True
        self.shutdown(wait=False, force=True)

    @property
    def idle_seconds(self) -> float:
        return 0.0 if self.busy else time.monotonic() - self.last_used

    @property
    def broken(self) -> bool:
        return self._terminated

    @property
    def recycle_due(self) -> bool:
        """True once a worker's memory grew past its limit: the manager replaces the pool on
        the next request (process pools only; the other kinds run in the caller's process)."""
        return False

    @property
    def workers_replaced(self) -> int:
        """Workers that took over from a retired one (``max_tasks_per_child``)."""
        return 0

    def prepare(self, func: Callable) -> Any:
        """The form of ``func`` that travels to workers (cloudpickle bytes for processes)."""
        return func

    def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` on a worker; its exception, if any, comes through the future."""
        self._check_usable()
        return self._track(self._submit(worker.call, self.prepare(fn), args, kwargs))

    def submit_chunk(self, func: Any, items: list, token: float = 0.0) -> Future:
        """Run ``func`` (as returned by ``prepare``) on ``items``; the future gives
        ``(results, compute_seconds)``. A ``token`` has each item's start written on the
        pool's board (``running_items``), for time limits."""
        self._check_usable()
        return self._track(self._submit(worker.run_chunk, func, items, token))

    def map(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> list:
        """Ordered results of ``func`` over ``iterable``; the first error is raised as-is."""
        out: list = []
        for results, _ in self.imap_chunks(func, iterable, chunksize):
            out.extend(results)
        return out

    def imap_chunks(
        self, func: Callable, iterable: Iterable, chunksize: int, max_inflight: int | None = None
    ) -> Iterator[tuple[list, float]]:
        """Yield ``(results, compute_seconds)`` per chunk, in order, keeping at most
        ``max_inflight`` chunks submitted ahead (default: four per worker) so memory stays bounded."""
        _check_chunksize(chunksize)
        self._check_usable()
        return self._imap_chunks(func, iterable, chunksize, max_inflight)

    def _imap_chunks(
        self, func: Callable, iterable: Iterable, chunksize: int, max_inflight: int | None
    ) -> Iterator[tuple[list, float]]:
        prepared = self.prepare(func)
        limit = max_inflight or 4 * self.n_jobs
        pending: list[Future] = []
        first = 0  # the input position of the first item of pending[0]
        try:
            for chunk in _chunked(iterable, chunksize):
                pending.append(self.submit_chunk(prepared, chunk))
                if len(pending) >= limit:
                    yield (done := _named_failure(pending.pop(0), first))
                    first += len(done[0])
            while pending:
                yield (done := _named_failure(pending.pop(0), first))
                first += len(done[0])
        finally:
            for f in pending:
                f.cancel()

    def _closed_error(self) -> PoolClosedError | PoolManagerClosedError:
        if self.manager_shut_down:
            return PoolManagerClosedError(
                f"this {self.executor_type} pool was closed by its PoolManager's shutdown() "
                "(amorsize.shutdown_global_pool_manager() for the global one) while in use; the "
                "items not yet computed were not run: call again, after the shutdown, for a new "
                "pool from a new manager")
        return PoolClosedError(
            f"this {self.executor_type} pool was shut down (idle timeout, release_pool, "
            "force_new, clear, a cancelled run or its manager's shutdown); ask the PoolManager "
            "for a pool again with get_pool()"
        )

    def _check_usable(self) -> None:
        if self.closed:
            raise self._closed_error()
        if not self.usable_after_fork and os.getpid() != self._pid:
            raise RuntimeError(
                f"this {self.executor_type} pool belongs to process {self._pid}, and this is a "
                f"forked child ({os.getpid()}) whose copy has no workers; call get_pool() in the "
                "child for a pool of its own"
            )

    def _track(self, future: Future) -> Future:
        with self._inflight_lock:
            self._inflight += 1
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Future | None) -> None:
        with self._inflight_lock:
            self._inflight -= 1
            self.last_used = time.monotonic()

    def _submit(self, fn: Callable, *args: Any) -> Future:
        raise NotImplementedError

    def worker_pids(self) -> list[int]:
        return []

    def running_items(self, tokens: Container[float]) -> list[tuple[float, int, float]]:
        """``(token, item, started)`` of each item a worker is computing now for a chunk whose
        token is in ``tokens`` (``started`` on ``time.monotonic()``); needs ``run_chunk``'s
        token."""
        board = self.board
        if board is None:
            return []
        out = []
        for at in range(0, len(board), worker.SLOT):
            token = board[at + worker.TOKEN]
            if token and token in tokens:
                out.append((token, int(board[at + worker.ITEM]), board[at + worker.STARTED]))
        return out

    def shutdown(self, wait: bool = True, force: bool = False) -> None:
        raise NotImplementedError


class SerialPool(WorkerPool):
    """Runs everything in the calling thread: a serial plan needs no special case.

    ``submit`` runs the call at once; the returned future is already done and carries the
    call's result or its exception, as an executor's future would.
    """

    executor_type = "serial"
    usable_after_fork = True

    def __init__(
        self, n_jobs: int = 1, initializer: Callable | None = None, initargs: tuple = ()
    ) -> None:
        super().__init__(1)
        if initializer is not None:
            initializer(*initargs)

    def _submit(self, fn: Callable, *args: Any) -> Future:
        future: Future = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future, as executors do
            future.set_exception(exc)
        return future

    def map(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> list:
        _check_chunksize(chunksize)
        self._check_usable()
        try:
            return [func(x) for x in iterable]
        finally:
            self.last_used = time.monotonic()

    def shutdown(self, wait: bool = True, force: bool = False) -> None:
        self.closed = True


class FollowingFuture(Future):
    """A future that takes its outcome from another one (its *inner* future), as subclasses
    transform it; cancelling it cancels the inner future, which is what a caller means."""

    _inner: Future

    def _follow(self, inner: Future) -> None:
        self._inner = inner
        inner.add_done_callback(self._copy)

    def cancel(self) -> bool:
        return self._inner.cancel()

    def running(self) -> bool:
        return not self.done() and self._inner.running()

    def _copy(self, inner: Future) -> None:
        if inner.cancelled():
            if Future.cancel(self):
                self.set_running_or_notify_cancel()
            return
        exc = inner.exception()
        # a forced shutdown may have failed this future already (fail_crashed), at any moment
        with contextlib.suppress(InvalidStateError):
            if exc is None:
                self._succeeded(inner.result())
            else:
                self._failed(exc)

    def _succeeded(self, result: Any) -> None:
        self.set_result(result)

    def _failed(self, exc: BaseException) -> None:
        self.set_exception(exc)


def _named_failure(future: Future, first: int) -> Any:
    """A chunk's outcome; a failing item's exception is noted with its input position (the
    chunk's ``first`` plus its place in the chunk) and the worker it ran on."""
    try:
        return future.result()
    except Exception as exc:
        worker.item_note(exc, lambda k: first + k)
        raise


def _check_chunksize(chunksize: object) -> None:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")


def _chunked(iterable: Iterable, size: int) -> Iterator[list]:
    it = iter(iterable)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
