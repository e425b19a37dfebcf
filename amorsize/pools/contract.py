"""Typed contracts across the plugin boundary: what a pool returned by ``amorsize_get_pool`` is.

``PoolLike`` is everything amorsize itself, the joblib backend and the Dask scheduler use of a
pool; ``amorsize.pools.WorkerPool`` and its subclasses satisfy it. ``amorsize.plugins.get_pool`` checks
that a plugin's pool has every member named in ``POOL_METHODS`` and ``POOL_ATTRIBUTES``, and fails
the run with ``amorsize.PluginError`` naming the plugin and the missing ones otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Iterator
from concurrent.futures import Future
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from amorsize.errors import ExecutorType


@runtime_checkable
class PoolLike(Protocol):
    """A pool of workers of one kind, as amorsize runs work on it (see ``amorsize.pools.WorkerPool``)."""

    @property
    def executor_type(self) -> ExecutorType:
        """The kind of its workers: "serial", "thread" or "process"."""
        ...

    @property
    def uses_processes(self) -> bool:
        """Its workers are other processes: work and results travel pickled, errors lose their
        frames, a worker can die."""
        ...

    @property
    def n_jobs(self) -> int: ...

    @property
    def startup_seconds(self) -> float:
        """What starting it took (the optimizer learns the start-up cost of a pool from it)."""
        ...

    @property
    def closed(self) -> bool: ...

    @property
    def broken(self) -> bool:
        """A worker died, or a cancelled run terminated it: its manager replaces it."""
        ...

    @property
    def board(self) -> Any:
        """Where workers write when each item started (see ``running_items``), or None."""
        ...

    def lease(self) -> AbstractContextManager[Any]:
        """Hold the pool for a whole run; raises ``amorsize.errors.PoolClosedError`` if it was
        retired or closed."""
        ...

    def prepare(self, func: Callable[..., Any]) -> Any:
        """The form of ``func`` that travels to workers (what ``submit_chunk`` takes)."""
        ...

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]: ...

    def submit_chunk(self, func: Any, items: list[Any], token: float = 0.0) -> Future[Any]:
        """Run a prepared ``func`` on ``items``; the future gives ``(results, compute_seconds)``."""
        ...

    def imap_chunks(self, func: Callable[..., Any], iterable: Iterable[Any], chunksize: int,
                    max_inflight: int | None = None) -> Iterator[tuple[list[Any], float]]: ...

    def map(self, func: Callable[..., Any], iterable: Iterable[Any],
            chunksize: int = 1) -> list[Any]: ...

    def running_items(self, tokens: Container[float]) -> list[tuple[float, int, float]]:
        """``(token, index in its chunk, start time)`` of each item running for ``tokens``."""
        ...

    def worker_pids(self) -> list[int]: ...

    def terminate(self, by: int | None = None) -> None:
        """Stop now for the cancelled run ``by``: queued work dropped, running work killed."""
        ...

    def retire(self, wait: bool = True, force: bool = False) -> bool: ...

    def shutdown(self, wait: bool = True, force: bool = False) -> None: ...


# The members get_pool checks on a plugin's pool, imap_chunks first (the historic check).
POOL_METHODS = ("imap_chunks", "map", "submit", "submit_chunk", "prepare", "lease",
                "running_items", "worker_pids", "terminate", "retire", "shutdown")
POOL_ATTRIBUTES = ("executor_type", "uses_processes", "n_jobs", "startup_seconds", "closed",
                   "broken", "board")


def missing_pool_members(pool: object) -> list[str]:
    """The members of ``PoolLike`` that ``pool`` lacks (methods written with ``()``)."""
    missing = [f"{name}()" for name in POOL_METHODS if not callable(getattr(pool, name, None))]
    missing += [name for name in POOL_ATTRIBUTES if not hasattr(pool, name)]
    return missing
