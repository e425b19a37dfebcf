"""``multiprocessing.Pool``'s interface on amorsize, so moving is changing the import.

``from amorsize import Pool`` takes the same arguments and offers the same methods; the
difference is that each mapping call is measured and run the fastest way (serial, threads or
processes, and the chunk size) on amorsize's shared warm pools, with ``processes`` as the cap on
workers. ``apply``/``apply_async`` run one call on a process worker without measuring.

The asynchronous methods hand the same blocking calls to daemon threads the ``Pool`` object owns
(at most ``processes`` at once, started as calls come): there is one way to run, whoever waits.
Pools are shared, so ``close``/``terminate`` end this object's use of them, not the workers:
``terminate`` cancels this object's calls still running (a cancelled run stops its own workers)
and fails their results, where ``multiprocessing`` would leave them pending forever.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import multiprocessing.context
import queue
import sys
import threading
import traceback
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Generic, NoReturn, TypeVar

from amorsize import system
from amorsize.errors import ExecutorType, InvalidArgumentError, InvalidArgumentTypeError, RunCancelledError
from amorsize.plan import Plan
from amorsize.pools import worker
from amorsize.run import mapping
from amorsize.run.control import Run, RunGroup
from amorsize.workload import Profile, Workload

T = TypeVar("T")

_NOT_RUNNING = "Pool not running: it was closed or terminated; make a new Pool"
_TERMINATED = "the amorsize.Pool was terminated before this call finished"


class AsyncResult(Generic[T]):
    """The outcome of ``apply_async``/``map_async``/``starmap_async``, as
    ``multiprocessing.pool.AsyncResult``: its callback runs before it is ready."""

    def __init__(self, callback: Callable[[T], object] | None = None,
                 error_callback: Callable[[BaseException], object] | None = None) -> None:
        self._future: futures.Future[T] = futures.Future()
        self._callback = callback
        self._error_callback = error_callback
        self._claimed = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = ("pending" if not self.ready() else
                 "successful" if self.successful() else "failed")
        return f"<amorsize.Pool AsyncResult {state}>"

    def ready(self) -> bool:
        return self._future.done()

    def successful(self) -> bool:
        """True if the call returned; ``ValueError`` while it is not ready (as multiprocessing)."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._future.exception() is None

    def wait(self, timeout: float | None = None) -> None:
        futures.wait([self._future], timeout)

    def get(self, timeout: float | None = None) -> T:
        """The result, or the call's exception raised; ``multiprocessing.TimeoutError`` if not
        ready within ``timeout`` seconds (the call goes on)."""
        if not futures.wait([self._future], timeout).done:
            raise multiprocessing.TimeoutError(f"no result within timeout={timeout!r} s")
        return self._future.result()

    def _settle(self, value: Any, failed: bool, callbacks: bool = True) -> None:
        """Set the outcome once (a later one, from a terminated call, is dropped); callbacks
        first, so that a ready result has had them."""
        with self._lock:
            if self._claimed:
                return
            self._claimed = True
        try:
            callback = self._error_callback if failed else self._callback
            if callbacks and callback is not None:
                try:
                    callback(value)
                except Exception:  # noqa: BLE001 - the result stands; the caller sees the report
                    print("Exception in an amorsize.Pool callback:", file=sys.stderr)
                    traceback.print_exc()
        finally:
            if failed:
                self._future.set_exception(value)
            else:
                self._future.set_result(value)


