"""Functions the joblib backend tests run in worker processes (shipped by value)."""

from __future__ import annotations

import os
import time


class TaskError(ValueError):
    """A user-defined error type, to check it reaches the caller unchanged."""


def square(x: int) -> int:
    return x * x


def busy(x: int, seconds: float = 0.002) -> int:
    """Hold the CPU (and the GIL) for ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return x


def wait(x: int, seconds: float = 0.002) -> int:
    """Wait like I/O does, leaving the CPU and the GIL free."""
    time.sleep(seconds)
    return x


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise TaskError(f"item {x} is bad")
    time.sleep(0.001)
    return x


def pid(_: object = None) -> int:
    return os.getpid()


def nested_sum(x: int) -> tuple[int, str]:
    """Run an inner Parallel (default backend inside the task) and say which backend ran it."""
    from joblib import Parallel, delayed
    from joblib.parallel import get_active_backend

    inner = Parallel(n_jobs=-1)(delayed(square)(i) for i in range(x))
    return sum(inner), type(get_active_backend()[0]).__name__


def inner_amorsize(x: int) -> tuple[int, bool, str]:
    """Call ``Parallel(backend="amorsize")`` from inside a worker."""
    import joblib
    from joblib import Parallel, delayed

    out = Parallel(n_jobs=2, backend="amorsize")(delayed(square)(i) for i in range(x))
    return sum(out), "amorsize" in joblib.parallel.BACKENDS, os.environ.get("AMORSIZE_IN_WORKER", "")
