"""What runs on a cluster's workers: the function over a batch, timed where it runs.

Workers import this module (they need amorsize installed, as for any function of a package
that a task calls); it imports only the standard library.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def run_batch(func: Callable, items: list) -> tuple[list, float]:
    """``[func(x) for x in items]`` and the seconds it took on the worker."""
    start = time.perf_counter()
    results = [func(x) for x in items]
    return results, time.perf_counter() - start


def timed_calls(func: Callable, items: list, budget: float) -> list[tuple[float, float, Any]]:
    """(wall, CPU of this thread, result) of ``func`` on the items in order, until ``budget``
    seconds are spent (at least one call): the thread's CPU clock, since a worker's other
    threads (its communication, other tasks) share the process."""
    out = []
    spent = 0.0
    for item in items:
        t0, c0 = time.perf_counter(), time.thread_time()
        result = func(item)
        wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
        out.append((wall, cpu, result))
        spent += wall
        if spent >= budget:
            break
    return out


def nothing(x: Any) -> Any:
    return x