class Pool:
    """``multiprocessing.Pool(processes, initializer, initargs, maxtasksperchild, context)``.

    ``processes`` caps the workers of each call (None: up to the usable CPUs);
    ``initializer(*initargs)`` runs once in each worker; ``maxtasksperchild`` replaces a process
    worker after that many tasks; ``context`` gives the start method of the processes.
    """

    def __init__(self, processes: int | None = None,
                 initializer: Callable[..., object] | None = None,
                 initargs: Iterable[Any] = (), maxtasksperchild: int | None = None,
                 context: multiprocessing.context.BaseContext | None = None) -> None:
        start_method = _check_arguments(processes, initializer, initargs, maxtasksperchild,
                                        context)
        self._processes = processes
        self._options: dict[str, Any] = {
            "n_jobs": processes, "initializer": initializer, "initargs": tuple(initargs),
            "max_tasks_per_child": maxtasksperchild, "start_method": start_method,
        }
        self._running = True
        self._group = RunGroup()
        self._outstanding: set[AsyncResult[Any]] = set()
        self._threads = _TaskThreads(processes or system.usable_cpus())
        weakref.finalize(self, self._threads.stop)

    def __repr__(self) -> str:
        state = "running" if self._running else "closed"
        return f"<amorsize.Pool processes={self._processes} {state}>"

    def __reduce__(self) -> NoReturn:
        raise NotImplementedError(
            "an amorsize.Pool cannot be pickled or passed to another process; make one there")

    def apply(self, func: Callable[..., T], args: Iterable[Any] = (),
              kwds: dict[str, Any] | None = None) -> T:
        """``func(*args, **kwds)`` on a process worker; its exception is raised here."""
        call = self._one_call(func, args, kwds)
        with self._cancellable():
            return call()

    def apply_async(self, func: Callable[..., T], args: Iterable[Any] = (),
                    kwds: dict[str, Any] | None = None,
                    callback: Callable[[T], object] | None = None,
                    error_callback: Callable[[BaseException], object] | None = None,
                    ) -> AsyncResult[T]:
        return self._submit(self._one_call(func, args, kwds), callback, error_callback)

    def map(self, func: Callable[[Any], T], iterable: Iterable[Any],
            chunksize: int | None = None) -> list[T]:
        options = self._checked()
        with self._cancellable():
            return mapping.map(func, iterable, chunksize=chunksize, **options)

    def map_async(self, func: Callable[[Any], T], iterable: Iterable[Any],
                  chunksize: int | None = None,
                  callback: Callable[[list[T]], object] | None = None,
                  error_callback: Callable[[BaseException], object] | None = None,
                  ) -> AsyncResult[list[T]]:
        """``map`` on one of this object's threads; ``iterable`` is read here, at once (as
        multiprocessing does), so its own exception is raised here."""
        options = self._checked()
        items = iterable if hasattr(iterable, "__len__") else list(iterable)
        call = functools.partial(mapping.map, func, items, chunksize=chunksize, **options)
        return self._submit(call, callback, error_callback)

    def starmap(self, func: Callable[..., T], iterable: Iterable[Iterable[Any]],
                chunksize: int | None = None) -> list[T]:
        options = self._checked()
        with self._cancellable():
            return mapping.starmap(func, iterable, chunksize=chunksize, **options)

    def starmap_async(self, func: Callable[..., T], iterable: Iterable[Iterable[Any]],
                      chunksize: int | None = None,
                      callback: Callable[[list[T]], object] | None = None,
                      error_callback: Callable[[BaseException], object] | None = None,
                      ) -> AsyncResult[list[T]]:
        options = self._checked()
        items = iterable if hasattr(iterable, "__len__") else list(iterable)
        call = functools.partial(mapping.starmap, func, items, chunksize=chunksize, **options)
        return self._submit(call, callback, error_callback)

    def imap(self, func: Callable[[Any], T], iterable: Iterable[Any],
             chunksize: int | None = None) -> Iterator[T]:
        return mapping.imap(func, iterable, chunksize=chunksize, **self._checked())

    def imap_unordered(self, func: Callable[[Any], T], iterable: Iterable[Any],
                       chunksize: int | None = None) -> Iterator[T]:
        return mapping.imap_unordered(func, iterable, chunksize=chunksize, **self._checked())

    def close(self) -> None:
        """No new work through this object; the calls already given go on (``join`` waits)."""
        if self._running:
            self._running = False
            self._threads.stop()

    def terminate(self) -> None:
        """Stop now: the asynchronous calls not finished are cancelled (their workers stopped as
        a cancelled run's are) and their results fail with ``RunCancelledError``, without
        callbacks; so are ``map``, ``starmap`` and ``apply`` running in other threads. An
        ``imap`` iterator is stopped by closing it. The shared pools stay, for every other
        amorsize call."""
        self._running = False
        # failed first: the runs' cancel fails their calls too, with the workers' deaths
        for result in self._outstanding.copy():
            result._settle(RunCancelledError(_TERMINATED), failed=True, callbacks=False)
        self._group.cancel()
        self._threads.stop()

    def join(self) -> None:
        """After ``close``: wait for the asynchronous calls given before it to end. After
        ``terminate``, whose results have failed already, return at once: work it could not
        stop (a function running in one of this object's threads, as while measuring) ends in
        the background, its outcome dropped."""
        if self._running:
            raise ValueError("Pool is still running: call close() or terminate() before join()")
        if not self._group.cancelled:
            self._threads.join()

    def __enter__(self) -> Pool:
        self._checked()
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    @contextlib.contextmanager
    def _cancellable(self) -> Iterator[None]:
        """A call in this thread that ``terminate`` cancels; the workers it loses then are
        reported as the termination they are, not as a crash."""
        with self._group.entered():
            try:
                yield
            except (BrokenProcessPool, futures.CancelledError, RunCancelledError) as exc:
                if self._group.cancelled:
                    raise RunCancelledError(_TERMINATED) from exc
                raise

    def _checked(self) -> dict[str, Any]:
        if not self._running:
            raise ValueError(_NOT_RUNNING)
        return self._options

    def _one_call(self, func: Callable[..., T], args: Iterable[Any],
                  kwds: dict[str, Any] | None) -> Callable[[], T]:
        """A blocking ``func(*args, **kwds)``: a run of one call, not measured, on a warm
        process pool of ``processes`` workers (else one per usable CPU); in place inside a
        worker, where amorsize starts no pools."""
        options = self._checked()
        if not callable(func):
            raise InvalidArgumentTypeError(
                f"func must be callable (a function, lambda or object with __call__), "
                f"got {type(func).__name__}")
        args, kwds = tuple(args), dict(kwds or {})
        n_jobs = self._processes or system.usable_cpus()
        executor: ExecutorType = "serial" if worker.inside_worker() else "process"
        workload = Workload(1, source="apply", executors=(executor,), max_workers=n_jobs,
                            start_method=options["start_method"],
                            initializer=options["initializer"], initargs=options["initargs"],
                            max_tasks_per_child=options["max_tasks_per_child"])
        plan = Plan(executor, 1 if executor == "serial" else n_jobs, 1, 1.0,
                    ["amorsize.Pool.apply: one call, not measured"], Profile(0.0), workload)
        target = functools.partial(func, **kwds) if kwds else func

        def call() -> T:
            with Run(plan) as run:
                if run.pool is None:
                    return target(*args)
                result: T = run.submit(target, *args).result()
                return result

        return call

    def _submit(self, call: Callable[[], T], callback: Callable[[T], object] | None,
                error_callback: Callable[[BaseException], object] | None) -> AsyncResult[T]:
        self._checked()
        result: AsyncResult[T] = AsyncResult(callback, error_callback)
        outstanding, group = self._outstanding, self._group
        outstanding.add(result)

        def task() -> None:
            try:
                if result.ready():  # failed by terminate() before it started
                    return
                try:
                    with group.entered():
                        value = call()
                except BaseException as exc:  # noqa: BLE001 - delivered through the result
                    result._settle(exc, failed=True)
                else:
                    result._settle(value, failed=False)
            finally:
                outstanding.discard(result)

        self._threads.put(task)
        return result


