"""Warm pools, kept and reused across calls: the reason a second call pays no start-up.

Reuse rule: the same key -- executor type, worker count, start method, initializer and
``max_tasks_per_child`` -- returns the same running pool; anything else gets its own. A pool that
lost a worker, sat idle past ``idle_timeout`` or has a worker whose memory grew past
``max_memory_growth_mb`` is never handed out again: it is shut down and replaced on the next
request.

A run leases its pool (``WorkerPool.lease``): retiring a leased pool (``clear``, ``release_pool``, idle
timeout, ``force_new``) takes it out of the table at once, so new requests get a fresh pool, but
closes it only when the last lease ends, so no running call fails. Only ``shutdown`` (the
manager's end) closes pools under their runs.

Events passed to ``on_event(event, key, stats)`` (the global manager forwards them to the
``amorsize_pool_event`` hook) are the hook's five: "created", "reused", "evicted" (with
``stats["reason"]`` "idle", "released", "force_new", "cancelled" -- a cancelled run stopped
its workers --, "closed" -- someone shut the pool down -- or "recycled" -- a worker's memory
grew past the limit), "broken" and "shutdown".
"""

from __future__ import annotations

import atexit
import collections
import math
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

from amorsize import system
from amorsize.errors import (
    ExecutorType,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    PoolManagerClosedError,
    check_executor_type,
    check_initializer,
    check_max_tasks_per_child,
    check_positive_int,
    check_start_method,
)
from amorsize.pools import worker
from amorsize.pools.processes import MAX_MEMORY_GROWTH_MB, ProcessPool, after_fork_in_child
from amorsize.pools.threads import ThreadPool
from amorsize.pools.worker_pool import SerialPool, WorkerPool

# (executor_type, n_jobs, start_method, (initializer, initargs) or None, max_tasks_per_child)
PoolKey = tuple[ExecutorType, int, str | None, Any, int | None]
EventListener = Callable[[str, PoolKey, dict], None]

_EVENT_OF_REASON = {
    "idle": "evicted", "released": "evicted", "force_new": "evicted", "cancelled": "evicted",
    "closed": "evicted", "recycled": "evicted", "broken": "broken", "shutdown": "shutdown",
}
_DEFERRED = {"idle", "released", "force_new", "recycled", "shutdown"}
_STARTUPS_KEPT = 256

_managers: weakref.WeakSet[PoolManager] = weakref.WeakSet()


