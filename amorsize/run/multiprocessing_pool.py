"""``multiprocessing.Pool``'s interface on amorsize, so moving is changing the import.

``from amorsize import Pool`` takes the same arguments and offers the same mapping methods; the
difference is that each call is measured and run the fastest way (serial, threads or processes,
and the chunk size) on amorsize's shared warm pools, with ``processes`` as the cap on workers.
Pools are shared, so ``close``/``terminate`` end this object's use of them, not the workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from amorsize.run import mapping


class Pool:
    """``multiprocessing.Pool(processes, initializer, initargs, maxtasksperchild, context)``."""

    def __init__(self, processes: int | None = None, initializer: Callable | None = None,
                 initargs: tuple = (), maxtasksperchild: int | None = None,
                 context: Any = None) -> None:
        start_method = context.get_start_method() if context is not None else None
        self._options: dict[str, Any] = {
            "n_jobs": processes, "initializer": initializer, "initargs": tuple(initargs),
            "max_tasks_per_child": maxtasksperchild, "start_method": start_method,
        }
        self._running = True

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        return mapping.map(func, iterable, chunksize=chunksize, **self._checked())

    def imap(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> Iterator:
        return mapping.imap(func, iterable, chunksize=chunksize, **self._checked())

    def imap_unordered(self, func: Callable, iterable: Iterable,
                       chunksize: int | None = None) -> Iterator:
        return mapping.imap_unordered(func, iterable, chunksize=chunksize, **self._checked())

    def starmap(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        return mapping.starmap(func, iterable, chunksize=chunksize, **self._checked())

    def close(self) -> None:
        """No more work through this object."""
        self._running = False

    def terminate(self) -> None:
        """As ``close``: the workers are shared with every other amorsize call, and a call that
        is stopped early (Ctrl-C, an error, a closed ``imap``) already stops its own work."""
        self._running = False

    def join(self) -> None:
        if self._running:
            raise ValueError("Pool is still running: call close() or terminate() before join()")

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.terminate()

    def _checked(self) -> dict[str, Any]:
        if not self._running:
            raise ValueError("Pool not running: it was closed or terminated")
        return self._options
