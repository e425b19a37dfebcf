"""A call on a pool held to a time limit per item.

Both a run of a plan (``amorsize.run.control``) and the optimizer's measuring on a worker
(``amorsize.optimizer.optimize``) wait for pool calls this way, so it sits with the pools, below
both: the optimizer needs no part of the run to time-limit what it measures.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

from amorsize import errors
from amorsize.pools import worker

WATCH_SECONDS = 0.1  # how often a waiting caller looks for an item past its time limit

_tokens = itertools.count(1)


def next_token() -> float:
    """A token no other call on any pool of this process has: a pool's board of running items
    is keyed by it."""
    return float(next(_tokens))


def find_overrun(pool: Any, watched: dict[float, Sequence[int] | None],
                 timeout: float | None) -> errors.TimeoutError | None:
    """The error for the first item of ``watched`` chunks that has run past ``timeout``."""
    if timeout is None or not watched:
        return None
    now = time.monotonic()
    for token, k, started in pool.running_items(watched):
        if now - started > timeout:
            indices = watched[token]
            index = indices[k] if indices is not None and k < len(indices) else None
            where = "an item" if index is None else f"item {index}"
            return errors.TimeoutError(
                f"{where} ran longer than timeout={timeout:g} s ({now - started:.1f} s so far); "
                "the call was cancelled", index)
    return None


def call_watched(pool: Any, fn: Callable, args: tuple, indices: Sequence[int],
                 timeout: float | None) -> Any:
    """``fn(*args, token)`` on ``pool``, waited for with ``timeout`` per item (``indices`` name
    the items); on any way out but a result, its work is stopped as a cancelled run's is."""
    token = next_token() if timeout is not None else 0.0
    future = pool.submit(fn, *args, token)
    try:
        while True:
            try:
                return future.result(timeout=None if timeout is None else WATCH_SECONDS)
            except TimeoutError:
                if future.done():
                    raise
                overrun = find_overrun(pool, {token: indices}, timeout)
                if overrun is not None:
                    raise overrun from None
    except Exception as exc:
        worker.item_note(exc, lambda k: indices[k] if k < len(indices) else None)
        if not future.cancel() and not future.done():
            pool.terminate()
        raise
    except BaseException:
        if not future.cancel() and not future.done():
            pool.terminate()
        raise
