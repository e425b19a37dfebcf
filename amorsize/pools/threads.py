"""Threads: no pickling, shared memory; for I/O and for code that releases the GIL.

Their threads are daemons (``DaemonThreadExecutor``), so a call abandoned by Ctrl-C or a time
limit never holds up the interpreter's exit.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures.thread import BrokenThreadPool
from typing import Any

from amorsize.pools import worker
from amorsize.pools.worker_pool import WorkerPool


class ThreadPool(WorkerPool):
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
    initializer raises in a thread, the executor does not start: its exception is raised here,
    as the initializer raised it (as a serial pool's would be).
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
            raise self.broken  # the initializer's own exception: it ran in this process

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
