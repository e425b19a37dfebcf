"""``amorsize.optimize``: check the arguments, measure (or recall) the function, ask for a plan."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cloudpickle

from amorsize import plugins, system
from amorsize.errors import (
    EXECUTOR_TYPES,
    ExecutorType,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    check_executor_type,
    check_positive_int,
    check_start_method,
    resolve_n_jobs,
)
from amorsize.optimizer import sampling
from amorsize.optimizer.learned import function_key
from amorsize.plan import Plan
from amorsize.pools import worker
from amorsize.run.control import call_watched
from amorsize.workload import Profile, Workload


def optimize(
    func: Callable,
    data: Iterable,
    *,
    n_jobs: int | None = None,
    executor: ExecutorType | None = None,
    chunksize: int | None = None,
    min_speedup: float = 1.2,
    sample_size: int = sampling.DEFAULT_SAMPLE_SIZE,
    resample: bool = False,
    start_method: str | None = None,
) -> Plan:
    """Measure ``func`` on a few items of ``data`` and decide how to run all of them.

    ``n_jobs`` caps the workers, ``executor`` ("serial", "thread", "process") and ``chunksize``
    force a choice, ``min_speedup`` is the margin by which parallel must beat serial,
    ``resample`` measures again even if this function was seen before. The plan's ``data`` holds
    every item (an iterator's consumed items put back); its ``sampled_results`` are the results
    of the items measured, which ``amorsize.map`` does not compute again.
    """
    check_arguments(func, data, n_jobs, executor, chunksize, min_speedup, sample_size,
                    start_method=start_method)
    items, n, rest = split_items(data, sample_size)
    return make(func, items, n, rest, "optimize", n_jobs=n_jobs, executor=executor,
                 chunksize=chunksize, min_speedup=min_speedup, sample_size=sample_size,
                 resample=resample, start_method=start_method)


def check_arguments(
    func: Any, data: Any, n_jobs: Any, executor: Any, chunksize: Any, min_speedup: Any,
    sample_size: Any, start_method: Any = None,
) -> None:
    """Bad input fails before any work, with the argument named and the fix.

    ``n_jobs`` may be negative as in joblib (-1 = all usable CPUs); ``make`` resolves it. Without
    a ``start_method``, a bad ``AMORSIZE_START_METHOD`` is rejected here too.
    """
    if not callable(func):
        raise InvalidArgumentTypeError(
            f"func must be callable (a function, lambda or object with __call__), "
            f"got {type(func).__name__}"
        )
    if data is None:
        raise InvalidArgumentTypeError("data must be an iterable of items, got None")
    if not isinstance(data, Iterable):
        raise InvalidArgumentTypeError(
            f"data must be an iterable of items (list, range, generator...), "
            f"got {type(data).__name__}"
        )
    resolve_n_jobs("n_jobs", n_jobs, system.usable_cpus())
    if start_method is None:
        system.default_start_method()
    else:
        check_start_method("start_method", start_method)
    check_positive_int("chunksize", chunksize, allow_none=True)
    check_positive_int("sample_size", sample_size)
    if executor is not None:
        check_executor_type("executor", executor)
    if isinstance(min_speedup, bool) or not isinstance(min_speedup, int | float):
        raise InvalidArgumentTypeError(f"min_speedup must be a number >= 1, got {min_speedup!r}")
    if not min_speedup >= 1:
        raise InvalidArgumentError(f"min_speedup must be a number >= 1, got {min_speedup!r}")


def check_initializer(initializer: Any, initargs: Any) -> None:
    """An initializer is a callable or None; its arguments a tuple (part of the pool's key)."""
    if initializer is not None and not callable(initializer):
        raise InvalidArgumentTypeError(
            f"initializer must be callable or None, got {type(initializer).__name__}")
    if not isinstance(initargs, tuple | list):
        raise InvalidArgumentTypeError(
            f"initargs must be a tuple of arguments for the initializer, got "
            f"{type(initargs).__name__}")


def split_items(data: Iterable, sample_size: int) -> tuple[Sequence, int | None, Any]:
    """A sequence to index, its length, and the untouched rest of an iterator (or None).

    Sequences are used as they are; other sized collections are listed; an iterator of unknown
    length gives up only its first ``sample_size`` items (measured from the head, since it
    cannot be spread over), the rest stays lazy.
    """
    if isinstance(data, Sequence):
        return data, len(data), None
    if hasattr(data, "__len__"):
        items = list(data)
        return items, len(items), None
    it = iter(data)
    head = list(itertools.islice(it, sample_size))
    if len(head) < sample_size:
        return head, len(head), None
    return head, None, it


def make(
    func: Callable,
    items: Sequence,
    n: int | None,
    rest: Any,
    source: str,
    *,
    n_jobs: int | None,
    executor: ExecutorType | None,
    chunksize: int | None,
    min_speedup: float,
    sample_size: int,
    resample: bool,
    start_method: str | None,
    timeout: float | None = None,
    initializer: Callable | None = None,
    initargs: tuple = (),
    max_tasks_per_child: int | None = None,
) -> Plan:
    """The plan for already-checked arguments, ``items`` as returned by ``split_items``.

    The items measured run where the caller allows: on a process worker when processes are
    forced (a crash there is a ``WorkerCrashedError``, never the caller's death), on a thread
    when there is a ``timeout`` (an item past it cancels the call); otherwise in the caller."""
    n_jobs = resolve_n_jobs("n_jobs", n_jobs, system.usable_cpus())
    data: Any = items if rest is None else itertools.chain(items, rest)
    executors: tuple[ExecutorType, ...] = (executor,) if executor else EXECUTOR_TYPES
    if worker.inside_worker():
        executors, n_jobs = ("serial",), 1
    key = function_key(func)
    asked = Workload(n, source, executors, n_jobs, min_speedup, key=key, chunksize=chunksize,
                     start_method=start_method, initializer=initializer,
                     initargs=tuple(initargs), max_tasks_per_child=max_tasks_per_child)
    if n == 0:
        return Plan("serial", 1, 1, 1.0, ["empty input: nothing to run"],
                    Profile(0.0), asked, data=data)
    learned = None if resample else plugins.recall(key)
    if initializer is not None and learned is None:
        # items measured here need what the initializer sets up in a worker: run it here once
        plugins.get_pool("serial", 1, initializer=initializer, initargs=tuple(initargs))
    recalled = learned is not None
    if learned is not None:
        profile, results = learned.profile, {}
    else:
        known = len(items)
        indices = (sampling.spread_indices(known, sample_size) if n is not None
                   else list(range(known)))
        pair = [i for i in sampling.spread_indices(known, 3 * sample_size + 2 * sampling.PAIR_MAX)
                if i not in indices]
        # the two-thread test runs items unwatched: with a time limit, none runs that way
        threads_allowed = "thread" in executors and n_jobs != 1 and timeout is None
        sample = sampling.measure(func, items, indices, _two_threads if threads_allowed else None,
                                  pair, _probe_elsewhere(func, asked, timeout))
        profile, results = sample.profile, sample.results
        plugins.remember(key, profile)
        learned = plugins.recall(key)
    if executors == ("process",) and not profile.picklable:
        raise InvalidArgumentError(
            f"executor='process' cannot run this function: cannot pickle "
            f"{profile.unpicklable_reason}; use executor='thread' or None, or make it picklable")
    workload = dataclasses.replace(asked, previous_runs=learned.runs if learned else 0,
                                   already_done=len(results), recalled=recalled)
    plan = plugins.make_plan(func, profile, workload)
    plan.data = data
    plan.sampled_results = results
    return plan


def _two_threads() -> Any:
    return plugins.leased_pool("thread", 2)


def _probe_elsewhere(func: Callable, asked: Workload, timeout: float | None) -> Any:
    """Where measured items run when not in the caller (see ``make``), or None for the caller."""
    max_tasks = None
    if asked.executors == ("process",):
        where: tuple[ExecutorType, int] = ("process", asked.max_workers or system.usable_cpus())
        max_tasks = asked.max_tasks_per_child  # the pool the run will use
        try:
            cloudpickle.dumps(func)
        except Exception as exc:  # noqa: BLE001 - any failure means: not for processes
            raise InvalidArgumentError(
                f"executor='process' cannot run this function: cannot pickle the function: {exc}"
                "; use executor='thread' or None, or make it picklable") from exc
    elif timeout is not None:
        where = ("thread", 1)
    else:
        return None

    def run_timed(func: Callable, items: list, indices: list[int], budget: float) -> Any:
        with plugins.leased_pool(*where, asked.start_method, asked.initializer, asked.initargs,
                                 max_tasks_per_child=max_tasks) as pool:
            return call_watched(pool, worker.run_timed, (func, items, budget), indices, timeout)

    return run_timed
