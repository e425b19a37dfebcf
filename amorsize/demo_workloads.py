"""The workloads amorsize is measured on (the rows of docs/benchmarks.md), shared by ``amorsize demo`` and
``benchmarks/``.

Each is a module-level function (so every tool, process pools included, can run it) and a way
to build its data. CPU work is a fixed count of pure-Python operations, calibrated once so that
one call takes about the intended time on this machine.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def square(x: int) -> int:
    return x * x


def wait_io(x: int, seconds: float = 0.002) -> int:
    """Stands for a network or disk call: the thread waits, the CPU is idle."""
    time.sleep(seconds)
    return x


def burn(x: int, loops: int) -> int:
    """Pure-Python CPU work that holds the GIL for its whole duration."""
    acc = x
    for i in range(loops):
        acc = (acc * 31 + i) % 1_000_003
    return acc


def array_sum(a: Any) -> float:
    """A cheap reduction over a large array: moving the array costs more than summing it."""
    return float(a.sum())


@functools.cache
def loops_for(seconds: float) -> int:
    """How many ``burn`` loops take ``seconds`` here (measured once per process)."""
    n = 20_000
    while True:
        t0 = time.perf_counter()
        burn(1, n)
        took = time.perf_counter() - t0
        if took > 0.01:
            return max(1, int(n * seconds / took))
        n *= 2


@dataclass(frozen=True)
class DemoCase:
    """A named function and data; ``repeat`` > 1 means the same call is made that many times."""

    name: str
    description: str
    func: Callable
    make_data: Callable[[], list]
    repeat: int = 1


def cpu_func(seconds: float) -> Callable:
    return functools.partial(burn, loops=loops_for(seconds))


def arrays(count: int = 200, megabytes: float = 1.0) -> list:
    import numpy as np

    size = int(megabytes * 2**20 / 8)
    rng = np.random.default_rng(0)
    return [rng.random(size) for _ in range(count)]


def standard(repeat: int = 100) -> list[DemoCase]:
    """The five core workloads (the large-payload one needs numpy)."""
    out = [
        DemoCase("trivial", "100k calls of x*x", square, lambda: list(range(100_000))),
        DemoCase("io-2ms", "1k calls that wait 2 ms (I/O)", wait_io, lambda: list(range(1000))),
        DemoCase("cpu-2ms", "400 calls of 2 ms pure-Python CPU", cpu_func(0.002),
                 lambda: list(range(400))),
        DemoCase("repeated", f"the same map {repeat}x on 500 items of 40 µs CPU",
                 cpu_func(40e-6), lambda: list(range(500)), repeat=repeat),
    ]
    try:
        import numpy  # noqa: F401
    except ImportError:
        return out
    out.insert(1, DemoCase("large-payload", "200 numpy arrays of 1 MB, summed", array_sum,
                           arrays))
    return out
