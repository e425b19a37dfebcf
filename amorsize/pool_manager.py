"""Warm pools, kept and reused across calls: the reason a second call pays no start-up.

Reuse rule: the same key -- executor type, worker count, start method and initializer -- returns
the same running pool; anything else gets its own. A pool that lost a worker, or sat idle past
``idle_timeout``, is never handed out again: it is shut down and replaced on the next request.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from amorsize import system
from amorsize.errors import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    PoolManagerClosedError,
    check_executor_type,
    check_positive_int,
)
from amorsize.pools import Pool, ProcessPool, SerialPool, ThreadPool

START_METHODS = ("fork", "forkserver", "spawn")
PoolKey = tuple[str, int, str | None, Any]
EventListener = Callable[[str, PoolKey, dict], None]

_managers: weakref.WeakSet[PoolManager] = weakref.WeakSet()


class PoolManager:
    """Keeps warm pools by key and hands them out; thread-safe, fork-safe, shut down at exit.

    ``idle_timeout`` seconds after its last use, a pool is closed the next time any pool is
    requested. With ``enable_auto_cleanup`` every pool is shut down at interpreter exit (the
    manager is referenced weakly, so this does not keep it alive). ``start_method`` is the
    default for process pools (see ``amorsize.system.default_start_method``).
    """

    def __init__(
        self,
        idle_timeout: float = 300.0,
        enable_auto_cleanup: bool = True,
        start_method: str | None = None,
        on_event: EventListener | None = None,
    ) -> None:
        if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, int | float):
            raise InvalidArgumentTypeError(
                f"idle_timeout must be a number of seconds >= 0, got {type(idle_timeout).__name__}"
            )
        if idle_timeout < 0:
            raise InvalidArgumentError(
                f"idle_timeout must be a number of seconds >= 0, got {idle_timeout!r}"
            )
        _check_start_method("start_method", start_method, allow_none=True)
        self.idle_timeout = float(idle_timeout)
        self.enable_auto_cleanup = enable_auto_cleanup
        self.start_method = start_method or system.default_start_method()
        self._on_event = on_event
        self._pools: dict[PoolKey, Pool] = {}
        self._key_locks: dict[PoolKey, threading.Lock] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        self._counts = {
            "hits": 0, "misses": 0, "creations": 0, "evictions": 0, "replacements": 0,
        }
        self._startups: list[dict] = []
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
        executor_type: str = "process",
        force_new: bool = False,
        *,
        start_method: str | None = None,
        initializer: Callable | None = None,
        initargs: tuple = (),
        create: bool = True,
    ) -> Pool | None:
        """The warm pool for this key, created on first request; None if ``create=False`` and
        there is no warm pool."""
        check_positive_int("n_jobs", n_jobs)
        check_executor_type("executor_type", executor_type)
        _check_start_method("start_method", start_method, allow_none=True)
        key = self._key(n_jobs, executor_type, start_method, initializer, initargs)
        self._check_process()
        with self._lock:
            if self._closed:
                raise PoolManagerClosedError(
                    "this PoolManager was shut down; create a new one (or, for the global one, "
                    "call amorsize.get_global_pool_manager() again)"
                )
            pool = self._pools.get(key)
            if pool is not None and not force_new and not pool.broken:
                if not create:
                    return pool
                self._counts["hits"] += 1
                pool.last_used = time.monotonic()
                hit = pool
            else:
                hit = None
        if hit is not None:
            self._emit("reused", key, {"startup_seconds": 0.0})
            return hit
        with self._lock:
            stale = self._take_stale_locked(exclude=key)
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        self._close_all(stale, "evicted")
        if not create:
            return None
        with key_lock:
            with self._lock:
                pool = self._pools.get(key)
                if pool is not None and not force_new and not pool.broken:
                    self._counts["hits"] += 1
                    return pool
                old = self._pools.pop(key, None)
                self._counts["misses"] += 1
            if old is not None:
                event = "broken" if old.broken else "replaced"
                if old.broken:
                    with self._lock:
                        self._counts["replacements"] += 1
                self._close_all([(key, old)], event, force=old.broken)
            pool = self._create(key, n_jobs, executor_type, start_method, initializer, initargs)
            with self._lock:
                if self._closed:
                    pool.shutdown(force=True)
                    raise PoolManagerClosedError("the PoolManager was shut down while a pool started")
                self._pools[key] = pool
                self._counts["creations"] += 1
                self._startups.append({"key": key, "startup_seconds": pool.startup_seconds})
            self._emit("created", key, {"startup_seconds": pool.startup_seconds})
            return pool

    def release_pool(
        self,
        n_jobs: int,
        executor_type: str = "process",
        *,
        start_method: str | None = None,
        initializer: Callable | None = None,
        initargs: tuple = (),
    ) -> bool:
        """Shut the pool for this key down now instead of at its idle timeout; True if one was."""
        check_positive_int("n_jobs", n_jobs)
        check_executor_type("executor_type", executor_type)
        key = self._key(n_jobs, executor_type, start_method, initializer, initargs)
        with self._lock:
            pool = self._pools.pop(key, None)
        if pool is None:
            return False
        self._close_all([(key, pool)], "evicted")
        return True

    def shutdown(self, force: bool = False) -> None:
        """Close every pool and refuse further requests; ``force`` terminates busy workers,
        otherwise running tasks finish first."""
        with self._lock:
            self._closed = True
            pools = list(self._pools.items())
            self._pools.clear()
        self._close_all(pools, "shutdown", force=force)
        _managers.discard(self)

    def clear(self) -> None:
        """Close every pool but keep the manager usable (new pools start on the next request)."""
        with self._lock:
            pools = list(self._pools.items())
            self._pools.clear()
        self._close_all(pools, "shutdown")

    def get_stats(self) -> dict:
        """Pools alive by key, counters of hits, misses, creations, evictions and replacements,
        and the measured start-up of every pool this manager created."""
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
                }
                for key, pool in self._pools.items()
            }
            return {
                **self._counts,
                "pools": pools,
                "startups": list(self._startups),
                "idle_timeout": self.idle_timeout,
                "start_method": self.start_method,
                "closed": self._closed,
            }

    def _key(self, n_jobs: int, executor_type: str, start_method: str | None,
             initializer: Callable | None, initargs: tuple) -> PoolKey:
        if executor_type != "process":
            return (executor_type, n_jobs, None, None)
        init = None if initializer is None else (initializer, tuple(initargs))
        return (executor_type, n_jobs, start_method or self.start_method, init)

    def _create(self, key: PoolKey, n_jobs: int, executor_type: str, start_method: str | None,
                initializer: Callable | None, initargs: tuple) -> Pool:
        if executor_type == "serial":
            return SerialPool(1)
        if executor_type == "thread":
            return ThreadPool(n_jobs)
        blas_threads = max(1, system.usable_cpus() // n_jobs)
        return ProcessPool(n_jobs, key[2], initializer, initargs, blas_threads)

    def _take_stale_locked(self, exclude: PoolKey) -> list[tuple[PoolKey, Pool]]:
        """Remove (under the lock) pools idle past the timeout or broken; closed by the caller."""
        stale = [
            (key, pool) for key, pool in self._pools.items()
            if key != exclude and (pool.broken or pool.idle_seconds > self.idle_timeout)
        ]
        for key, pool in stale:
            del self._pools[key]
            self._counts["replacements" if pool.broken else "evictions"] += 1
        return stale

    def _close_all(self, pools: list[tuple[PoolKey, Pool]], event: str, force: bool = False) -> None:
        for key, pool in pools:
            pool.shutdown(wait=True, force=force or pool.broken)
            self._emit("broken" if pool.broken else event, key, {
                "idle_seconds": pool.idle_seconds, "startup_seconds": pool.startup_seconds})

    def _emit(self, event: str, key: PoolKey, stats: dict) -> None:
        if self._on_event is not None:
            self._on_event(event, key, stats)

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            self._forget_pools()

    def _forget_pools(self) -> None:
        """In a forked child: the parent's pools are not ours; drop them without touching them."""
        self._pools = {}
        self._key_locks = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()


