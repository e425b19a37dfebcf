"""Processes: workers started once and kept warm, each a slot on the pool's board.

A worker that dies fails its chunks with ``WorkerCrashedError`` instead of hanging; a worker
retired by ``max_tasks_per_child`` or grown past ``MAX_MEMORY_GROWTH_MB`` is replaced; workers
start without the parent's ``__main__`` where they can, and the fork server is preloaded with
what every worker imports.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, cast

from amorsize.errors import (
    WorkerCrashedError,
    check_max_tasks_per_child,
)
from amorsize.pools import compat, shared, shipping, worker
from amorsize.pools.worker_pool import FollowingFuture, WorkerPool

# A process worker whose memory grew by more than this since its first task ended has its pool
# replaced (loky's rule and threshold): see ``ProcessPool.recycle_due``. ``PoolManager`` takes it
# as the default of ``max_memory_growth_mb``.
MAX_MEMORY_GROWTH_MB = 300.0
_KILL_SECONDS = 2.0
_INIT_ERROR_BYTES = 16384


class ProcessPool(WorkerPool):
    """Processes: true parallelism for pure-Python CPU work, at the price of pickling.

    Functions travel with cloudpickle, so lambdas, closures and ``__main__`` functions work, and
    so do those of modules the workers cannot import (``shipping``: loaded from a file under a
    name of the caller's, or on a ``sys.path`` entry added after the workers started). A
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
    # the first forkserver pool of this process starts the fork server, and its start-up
    # includes the server's (importing what every worker needs): later pools' do not
    started_server = False

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
        self._workers_killed = False  # by a forced shutdown: futures still open fail at once
        self._shutdown_lock = threading.Lock()
        self._shut_down = False
        start = time.perf_counter()
        context = multiprocessing.get_context(start_method)
        shipping.workers_start_with(sys.path)
        if start_method == "forkserver":
            self.started_server = _preload_forkserver(context)
        self.board = context.Array("d", worker.SLOT * n_jobs, lock=False)
        # where a worker whose initializer raised sends the exception (see ``_initialize``);
        # never closed by hand: a replacement worker started while the executor shuts down
        # gets it too (its pipe closes when the pool and the executor are let go)
        self._init_errors = context.SimpleQueue() if initializer is not None else None
        self._claimed = context.Value("i", 0)
        ready = context.Value("i", 0)
        # a replacement worker may be started by any thread (the executor's, a caller's), whose
        # end would fire a spawn worker's parent-death signal: those rely on the watch alone
        on_main_thread = (threading.current_thread() is threading.main_thread()
                          and max_tasks_per_child is None)
        self._executor = compat.ReplacingExecutor(
            max_workers=n_jobs,
            mp_context=cast(multiprocessing.context.BaseContext,
                            compat.WithoutMainContext(context)),
            initializer=_initialize,
            initargs=(blas_threads, self.board, self._claimed, initializer, initargs, os.getpid(),
                      on_main_thread, memory_limit_mb, ready, self._init_errors),
            max_tasks_per_child=max_tasks_per_child,
        )
        try:
            if max_tasks_per_child is None or not _launch_without_tasks(self._executor, ready, n_jobs):
                _start_all_workers(self._executor, n_jobs)
        except BrokenProcessPool as exc:
            failure = self._initializer_failure()
            self.shutdown(force=True)
            if failure is None:
                raise WorkerCrashedError(
                    f"a worker of a new {n_jobs}-worker {start_method} pool exited while "
                    "starting (killed, a segfault or os._exit, in its initializer or before)"
                ) from exc
            raise WorkerCrashedError(
                f"the initializer raised {type(failure).__name__}: {failure} in a worker of a "
                f"new {n_jobs}-worker {start_method} pool, which cannot start without it (the "
                "initializer's traceback in the worker is shown above); fix the initializer"
            ) from failure
        except BaseException:
            self.shutdown(force=True)
            raise
        self.startup_seconds = time.perf_counter() - start

    def _initializer_failure(self) -> BaseException | None:
        """The exception an initializer raised in a worker, chained from its traceback there,
        or None. The worker sent it before exiting, so it is there once the pool is broken."""
        errors = self._init_errors
        if errors is None or errors.empty():
            return None
        try:
            worker.unpack_outcome(errors.get())
        except Exception as exc:  # noqa: BLE001 - what unpacking raises is the failure
            return exc
        return None

    def prepare(self, func: Callable) -> Any:
        return func if isinstance(func, worker.PickledFunction) else worker.PickledFunction(func)

    def _submit(self, fn: Callable, *args: Any) -> Future:
        if shared.turned_off():  # a function prepared before carries its segment: not now
            args = _by_value(args)
        file = shared.lend()
        try:
            inner = self._executor.submit(worker.call_returning, worker.ByValue((fn, args)),
                                          None if file is None else file.ref)
        except BaseException as exc:
            if file is not None:
                shared.give_back(file, reusable=True)  # no worker had it
            if isinstance(exc, BrokenProcessPool):
                self._broken_seen = True
                raise self._crashed() from exc
            if isinstance(exc, RuntimeError) and self.closed:  # after BrokenProcessPool
                # closed between the caller's check and the executor's: the same answer
                raise self._closed_error() from exc
            raise
        outer = _CrashAwareFuture(inner, self, (fn, args), file)
        with self._inflight_lock:
            killed = self._workers_killed
            if not killed:
                self._outer.add(outer)
        if killed:  # submitted while the workers were killed: the executor may never settle it
            outer.fail_crashed()
        else:
            outer.add_done_callback(self._outer.discard)
        return outer

    def _send_again(self, outer: _CrashAwareFuture, unreachable: shared.SharedMemoryUnreachable
                    ) -> None:
        """A worker could not open the shared memory of ``outer``'s call: send the call again
        with its functions by value, and, if no worker can open this process's descriptors,
        stop using shared memory. On a thread of its own: this runs on the executor's, which
        must not wait to submit (it is what empties the executor's queues)."""
        if unreachable.lasting:
            shared.turn_off(str(unreachable))
        if not outer.call:  # failed meanwhile (a forced shutdown)
            return
        fn, args = outer.call
        threading.Thread(target=self._resubmit, args=(outer, fn, _by_value(args)),
                         name="amorsize-send-again", daemon=True).start()

    def _resubmit(self, outer: _CrashAwareFuture, fn: Callable, args: tuple) -> None:
        file = shared.lend()
        try:
            inner = self._executor.submit(worker.call_returning, worker.ByValue((fn, args)),
                                          None if file is None else file.ref)
        except BaseException as exc:  # noqa: BLE001 - delivered through the future
            if file is not None:
                shared.give_back(file, reusable=True)
            if isinstance(exc, BrokenProcessPool):
                self._broken_seen = True
                exc = self._crashed()
            elif isinstance(exc, RuntimeError) and self.closed:
                exc = self._closed_error()
            with contextlib.suppress(InvalidStateError):
                outer.set_exception(exc)
            return
        outer.follow_again(inner, (fn, args), file)

    def _crashed(self) -> WorkerCrashedError:
        return WorkerCrashedError(
            f"a worker process of this {self.n_jobs}-worker pool died (killed, segfault or "
            "os._exit) while running tasks; the pool is discarded and the next get_pool() "
            "gets a fresh one"
        )

    @property
    def broken(self) -> bool:
        if self._terminated or self._broken_seen or compat.found_broken(self._executor):
            return True
        # with max_tasks_per_child, a worker exits (code 0) after its last task, until its
        # executor replaces it; a crash still breaks the executor
        finished = (None,) if self.max_tasks_per_child is None else (None, 0)
        return any(p.exitcode not in finished for p in compat.processes(self._executor))

    @property
    def recycle_due(self) -> bool:
        board = self.board
        return board is not None and any(board[worker.GROWN::worker.SLOT])

    @property
    def workers_replaced(self) -> int:
        return max(0, self._claimed.value - self.n_jobs)

    def worker_pids(self) -> list[int]:
        return [p.pid for p in compat.processes(self._executor) if p.pid is not None]

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
        executor = self._executor
        if not force:
            if wait:
                executor.shutdown(wait=True)
            else:
                # waited for on a thread of its own: a shutdown without waiting would leave the
                # executor unable to replace a worker that retires meanwhile (max_tasks_per_child),
                # and its calls still queued without a worker
                threading.Thread(target=executor.shutdown, name="amorsize-executor-shutdown",
                                 daemon=True).start()
            return
        executor.stop_replacing()
        compat.terminate_workers(executor)
        deadline = time.monotonic() + _KILL_SECONDS
        while True:
            # again until none is left: a worker being started as the replacing stopped
            alive = [p for p in list(executor.workers.values()) if p.exitcode is None]
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
            self._workers_killed = True
            unsettled = list(self._outer)
        for future in unsettled:
            future.fail_crashed()
        executor.shutdown(wait=False)
        manager = executor.manager
        if manager is not None and manager is not threading.current_thread():
            manager.join(_KILL_SECONDS)  # never wait longer for the executor's bookkeeping
        _hold_while_running(executor, manager)


def _hold_while_running(executor: ProcessPoolExecutor, manager: threading.Thread | None) -> None:
    """Keep an executor shut down without waiting referenced until its manager thread has ended.

    Collected on that thread while it holds the executor's shutdown lock (a garbage collection
    can start on any thread), the executor's weakref callback takes the same lock and the
    interpreter hangs at exit: CPython gh-125451, in 3.12.0-3.12.7 and 3.13.0. A short-lived
    daemon thread holds it instead, and lets go of it (and of what it holds: the initializer's
    arguments, the board) as soon as the manager thread is gone."""
    if manager is not None and manager.is_alive():
        threading.Thread(target=_release_after, args=(manager, executor),
                         name="amorsize-executor-release", daemon=True).start()


def _release_after(manager: threading.Thread, executor: ProcessPoolExecutor) -> None:
    manager.join()
    del executor  # dropped here, where no executor lock is held


class _CrashAwareFuture(FollowingFuture):
    """Mirrors an executor's future: unpacks the by-value result or exception of the worker, and
    turns the ``BrokenProcessPool`` of a dead worker into ``WorkerCrashedError`` (marking the
    pool broken), so callers of ``submit`` see the same error as callers of ``map``."""

    def __init__(self, inner: Future, pool: ProcessPool, call: tuple = (),
                 result_file: shared.ResultFile | None = None) -> None:
        super().__init__()
        self._pool = pool
        # what was sent, ``(fn, args)``, held while the call may still be read by a worker (a
        # function's shared-memory segment stays until its last call is done: ``shared``) or
        # sent again (``ProcessPool._send_again``)
        self.call = call
        # the file lent for the result, taken (``list.pop``: by one thread only) by whoever
        # gives it back: the result's reader, or the end of the call any other way
        self._file = [] if result_file is None else [result_file]
        self.add_done_callback(_let_go)
        self._follow(inner)

    def follow_again(self, inner: Future, call: tuple, result_file: shared.ResultFile | None
                     ) -> None:
        """Take the outcome of ``inner``, the call sent again as ``call``."""
        self.call = call
        if result_file is not None:
            self._file.append(result_file)
            if self.done():  # failed meanwhile (a forced shutdown): no one else gives it back
                self.give_back_file(read=False)
        self._follow(inner)

    def give_back_file(self, read: bool) -> None:
        """The call is over: give its result file back, for another call if its result was
        ``read`` (the worker let go of the file then), else closed."""
        with contextlib.suppress(IndexError):
            shared.give_back(self._file.pop(), reusable=read)

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
            file = self._file.pop()
        except IndexError:  # the call was failed meanwhile (a forced shutdown): file closed
            if isinstance(packed, worker.PlacedResult):
                return
            file = None
        try:
            try:
                outcome = worker.unpack_outcome(packed)
            finally:
                if file is not None:
                    shared.give_back(file, reusable=True)
            self.set_result(outcome)
        except shared.SharedMemoryUnreachable as exc:
            self._pool._send_again(self, exc)
        except Exception as exc:  # noqa: BLE001 - the call's own error, or an unloadable result
            self.set_exception(exc)


def _let_go(future: Future) -> None:
    outer = cast(_CrashAwareFuture, future)
    outer.call = ()
    outer.give_back_file(read=False)


def _by_value(args: tuple, depth: int = 2) -> tuple:
    """``args`` with each function whose large buffers are in shared memory in its by-value
    form (``PickledFunction.by_value``), looked for in ``args`` and the tuples in it (the
    arguments of ``worker.call``: ``pool.submit(worker.run_timed, prepared, ...)``)."""
    out = []
    for arg in args:
        if callable(getattr(type(arg), "by_value", None)):
            arg = arg.by_value()
        elif depth > 1 and type(arg) is tuple:
            arg = _by_value(arg, depth - 1)
        out.append(arg)
    return tuple(out)


def _initialize(blas_threads: int | None, board: Any, claimed: Any,
                initializer: Callable | None, initargs: tuple, parent: int | None = None,
                forked_on_main_thread: bool = False, memory_limit_mb: float | None = None,
                ready: Any = None, init_errors: Any = None) -> None:
    worker.initialize(blas_threads, board, claimed, parent, forked_on_main_thread,
                      memory_limit_mb)
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            # sent to the parent, which raises it (the executor only sees the worker exit);
            # bounded: a pipe holds so much, and nothing reads it until the worker has exited
            if init_errors is not None:
                with contextlib.suppress(Exception):
                    init_errors.put(worker.pack_error(exc, max_bytes=_INIT_ERROR_BYTES))
            raise
    if ready is not None:
        with ready.get_lock():
            ready.value += 1


def _launch_without_tasks(executor: ProcessPoolExecutor, ready: Any, n_jobs: int,
                          timeout: float = 60.0) -> bool:
    """Start every worker without giving it a task, and wait until each has run its
    initializer: with ``max_tasks_per_child`` a start-up task would count against each worker's
    quota. False where this Python's executor cannot start workers without a task."""
    if not compat.launch_workers(executor):
        return False
    deadline = time.monotonic() + timeout
    while ready.value < n_jobs:
        if compat.found_broken(executor) or any(p.exitcode is not None
                                                 for p in compat.processes(executor)):
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


def _preload_forkserver(context: Any) -> bool:
    """Have the fork server import amorsize's worker module and cloudpickle once, so each
    worker forks with them loaded instead of importing them again; and ``amorsize.pools.orphans``,
    which makes the server exit when this process dies (the variable names this process).
    True the first time in this process: the pool being made starts the server."""
    from amorsize.pools import orphans

    with _preload_lock:
        pid = str(os.getpid())
        first = os.environ.get(orphans.FORKSERVER_PARENT_ENV) != pid
        if first:
            os.environ[orphans.FORKSERVER_PARENT_ENV] = pid
        context.set_forkserver_preload(["amorsize.pools.worker", "amorsize.pools.payloads",
                                        "amorsize.pools.shipping", "amorsize.pools.shared",
                                        "amorsize.pools.orphans", "amorsize.pools.fork_server"])
        return first


def after_fork_in_child() -> None:
    """Make a forked child able to start process pools of its own (see
    ``compat.after_fork_in_child``)."""
    global _preload_lock
    _preload_lock = threading.Lock()
    compat.after_fork_in_child()