class PoolManager:
    """Keeps warm pools by key and hands them out; thread-safe, fork-safe, shut down at exit.

    ``idle_timeout`` seconds after its last use, a pool is closed the next time any pool is
    requested (0 closes every pool not running a task at each request). With
    ``enable_auto_cleanup`` every pool is shut down at interpreter exit (the manager is referenced
    weakly, so this does not keep it alive). ``start_method`` is the default for process pools
    (see ``amorsize.system.default_start_method``); ``on_event`` observes the pools' lives.
    A process pool one of whose workers grew by more than ``max_memory_growth_mb`` (None: no
    limit) since its first task is replaced on the next request ("recycled").
    """

    def __init__(
        self,
        idle_timeout: float = 300.0,
        enable_auto_cleanup: bool = True,
        start_method: str | None = None,
        on_event: EventListener | None = None,
        max_memory_growth_mb: float | None = MAX_MEMORY_GROWTH_MB,
    ) -> None:
        if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, int | float):
            raise InvalidArgumentTypeError(
                f"idle_timeout must be a number of seconds >= 0, got {type(idle_timeout).__name__}"
            )
        if math.isnan(idle_timeout) or idle_timeout < 0:
            raise InvalidArgumentError(
                f"idle_timeout must be a number of seconds >= 0, got {idle_timeout!r}"
            )
        check_start_method("start_method", start_method, allow_none=True)
        _check_memory_limit(max_memory_growth_mb)
        self.max_memory_growth_mb = max_memory_growth_mb
        self.idle_timeout = float(idle_timeout)
        self.enable_auto_cleanup = enable_auto_cleanup
        self.start_method = start_method or system.default_start_method()
        self._on_event = on_event
        self._pools: dict[PoolKey, WorkerPool] = {}
        self._key_locks: dict[PoolKey, threading.Lock] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        self._counts = {
            "hits": 0, "misses": 0, "creations": 0, "evictions": 0, "replacements": 0,
        }
        self._evictions_by_reason = {
            "idle": 0, "released": 0, "force_new": 0, "cancelled": 0, "closed": 0, "recycled": 0,
        }
        self._startups: collections.deque[dict] = collections.deque(maxlen=_STARTUPS_KEPT)
        if enable_auto_cleanup:
            _managers.add(self)

    def __enter__(self) -> PoolManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        return (f"<PoolManager pools={len(self._pools)} start_method={self.start_method!r} "
                f"{'closed' if self._closed else 'open'}>")

    def get_pool(
        self,
        n_jobs: int,
        executor_type: ExecutorType = "process",
        force_new: bool = False,
        *,
        start_method: str | None = None,
        initializer: Callable | None = None,
        initargs: tuple = (),
        create: bool = True,
        max_tasks_per_child: int | None = None,
    ) -> WorkerPool | None:
        """The warm pool for this key, created on first request (``force_new`` replaces it);
        None if ``create=False`` and there is no warm pool.

        ``max_tasks_per_child`` (process pools; thread and serial pools ignore it): a worker
        is replaced after that many tasks (chunks). Also closes, first, the other pools idle
        past ``idle_timeout``.
        """
        key = self._checked_key(n_jobs, executor_type, start_method, initializer, initargs,
                                max_tasks_per_child)
        self._check_process()
        with self._lock:
            self._check_open_locked()
            stale = self._take_stale_locked(exclude=key, check_broken=False)
            pool = self._pools.get(key)
            hit = pool if pool is not None and not force_new and _unusable(pool) is None else None
            if hit is not None and create:
                self._counts["hits"] += 1
                hit.last_used = time.monotonic()
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        self._close_all(stale)
        if hit is not None:
            if create:
                self._emit("reused", key, {"startup_seconds": 0.0})
            return hit
        if not create:
            return None
        return self._get_or_create(key, n_jobs, executor_type, force_new, initializer, initargs,
                                   key_lock)

    def _get_or_create(self, key: PoolKey, n_jobs: int, executor_type: ExecutorType, force_new: bool,
                       initializer: Callable | None, initargs: tuple,
                       key_lock: threading.Lock) -> WorkerPool:
        """One creator per key at a time: a thread that waited finds the pool made meanwhile."""
        with key_lock:
            with self._lock:
                self._check_open_locked()
                stale = self._take_stale_locked(exclude=key, check_broken=True)
                pool = self._pools.get(key)
                if pool is not None and not force_new and _unusable(pool) is None:
                    self._counts["hits"] += 1
                    pool.last_used = time.monotonic()
                    hit = pool
                else:
                    hit = None
                    self._counts["misses"] += 1
                    if pool is not None:
                        stale.append(self._retire_locked(key, _unusable(pool) or "force_new"))
            self._close_all(stale)
            if hit is not None:
                self._emit("reused", key, {"startup_seconds": 0.0})
                return hit
            pool = self._create(key, n_jobs, executor_type, initializer, initargs)
            with self._lock:
                if self._closed:
                    pool.shutdown(force=True)
                    raise PoolManagerClosedError(
                        "this PoolManager was shut down while the pool was starting; create a new "
                        "PoolManager (for the global one, call amorsize.get_global_pool_manager())"
                    )
                self._pools[key] = pool
                self._counts["creations"] += 1
                self._startups.append({"key": _key_name(key), "startup_seconds": pool.startup_seconds})
            self._emit("created", key, {"startup_seconds": pool.startup_seconds})
            return pool

    def release_pool(
        self,
        n_jobs: int,
        executor_type: ExecutorType = "process",
        *,
        start_method: str | None = None,
        initializer: Callable | None = None,
        initargs: tuple = (),
        max_tasks_per_child: int | None = None,
    ) -> bool:
        """Shut the pool for this key down now (waiting for its running tasks; a run holding it
        keeps it until the run ends) instead of at its idle timeout; True if there was one. The
        next ``get_pool`` for the key starts a new one."""
        key = self._checked_key(n_jobs, executor_type, start_method, initializer, initargs,
                                max_tasks_per_child)
        self._check_process()
        with self._lock:
            if key not in self._pools:
                return False
            retired = self._retire_locked(key, "released")
        self._close_all([retired], defer=True)
        return True

    def shutdown(self, force: bool = False) -> None:
        """Close every pool and refuse further requests; ``force`` terminates busy workers,
        otherwise running tasks finish first. When it returns, no worker process of this
        manager is left."""
        self._check_process()
        with self._lock:
            self._closed = True
            retired = [self._retire_locked(key, "shutdown") for key in list(self._pools)]
        for _, pool, _ in retired:
            pool.manager_shut_down = True
        self._close_all(retired, force=force)
        _managers.discard(self)

    def clear(self) -> None:
        """Close every pool (waiting for running tasks; a pool a run holds closes when that run
        ends) but keep the manager usable: the next request starts a fresh pool."""
        self._check_process()
        with self._lock:
            retired = [self._retire_locked(key, "shutdown") for key in list(self._pools)]
        self._close_all(retired, defer=True)

    def get_stats(self) -> dict:
        """Pools alive by key, counters of hits, misses, creations, evictions and replacements
        (of broken pools), and the measured start-up of the pools this manager created. Each
        pool tells its ``workers_replaced``: workers started in place of ones retired by
        ``max_tasks_per_child``."""
        self._check_process()
        with self._lock:
            pools = {
                _key_name(key): {
                    "executor_type": key[0],
                    "n_jobs": key[1],
                    "start_method": key[2],
                    "startup_seconds": pool.startup_seconds,
                    "idle_seconds": pool.idle_seconds,
                    "busy": pool.busy,
                    "worker_pids": pool.worker_pids(),
                    "max_tasks_per_child": key[4],
                    "workers_replaced": pool.workers_replaced,
                }
                for key, pool in self._pools.items()
            }
            return {
                **self._counts,
                "evictions_by_reason": dict(self._evictions_by_reason),
                "pools": pools,
                "startups": list(self._startups),
                "idle_timeout": self.idle_timeout,
                "start_method": self.start_method,
                "max_memory_growth_mb": self.max_memory_growth_mb,
                "closed": self._closed,
            }

    def _checked_key(self, n_jobs: int, executor_type: ExecutorType, start_method: str | None,
                     initializer: Callable | None, initargs: tuple,
                     max_tasks_per_child: int | None = None) -> PoolKey:
        """The key of the pool these arguments mean, after checking each of them."""
        check_positive_int("n_jobs", n_jobs)
        check_executor_type("executor_type", executor_type)
        check_start_method("start_method", start_method, allow_none=True)
        check_initializer(initializer, initargs)
        init = None if initializer is None else (initializer, tuple(initargs))
        check_max_tasks_per_child(max_tasks_per_child, None)
        if executor_type == "serial":
            key: PoolKey = ("serial", 1, None, init, None)
        elif executor_type in ("thread", "interpreter"):
            key = (executor_type, n_jobs, None, init, None)
        else:
            method = start_method or self.start_method
            check_max_tasks_per_child(max_tasks_per_child, method)
            key = ("process", n_jobs, method, init, max_tasks_per_child)
        try:
            hash(key)
        except TypeError:
            raise InvalidArgumentTypeError(
                "initargs must be hashable (a tuple of numbers, strings, tuples...) because it is "
                f"part of the pool's key; got {initargs!r}"
            ) from None
        return key

    def _create(self, key: PoolKey, n_jobs: int, executor_type: ExecutorType,
                initializer: Callable | None, initargs: tuple) -> WorkerPool:
        if executor_type == "serial":
            return SerialPool(1, initializer, initargs)
        if executor_type == "thread":
            return ThreadPool(n_jobs, initializer, initargs)
        if initializer is not None:
            # by value, as everything else crosses: workers never import __main__
            initializer, initargs = (worker.initialize_by_value,
                                     (worker.ByValue((initializer, initargs)),))
        if executor_type == "interpreter":
            from amorsize.pools.interpreters import InterpreterPool  # Python 3.14+

            return InterpreterPool(n_jobs, initializer, initargs)
        blas_threads = max(1, system.usable_cpus() // n_jobs)
        start_method = cast(str, key[2])  # a process pool's key holds its resolved method
        return ProcessPool(n_jobs, start_method, initializer, initargs, blas_threads,
                           max_tasks_per_child=key[4], memory_limit_mb=self.max_memory_growth_mb)

    def _check_open_locked(self) -> None:
        if self._closed:
            raise PoolManagerClosedError(
                "this PoolManager was shut down; create a new one (for the global one, call "
                "amorsize.get_global_pool_manager() again)"
            )

    def _retire_locked(self, key: PoolKey, reason: str) -> tuple[PoolKey, WorkerPool, str]:
        """Take a pool out of service (under the lock) and count why; the caller closes it."""
        pool = self._pools.pop(key)
        if reason == "broken":
            self._counts["replacements"] += 1
        elif reason in self._evictions_by_reason:
            self._counts["evictions"] += 1
            self._evictions_by_reason[reason] += 1
        return key, pool, reason

    def _take_stale_locked(self, exclude: PoolKey,
                           check_broken: bool) -> list[tuple[PoolKey, WorkerPool, str]]:
        """Retire the pools idle past the timeout (and, if asked, the broken ones)."""
        stale = []
        for key, pool in list(self._pools.items()):
            if key == exclude:
                continue
            if check_broken and _unusable(pool) is not None:
                stale.append(self._retire_locked(key, _unusable(pool) or "broken"))
            elif pool.idle_seconds > self.idle_timeout:
                stale.append(self._retire_locked(key, "idle"))
        return stale

    def _close_all(self, retired: list[tuple[PoolKey, WorkerPool, str]], force: bool = False,
                   defer: bool = False) -> None:
        """Shut retired pools down outside the lock; one failing does not keep the rest open.

        With ``defer`` (every retirement but the manager's shutdown), and always for a
        recycled pool, a leased pool closes when its last lease ends instead (``WorkerPool.retire``)."""
        errors = []
        for key, pool, reason in retired:
            broken = reason == "broken"
            try:
                if broken or reason in ("cancelled", "closed"):
                    pool.shutdown(wait=True, force=True)
                elif (defer or reason == "recycled") and reason in _DEFERRED:
                    pool.retire(wait=True, force=force)
                else:
                    pool.shutdown(wait=True, force=force or pool.broken)
            except Exception as exc:  # noqa: BLE001 - close the others, then report
                errors.append(exc)
            stats: dict[str, float | str] = {"idle_seconds": pool.idle_seconds,
                                              "startup_seconds": pool.startup_seconds}
            if _EVENT_OF_REASON[reason] == "evicted":
                stats["reason"] = reason
            self._emit(_EVENT_OF_REASON[reason], key, stats)
        if errors:
            raise errors[0]

    def _emit(self, event: str, key: PoolKey, stats: dict) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event, key, stats)
        except Exception as exc:  # noqa: BLE001 - an observer must not break pool bookkeeping
            warnings.warn(f"PoolManager on_event callback raised {exc!r} on {event!r}",
                          RuntimeWarning, stacklevel=3)

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            self._forget_pools()

    def _forget_pools(self) -> None:
        """In a forked child: the parent's pools are not ours; drop them without touching them."""
        self._pools = {}
        self._key_locks = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()


