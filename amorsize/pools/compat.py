"""Every use amorsize makes of private parts of ``concurrent.futures`` and ``multiprocessing``.

Nothing else in amorsize touches them (``tests/test_layout.py`` checks it). Each item says why it
is needed, the CPython issue where there is one, and which Python makes it unnecessary; a new
CPython release is checked against this module, and the tests that prove each item needed
(named below) fail when one of them stops working. Checked on CPython 3.11.7, 3.12.1, 3.13.0:

1. ``ProcessPoolExecutor._processes``, ``._broken``: the worker processes and whether the
   executor found one dead. No public API lists an executor's workers (``worker_pids``, killing
   them) or tells that it is broken before a call fails. Needed on every Python; 3.14's
   ``terminate_workers`` covers the killing (used where present).
2. ``ProcessPoolExecutor._adjust_process_count`` overridden (``ReplacingExecutor``): the
   executor skips replacing a worker retired by ``max_tasks_per_child`` when its idle-worker
   semaphore holds a stale token, and queued calls then wait forever (gh-115634). Also, a
   retirement seen after ``shutdown(wait=False)`` makes the executor's thread raise
   ``TypeError`` (``len(None)``) or leave calls waiting with no worker, and the interpreter's
   exit then joins that thread forever (gh-119592); the override makes that thread fail those
   calls instead. CPython fixed the first in July 2026 in 3.13 and 3.14 bugfix releases and
   3.15, the second in 3.14's and 3.15: its thread then replaces workers without calling this
   method, and 3.14's ``terminate_workers`` stops the replacing. Tests: test_recycling's
   queued-tasks, retiring-once-replacing-stopped and terminate-while-retiring tests.
3. ``ProcessPoolExecutor._launch_processes``, ``._start_executor_manager_thread``,
   ``._shutdown_lock``: start every worker of a ``max_tasks_per_child`` pool without giving it
   a task, which would count against its quota. No public way; every Python.
4. ``ProcessPoolExecutor._start_executor_manager_thread`` extended to record the executor's
   thread (``ReplacingExecutor.manager``), which a shutdown forgets: joined after a forced
   shutdown, and the executor kept referenced while it runs, because collecting an executor on
   its own thread hangs the interpreter at exit (gh-125451: 3.12.0-3.12.7, 3.13.0).
5. ``multiprocessing.spawn.get_preparation_data`` swapped while a worker starts: workers start
   without the parent's ``__main__`` (as loky's do: its own copy of that function leaves it
   out). No public way; every Python.
6. ``multiprocessing.popen_forkserver.Popen`` subclassed: a fork-server worker's exit status is
   read by one thread at a time (gh-130895: a second reader sees exit code 255; unfixed in 3.14).
7. ``multiprocessing.forkserver._forkserver``'s state reset in a forked child, which would
   otherwise ask the parent's fork server (``waitpid`` on a process not its child fails). No
   public reset; every Python.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.spawn
import os
import threading
from collections.abc import Callable, Iterator, MutableMapping
from concurrent.futures import ProcessPoolExecutor
from typing import Any, cast

# 1. the executor's workers, and whether it found one dead


def processes(executor: ProcessPoolExecutor) -> list[multiprocessing.process.BaseProcess]:
    """The executor's worker processes (none once it was shut down)."""
    return list((getattr(executor, "_processes", None) or {}).values())


def found_broken(executor: ProcessPoolExecutor) -> bool:
    """Whether the executor found a worker dead (its calls then fail with BrokenProcessPool)."""
    return bool(getattr(executor, "_broken", False))


def terminate_workers(executor: ProcessPoolExecutor) -> None:
    """3.14's ``terminate_workers`` where present (it shuts the executor down without waiting);
    nothing before: the caller kills ``processes`` itself."""
    terminate = getattr(executor, "terminate_workers", None)
    if terminate is not None:
        terminate()


# 2. replace every retired worker; never leave calls without a worker


