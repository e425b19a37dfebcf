"""The three kinds of pool amorsize runs work on, behind one interface.

Every pool has ``map(func, iterable, chunksize=1) -> list`` (ordered), ``submit(fn, *args,
**kwargs) -> Future`` and ``submit_chunk(func, items) -> Future[(results, compute_seconds)]``, so
a plan runs the same way whatever its executor. Each class declares what it is as class
attributes (as joblib's backends do) rather than callers testing types.
"""

from __future__ import annotations

import itertools
import multiprocessing
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
    needs_pickling: ClassVar[bool] = False

    def __init__(self, n_jobs: int) -> None:
        self.n_jobs = n_jobs
        self.created_at = time.monotonic()
        self.last_used = self.created_at
        self.startup_seconds = 0.0
        self._inflight = 0
        self._inflight_lock = threading.Lock()

    @property
    def busy(self) -> bool:
        return self._inflight > 0

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
        return self._track(self._submit(worker.call, self.prepare(fn), args, kwargs))

    def submit_timed(self, fn: Callable, *args: Any, **kwargs: Any) -> Future:
        """Like ``submit``, but the future gives ``(result, seconds)`` timed inside the worker,
        so queueing and transfer never count as the function's compute time."""
        return self._track(self._submit(worker.timed_call, self.prepare(fn), args, kwargs))

    def submit_chunk(self, func: Any, items: list) -> Future:
        """Run ``func`` (as returned by ``prepare``) on ``items``; the future gives
        ``(results, compute_seconds)``."""
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
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")
        prepared = self.prepare(func)
        limit = max_inflight or 4 * self.n_jobs
        chunks = _chunked(iterable, chunksize)
        pending: list[Future] = []
        try:
            for chunk in chunks:
                pending.append(self.submit_chunk(prepared, chunk))
                if len(pending) >= limit:
                    yield self._result(pending.pop(0))
            while pending:
                yield self._result(pending.pop(0))
        finally:
            for f in pending:
                f.cancel()

    def _result(self, future: Future) -> Any:
        try:
            return future.result()
        except BrokenProcessPool as exc:
            if isinstance(exc, WorkerCrashedError):
                raise
            raise WorkerCrashedError(
                f"a worker process of this {self.n_jobs}-worker pool died (killed, segfault or "
                "os._exit) while running tasks; the pool is discarded and the next call gets a "
                "fresh one"
            ) from exc

    def _track(self, future: Future) -> Future:
        with self._inflight_lock:
            self._inflight += 1
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Future) -> None:
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
    """Runs everything in the calling thread: a serial plan needs no special case."""

    executor_type = "serial"

    def _submit(self, fn: Callable, *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future, as executors do
            future.set_exception(exc)
        return future

    def map(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> list:
        self.last_used = time.monotonic()
        return [func(x) for x in iterable]

    def shutdown(self, wait: bool = True, force: bool = False) -> None:
        pass


class ThreadPool(Pool):
    """Threads: no pickling, shared memory; for I/O and for code that releases the GIL."""

    executor_type = "thread"

    def __init__(self, n_jobs: int) -> None:
        super().__init__(n_jobs)
        start = time.perf_counter()
        self._executor = ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="amorsize")
        barrier = threading.Barrier(n_jobs)
        for f in [self._executor.submit(barrier.wait, 10) for _ in range(n_jobs)]:
            f.result()
        self.startup_seconds = time.perf_counter() - start

    def _submit(self, fn: Callable, *args: Any) -> Future:
        return self._executor.submit(fn, *args)

    def shutdown(self, wait: bool = True, force: bool = False) -> None:
        self._executor.shutdown(wait=wait and not force, cancel_futures=force)


class ProcessPool(Pool):
    """Processes: true parallelism for pure-Python CPU work, at the price of pickling.

    Functions travel with cloudpickle, so lambdas, closures and ``__main__`` functions work. A
    worker that dies marks the pool broken (``broken``); its running calls raise
    ``WorkerCrashedError`` instead of hanging.
    """

    executor_type = "process"
    uses_processes = True
    needs_pickling = True

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
        _start_all_workers(self._executor, n_jobs)
        self.startup_seconds = time.perf_counter() - start
        self._broken_seen = False

    def prepare(self, func: Callable) -> Any:
        return func if isinstance(func, worker.PickledFunction) else worker.PickledFunction(func)

    def _submit(self, fn: Callable, *args: Any) -> Future:
        future = self._executor.submit(fn, *args)
        return future

    def _result(self, future: Future) -> Any:
        try:
            return super()._result(future)
        except WorkerCrashedError:
            self._broken_seen = True
            raise

    @property
    def broken(self) -> bool:
        if self._broken_seen or getattr(self._executor, "_broken", False):
            return True
        processes = getattr(self._executor, "_processes", None) or {}
        return any(p.exitcode is not None for p in list(processes.values()))

    def worker_pids(self) -> list[int]:
        return list((getattr(self._executor, "_processes", None) or {}).keys())

    def shutdown(self, wait: bool = True, force: bool = False) -> None:
        if force:
            terminate = getattr(self._executor, "terminate_workers", None)
            if terminate is not None:
                terminate()
            else:
                for p in list((getattr(self._executor, "_processes", None) or {}).values()):
                    if p.exitcode is None:
                        p.terminate()
        self._executor.shutdown(wait=wait or force, cancel_futures=force)


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
        seen.update(f.result() for f in futures)


_preload_lock = threading.Lock()


def _preload_forkserver(context: Any) -> None:
    """Have the fork server import amorsize's worker module and ``__main__`` once, so each
    worker forks with them loaded instead of importing them again."""
    with _preload_lock:
        context.set_forkserver_preload(["__main__", "amorsize.worker"])


def _chunked(iterable: Iterable, size: int) -> Iterator[list]:
    it = iter(iterable)
    while chunk := list(itertools.islice(it, size)):
        yield chunk
