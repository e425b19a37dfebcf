"""amorsize's own decision: from a measured profile and a workload to a Plan, with reasons.

The arithmetic lives in ``cost_model`` (pure); this module gathers what it needs -- usable CPUs,
pool overheads (measured on a real pool the first time processes look worth it), which pools are
already warm, what past runs of the function taught -- and writes down why it chose what it did.
The pools and what was learned are handed to ``decide`` by its caller (the built-in plugin, which
asks through the hooks), so the decision calls nothing above the optimizer and a plugin that
provides pools or recalls profiles is the one the decision sees.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from amorsize import system
from amorsize.errors import ExecutorType
from amorsize.optimizer import cost_model, overheads
from amorsize.optimizer import learned as learned_module
from amorsize.optimizer.learned import LEARNED, Learned, function_key
from amorsize.plan import Machine, Plan, format_bytes, format_seconds, measured_how
from amorsize.pools import shared
from amorsize.workload import Profile, Workload

ASSUMED_ITEMS_WHEN_UNKNOWN = 10_000
# Front ends that run no item in an interpreter before their plan is used (``optimize.make``
# does, and leaves interpreters out for a function that cannot run there): they get
# interpreters only when they ask for them alone.
INTERPRETERS_WHEN_ASKED = frozenset({"joblib", "dask"})
_SAME = 0.10
# a kept plan is decided again once the tasks elsewhere that want a CPU moved by this many
LOAD_MOVED = learned_module.LOAD_MOVED
LOAD_MOVED_PART = 0.25
# at most this part of the time goes to deciding again because the load moved: where other
# people's work starts and ends all the time, the load moves between most calls, and a function
# called in a loop would spend more time re-deciding than computing
DECIDING_SHARE = 0.02
# measured calls that got less of a core than this tell a busy machine (a quiet one gives them
# nearly all of one: only interrupts and a daemon waking take from it)
BUSY_SHARE = 0.9
# a new parallel configuration must be predicted this much faster than the last one to replace it
STAY_WITHIN = 1.10


@dataclass(frozen=True)
class _Made:
    """A decision and what it was made from."""

    profile: Profile
    corrections: dict[str, float]
    remaining: int
    share: float
    startup_matters: bool  # a serial plan that a warm pool would have made parallel
    plan: Plan
    # the plan's reasons as told to calls that recall the profile, with the profile they tell of
    told_recalled: Plan | None = None
    background: float = 0.0  # the tasks elsewhere that wanted a CPU when it was made
    apart: float = 0.0  # those of them in scheduling groups of their own
    # until then (``_clock``), a moved load does not have it decided again (``DECIDING_SHARE``)
    recheck_at: float = -math.inf


class _Decisions:
    """The last plan per situation (function, size, constraints), reused while the profile and
    the corrections it was made from stay within ``_SAME`` of the current ones: each run moves
    them a little, and rebuilding an identical plan (and its reasons) on every call of a
    function called in a loop would cost more than the loop."""

    def __init__(self, max_entries: int = 512) -> None:
        self._entries: OrderedDict[tuple, _Made] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_entries

    def get(self, situation: tuple) -> _Made | None:
        """The decision last made for this situation, however much has moved since."""
        try:
            with self._lock:
                return self._entries.get(situation)
        except TypeError:  # an unhashable key or option: never cached
            return None

    @staticmethod
    def reusable(made: _Made, profile: Profile, corrections: dict[str, float],
                 remaining: int, share: float, background: float = 0.0,
                 apart: float = 0.0) -> Plan | None:
        """``made``'s plan, if nothing that decided it moved (see the class), the machine's
        load included: a plan made on a quiet machine is decided again on a busy one."""
        was = made.profile
        serial = made.plan.executor_type == "serial"
        if _load_moved(made, background, apart):
            return None
        # A serial plan has no chunk sizes cut for the items left (the call that measured left
        # its sampled items out, so later calls see a few more: within ``_SAME`` more items is
        # the same decision), and
        # only gets more right as calls get cheaper or serial runs faster than predicted:
        # parallel plans pay fixed costs per chunk. It is decided again as pools' start-up is
        # charged less, if a warm pool would have won.
        if remaining != made.remaining and not (
                serial and remaining <= made.remaining * (1 + _SAME)):
            return None
        if serial and made.startup_matters and not _near(share, made.share):
            return None
        if not ((_near(profile.per_item_seconds, was.per_item_seconds)
                 or (serial and profile.per_item_seconds < was.per_item_seconds))
                and abs(profile.cpu_ratio - was.cpu_ratio) <= _SAME
                and (profile.thread_scaling is None) == (was.thread_scaling is None)
                and abs((profile.thread_scaling or 0) - (was.thread_scaling or 0)) <= 1.5 * _SAME
                and _near(profile.arg_bytes + profile.result_bytes, was.arg_bytes + was.result_bytes)
                and profile.picklable == was.picklable
                and all(_near(now, then) or (serial and k == "serial" and now < then)
                        for k in corrections.keys() | made.corrections.keys()
                        for now, then in [(corrections.get(k, 1.0),
                                           made.corrections.get(k, 1.0))])):
            return None
        return made.plan

    def remember(self, situation: tuple, made: _Made) -> None:
        try:
            with self._lock:
                self._entries[situation] = made
                self._entries.move_to_end(situation)
                if len(self._entries) > self._max:
                    self._entries.popitem(last=False)
        except TypeError:
            pass

    def forget(self) -> None:
        with self._lock:
            self._entries.clear()


_DECISIONS = _Decisions()


_clock = time.perf_counter


def _near(a: float, b: float) -> bool:
    return abs(a - b) <= _SAME * max(abs(a), abs(b))




class Pools(Protocol):
    """The pools a decision may look at: which are warm, and a lease on one to measure."""

    def is_warm(self, n_jobs: int, executor_type: ExecutorType, start_method: str) -> bool: ...

    def lease(self, n_jobs: int, executor_type: ExecutorType,
              start_method: str) -> AbstractContextManager[Any]: ...


def decide(func: Callable, profile: Profile, workload: Workload, *, pools: Pools,
           learned: Learned | None) -> Plan:
    """The plan amorsize recommends for ``func`` on this workload; ``pools`` are the pools it
    may look at and ``learned`` what past runs of the function taught (None: nothing yet).

    A function seen before gets its last plan again while nothing that decided it moved by more
    than the noise between runs (``_DECISIONS``): same size and constraints, a profile and
    corrections within 10%, the load within a quarter (``_load_moved``), and a warm pool for a
    parallel plan. Deciding again because the load moved takes at most ``DECIDING_SHARE`` of
    the time: after a decision that took ``d``, the load is not looked at again for ``d / 0.02``."""
    cpus = system.usable_cpus()
    start_method = workload.start_method or system.default_start_method()
    key = function_key(func) if workload.key is None else workload.key
    n = workload.n_items
    if n is None:
        n = (learned.last_n_items if learned and learned.last_n_items
             else ASSUMED_ITEMS_WHEN_UNKNOWN)
    remaining = max(0, n - workload.already_done)
    situation = (key, n, workload.executors, workload.max_workers,
                 workload.min_speedup, workload.chunksize, start_method, cpus)
    share = 1.0 / (1 + workload.previous_runs)
    background, apart = load_now(profile, workload, cpus)
    made = _DECISIONS.get(situation)
    now = _clock()
    if made is not None and now < made.recheck_at and _load_moved(made, background, apart):
        # decided too recently for its cost to allow another for the load alone: the plan
        # stands as made for the load it was made at, and its run is judged at that load
        background, apart = made.background, made.apart
    # replaced, never changed: no copy
    corrections = learned.corrections_at(background) if learned else {}
    if made is not None and (known := _DECISIONS.reusable(
            made, profile, corrections, remaining, share, background, apart)) is not None and (
            known.executor_type == "serial" or pools.is_warm(
                known.n_jobs, known.executor_type, start_method)):
        # the prediction the run will be judged against is for this call's items, profile and
        # corrections: a stale one would teach the next correction the wrong error
        predictions = {**known.predictions, known.executor_type: cost_model.predicted_seconds(
            known.executor_type, known.n_jobs, known.chunksize, profile, remaining, cpus,
            overheads.current(start_method), lambda e, j: True, share, corrections,
            background, apart)}
        reasons = known.reasons
        if known.workload.recalled != workload.recalled:
            # the plan of the call that measured, now for calls that recall: told again only
            # when the profile's source changes (sampling, then runs), not on every call
            told = made.told_recalled
            if told is None or told.profile.measured_by != profile.measured_by:
                told = known.replace(profile=profile,
                                     reasons=[_describe(profile, workload), *known.reasons[1:]])
                _DECISIONS.remember(situation, dataclasses.replace(made, told_recalled=told))
            reasons = told.reasons
        machine = known.machine
        if machine is not None and (machine.background, machine.apart) != (background, apart):
            machine = Machine(machine.usable_cpus, machine.start_method, background, apart)
        return known.replace(workload=workload, profile=profile, predictions=predictions,
                             reasons=reasons, machine=machine)
    # the last plan is kept through a run's noise, not through a change of load: 4 workers
    # beside two busy programs tie with 2 on paper once they are gone, and run slower
    last = None if made is None or _load_moved(made, background, apart) else made.plan
    plan, startup_matters = _decide(func, profile, workload, pools, cpus, start_method,
                                    remaining, corrections, share, last, background, apart)
    took = _clock() - now
    _DECISIONS.remember(situation, _Made(profile, corrections, remaining, share,
                                         startup_matters, plan, background=background,
                                         apart=apart, recheck_at=now + took / DECIDING_SHARE))
    return plan


def _load_moved(made: _Made, background: float, apart: float) -> bool:
    """Whether the load moved since ``made``: by half a task, or a quarter of it on a machine
    busy enough for its count to wobble by a task from one plan to the next."""
    def moved(now: float, then: float) -> bool:
        return abs(now - then) >= max(LOAD_MOVED, LOAD_MOVED_PART * max(now, then))

    return moved(background, made.background) or moved(apart, made.apart)


def load_now(profile: Profile, workload: Workload, cpus: int) -> tuple[float, float]:
    """The tasks elsewhere that want a CPU now (``system.runnable_elsewhere``), or more if the
    calls measured for this very plan got less of a core than that leaves them (a reading
    between two bursts of someone else's work; a machine whose task count is not this
    process's): one call beside ``b`` others on ``cpus`` cores gets ``cpus / (1 + b)`` of one.
    With how many of them the kernel schedules apart from this process
    (``system.runnable_apart``); the measured calls' extra counts apart in the same part."""
    read = system.runnable_elsewhere()
    apart = system.runnable_apart(read)
    background = read
    if not workload.recalled and profile.cpu_share < BUSY_SHARE:
        background = max(read, cpus / profile.cpu_share - 1)
        apart = background * (apart / read if read > 0 else 0.0)
    return background, apart


def _decide(func: Callable, profile: Profile, workload: Workload, pools: Pools, cpus: int,
            start_method: str, remaining: int, corrections: dict[str, float], share: float,
            last: Plan | None, background: float = 0.0,
            apart: float = 0.0) -> tuple[Plan, bool]:
    """The plan, and whether it is serial only because no pool is warm yet."""
    executors = set(workload.executors)
    reasons = [_describe(profile, workload)]
    if background >= LOAD_MOVED:
        reasons.append(_busy(profile, background, apart, cpus))
    measured = profile
    if profile.thread_scaling is None and not system.gil_enabled():
        reasons.append("free-threaded interpreter (no GIL): calls taken to overlap on threads")
        profile = profile.replace(thread_scaling=2.0)
    if "process" in executors and not profile.picklable:
        executors.discard("process")
        reasons.append(f"processes excluded: cannot pickle {profile.unpicklable_reason}")
    if "interpreter" in executors and len(executors) > 1:
        if not profile.picklable:
            executors.discard("interpreter")
            reasons.append(f"interpreters excluded: cannot pickle {profile.unpicklable_reason}")
        elif workload.source in INTERPRETERS_WHEN_ASKED:
            executors.discard("interpreter")

    @functools.cache
    def is_warm(executor: ExecutorType, n_jobs: int) -> bool:
        """Asked once per (executor, n_jobs) in this decision, however often it is re-evaluated."""
        return pools.is_warm(n_jobs, executor, start_method)

    ovh = overheads.current(start_method)

    def evaluate() -> dict[str, cost_model.Candidate]:
        return cost_model.best_candidates(
            profile, remaining, cpus, ovh, executors, workload.max_workers, is_warm, share,
            corrections, workload.chunksize, background, apart,
        )

    candidates = evaluate()
    chosen = cost_model.choose(candidates, workload.min_speedup)
    if chosen.executor_type == "thread" and "thread" not in ovh.measured:
        with pools.lease(chosen.n_jobs, "thread", start_method) as pool:
            ovh = overheads.measure_threads(pool, start_method)
        is_warm.cache_clear()
        candidates = evaluate()
        chosen = cost_model.choose(candidates, workload.min_speedup)
    started: set[str] = set()
    while chosen.executor_type in _MEASURE and chosen.executor_type not in started:
        kind = chosen.executor_type
        started.add(kind)
        if kind in ovh.measured and is_warm(kind, chosen.n_jobs):
            break
        # Start (and, the first time, measure) the pool now; a warm, measured one needs nothing,
        # and fetching it here would count a use the run itself will count again.
        try:
            with pools.lease(chosen.n_jobs, kind, start_method) as pool:
                first_time = kind not in ovh.measured
                if first_time:
                    ovh = _MEASURE[kind](pool, start_method)
        except Exception as exc:
            if executors == {kind}:
                raise
            executors.discard(kind)
            reasons.append(_no_pool(kind, exc))
            candidates = evaluate()
            chosen = cost_model.choose(candidates, workload.min_speedup)
        else:
            is_warm.cache_clear()
            if first_time:
                reasons.append(_measured_pool(kind, pool, ovh, start_method))
                candidates = evaluate()
                chosen = cost_model.choose(candidates, workload.min_speedup)
    if last is not None and last.executor_type in executors and remaining >= 2:
        kept = _keep_last(last, chosen, lambda c: cost_model.predicted_seconds(
            c.executor_type, c.n_jobs, c.chunksize, profile, remaining, cpus, ovh, is_warm, share,
            corrections, background, apart), [workload.chunksize] if workload.chunksize
            else cost_model.chunk_candidates(remaining, last.n_jobs),
            same_items=last.workload.already_done == workload.already_done)
        serial_candidate = candidates.get("serial")
        # the margin, less the noise of one run; never slower than serial, whatever the margin
        leave_below = max(1.0, workload.min_speedup / STAY_WITHIN)
        if kept is not None and (serial_candidate is None
                                 or kept.seconds * leave_below < serial_candidate.seconds):
            within = (f"still over {leave_below:.2f}x faster than serial"
                      if chosen.executor_type == "serial" else f"within {STAY_WITHIN - 1:.0%}")
            over = ("serial" if chosen.executor_type == "serial" else
                    f"{chosen.executor_type}, {chosen.n_jobs} workers, chunks of {chosen.chunksize}")
            reasons.append(
                f"kept the last plan ({kept.executor_type}, {kept.n_jobs} workers, chunks of "
                f"{kept.chunksize}: {format_seconds(kept.seconds)}) over {over} "
                f"({format_seconds(chosen.seconds)}): {within}, so the noise of one run does "
                "not flip it")
            chosen = candidates[kept.executor_type] = kept
    reasons.extend(_compare(candidates, chosen, workload, share, corrections))
    serial = candidates.get("serial")
    speedup = serial.seconds / chosen.seconds if serial and chosen.seconds > 0 else 1.0
    startup_matters = chosen.executor_type == "serial" and cost_model.choose(
        cost_model.best_candidates(profile, remaining, cpus, ovh, executors,
                                   workload.max_workers, lambda e, j: True, share, corrections,
                                   workload.chunksize, background, apart),
        workload.min_speedup).executor_type != "serial"
    return Plan(
        executor_type=chosen.executor_type,
        n_jobs=chosen.n_jobs,
        chunksize=chosen.chunksize,
        estimated_speedup=max(speedup, 0.0),
        reasons=reasons,
        profile=measured,
        workload=workload,
        predictions={k: c.seconds for k, c in candidates.items()},
        overheads=ovh.as_dict(),
        machine=Machine(cpus, start_method, background, apart),
    ), startup_matters


def _keep_last(last: Plan, chosen: cost_model.Candidate,
               predict: Callable[[cost_model.Candidate], float],
               chunk_sizes: list[int], same_items: bool = True) -> cost_model.Candidate | None:
    """The last plan's configuration, re-predicted, when the new best is not ``STAY_WITHIN``
    faster: two configurations that close trade places with every run's noise (2 or 4 workers
    on 2 cores), and each flip costs a pool start or a cold cache for nothing.

    Its chunk size becomes the best of ``chunk_sizes`` when the last plan was cut for another
    number of items (``same_items`` False: the call that measured cut chunks for the items it
    had left, which can leave a last, short wave for the full input), else only if that is
    ``STAY_WITHIN`` faster. The caller holds the kept plan to the ``min_speedup`` margin less
    ``STAY_WITHIN``: a modest parallel win would otherwise go serial after one slow run, and
    only a parallel run could show it was right."""
    if last.executor_type == "serial":
        return None

    def predicted(chunksize: int) -> cost_model.Candidate:
        candidate = cost_model.Candidate(last.executor_type, last.n_jobs, chunksize, 0.0)
        return dataclasses.replace(candidate, seconds=predict(candidate))

    by_size = {c: predicted(c) for c in {*chunk_sizes, last.chunksize}}
    same = by_size[last.chunksize]
    recut = min((by_size[c] for c in chunk_sizes), key=lambda c: (c.seconds, c.chunksize))
    again = same if same_items and same.seconds <= recut.seconds * STAY_WITHIN else recut
    if (again.executor_type, again.n_jobs, again.chunksize) == (
            chosen.executor_type, chosen.n_jobs, chosen.chunksize):
        return None
    if again.seconds > chosen.seconds * STAY_WITHIN:
        return None
    return again


def learn(key: Any, report: Any, already_done: int = 0, background: float = 0.0,
          apart: float = 0.0) -> None:
    """Fold a finished run into what is learned of the function (``amorsize_run_finished``);
    ``already_done`` items were computed before the run (measuring), so the input had
    ``report.n_items + already_done``. Process workers sharing cores, with each other and with
    the ``background`` tasks the plan was made beside, each took longer per item than one call
    costs (``workers_per_core``); so did a serial run on a busy machine."""
    tasks = report.n_jobs if report.executor_type in ("process", "interpreter") else 1
    crowding = 1 / cost_model.pace(tasks, 1.0, system.usable_cpus(), background, apart)
    LEARNED.record_run(
        key, report.executor_type, report.n_items, report.compute_seconds,
        report.wall_seconds, report.predicted_seconds, report.n_items + already_done,
        workers_per_core=crowding, background=background,
    )


_MEASURE = {"process": overheads.measure_processes,
            "interpreter": overheads.measure_interpreters}
_PLURAL = {"process": "processes", "interpreter": "interpreters"}


def _measured_pool(kind: str, pool: Any, ovh: overheads.Overheads, start_method: str) -> str:
    if kind == "process":
        return (f"measured a real {pool.n_jobs}-process pool ({start_method}): start-up "
                f"{format_seconds(pool.startup_seconds)}, round trip "
                f"{format_seconds(ovh.process_latency)}")
    return (f"measured a real {pool.n_jobs}-interpreter pool: start-up "
            f"{format_seconds(pool.startup_seconds)}, round trip "
            f"{format_seconds(ovh.interpreter_latency)}")


def _no_pool(kind: str, exc: Exception) -> str:
    """Processes (or interpreters) looked fastest but no pool could start: run without them,
    and say why."""
    cause = exc.__cause__ or exc
    first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    message = (f"{_PLURAL[kind]} excluded: a {kind} pool could not start "
               f"({type(cause).__name__}: {first_line})")
    warnings.warn(f"amorsize: {message}", RuntimeWarning, stacklevel=4)
    return message


def _busy(profile: Profile, background: float, apart: float, cpus: int) -> str:
    """Why the plan counts on less of the machine than its cores."""
    got = (f"; the calls measured got {profile.cpu_share:.0%} of a core, so a call is taken to "
           f"cost {format_seconds(profile.per_item_seconds)} on a core of its own"
           if profile.cpu_share < BUSY_SHARE else "")
    groups = (f" ({apart:.1f} of them in other sessions: more workers than cores take no more "
              "from those)" if apart >= LOAD_MOVED else "")
    return (f"a busy machine: {background:.1f} other tasks want the {cpus} CPUs now{groups}, and "
            f"each of the plan's calls gets its part of them{got}")


def _describe(profile: Profile, workload: Workload) -> str:
    kind = "I/O-bound (mostly waiting)" if profile.io_bound else "CPU-bound"
    if profile.cpu_ratio > 1.3:
        kind = f"uses {profile.cpu_ratio:.1f} cores per call by itself"
    how = measured_how(profile, workload)
    text = (f"{format_seconds(profile.per_item_seconds)} per item, {how}; CPU/wall "
            f"{profile.cpu_ratio:.2f}: {kind}")
    if profile.thread_scaling is not None:
        overlap = ("overlap" if profile.thread_scaling > 1.6
                   else "overlap partly" if profile.thread_scaling > 1.15
                   else "do not overlap (GIL)")
        text += f"; two calls on two threads ran {profile.thread_scaling:.2f}x: they {overlap}"
    if profile.arg_bytes or profile.result_bytes:
        text += (f"; pickled item {format_bytes(profile.arg_bytes)}, result "
                 f"{format_bytes(profile.result_bytes)}")
    if profile.shared_bytes:
        where = shared.placed_where(profile.shared_bytes)
        text += (f"; {format_bytes(profile.shared_bytes)} of large buffers cross "
                 "to process workers once, through shared memory" + (
                     "" if where == shared.SHM_DIR else
                     f" in a file in {where} ({shared.SHM_DIR} has too little room)"))
    elif profile.func_bytes >= shared.SHARED_MIN_BYTES and shared.on_linux() \
            and (off := shared.unavailable_reason()) is not None:
        text += (f"; the function's {format_bytes(profile.func_bytes)} cross with each chunk: "
                 f"no shared memory ({off})")
    return text


def _compare(
    candidates: dict[str, cost_model.Candidate],
    chosen: cost_model.Candidate,
    workload: Workload,
    share: float,
    corrections: dict[str, float],
) -> list[str]:
    out = []
    serial = candidates.get("serial")
    for kind, c in candidates.items():
        if kind == "serial":
            out.append(f"serial: predicted {format_seconds(c.seconds)}")
        else:
            extra = ""
            if kind in corrections and abs(corrections[kind] - 1) > 0.05:
                extra = f", corrected x{corrections[kind]:.2f} from past runs"
            out.append(f"best {kind} plan: {c.n_jobs} workers, chunks of {c.chunksize}: "
                       f"predicted {format_seconds(c.seconds)}{extra}")
    if share < 1:
        out.append(f"pool start-up charged at {share:.0%}: this function ran "
                   f"{workload.previous_runs} times before in this process")
    if chosen.executor_type == "serial" and serial is not None:
        others = [c for k, c in candidates.items() if k != "serial"]
        if others:
            best = min(others, key=lambda c: c.seconds)
            gain = serial.seconds / best.seconds if best.seconds > 0 else 1.0
            out.append(f"stay serial: the best parallel plan ({best.executor_type}) would be "
                       f"{gain:.2f}x, below the {workload.min_speedup:.2f}x margin")
        else:
            out.append("serial: no parallel executor is allowed or useful here")
    elif serial is not None:
        gain = serial.seconds / chosen.seconds if chosen.seconds > 0 else float("inf")
        out.append(f"chose {chosen.executor_type}: {gain:.2f}x faster than serial predicted "
                   f"(margin {workload.min_speedup:.2f}x)")
    else:
        out.append(f"chose {chosen.executor_type}: the only executor allowed")
    return out