class ReplacingExecutor(ProcessPoolExecutor):
    """``ProcessPoolExecutor`` whose own thread always replaces a worker retired by
    ``max_tasks_per_child`` (gh-115634) -- except once ``stop_replacing`` was called or the
    executor was shut down without waiting: the thread is then given a process that exits at
    once, takes the pool for broken, as for any dead worker, fails the calls it still holds and
    ends. ``submit`` is unchanged."""

    # private attributes of ProcessPoolExecutor that typeshed does not declare
    _max_workers: int
    _spawn_process: Callable[[], None]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.replacing = True
        self.manager: threading.Thread | None = None
        # the executor's thread keeps this mapping; a shutdown forgets it
        self.workers: MutableMapping[int, Any] = self._processes

    def _start_executor_manager_thread(self) -> None:  # 4.: record the thread
        super()._start_executor_manager_thread()
        self.manager = cast(threading.Thread, self._executor_manager_thread)

    def _adjust_process_count(self) -> None:
        if threading.current_thread() is not self.manager:  # submit's: unchanged
            super()._adjust_process_count()
            return
        if self.replacing and self._processes is not None:
            if len(self._processes) < self._max_workers:
                self._spawn_process()
            return
        stand_in = cast(Any, self._mp_context).Process(target=os._exit, args=(1,))
        stand_in.start()
        self.workers[stand_in.pid] = stand_in

    def stop_replacing(self) -> None:
        """Start no worker from now on; returns once a replacement being started has been
        recorded (so a caller then sees it among ``processes``)."""
        with self._shutdown_lock:
            self.replacing = False


# 3. start the workers of a max_tasks_per_child pool without a task


def launch_workers(executor: ProcessPoolExecutor) -> bool:
    """Start every worker and the executor's thread now, without a task; False where this
    Python's executor lacks the methods used."""
    launch = getattr(executor, "_launch_processes", None)
    start_thread = getattr(executor, "_start_executor_manager_thread", None)
    lock = getattr(executor, "_shutdown_lock", None)
    if launch is None or start_thread is None or lock is None:
        return False
    with lock:
        launch()
        start_thread()
    return True


# 5. workers start without the parent's __main__

_launch_lock = threading.Lock()
_GET_PREPARATION_DATA = multiprocessing.spawn.get_preparation_data


@contextlib.contextmanager
def without_main_module() -> Iterator[None]:
    """Start workers that do not import the parent's ``__main__``.

    ``multiprocessing`` makes forkserver and spawn children re-run the parent's main script
    (as ``__mp_main__``), which runs an unguarded script's top level again in every worker.
    amorsize sends everything by value (``payloads.ByValue``), so its workers need no
    ``__main__``: the preparation data of the processes started here leaves it out.
    """
    with _launch_lock:
        def without_main(name: str) -> dict:
            data = _GET_PREPARATION_DATA(name)
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
            return data

        multiprocessing.spawn.get_preparation_data = without_main
        try:
            yield
        finally:
            multiprocessing.spawn.get_preparation_data = _GET_PREPARATION_DATA


class _WithoutMainStart:
    """A process that starts without the parent's ``__main__``, whenever it starts: at the
    pool's start, or later to replace a retired worker."""

    def start(self) -> None:
        with without_main_module():
            super().start()  # type: ignore[misc]


class _SpawnProcess(_WithoutMainStart, multiprocessing.context.SpawnProcess):
    pass


# 6. a fork-server worker's exit status, read by one thread at a time

if hasattr(multiprocessing.context, "ForkServerProcess"):
    from multiprocessing import popen_forkserver

    class _ForkServerPopen(popen_forkserver.Popen):
        """The status comes through a pipe, once: of two threads reading it at once (the
        executor joining a retired worker, a caller asking whether the pool is ``broken``),
        one gets it and the other end-of-file, taken for exit code 255 -- a crash -- and kept.
        The wait for the worker to exit stays outside the lock: a thread joining a live worker
        never blocks a thread that only asks."""

        def __init__(self, process_obj: Any) -> None:
            self._poll_lock = threading.Lock()
            super().__init__(process_obj)

        def poll(self, flag: int = os.WNOHANG) -> int | None:
            if self.returncode is None and flag != os.WNOHANG:
                multiprocessing.connection.wait([self.sentinel])
            with self._poll_lock:
                return super().poll(os.WNOHANG)

    class _ForkServerProcess(_WithoutMainStart, multiprocessing.context.ForkServerProcess):
        @staticmethod
        def _Popen(process_obj: Any) -> _ForkServerPopen:
            return _ForkServerPopen(process_obj)


class WithoutMainContext:
    """A multiprocessing context whose processes start without ``__main__`` (fork copies the
    parent instead of importing anything: its processes are left as they are); duck-typed, for
    ``ProcessPoolExecutor(mp_context=...)``."""

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


# 7. a forked child starts its own fork server


def after_fork_in_child() -> None:
    """Make a forked child able to start process pools of its own.

    The child inherits the parent's locks (possibly held by a thread that does not exist in the
    child) and the parent's fork-server handle, whose liveness check (``waitpid`` on a process
    that is not the child's) fails; both are reset so the child starts its own fork server.
    """
    global _launch_lock
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
        with contextlib.suppress(OSError):
            os.close(alive_fd)
