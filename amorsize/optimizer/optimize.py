"""``amorsize.optimize``: check the arguments, measure (or recall) the function, ask for a plan."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Unpack

import cloudpickle

from amorsize import plugins, system
from amorsize.errors import (
    EXECUTOR_TYPES,
    ExecutorType,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    check_executor_type,
    check_flag,
    check_initializer,
    check_max_tasks_per_child,
    check_min_speedup,
    check_positive_int,
    check_start_method,
    check_timeout,
    resolve_n_jobs,
)
from amorsize.optimizer import probe, sampling
from amorsize.optimizer.learned import function_key
from amorsize.options import DEFAULTS, DecideOptions, MapOptions, complete
from amorsize.plan import Plan
from amorsize.pools import worker
from amorsize.pools.watch import call_watched
from amorsize.workload import Profile, Workload, copy_with


def optimize(func: Callable, data: Iterable, **options: Unpack[DecideOptions]) -> Plan:
    """Measure ``func`` on a few items of ``data`` and decide how to run all of them.

    ``n_jobs`` caps the workers, ``executor`` ("serial", "thread", "process") and ``chunksize``
    force a choice, ``min_speedup`` is the margin by which parallel must beat serial,
    ``sample_size`` is how many items are measured, ``resample`` measures again even if this
    function was seen before, ``start_method`` is the process pools' ("forkserver" by default
    on Linux). The plan's ``data`` holds every item (an iterator's consumed items put back); its
    ``sampled_results`` are the results of the items measured, which ``amorsize.map`` does not
    compute again.
    """
    given = complete("optimize", options, DecideOptions)
    check_arguments(func, data, given)
    return make(func, *split_items(data, given["sample_size"]), "optimize", given)


def check_arguments(func: Any, data: Any, given: MapOptions) -> None:
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
    if not isinstance(data, _PLAIN_SEQUENCES):
        if not isinstance(data, Iterable):
            raise InvalidArgumentTypeError(
                f"data must be an iterable of items (list, range, generator...), "
                f"got {type(data).__name__}"
            )
        if isinstance(data, itertools.groupby):
            # items are read ahead of the calls (to measure them, to fill chunks), and reading
            # the next group empties the one before: every group would look empty
            raise InvalidArgumentTypeError(
                "data is an itertools.groupby, whose groups are emptied as the next one is read, "
                "and amorsize reads items ahead of the calls; pass independent items, e.g. "
                "[(key, list(group)) for key, group in itertools.groupby(...)]")
    start_method = given["start_method"]
    if start_method is None:
        start_method = system.default_start_method()  # checks AMORSIZE_START_METHOD
    asked: Mapping[str, object] = given
    defaults: Mapping[str, object] = DEFAULTS
    for name in _CHECKED:
        if asked[name] is not defaults[name]:
            break
    else:
        return  # the defaults are valid: a call in a loop skips the checks below
    resolve_n_jobs("n_jobs", given["n_jobs"], system.usable_cpus())
    if given["start_method"] is not None:
        check_start_method("start_method", start_method)
    check_positive_int("chunksize", given["chunksize"], allow_none=True)
    check_positive_int("sample_size", given["sample_size"])
    if given["executor"] is not None:
        check_executor_type("executor", given["executor"])
    check_min_speedup("min_speedup", given["min_speedup"])
    check_timeout(given["timeout"])
    check_flag("resample", given["resample"])
    check_flag("progress", given["progress"])
    check_initializer(given["initializer"], given["initargs"])
    check_max_tasks_per_child(given["max_tasks_per_child"], start_method)


# what most calls pass, known without asking the collections' abstract classes (slower)
_PLAIN_SEQUENCES = (list, tuple, range)
# the options check_arguments checks beyond the start method
_CHECKED = ("n_jobs", "start_method", "chunksize", "sample_size", "executor", "min_speedup",
            "timeout", "initializer", "initargs", "max_tasks_per_child", "resample", "progress")


def split_items(data: Iterable, sample_size: int) -> tuple[Sequence, int | None, Any]:
    """A sequence to index, its length, and the untouched rest of an iterator (or None).

    Sequences are used as they are; other sized collections are listed; an iterator of unknown
    length gives up only its first ``sample_size`` items (measured from the head, since it
    cannot be spread over), the rest stays lazy.
    """
    if isinstance(data, _PLAIN_SEQUENCES) or isinstance(data, Sequence):
        return data, len(data), None
    if hasattr(data, "__len__"):
        items = list(data)
        return items, len(items), None
    it = iter(data)
    head: list = []
    try:
        head.extend(itertools.islice(it, sample_size))
    except Exception as exc:  # noqa: BLE001 - the run raises it after the items before it
        return head, None, _raising(exc)
    if len(head) < sample_size:
        return head, len(head), None
    return head, None, it


def _raising(exc: Exception) -> Iterator:
    """An input that raises ``exc`` where it is read: what is left of one that raised it while
    the items before it were taken to measure."""
    raise exc
    yield  # a generator: raises when read, not when made


def make(func: Callable, items: Sequence, n: int | None, rest: Any, source: str,
         given: MapOptions) -> Plan:
    """The plan for already-checked arguments, ``items`` as returned by ``split_items``.

    The items measured run where the caller allows: on a process worker when processes are
    forced (a crash there is a ``WorkerCrashedError``, never the caller's death), on a thread
    when there is a ``timeout`` (an item past it cancels the call); otherwise in the caller."""
    n_jobs = resolve_n_jobs("n_jobs", given["n_jobs"], system.usable_cpus())
    executor, timeout, resample = given["executor"], given["timeout"], given["resample"]
    initializer, initargs = given["initializer"], given["initargs"]
    sample_size = given["sample_size"]
    data: Any = items if rest is None else itertools.chain(items, rest)
    executors: tuple[ExecutorType, ...] = (executor,) if executor else EXECUTOR_TYPES
    if worker.inside_worker():
        executors, n_jobs = ("serial",), 1
    key = function_key(func)
    # what the caller asked: the workload before (and, with what was learned, after) measuring
    asked = functools.partial(Workload, n, source, executors, n_jobs, given["min_speedup"],
                              key=key, chunksize=given["chunksize"],
                              start_method=given["start_method"], initializer=initializer,
                              initargs=tuple(initargs),
                              max_tasks_per_child=given["max_tasks_per_child"])
    if n == 0:
        return Plan("serial", 1, 1, 1.0, ["empty input: nothing to run"],
                    Profile(0.0), asked(), data=data)
    learned = None if resample else plugins.recall(key)
    recalled = learned is not None
    if learned is not None:
        profile, results, seconds = learned.profile, {}, {}
    else:
        system.runnable_elsewhere()  # a reading before measuring: the plan's is not one moment's
        known = len(items)
        indices = (sampling.spread_indices(known, sample_size) if n is not None
                   else list(range(known)))
        pair = [i for i in sampling.spread_indices(known, sample_size + probe.PAIR_ITEMS)
                if i not in indices]
        # the two-thread test runs items unwatched: with a time limit, none runs that way; and
        # it would run an initializer in this process, which only a thread plan may do
        threads_allowed = ("thread" in executors and n_jobs != 1 and timeout is None
                           and (initializer is None or executors == ("thread",)))
        two_threads = functools.partial(plugins.leased_pool, 2, "thread", initializer=initializer,
                                        initargs=tuple(initargs))
        sample = sampling.measure(func, items, indices, two_threads if threads_allowed else None,
                                  pair, _probe_elsewhere(func, asked(), timeout))
        profile, results, seconds = sample.profile, sample.results, sample.seconds
        plugins.remember(key, profile)
        learned = plugins.recall(key)
    if executors == ("process",) and not profile.picklable:
        raise InvalidArgumentError(
            f"executor='process' cannot run this function: cannot pickle "
            f"{profile.unpicklable_reason}; use executor='thread' or None, or make it picklable")
    workload = asked(previous_runs=learned.runs if learned else 0, already_done=len(results),
                     recalled=recalled, learned=learned)
    without_interpreters = {"executors": tuple(e for e in executors if e != "interpreter")}
    refused = _INTERPRETERS_REFUSED.get(key) if len(executors) > 1 else None
    if refused is not None:
        workload = copy_with(workload, without_interpreters)
    plan = plugins.make_plan(func, profile, workload)
    if plan.executor_type == "interpreter" and len(executors) > 1 and key not in _INTERPRETERS_OK:
        refused = _runs_in_interpreter(func, items, results, plan)
        if refused is None:
            _INTERPRETERS_OK.add(key)
        else:
            _INTERPRETERS_REFUSED[key] = refused
            workload = copy_with(workload, without_interpreters)
            plan = plugins.make_plan(func, profile, workload)
    if refused is not None:
        plan.reasons = [*plan.reasons, f"interpreters excluded: {refused}"]
    if n is not None and len(results) >= n:
        plan.reasons = [*plan.reasons, f"every item ran while measuring ({n} of {n}): "
                        "nothing is left to run"]
    elif initializer is not None and plan.executor_type == "serial":
        plan.reasons = [*plan.reasons, "the initializer runs in this process: a serial plan runs "
                        "the items here (on a parallel plan it runs only in the workers)"]
    plan.data = data
    plan.sampled_results = results
    plan.sampled_seconds = seconds
    return plan


# Functions tried in an interpreter (by ``function_key``): the ones that ran, and why the
# others could not (a module that refuses to load in a sub-interpreter, mostly).
_INTERPRETERS_OK: set = set()
_INTERPRETERS_REFUSED: dict = {}


def _runs_in_interpreter(func: Callable, items: Sequence, results: dict, plan: Plan) -> str | None:
    """None if ``func`` runs on a measured item (or the first) in an interpreter of the pool
    the plan will use, else why not: numpy and most C extensions refuse to load in a
    sub-interpreter, and the plan must not find that out with the whole input."""
    from amorsize.pools.interpreters import refusal

    index = next(iter(results), 0)
    workload = plan.workload
    try:
        with plugins.leased_pool(plan.n_jobs, "interpreter", initializer=workload.initializer,
                                 initargs=workload.initargs) as pool:
            pool.submit(func, items[index]).result()
    except Exception as exc:  # noqa: BLE001 - any failure there rules interpreters out
        why = refusal(exc)
        if why is None:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            why = f"{type(exc).__name__}: {first}"
        return f"the function failed in a sub-interpreter ({why})"
    return None


def _probe_elsewhere(func: Callable, asked: Workload, timeout: float | None) -> Any:
    """Where measured items run when not in the caller (see ``make``), or None for the caller.

    An initializer runs only where the run's items may run: measured items need what it sets
    up, so with one they run on a process worker whenever processes may run them (the pool the
    run would use), on a thread when only threads may, and in the caller only for a serial
    plan, after the initializer has run here."""
    max_tasks = None
    forced = asked.executors == ("process",)
    if forced or (asked.initializer is not None and "process" in asked.executors
                  and _process_pool_for(func, asked)):
        where: tuple[int, ExecutorType] = (asked.max_workers or system.usable_cpus(), "process")
        max_tasks = asked.max_tasks_per_child  # the pool the run will use
        if forced:
            _check_picklable(func)
    elif timeout is not None or (asked.initializer is not None and "thread" in asked.executors):
        where = (1, "thread")
    elif asked.initializer is not None:
        plugins.get_pool(1, "serial", initializer=asked.initializer, initargs=asked.initargs)
        return None
    else:
        return None

    def run_timed(func: Callable, items: list, indices: list[int], budget: float) -> Any:
        with plugins.leased_pool(*where, start_method=asked.start_method,
                                 initializer=asked.initializer, initargs=asked.initargs,
                                 max_tasks_per_child=max_tasks) as pool:
            # prepared as the run's chunks are: a __main__ function then shares the worker's
            # namespace with the initializer, which sets what the function reads
            return call_watched(pool, worker.run_timed, (pool.prepare(func), items, budget),
                                indices, timeout)

    return run_timed


def _check_picklable(func: Callable) -> None:
    try:
        cloudpickle.dumps(func)
    except Exception as exc:  # noqa: BLE001 - any failure means: not for processes
        raise InvalidArgumentError(
            f"executor='process' cannot run this function: cannot pickle the function: {exc}"
            "; use executor='thread' or None, or make it picklable") from exc


def _process_pool_for(func: Callable, asked: Workload) -> bool:
    """Whether ``func`` can be measured on the process pool the run would use: it pickles and
    the pool starts (else the run will not use processes either)."""
    try:
        cloudpickle.dumps(func)
        plugins.get_pool(asked.max_workers or system.usable_cpus(), "process",
                         start_method=asked.start_method, initializer=asked.initializer,
                         initargs=asked.initargs, max_tasks_per_child=asked.max_tasks_per_child)
    except Exception:  # noqa: BLE001 - the decision says why processes are out
        return False
    return True
