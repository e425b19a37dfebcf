"""Measuring a graph nobody has seen before: run a few of its first tasks, timed, in the caller.

The tasks measured are *root* tasks (they need no other task's result), spread across the
graph, so they can run before the scheduler starts; their results are kept and handed to the
scheduler as data, so no task is ever computed twice and measuring costs nothing extra. When
tasks are slow enough for it to be reliable, two of them run at once on two threads, which tells
work that releases the GIL (numpy, I/O) from pure-Python work that does not.
"""

from __future__ import annotations

import pickle
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from amorsize.workload import Profile
from amorsize_dask.graph import GraphWork, dependency_values, spread

MAX_SAMPLES = 4
BUDGET_SHARE = 0.05
THREAD_TEST_MIN_SECONDS = 1e-3


@dataclass
class Sample:
    """A profile of the graph's tasks and the results of the tasks run to measure it."""

    profile: Profile
    results: dict = field(default_factory=dict)


@dataclass
class _Timing:
    wall: float
    cpu: float


def measure(work: GraphWork, cache: dict | None, thread_pair: Any = None) -> Sample | None:
    """Run up to four root tasks and describe them; None when the graph has no root task.

    Measuring stops early when it would cost more than 5% of the predicted total: a graph of
    four one-second tasks is measured on one of them, not run serially. ``thread_pair`` is a
    two-thread pool (or None) used for the two-at-once test.
    """
    keys = spread(work.roots, MAX_SAMPLES)
    if not keys:
        return None
    results: dict = {}
    timings: list[_Timing] = []
    arg_bytes, result_bytes, pickle_seconds, unpicklable = [], [], [], ""
    for key in keys[:2]:
        node = work.graph[key]
        data = dependency_values(work.graph, node, cache)
        value, timing = _timed(node, data)
        results[key] = value
        timings.append(timing)
        sizes = _pickled(node, data, value)
        if isinstance(sizes, str):
            unpicklable = unpicklable or sizes
        else:
            arg_bytes.append(sizes[0])
            result_bytes.append(sizes[1])
            pickle_seconds.append(sizes[2])
        if not _worth_more(timings, work.n_tasks):
            break
    walls = [t.wall for t in timings]
    mean = sum(walls) / len(walls)
    scaling = None
    pair = [k for k in keys[2:]]
    if (thread_pair is not None and len(timings) == 2 and len(pair) == 2
            and mean >= THREAD_TEST_MIN_SECONDS and _worth_more(timings, work.n_tasks)):
        scaling, pair_results = _two_at_once(work, pair, cache, thread_pair, sum(walls))
        results.update(pair_results)
    profile = Profile(
        per_item_seconds=mean,
        per_item_spread=(max(walls) - min(walls)) / mean if mean > 0 else 0.0,
        cpu_ratio=sum(t.cpu for t in timings) / sum(walls) if sum(walls) > 0 else 1.0,
        arg_bytes=_mean(arg_bytes),
        result_bytes=_mean(result_bytes),
        pickle_seconds=_mean(pickle_seconds),
        thread_scaling=scaling,
        picklable=not unpicklable,
        unpicklable_reason=unpicklable,
        n_measured=len(results),
        measured_by="dask",
    )
    return Sample(profile, results)


def _timed(node: Any, data: dict) -> tuple[Any, _Timing]:
    wall, cpu = time.perf_counter(), time.thread_time()
    value = node(data)
    return value, _Timing(time.perf_counter() - wall, time.thread_time() - cpu)


def _pickled(node: Any, data: dict, value: Any) -> tuple[int, int, float] | str:
    """Pickled sizes of a task (with its inputs) and of its result, and the seconds to pickle
    both there and back (the loads are taken to cost what the dumps did); or why it failed."""
    import cloudpickle

    start = time.perf_counter()
    try:
        task_bytes = len(cloudpickle.dumps((node, data), protocol=pickle.HIGHEST_PROTOCOL))
        value_bytes = len(cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception as exc:
        return f"task {node.key!r}: {type(exc).__name__}: {exc}"
    return task_bytes, value_bytes, 2 * (time.perf_counter() - start)


def _worth_more(timings: list[_Timing], n_tasks: int) -> bool:
    spent = sum(t.wall for t in timings)
    mean = spent / len(timings)
    return spent + 2 * mean <= max(BUDGET_SHARE * n_tasks * mean, 2e-3)


def _two_at_once(
    work: GraphWork, keys: list, cache: dict | None, pool: Any, serial_seconds: float
) -> tuple[float | None, dict]:
    """Run two tasks at once on two threads; how much faster than two run one after the other."""
    nodes = [work.graph[k] for k in keys]
    data = [dependency_values(work.graph, n, cache) for n in nodes]
    start = time.perf_counter()
    futures: list[Future] = [pool.submit(n, d) for n, d in zip(nodes, data)]
    values = [f.result() for f in futures]
    both = time.perf_counter() - start
    return (serial_seconds / both if both > 0 else None), dict(zip(keys, values))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
