"""The three kinds of pool amorsize runs work on, behind one interface.

Every pool has ``map(func, iterable, chunksize=1) -> list`` (ordered), ``submit(fn, *args,
**kwargs) -> Future`` and ``submit_chunk(func, items) -> Future[(results, compute_seconds)]``, so
a plan runs the same way whatever its executor. Each class declares what it is as class
attributes (as joblib's backends do) rather than callers testing types.

A pool belongs to the process that made it and lives until ``shutdown``: after either a
shutdown or a ``fork()`` it refuses work with a clear error instead of queueing tasks that no
worker will ever run.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import multiprocessing.spawn
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, ClassVar

from amorsize import worker
from amorsize.errors import WorkerCrashedError


class Pool:
    """Base of the pools: bookkeeping of use and liveness shared by every kind."""

    executor_type: ClassVar[str]
    uses_processes: ClassVar[bool] = False
    usable_after_fork: ClassVar[bool] = False

    def __init__(self, n_jobs: int) -> None:
        self.n_jobs = n_jobs
        self.created_at = time.monotonic()
        self.last_used = self.created_at
        self.startup_seconds = 0.0
        self.closed = False
        self._pid = os.getpid()
        self._inflight = 0
        self._inflight_lock = threading.Lock()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "broken" if self.broken else "open"
        return f"<{type(self).__name__} n_jobs={self.n_jobs} {state}>"

    @property
    def busy(self) -> bool:
        return self._inflight > 0

    @contextlib.contextmanager
    def lease(self) -> Iterator[None]:
        """Count the pool busy for a whole run, so a paused ``imap`` (no chunk in flight) never
        finds it closed as idle by another caller's request."""
        with self._inflight_lock:
            self._inflight += 1
        try:
            yield
        finally:
            self._done(None)

    @property
    def idle_seconds(self) -> float:
        return 0.0 if self.busy else time.monotonic() - self.last_used

    @property
    def broken(self) -> bool:
        return False

    def prepare(self, func: Callable) -> Any:
        """The form of ``func`` that travels to workers (cloudpickle bytes for processes)."""
        return func

    def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` on a worker; its exception, if any, comes through the future."""
        self._check_usable()
        return self._track(self._submit(worker.call, self.prepare(fn), args, kwargs))

    def submit_chunk(self, func: Any, items: list) -> Future:
        """Run ``func`` (as returned by ``prepare``) on ``items``; the future gives
        ``(results, compute_seconds)``."""
        self._check_usable()
        return self._track(self._submit(worker.run_chunk, func, items))

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
        try:
            for chunk in _chunked(iterable, chunksize):
                pending.append(self.submit_chunk(prepared, chunk))
                if len(pending) >= limit:
                    yield self._result(pending.pop(0))
            while pending:
                yield self._result(pending.pop(0))
        finally:
            for f in pending:
                f.cancel()

    def _result(self, future: Future) -> Any:
        return future.result()

    def _check_usable(self) -> None:
        if self.closed:
            raise RuntimeError(
                f"this {self.executor_type} pool was shut down (idle timeout, release_pool, "
                "force_new, clear or its manager's shutdown); ask the PoolManager for a pool again "
                "with get_pool()"
            )
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

    def shutdown(self, wait: bool = True, force: bool = False) -> None:
        raise NotImplementedError


class SerialPool(Pool):
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


class ThreadPool(Pool):
    """Threads: no pickling, shared memory; for I/O and for code that releases the GIL."""

    executor_type = "thread"

    def __init__(
        self, n_jobs: int, initializer: Callable | None = None, initargs: tuple = ()
    ) -> None:
        super().__init__(n_jobs)
        start = time.perf_counter()
        self._executor = ThreadPoolExecutor(
            max_workers=n_jobs, thread_name_prefix="amorsize",
            initializer=initializer, initargs=initargs,
        )
        barrier = threading.Barrier(n_jobs)
        try:
            for f in [self._executor.submit(barrier.wait, 10) for _ in range(n_jobs)]:
                f.result()
        except BaseException:
            self._executor.shutdown(wait=False, cancel_futures=True)
            raise
        self.startup_seconds = time.perf_counter() - start

    def _submit(self, fn: Callable, *args: Any) -> Future:
        return self._executor.submit(fn, *args)

    def shutdown(self, wait: bool = True, force: bool = False) -> None:
        """``force`` cancels queued tasks and does not wait; a running thread cannot be killed."""
        self.closed = True
        if os.getpid() == self._pid:
            self._executor.shutdown(wait=wait and not force, cancel_futures=force)


class ProcessPool(Pool):
    """Processes: true parallelism for pure-Python CPU work, at the price of pickling.

    Functions travel with cloudpickle, so lambdas, closures and ``__main__`` functions work. A
    worker that dies marks the pool broken (``broken``); its running and queued calls raise
    ``WorkerCrashedError`` (a ``BrokenProcessPool``) instead of hanging, through ``map`` and
    through the futures of ``submit`` alike.
    """

    executor_type = "process"
    uses_processes = True

    def __init__(
        self,
        n_jobs: int,
        start_method: str,
        initializer: Callable | None = None,
        initargs: tuple = (),
        blas_threads: int | None = None,
    ) -> None:
        super().__init__(n_jobs)
        self.start_method = start_method
        self._broken_seen = False
        start = time.perf_counter()
        context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            _preload_forkserver(context)
        self._executor = ProcessPoolExecutor(
            max_workers=n_jobs,
            mp_context=context,
            initializer=_initialize,
            initargs=(blas_threads, initializer, initargs),
        )
        try:
            with _without_main_module():
                _start_all_workers(self._executor, n_jobs)
        except BrokenProcessPool as exc:
            self.shutdown(force=True)
            raise WorkerCrashedError(
                f"a worker of a new {n_jobs}-worker {start_method} pool exited while starting; "
                "if an initializer was given, its exception is logged above (stderr of the worker)"
            ) from exc
        except BaseException:
            self.shutdown(force=True)
            raise
        self.startup_seconds = time.perf_counter() - start

    def prepare(self, func: Callable) -> Any:
        return func if isinstance(func, worker.PickledFunction) else worker.PickledFunction(func)

    def _submit(self, fn: Callable, *args: Any) -> Future:
        try:
            inner = self._executor.submit(worker.call_by_value, worker.ByValue((fn, args)))
        except BrokenProcessPool as exc:
            self._broken_seen = True
            raise self._crashed() from exc
        return _CrashAwareFuture(inner, self)

    def _crashed(self) -> WorkerCrashedError:
        return WorkerCrashedError(
            f"a worker process of this {self.n_jobs}-worker pool died (killed, segfault or "
            "os._exit) while running tasks; the pool is discarded and the next get_pool() "
            "gets a fresh one"
        )

    @property
    def broken(self) -> bool:
        if self._broken_seen or getattr(self._executor, "_broken", False):
            return True
        processes = getattr(self._executor, "_processes", None) or {}
        return any(p.exitcode is not None for p in list(processes.values()))

    def worker_pids(self) -> list[int]:
        return list((getattr(self._executor, "_processes", None) or {}).keys())

    def shutdown(self, wait: bool = True, force: bool = False) -> None:
        """Stop the workers; ``force`` terminates them even mid-task (their futures fail)."""
        self.closed = True
        if os.getpid() != self._pid:
            return
        if force:
            for p in list((getattr(self._executor, "_processes", None) or {}).values()):
                if p.exitcode is None:
                    p.terminate()
        self._executor.shutdown(wait=wait or force, cancel_futures=force)


class _CrashAwareFuture(Future):
    """Mirrors an executor's future: unpacks the by-value result or exception of the worker, and
    turns the ``BrokenProcessPool`` of a dead worker into ``WorkerCrashedError`` (marking the
    pool broken), so callers of ``submit`` see the same error as callers of ``map``."""

    def __init__(self, inner: Future, pool: ProcessPool) -> None:
        super().__init__()
        self._inner = inner
        self._pool = pool
        inner.add_done_callback(self._copy)

    def cancel(self) -> bool:
        return self._inner.cancel()

    def running(self) -> bool:
        return not self.done() and self._inner.running()

    def _copy(self, inner: Future) -> None:
        if inner.cancelled():
            Future.cancel(self)
            self.set_running_or_notify_cancel()
            return
        exc = inner.exception()
        if exc is None:
            self._set_loaded(inner.result())
        elif isinstance(exc, BrokenProcessPool) and not isinstance(exc, WorkerCrashedError):
            self._pool._broken_seen = True
            crashed = self._pool._crashed()
            crashed.__cause__ = exc
            self.set_exception(crashed)
        else:
            self.set_exception(exc)

    def _set_loaded(self, packed: worker.ByValue) -> None:
        try:
            self.set_result(worker.unpack_outcome(packed))
        except Exception as exc:  # noqa: BLE001 - the call's own error, or an unloadable result
            self.set_exception(exc)


def _check_chunksize(chunksize: object) -> None:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")


def _initialize(blas_threads: int | None, initializer: Callable | None, initargs: tuple) -> None:
    worker.initialize(blas_threads)
    if initializer is not None:
        initializer(*initargs)


def _start_all_workers(executor: ProcessPoolExecutor, n_jobs: int, timeout: float = 60.0) -> None:
    """Workers start on demand; have every one of them run a task now, so calls find them warm."""
    deadline = time.monotonic() + timeout
    seen: set[int] = set()
    while len(seen) < n_jobs and time.monotonic() < deadline:
        futures = [executor.submit(worker.pid_after, 0.005) for _ in range(n_jobs)]
        seen.update(f.result(timeout=max(0.1, deadline - time.monotonic())) for f in futures)
    if len(seen) < n_jobs:
        raise TimeoutError(f"only {len(seen)} of {n_jobs} workers started within {timeout:.0f} s "
                           "(is the initializer stuck?)")


_preload_lock = threading.Lock()


def _preload_forkserver(context: Any) -> None:
    """Have the fork server import amorsize's worker module and cloudpickle once, so each
    worker forks with them loaded instead of importing them again."""
    with _preload_lock:
        context.set_forkserver_preload(["amorsize.worker", "cloudpickle"])


_launch_lock = threading.Lock()
_GET_PREPARATION_DATA = multiprocessing.spawn.get_preparation_data


@contextlib.contextmanager
def _without_main_module() -> Iterator[None]:
    """Start workers that do not import the parent's ``__main__``.

    ``multiprocessing`` makes forkserver and spawn children re-run the parent's main script
    (as ``__mp_main__``), which runs an unguarded script's top level again in every worker.
    amorsize sends everything by value (``worker.ByValue``), so its workers need no ``__main__``:
    the preparation data of the processes started here leaves it out, as loky's does.
    """
    from multiprocessing import spawn

    with _launch_lock:
        def without_main(name: str) -> dict:
            data = _GET_PREPARATION_DATA(name)
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
            return data

        spawn.get_preparation_data = without_main
        try:
            yield
        finally:
            spawn.get_preparation_data = _GET_PREPARATION_DATA


def after_fork_in_child() -> None:
    """Make a forked child able to start process pools of its own.

    The child inherits the parent's locks (possibly held by a thread that does not exist in the
    child) and the parent's fork-server handle, whose liveness check (``waitpid`` on a process
    that is not the child's) fails; both are reset so the child starts its own fork server.
    """
    global _preload_lock, _launch_lock
    _preload_lock = threading.Lock()
    _launch_lock = threading.Lock()
    multiprocessing.spawn.get_preparation_data = _GET_PREPARATION_DATA
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is None:
        return
    server._lock = threading.Lock()
    alive_fd = server._forkserver_alive_fd
    server._forkserver_pid = None
    server._forkserver_address = None
    server._forkserver_alive_fd = None
    if alive_fd is not None:
        try:
            os.close(alive_fd)
        except OSError:
            pass


def _chunked(iterable: Iterable, size: int) -> Iterator[list]:
    it = iter(iterable)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