def _check_memory_limit(value: object) -> None:
    """MB > 0, or None for no limit."""
    if value is None:
        return
    allowed = "a number of MB > 0, or None for no limit"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentTypeError(
            f"max_memory_growth_mb must be {allowed}, got {type(value).__name__} {value!r}")
    if not 0 < value < math.inf:
        raise InvalidArgumentError(f"max_memory_growth_mb must be {allowed}, got {value!r}")


def _unusable(pool: WorkerPool) -> str | None:
    """Why a pool in the table must not be handed out: "cancelled" (a cancelled run stopped
    its workers), "broken" (a worker died), "closed" (shut down behind the manager's back),
    "recycled" (a worker's memory grew past the limit)."""
    if pool.broken:
        return "cancelled" if getattr(pool, "terminated_by", None) is not None else "broken"
    if pool.closed:
        return "closed"
    if getattr(pool, "recycle_due", False):
        return "recycled"
    return None


def _key_name(key: PoolKey) -> str:
    executor_type, n_jobs, start_method, init, max_tasks = key
    name = f"{executor_type}:{n_jobs}"
    if start_method:
        name += f":{start_method}"
    if init is not None:
        name += f":{getattr(init[0], '__qualname__', init[0])}{init[1]!r}"
    if max_tasks is not None:
        name += f":max_tasks_per_child={max_tasks}"
    return name


