"""What running on a pool costs, measured once per process on real pools and cached.

Until a process pool exists the figures are conservative defaults for the start method; the first
time the optimizer considers processes seriously, it measures them on the (then warm) pool.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amorsize import system
from amorsize.errors import INTERPRETERS_AVAILABLE
from amorsize.pools import worker

_START_DEFAULTS = {"fork": 0.008, "forkserver": 0.045, "spawn": 0.12}
_MOST_BUSY_PER_IDLE = 10.0


@dataclass(frozen=True)
class Overheads:
    """Seconds (or seconds per byte) that a pool adds to the work itself.

    ``process_start`` and ``thread_start`` are per worker (zero for a warm pool);
    ``thread_per_chunk`` and ``process_per_chunk`` are the parent's cost to hand out one chunk
    and collect its result; ``process_busy_per_chunk`` is what a chunk costs the cores (both
    ends' handling, a core waiting for the next chunk) when the workers compute on all of them;
    ``process_latency`` is one round trip of a tiny task (the pipeline's fill and drain);
    ``process_per_byte`` is moving one pickled byte between parent and worker;
    ``shared_per_byte`` is placing one byte of a function's large buffers in shared memory,
    once per call (a checksum, to know it is there already, or a copy). The
    ``interpreter_`` figures are the same for a pool of sub-interpreters (Python 3.14+), whose
    start-up is mostly importing, in each interpreter, what a worker needs.
    """

    thread_start: float = 120e-6
    thread_per_chunk: float = 40e-6
    process_start: float = 0.045
    process_per_chunk: float = 200e-6
    process_busy_per_chunk: float = 400e-6
    process_latency: float = 500e-6
    process_per_byte: float = 2e-9
    shared_per_byte: float = 1e-9
    interpreter_start: float = 0.15
    interpreter_per_chunk: float = 150e-6
    interpreter_busy_per_chunk: float = 300e-6
    interpreter_latency: float = 300e-6
    interpreter_per_byte: float = 2e-9
    measured: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, float]:
        """The figures, by name; the interpreters' only where there are interpreters."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "measured"
                and (INTERPRETERS_AVAILABLE or not f.name.startswith("interpreter_"))}


_cache: dict[str, Overheads] = {}
_lock = threading.Lock()


def current(start_method: str) -> Overheads:
    """The best figures known for this start method: measured if they have been, else defaults."""
    found = _cache.get(start_method)
    return found if found is not None else _defaults(start_method)


@functools.cache
def _defaults(start_method: str) -> Overheads:
    """Made once per start method: every decision and every reused plan asks for them."""
    return Overheads(process_start=_START_DEFAULTS.get(start_method, 0.1))


def measure_threads(pool: Any, start_method: str) -> Overheads:
    """Per-chunk cost on a warm thread pool, and per-thread start-up from its creation."""
    return _measure_once(start_method, "thread", lambda: {
        "thread_per_chunk": _per_chunk(pool, 200),
        "thread_start": max(20e-6, pool.startup_seconds / max(1, pool.n_jobs)),
    })


def measure_processes(pool: Any, start_method: str) -> Overheads:
    """Round-trip latency, per-chunk costs and per-byte cost on a warm process pool (a few dozen
    round trips: done once per process)."""
    return _measure_once(start_method, "process", lambda: _process_figures(pool))


def measure_interpreters(pool: Any, start_method: str) -> Overheads:
    """Round trip, per-chunk and per-byte costs on a warm interpreter pool, and its start-up
    per interpreter; a chunk's cost when every core computes is taken as twice the idle one
    (``worker.spin`` counts the whole process's CPU time, which every interpreter shares).

    An interpreter starts without cloudpickle and loads it on the first call that brings
    something by value (a ``__main__`` function, a lambda): most functions a script maps do,
    so that first load counts in the start-up per interpreter."""
    def figures() -> dict[str, float]:
        found = _round_trips(pool)
        start = pool.startup_seconds / max(1, pool.n_jobs) + by_value_loading(
            pool, found["latency"])
        return {
            "interpreter_latency": found["latency"],
            "interpreter_per_chunk": found["per_chunk"],
            "interpreter_busy_per_chunk": 2 * found["per_chunk"],
            "interpreter_per_byte": found["per_byte"],
            "interpreter_start": max(1e-3, start),
        }

    return _measure_once(start_method, "interpreter", figures)


def by_value_loading(pool: Any, latency: float) -> float:
    """What a worker of ``pool`` pays the first time a call brings a function by value (it
    loads cloudpickle; nothing where it already has), beyond a round trip (``latency``)."""
    t0 = time.perf_counter()
    pool.submit_chunk(pool.prepare(_sent_by_value()), [b""]).result()
    return max(0.0, time.perf_counter() - t0 - latency)


def _sent_by_value() -> Callable[[Any], Any]:
    """A function pickle cannot send by reference (a lambda): cloudpickle sends it by value."""
    return lambda item: item


def _measure_once(start_method: str, kind: str,
                  figures: Callable[[], dict[str, float]]) -> Overheads:
    """``kind``'s figures, measured on the first call for this start method and cached.

    Measured outside the lock: a measurement waits for a pool's workers, and a worker of that
    pool may itself be deciding (a nested call) and waiting for the lock. Two threads that
    measure at once both measure; the first figures kept are the ones used."""
    if kind in current(start_method).measured:
        return current(start_method)
    measured = figures()
    with _lock:
        base = current(start_method)
        if kind in base.measured:
            return base
        found = dataclasses.replace(base, **measured, measured=(*base.measured, kind))
        _cache[start_method] = found
        return found


def _process_figures(pool: Any) -> dict[str, float]:
    found = _round_trips(pool)
    figures = {
        "process_latency": found["latency"],
        "process_per_chunk": found["per_chunk"],
        "process_per_byte": found["per_byte"],
        "shared_per_byte": _checksum_per_byte(),
        "process_start": max(1e-3, _next_pool_start(pool)),
    }
    busy = _busy_per_chunk(pool, found["per_chunk"])
    if busy is not None:
        figures["process_busy_per_chunk"] = busy
    return figures


def _next_pool_start(pool: Any) -> float:
    """Per worker, what starting the next process pool costs. The pool that started the fork
    server (the first of the process) paid for the server too, which no later pool does: a
    pool of one worker started now says what a worker costs."""
    if not getattr(pool, "started_server", False):
        return float(pool.startup_seconds / max(1, pool.n_jobs))
    probe = type(pool)(1, pool.start_method)
    try:
        return float(probe.startup_seconds)
    finally:
        probe.shutdown()


def _round_trips(pool: Any) -> dict[str, float]:
    """Round trip of a tiny task, the parent's cost per chunk and the cost per byte moved, on
    a pool whose work travels by value."""
    func = pool.prepare(len)
    pool.submit_chunk(func, [b""]).result()
    latencies = []
    for _ in range(7):
        t0 = time.perf_counter()
        pool.submit_chunk(func, [b""]).result()
        latencies.append(time.perf_counter() - t0)
    latency = statistics.median(latencies)
    per_chunk = _per_chunk(pool, 100)
    payload = bytes(4 * 2**20)
    moves = []
    for _ in range(3):
        t0 = time.perf_counter()
        pool.submit_chunk(func, [payload]).result()
        moves.append(time.perf_counter() - t0)
    per_byte = max(0.0, statistics.median(moves) - latency) / len(payload)
    return {"latency": latency, "per_chunk": per_chunk, "per_byte": max(0.2e-9, per_byte)}


def _checksum_per_byte() -> float:
    """What knowing a function's shared buffer is placed already costs a byte: its checksum
    (``amorsize.pools.shared.place``)."""
    import zlib

    payload = bytes(4 * 2**20)
    laps = []
    for _ in range(3):
        t0 = time.perf_counter()
        zlib.crc32(payload)
        laps.append(time.perf_counter() - t0)
    return max(0.05e-9, min(laps) / len(payload))


def _per_chunk(pool: Any, count: int) -> float:
    return _took(pool, pool.prepare(worker.pid_after), [[]] * count) / count


def _took(pool: Any, func: Any, chunks: list[list]) -> float:
    """Seconds for the pool to run ``func`` on ``chunks``, all submitted at once."""
    t0 = time.perf_counter()
    futures = [pool.submit_chunk(func, chunk) for chunk in chunks]
    for f in futures:
        f.result()
    return time.perf_counter() - t0


def _busy_per_chunk(pool: Any, idle: float, items: int = 8,
                    cpu_seconds: float = 0.5e-3) -> float | None:
    """What a chunk costs the cores while every worker computes: the same work sent as single
    items and as one chunk per worker; the difference, spread over the cores, per extra chunk.
    When every core computes, handling a chunk takes time from the work itself, several times
    what it costs idle workers (``idle``), so small chunks cost more than the idle figure
    predicts (docs/benchmarks.md has the figures). None for a pool too small to keep every core
    busy (its figure would be the idle one); the figure is kept between the idle one and ten
    times it, whatever one noisy run measured."""
    n = pool.n_jobs
    if n < system.usable_cpus():
        return None
    func = pool.prepare(worker.spin)

    def took(chunksize: int) -> float:
        return _took(pool, func, [[cpu_seconds] * chunksize] * (n * items // chunksize))

    singles, whole = [], []
    for _ in range(3):
        singles.append(took(1))
        whole.append(took(items))
    extra = max(0.0, min(singles) - min(whole))
    measured = extra * system.usable_cpus() / (n * items - n)
    return min(_MOST_BUSY_PER_IDLE * idle, max(idle, measured))


def forget() -> None:
    """Drop measured figures (tests, or after the machine's load changed a lot)."""
    with _lock:
        _cache.clear()


def _reset_lock_in_child() -> None:
    """A fork taken while another thread measured leaves the lock held in the child forever."""
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_in_child)