def _check_start_method(name: str, value: object, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value not in START_METHODS:
        raise InvalidArgumentError(
            f"{name} must be one of {', '.join(map(repr, START_METHODS))}, got {value!r}"
        )


def _key_name(key: PoolKey) -> str:
    executor_type, n_jobs, start_method, init = key
    name = f"{executor_type}:{n_jobs}"
    if start_method:
        name += f":{start_method}"
    if init is not None:
        name += f":{getattr(init[0], '__qualname__', init[0])}"
    return name


_global_manager: PoolManager | None = None
_global_lock = threading.Lock()


def _emit_to_plugins(event: str, key: PoolKey, stats: dict) -> None:
    from amorsize import plugins

    plugins.pool_event(event, key, stats)


def get_global_pool_manager() -> PoolManager:
    """The process-wide PoolManager that amorsize.map, joblib and Dask share (created on first use)."""
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
    executor_type: str = "process",
    manager: PoolManager | None = None,
    use_global: bool = True,
) -> Iterator[Pool]:
    """A pool for a ``with`` block: a warm shared one (kept afterwards) from ``manager`` or the
    global manager, or, with ``use_global=False`` and no manager, a private one shut down on exit."""
    if manager is None and not use_global:
        with PoolManager(enable_auto_cleanup=True) as private:
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
    for manager in list(_managers):
        manager._forget_pools()


atexit.register(_shutdown_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