_global_manager: PoolManager | None = None
_global_lock = threading.Lock()


def _emit_to_plugins(event: str, key: PoolKey, stats: dict) -> None:
    from amorsize import plugins

    plugins.pool_event(event, key, stats)


def get_global_pool_manager() -> PoolManager:
    """The process-wide PoolManager that amorsize.map, joblib and Dask share (created on first
    use, thread-safe; a new one after ``shutdown_global_pool_manager``)."""
    global _global_manager
    manager = _global_manager
    if manager is not None and not manager._closed and manager._pid == os.getpid():
        return manager
    with _global_lock:
        if _global_manager is None or _global_manager._closed:
            _global_manager = PoolManager(on_event=_emit_to_plugins)
        elif _global_manager._pid != os.getpid():
            _global_manager._forget_pools()
        return _global_manager


def shutdown_global_pool_manager(force: bool = False) -> None:
    """Shut the global manager's pools down; the next get_global_pool_manager() makes a new one."""
    global _global_manager
    with _global_lock:
        manager, _global_manager = _global_manager, None
    if manager is not None:
        manager.shutdown(force=force)


@contextmanager
def managed_pool(
    n_jobs: int,
    executor_type: ExecutorType = "process",
    manager: PoolManager | None = None,
    use_global: bool = True,
) -> Iterator[WorkerPool]:
    """A pool for a ``with`` block: a warm shared one (kept afterwards) from ``manager`` or the
    global manager, or, with ``use_global=False`` and no manager, a private one shut down on exit."""
    if manager is None and not use_global:
        with PoolManager() as private:
            pool = private.get_pool(n_jobs, executor_type)
            assert pool is not None
            yield pool
        return
    owner = manager or get_global_pool_manager()
    pool = owner.get_pool(n_jobs, executor_type)
    assert pool is not None
    yield pool


def _shutdown_at_exit() -> None:
    for manager in list(_managers):
        if manager._pid == os.getpid():
            try:
                manager.shutdown(force=True)
            except Exception as exc:  # noqa: BLE001 - exit must go on; say what went wrong
                print(f"amorsize: error shutting pools down at exit: {exc!r}", file=sys.stderr)


def _after_fork_in_child() -> None:
    global _global_lock
    _global_lock = threading.Lock()
    for manager in list(_managers):
        manager._forget_pools()
    after_fork_in_child()


atexit.register(_shutdown_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
