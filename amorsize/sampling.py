"""Measuring a function on a few real items, keeping every result.

Items are picked spread across the data (sorted data makes the first few lie), each is run once,
and its result is kept so that running the plan afterwards never calls the function on that item
again: measuring costs nothing beyond the lost parallelism of a few calls.
"""

from __future__ import annotations

import functools
import math
import pickle
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from amorsize import worker
from amorsize.workload import Profile

DEFAULT_SAMPLE_SIZE = 8
BUDGET_SECONDS = 0.05
_PAIR_MIN_SECONDS = 10e-6
_PAIR_TARGET_SECONDS = 1e-3
PAIR_MAX = 8
_CPU_CLOCK_MIN_SECONDS = 2e-3
_PAIR_MAX_SECONDS = 0.25


@dataclass
class Sample:
    """A measured profile and the results of the items it ran, by index in the data."""

    profile: Profile
    results: dict[int, Any]


def spread_indices(n: int, k: int) -> list[int]:
    """``k`` indices in ``range(n)``, one in the middle of each of ``k`` equal strata."""
    k = min(n, k)
    return sorted({min(n - 1, int((i + 0.5) * n / k)) for i in range(k)})


def measure(
    func: Callable,
    items: Sequence,
    indices: list[int],
    thread_pair: Callable[[], Any] | None = None,
    pair_indices: list[int] = (),  # type: ignore[assignment]
    run_timed: Callable[[Callable, list, list[int], float], tuple] | None = None,
) -> Sample:
    """Run ``func`` on ``items[i]`` for ``i`` in ``indices`` (one at a time, stopping early once
    the time budget is spent), then ``pair_indices`` split over two threads of the pool that
    ``thread_pair()`` leases (a context manager) to learn whether calls overlap on threads.

    ``run_timed(func, items, indices, budget)`` runs the measured items where the caller wants
    them (``worker.run_timed``'s contract; default: here, in the calling thread) -- on a
    process worker when the caller forced processes, so a crash there never kills the caller.
    Errors in ``func`` propagate."""
    chosen = [items[i] for i in indices]
    if run_timed is None:
        outs, walls, cpus = worker.run_timed(func, chosen, BUDGET_SECONDS)
    else:
        outs, walls, cpus = run_timed(func, chosen, indices, BUDGET_SECONDS)
    results: dict[int, Any] = dict(zip(indices, outs))
    typical = typical_seconds(walls)
    per_item = max(typical - _timing_overhead(), 0.1 * typical)
    spread = statistics.pstdev(walls) / per_item if len(walls) > 1 and per_item > 0 else 0.0
    cpu_ratio = _cpu_ratio(walls, cpus)
    pickled = _pickling(func, [(items[i], results[i]) for i in list(results)[:3]])
    scaling = None
    wanted = 2 * pair_size(per_item)
    pairs = [i for i in pair_indices if i not in results][:wanted]
    if (thread_pair is not None and len(pairs) == wanted
            and _PAIR_MIN_SECONDS <= per_item <= _PAIR_MAX_SECONDS):
        with thread_pair() as pool:
            scaling = _thread_scaling(func, items, pairs, pool, per_item, results)
    return Sample(
        Profile(
            per_item_seconds=per_item,
            per_item_spread=spread,
            cpu_ratio=cpu_ratio,
            thread_scaling=scaling,
            n_measured=len(walls) + (len(pairs) if scaling is not None else 0),
            measured_by="sampling",
            **pickled,
        ),
        results,
    )


@functools.cache
def _timing_overhead() -> float:
    """Seconds the timing around one call adds (two clocks read twice, a call): about 0.3 µs,
    which would make a 40 ns function look ten times dearer than it is, and parallel worth it."""
    def nothing(x: Any) -> Any:
        return x

    laps = []
    for _ in range(200):
        c0 = time.process_time()
        t0 = time.perf_counter()
        nothing(None)
        t1 = time.perf_counter()
        time.process_time() - c0
        laps.append(t1 - t0)
    return statistics.median(laps)


def _cpu_ratio(walls: list[float], cpus: list[float]) -> float:
    """CPU time over wall time; 1.0 when the calls were too short for the CPU clock to tell."""
    total = sum(walls)
    if total < _CPU_CLOCK_MIN_SECONDS:
        return 1.0
    return sum(cpus) / total


def typical_seconds(walls: list[float]) -> float:
    """Mean time per call, ignoring a first call that was a warm-up outlier (imports, caches)."""
    if len(walls) >= 3:
        rest = walls[1:]
        if walls[0] > 3 * statistics.median(rest):
            return statistics.fmean(rest)
    return statistics.fmean(walls) if walls else 0.0


def _pickling(func: Callable, pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    """Pickled sizes and round-trip times of items and results, and whether processes can
    run this at all (the function through cloudpickle, items and results through pickle)."""
    import cloudpickle

    try:
        cloudpickle.dumps(func)
    except Exception as exc:  # noqa: BLE001 - any failure means: not for processes
        return {"picklable": False, "unpicklable_reason": f"the function: {exc}"}
    sizes_in, sizes_out, seconds = [], [], []
    for item, result in pairs:
        try:
            t0 = time.perf_counter()
            a = pickle.dumps(item, pickle.HIGHEST_PROTOCOL)
            pickle.loads(a)
            b = pickle.dumps(result, pickle.HIGHEST_PROTOCOL)
            pickle.loads(b)
            seconds.append(time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001
            return {"picklable": False, "unpicklable_reason": f"an item or result: {exc}"}
        sizes_in.append(len(a))
        sizes_out.append(len(b))
    if not seconds:
        return {}
    return {
        "arg_bytes": statistics.fmean(sizes_in),
        "result_bytes": statistics.fmean(sizes_out),
        "pickle_seconds": statistics.fmean(seconds),
    }


def _timed_run(func: Callable, items: Sequence, indices: list[int]) -> tuple[list, float, float]:
    t0 = time.perf_counter()
    results = [func(items[i]) for i in indices]
    return results, t0, time.perf_counter()


def pair_size(per_item: float) -> int:
    """Items each of the two threads runs: enough that handing work to a thread is noise."""
    return max(1, min(PAIR_MAX, math.ceil(_PAIR_TARGET_SECONDS / max(per_item, 1e-9))))


def _thread_scaling(
    func: Callable, items: Sequence, pair: list[int], pool: Any, per_item: float,
    results: dict[int, Any],
) -> float:
    """How much faster two runs went at once on two threads than the serial estimate says they
    would one after the other: 1.0 if the GIL serialised them, up to 2.0 if they overlapped."""
    half = len(pair) // 2
    runs = [pair[:half], pair[half:]]
    futures = [pool.submit(_timed_run, func, items, run) for run in runs]
    outcomes = [f.result() for f in futures]
    for run, (run_results, _, _) in zip(runs, outcomes):
        results.update(zip(run, run_results))
    together = max(o[2] for o in outcomes) - min(o[1] for o in outcomes)
    if together <= 0:
        return 2.0
    return max(0.5, min(2.0, len(pair) * per_item / together))
