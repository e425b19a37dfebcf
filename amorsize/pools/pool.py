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
import queue
import threading
import time
from collections.abc import Callable, Container, Iterable, Iterator
from concurrent.futures import Executor, Future, InvalidStateError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.thread import BrokenThreadPool
from typing import Any, ClassVar, cast

from amorsize.errors import (
    ExecutorType,
    PoolClosedError,
    WorkerCrashedError,
    check_max_tasks_per_child,
)
from amorsize.pools import worker

# A process worker whose memory grew by more than this since its first task ended has its pool
# replaced (loky's rule and threshold): see ``ProcessPool.recycle_due``. ``PoolManager`` takes it
# as the default of ``max_memory_growth_mb``.
MAX_MEMORY_GROWTH_MB = 300.0
_KILL_SECONDS = 2.0


class Pool:
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
    def lease(self) -> Iterator[Pool]:
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
        try:
            for chunk in _chunked(iterable, chunksize):
                pending.append(self.submit_chunk(prepared, chunk))
                if len(pending) >= limit:
                    yield pending.pop(0).result()
            while pending:
                yield pending.pop(0).result()
        finally:
            for f in pending:
                f.cancel()

    def _closed_error(self) -> PoolClosedError:
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
        self.board = [0.0] * (worker.SLOT * n_jobs)
        self._executor = DaemonThreadExecutor(n_jobs, self.board, initializer, initargs)
        self.startup_seconds = time.perf_counter() - start

    @property
    def broken(self) -> bool:
        return self._terminated or self._executor.broken is not None

    def _submit(self, fn: Callable, *args: Any) -> Future:
        return self._executor.submit(fn, *args)

    def shutdown(self, wait: bool = True, force: bool = False) -> None:
        """``force`` cancels queued tasks and does not wait; a running thread cannot be killed,
        and being a daemon it never holds up the interpreter's exit."""
        self.closed = True
        if os.getpid() == self._pid:
            self._executor.shutdown(wait=wait and not force, cancel_futures=force)


class DaemonThreadExecutor(Executor):
    """A fixed set of daemon threads taking calls from one queue.

    ``ThreadPoolExecutor`` joins its threads at interpreter exit, so a call abandoned by a
    cancelled run (a thread cannot be stopped) would hold the exit until it finished; daemon
    threads let the process go. Each thread gets its slot on ``board`` (see ``worker``). If the
    initializer raises in a thread, the executor is broken: every call fails with
    ``BrokenThreadPool`` instead of running in a thread that was not set up.
    """

    def __init__(self, n_jobs: int, board: list, initializer: Callable | None = None,
                 initargs: tuple = ()) -> None:
        self.broken: BaseException | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._ready = threading.Barrier(n_jobs + 1)
        self._threads = [
            threading.Thread(target=self._work, args=(i, board, initializer, initargs),
                             name=f"amorsize-{i}", daemon=True)
            for i in range(n_jobs)
        ]
        for t in self._threads:
            t.start()
        self._ready.wait(60)
        if self.broken is not None:
            self.shutdown(wait=False, cancel_futures=True)
            raise BrokenThreadPool(f"a thread initializer raised {self.broken!r}") from self.broken

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        if self._closed:
            raise RuntimeError("cannot submit to a thread pool after its shutdown")
        future: Future = Future()
        if self.broken is not None:
            future.set_exception(BrokenThreadPool(
                f"a thread initializer raised {self.broken!r}; the pool cannot run calls"))
            return future
        self._queue.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
        if cancel_futures:
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    item[0].cancel()
        for _ in self._threads:
            self._queue.put(None)
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()

    def _work(self, index: int, board: list, initializer: Callable | None,
              initargs: tuple) -> None:
        worker.bind_thread_slot(board, index)
        try:
            if initializer is not None:
                initializer(*initargs)
        except BaseException as exc:  # noqa: BLE001 - reported through every later call
            self.broken = exc
        finally:
            with contextlib.suppress(threading.BrokenBarrierError):
                self._ready.wait(60)
        while True:
            item = self._queue.get()
            if item is None:
                return
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - delivered through the future
                future.set_exception(exc)
            else:
                future.set_result(result)
            del item, future, fn, args, kwargs