class _TaskThreads:
    """Daemon threads running a Pool's asynchronous calls in order, at most ``limit`` at once;
    a thread starts only when every running one is busy. They hold no reference to the Pool,
    so a Pool dropped unclosed still lets them end (``stop`` from its finalizer)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._pending = 0
        self._stopped = False
        self._lock = threading.Lock()

    def put(self, task: Callable[[], None]) -> None:
        with self._lock:
            if self._stopped:
                raise ValueError(_NOT_RUNNING)
            self._pending += 1
            self._queue.put(task)
            if len(self._threads) < min(self._limit, self._pending):
                thread = threading.Thread(target=self._serve, daemon=True,
                                          name=f"amorsize.Pool-{len(self._threads) + 1}")
                self._threads.append(thread)
                thread.start()

    def stop(self) -> None:
        """Let each thread end once the calls queued so far are done."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            for _ in self._threads:
                self._queue.put(None)

    def join(self) -> None:
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():  # join() from a callback
                thread.join()

    def _serve(self) -> None:
        while (task := self._queue.get()) is not None:
            try:
                task()
            finally:
                with self._lock:
                    self._pending -= 1


def _check_arguments(processes: object, initializer: object, initargs: object,
                     maxtasksperchild: object, context: object) -> str | None:
    """``multiprocessing.Pool``'s checks, as amorsize's errors naming the fix; returns the
    start method ``context`` asks for (None: amorsize's default)."""
    if processes is not None:
        if isinstance(processes, bool) or not isinstance(processes, int):
            raise InvalidArgumentTypeError(
                f"processes must be an int >= 1 (the most workers a call may use), or None for "
                f"up to the usable CPUs; got {type(processes).__name__} {processes!r}")
        if processes < 1:
            raise InvalidArgumentError(
                f"processes must be at least 1 (the most workers a call may use), or None for "
                f"up to the usable CPUs; got {processes!r}")
    if initializer is not None and not callable(initializer):
        raise InvalidArgumentTypeError(
            f"initializer must be callable (run once in each worker) or None, got "
            f"{type(initializer).__name__} {initializer!r}")
    if isinstance(initargs, str | bytes) or not isinstance(initargs, Iterable):
        raise InvalidArgumentTypeError(
            f"initargs must be a tuple of the initializer's arguments, e.g. initargs=(x,); got "
            f"{type(initargs).__name__} {initargs!r}")
    # a ValueError whatever is wrong, as multiprocessing.Pool raises
    if maxtasksperchild is not None and (isinstance(maxtasksperchild, bool) or not isinstance(
            maxtasksperchild, int) or maxtasksperchild < 1):
        raise InvalidArgumentError(
            f"maxtasksperchild must be an int >= 1 (tasks before a worker is replaced) or None, "
            f"got {type(maxtasksperchild).__name__} {maxtasksperchild!r}")
    if context is not None and not isinstance(context, multiprocessing.context.BaseContext):
        raise InvalidArgumentTypeError(
            f"context must be a multiprocessing context, e.g. "
            f"multiprocessing.get_context('spawn'), or None; got {type(context).__name__}")
    start_method = None if context is None else context.get_start_method()
    if maxtasksperchild is not None and (start_method or system.default_start_method()) == "fork":
        raise InvalidArgumentError(
            f"maxtasksperchild={maxtasksperchild!r} cannot be used with the 'fork' start method "
            "(a replacement worker would be forked from a process that has threads); pass "
            "context=multiprocessing.get_context('forkserver') or 'spawn', or leave "
            "maxtasksperchild=None")
    return start_method