class ProcessPool(Pool):
    """Processes: true parallelism for pure-Python CPU work, at the price of pickling.

    Functions travel with cloudpickle, so lambdas, closures and ``__main__`` functions work. A
    worker that dies marks the pool broken (``broken``); its running and queued calls raise
    ``WorkerCrashedError`` (a ``BrokenProcessPool``) instead of hanging, through ``map`` and
    through the futures of ``submit`` alike.

    ``max_tasks_per_child``: a worker exits after that many tasks (chunks or submitted calls)
    and a fresh one takes its place and its slot on the board (not with "fork", whose
    replacements would fork a process that has threads). ``memory_limit_mb``: workers flag
    themselves on the board once their memory grew that much (see ``recycle_due``).
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
        max_tasks_per_child: int | None = None,
        memory_limit_mb: float | None = None,
    ) -> None:
        check_max_tasks_per_child(max_tasks_per_child, start_method)
        super().__init__(n_jobs)
        self.start_method = start_method
        self.max_tasks_per_child = max_tasks_per_child
        self._broken_seen = False
        self._outer: set[_CrashAwareFuture] = set()
        self._shutdown_lock = threading.Lock()
        self._shut_down = False
        start = time.perf_counter()
        context = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            _preload_forkserver(context)
        self.board = context.Array("d", worker.SLOT * n_jobs, lock=False)
        self._claimed = context.Value("i", 0)
        ready = context.Value("i", 0)
        # a replacement worker may be started by any thread (the executor's, a caller's), whose
        # end would fire a spawn worker's parent-death signal: those rely on the watch alone
        on_main_thread = (threading.current_thread() is threading.main_thread()
                          and max_tasks_per_child is None)
        self._executor = _Executor(
            max_workers=n_jobs,
            # duck-typed: a context whose Process starts without __main__
            mp_context=cast(multiprocessing.context.BaseContext, _WithoutMainContext(context)),
            initializer=_initialize,
            initargs=(blas_threads, self.board, self._claimed, initializer, initargs, os.getpid(),
                      on_main_thread, memory_limit_mb, ready),
            max_tasks_per_child=max_tasks_per_child,
        )
        try:
            if max_tasks_per_child is None or not _launch_without_tasks(self._executor, ready, n_jobs):
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
        outer = _CrashAwareFuture(inner, self)
        with self._inflight_lock:
            self._outer.add(outer)
        outer.add_done_callback(self._outer.discard)
        return outer

    def _crashed(self) -> WorkerCrashedError:
        return WorkerCrashedError(
            f"a worker process of this {self.n_jobs}-worker pool died (killed, segfault or "
            "os._exit) while running tasks; the pool is discarded and the next get_pool() "
            "gets a fresh one"
        )

    @property
    def broken(self) -> bool:
        if self._terminated or self._broken_seen or getattr(self._executor, "_broken", False):
            return True
        processes = getattr(self._executor, "_processes", None) or {}
        # with max_tasks_per_child, a worker exits (code 0) after its last task, until its
        # executor replaces it; a crash still breaks the executor
        finished = (None,) if self.max_tasks_per_child is None else (None, 0)
        return any(p.exitcode not in finished for p in list(processes.values()))

    @property
    def recycle_due(self) -> bool:
        board = self.board
        return board is not None and any(board[worker.GROWN::worker.SLOT])

    @property
    def workers_replaced(self) -> int:
        return max(0, self._claimed.value - self.n_jobs)

    def worker_pids(self) -> list[int]:
        return list((getattr(self._executor, "_processes", None) or {}).keys())

    def shutdown(self, wait: bool = True, force: bool = False) -> None:
        """Stop the workers; ``force`` terminates them even mid-task (their futures fail) and
        waits for them to be gone, however ``wait`` is set. Done once: a second caller (a
        cancelled run and the manager retiring the pool, at once) waits for the first."""
        self.closed = True
        if os.getpid() != self._pid:
            return
        with self._shutdown_lock:
            if not self._shut_down:
                self._stop_workers(wait, force)
                self._shut_down = True

    def _stop_workers(self, wait: bool, force: bool) -> None:
        if not force:
            self._executor.shutdown(wait=wait)
            return
        deadline = time.monotonic() + _KILL_SECONDS
        while True:
            # again until none is left: the executor may start a replacement meanwhile
            # (max_tasks_per_child), which its shutdown would then wait for
            alive = [p for p in list((getattr(self._executor, "_processes", None) or {}).values())
                     if p.exitcode is None]
            for p in alive:
                p.terminate()
            for p in alive:
                p.join(max(0.0, deadline - time.monotonic()))
                if p.exitcode is None:
                    p.kill()
                    p.join(1.0)
            if not alive or time.monotonic() > deadline:
                break
        with self._inflight_lock:
            unsettled = list(self._outer)
        for future in unsettled:
            future.fail_crashed()
        self._executor.shutdown(wait=False)
        manager = getattr(self._executor, "_executor_manager_thread", None)
        if manager is not None and manager is not threading.current_thread():
            manager.join(_KILL_SECONDS)  # never wait longer for the executor's bookkeeping


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


class _CrashAwareFuture(FollowingFuture):
    """Mirrors an executor's future: unpacks the by-value result or exception of the worker, and
    turns the ``BrokenProcessPool`` of a dead worker into ``WorkerCrashedError`` (marking the
    pool broken), so callers of ``submit`` see the same error as callers of ``map``."""

    def __init__(self, inner: Future, pool: ProcessPool) -> None:
        super().__init__()
        self._pool = pool
        self._follow(inner)

    def _failed(self, exc: BaseException) -> None:
        if isinstance(exc, BrokenProcessPool) and not isinstance(exc, WorkerCrashedError):
            self._pool._broken_seen = True
            crashed = self._pool._crashed()
            crashed.__cause__ = exc
            exc = crashed
        self.set_exception(exc)

    def fail_crashed(self) -> None:
        """Fail with ``WorkerCrashedError`` now: the pool's workers were killed. Not left to the
        executor, which on Python 3.11 stops delivering failures when it meets a cancelled
        future (a cancelled run's) among the pending ones."""
        crashed = self._pool._crashed()
        with contextlib.suppress(InvalidStateError):
            self.set_exception(crashed)

    def _succeeded(self, packed: worker.ByValue) -> None:
        try:
            self.set_result(worker.unpack_outcome(packed))
        except Exception as exc:  # noqa: BLE001 - the call's own error, or an unloadable result
            self.set_exception(exc)


def _check_chunksize(chunksize: object) -> None:
    if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
        raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")


def _initialize(blas_threads: int | None, board: Any, claimed: Any,
                initializer: Callable | None, initargs: tuple, parent: int | None = None,
                forked_on_main_thread: bool = False, memory_limit_mb: float | None = None,
                ready: Any = None) -> None:
    worker.initialize(blas_threads, board, claimed, parent, forked_on_main_thread,
                      memory_limit_mb)
    if initializer is not None:
        initializer(*initargs)
    if ready is not None:
        with ready.get_lock():
            ready.value += 1


class _Executor(ProcessPoolExecutor):
    """``ProcessPoolExecutor`` that always replaces a worker retired by ``max_tasks_per_child``.

    Up to Python 3.15 (gh-115634) the executor skips the replacement when its idle-worker
    semaphore holds a stale token, and queued tasks then wait forever once every worker has
    retired. The executor's own thread replaces exited workers here; ``submit`` is unchanged.
    """

    # private attributes of ProcessPoolExecutor that typeshed does not declare
    _max_workers: int
    _spawn_process: Callable[[], None]

    def _adjust_process_count(self) -> None:
        if threading.current_thread() is self._executor_manager_thread:
            if len(self._processes) < self._max_workers:
                self._spawn_process()
            return
        super()._adjust_process_count()


def _launch_without_tasks(executor: ProcessPoolExecutor, ready: Any, n_jobs: int,
                          timeout: float = 60.0) -> bool:
    """Start every worker without giving it a task, and wait until each has run its
    initializer: with ``max_tasks_per_child`` a start-up task would count against each worker's
    quota. False where this Python's executor lacks the (private) methods used."""
    launch = getattr(executor, "_launch_processes", None)
    start_thread = getattr(executor, "_start_executor_manager_thread", None)
    if launch is None or start_thread is None:
        return False
    with executor._shutdown_lock:
        launch()
        start_thread()
    deadline = time.monotonic() + timeout
    while ready.value < n_jobs:
        processes = list((executor._processes or {}).values())
        if executor._broken or any(p.exitcode is not None for p in processes):
            raise BrokenProcessPool("a worker exited while starting")
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {ready.value} of {n_jobs} workers started within "
                               f"{timeout:.0f} s (is the initializer stuck?)")
        time.sleep(0.002)
    return True


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
    worker forks with them loaded instead of importing them again; and ``amorsize.pools.orphans``,
    which makes the server exit when this process dies (the variable names this process)."""
    from amorsize.pools import orphans

    with _preload_lock:
        pid = str(os.getpid())
        if os.environ.get(orphans.FORKSERVER_PARENT_ENV) != pid:
            os.environ[orphans.FORKSERVER_PARENT_ENV] = pid
        context.set_forkserver_preload(["amorsize.pools.worker", "cloudpickle", "amorsize.pools.orphans"])


_launch_lock = threading.Lock()
_GET_PREPARATION_DATA = multiprocessing.spawn.get_preparation_data


class _WithoutMainStart:
    """A process that starts without the parent's ``__main__`` (``_without_main_module``),
    whenever it starts: at the pool's start, or later to replace a retired worker."""

    def start(self) -> None:
        with _without_main_module():
            super().start()  # type: ignore[misc]


class _SpawnProcess(_WithoutMainStart, multiprocessing.context.SpawnProcess):
    pass


if hasattr(multiprocessing.context, "ForkServerProcess"):
    class _ForkServerProcess(_WithoutMainStart, multiprocessing.context.ForkServerProcess):
        pass


class _WithoutMainContext:
    """A multiprocessing context whose processes start without ``__main__`` (fork copies the
    parent instead of importing anything: its processes are left as they are)."""

    def __init__(self, context: Any) -> None:
        self._context = context
        self.Process: type[multiprocessing.process.BaseProcess]
        method = context.get_start_method()
        if method == "spawn":
            self.Process = _SpawnProcess
        elif method == "forkserver":
            self.Process = _ForkServerProcess
        else:
            self.Process = context.Process

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)


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
