"""Predicted wall time of running n calls serially, on threads, on processes or on
sub-interpreters.

Pure functions of measured numbers (a Profile, Overheads, the CPU count), so they can be tested
with made-up figures. The optimizer evaluates them over candidate (workers, chunksize) pairs and
picks the fastest; it stays serial unless parallel wins by a margin.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from amorsize.errors import ExecutorType
from amorsize.optimizer.overheads import Overheads
from amorsize.workload import Profile

THREAD_COUNTS = (2, 4, 8, 16, 32, 64, 128)
_MIN_THREAD_OVERLAP = 0.05
_BUSY_CPU_RATIO = 0.8
_NOISE_SCALING = 1.3
_CHUNKS_PER_WORKER = (1, 2, 4, 8, 16, 32, 64, 256)
PREFER_THREADS_WITHIN = 1.1
# processes over interpreters unless interpreters are predicted this much faster: a prediction is
# not more exact than that, and a C extension that misbehaves kills a process worker, not the
# caller's process
PREFER_PROCESSES_WITHIN = 1.1
_MIN_CPU_SHARE = 0.25
_PROCESSES_PER_CPU = 2
# the fewest workers predicted within 3% of the fastest are chosen: more processes than cores
# are predicted a hair faster (a smaller tail) but pay for switching and hold more memory
FEWER_WORKERS_WITHIN = 1.03
_CHANCE_TREND = 0.9  # 7 random costs reach a rank correlation this high 1 time in 140
# The part of a chunk's time by which one process worker may end after another because the
# machine's other work fell on its core more than on the others': a little on a quiet machine,
# up to half beside as many busy tasks as cores (docs/optimizer.md has the figures).
UNEVEN_PACE = 0.02
UNEVEN_PACE_BUSY = 0.5


@dataclass(frozen=True)
class Candidate:
    """One way to run the work, with its predicted wall time in seconds."""

    executor_type: ExecutorType
    n_jobs: int
    chunksize: int
    seconds: float


def serial_seconds(profile: Profile, n: int, cpus: int = 1, background: float = 0.0,
                   apart: float = 0.0) -> float:
    """One call after another; their computing slowed by the ``background`` tasks that share
    the ``cpus`` with them (``pace``)."""
    computing = min(1.0, profile.cpu_ratio)
    slowed = computing / pace(1, profile.cpu_ratio, cpus, background, apart)
    return n * profile.per_item_seconds * ((1 - computing) + slowed)


def pace(tasks: int, cpu_ratio: float, cpus: int, background: float,
         apart: float = 0.0) -> float:
    """How fast each of ``tasks`` calls of ours computes while they run at once beside
    ``background`` other tasks wanting a CPU, against one call alone on a quiet machine (1.0).

    The kernel shares the cores evenly among the tasks that want them: each call uses
    ``cpu_ratio`` of a core by itself (a quarter at least; more than one for a call that
    computes on several cores), and when the calls and the others want more than the ``cpus``,
    each gets its part of them. Two workers beside two busy programs on 2 cores compute at
    half speed, four at a third (together, a third more than two): on a busy machine, more
    workers than cores take a larger part of it, which the plan counts.

    Not against tasks of other scheduling groups (``apart`` of the ``background``: with Linux's
    autogroup, each session is one; a container or service in a cgroup of its own is too): the
    kernel shares each core among groups first, so this process's tasks, one group, get no more
    of the machine from more workers than cores, and spread over several cores they weigh on
    each only their part of the group (taken as other tasks' groups each hold one: the most
    they can take)."""
    per_call = max(cpu_ratio, _MIN_CPU_SHARE)
    alone = min(1.0, cpus / per_call)  # one call on a quiet machine
    others = max(0.0, min(apart, background))
    ours = tasks * per_call + (background - others)  # the tasks of this process's group
    return min(1.0, _group_cores(ours, others, cpus) / ours) / alone


def _group_cores(ours: float, others: float, cpus: int) -> float:
    """The cores a group of ``ours`` tasks gets beside ``others`` tasks of one group each: on
    a core of its own each while there are free ones; where it shares, the group weighs on
    each core it uses only its part (one of ``min(ours, cpus)``). Beside other groups on every
    core, spreading over the cores is taken to gain nothing: measured, it gained less than the
    weights say, and often lost (docs/optimizer.md)."""
    spread = min(ours, cpus)
    if others >= cpus:  # on every core, ``others / cpus`` other groups
        return min(spread, 1.0) * cpus / (cpus + others)
    free = cpus - others
    shared = max(0.0, spread - free)
    return min(spread, free) + shared / (1 + spread)


def thread_parallel_fraction(profile: Profile) -> float:
    """Share of a call's time that can overlap with other threads' calls.

    Measured by the two-thread test when available (Amdahl's law with two threads solved for the
    parallel fraction); otherwise only the time not spent on the CPU (waiting) is assumed to
    overlap, since pure-Python CPU work holds the GIL.
    """
    if profile.thread_scaling is not None:
        if profile.cpu_ratio >= _BUSY_CPU_RATIO and profile.thread_scaling < _NOISE_SCALING:
            return 0.0  # computing calls that barely overlapped: GIL-bound, the rest is noise
        s = max(1.0, min(2.0, profile.thread_scaling))
        return max(0.0, min(1.0, 2.0 * (1.0 - 1.0 / s)))
    return max(0.0, 1.0 - min(1.0, profile.cpu_ratio))


def thread_seconds(
    profile: Profile, n: int, threads: int, chunksize: int, cpus: int, ovh: Overheads, warm: bool,
    background: float = 0.0, apart: float = 0.0,
) -> float:
    """Threads: the GIL-held part runs one at a time, waiting overlaps across all threads, work
    that releases the GIL overlaps up to the CPU count (fewer beside ``background`` tasks that
    want the CPUs too: ``pace``); the caller hands out every chunk."""
    t = profile.per_item_seconds
    f = thread_parallel_fraction(profile)
    waiting = min(f, max(0.0, 1.0 - min(1.0, profile.cpu_ratio)))
    released = f - waiting
    total = n * t
    # the cores the threads get for work that releases the GIL: up to the CPU count, and on a
    # busy machine, a larger part of it the more threads want them (as for processes)
    cores = threads * pace(threads, 1.0, cpus, background, apart)
    compute = (total * (1 - f) / pace(1, 1.0, cpus, background, apart)
               + total * waiting / threads + total * released / cores)
    n_chunks = math.ceil(n / chunksize)
    waves = math.ceil(n_chunks / threads) * chunksize * t
    start = 0.0 if warm else threads * ovh.thread_start
    return start + n_chunks * ovh.thread_per_chunk + max(compute, waves) + tail_seconds(
        profile, chunksize)


def process_seconds(
    profile: Profile,
    n: int,
    workers: int,
    chunksize: int,
    cpus: int,
    ovh: Overheads,
    warm: bool,
    startup_share: float = 1.0,
    background: float = 0.0,
    apart: float = 0.0,
) -> float:
    """Processes: calls run in parallel up to the cores they use -- fewer than the workers when
    a call uses several cores itself, more when it spends part of its time waiting, and
    at the pace the ``background`` tasks that want the cores too leave them (``pace``);
    the parent pickles, sends and receives every item (one core's worth of work that competes
    with the workers when they use every core) and places the function's shared buffers once (a
    copy on the first call, a checksum on the later ones: of the same order); a cold pool's
    start-up is charged in ``startup_share`` (less than 1 when the start-up is amortised over
    repeated calls)."""
    t = profile.per_item_seconds
    usable = workers * pace(workers, profile.cpu_ratio, cpus, background, apart)
    n_chunks = math.ceil(n / chunksize)
    # every chunk carries the function too (by value: a closure or __main__ function may be
    # big), but for its large buffers, which cross once, through shared memory
    per_chunk = max(0.0, profile.func_bytes - profile.shared_bytes)
    moved = (n * (profile.arg_bytes + profile.result_bytes) + n_chunks * per_chunk) \
        * ovh.process_per_byte + profile.shared_bytes * ovh.shared_per_byte
    shipping = moved + n * profile.pickle_seconds / 2
    parent = n_chunks * ovh.process_per_chunk + shipping
    in_workers = n * (t + profile.pickle_seconds / 2)
    if workers >= cpus:  # every core computes: each chunk's handling (both ends) takes from it
        compute = in_workers / usable + (n_chunks * ovh.process_busy_per_chunk + shipping) / cpus
    else:
        compute = in_workers / usable
    waves = math.ceil(n_chunks / workers) * chunksize * t
    start = 0.0 if warm else workers * ovh.process_start * startup_share
    # no worker starts before its first chunk is pickled and sent, and the last chunk's
    # results come back after it ends: one chunk's shipping is not overlapped, which makes
    # big chunks of heavy items dearer than their count alone says
    fill = min(chunksize, n) * (profile.pickle_seconds
                                + (profile.arg_bytes + profile.result_bytes) * ovh.process_per_byte)
    return start + ovh.process_latency + fill + max(compute, parent, waves) + tail_seconds(
        profile, chunksize, uneven_pace(cpus, background))


def interpreter_seconds(
    profile: Profile,
    n: int,
    workers: int,
    chunksize: int,
    cpus: int,
    ovh: Overheads,
    warm: bool,
    startup_share: float = 1.0,
    background: float = 0.0,
    apart: float = 0.0,
) -> float:
    """Sub-interpreters: the processes' model with the interpreters' own figures. Calls run in
    parallel up to the cores, and everything crosses pickled, as to processes; what differs is
    what a worker costs to start, a round trip and a chunk."""
    as_processes = dataclasses.replace(
        ovh,
        process_start=ovh.interpreter_start,
        process_per_chunk=ovh.interpreter_per_chunk,
        process_busy_per_chunk=ovh.interpreter_busy_per_chunk,
        process_latency=ovh.interpreter_latency,
        process_per_byte=ovh.interpreter_per_byte,
    )
    return process_seconds(profile, n, workers, chunksize, cpus, as_processes, warm,
                           startup_share, background, apart)


def interpreters_may_pay(profile: Profile) -> bool:
    """Interpreters are for calls that compute in Python: calls that mostly wait overlap on
    threads for less, and a function that pickles not at all cannot cross to them."""
    return profile.picklable and profile.cpu_ratio >= _BUSY_CPU_RATIO


def uneven_pace(cpus: int, background: float) -> float:
    """The part of a chunk's time by which workers' chunks may end apart on this machine, the
    ``background`` tasks' work landing on some cores more than others (``UNEVEN_PACE``)."""
    return UNEVEN_PACE + UNEVEN_PACE_BUSY * min(1.0, background / max(1, cpus))


def tail_seconds(profile: Profile, chunksize: int, uneven: float = 0.0) -> float:
    """How much longer than the others the last chunk may run, at most the chunk's own time.
    Costs independent of each other average out over a chunk (the spread of c items' sum is
    sqrt(c) times one item's): taken c times, big chunks of varying items look much slower than
    they run, and small ones are chosen that run slower. Costs rising along the input do not: the
    last chunks are the dearest (as far as the sample's rank correlation with position is
    clearer than chance). Falling costs put the dearest chunks first, where the other workers'
    later chunks absorb them. Workers that compute at uneven paces (``uneven``: the part of a
    chunk's time by which they drift apart) end their last chunks apart by that part of one."""
    trend = max(0.0, (profile.cost_trend - _CHANCE_TREND) / (1 - _CHANCE_TREND))
    spread = profile.per_item_spread * (trend * chunksize + (1 - trend) * math.sqrt(chunksize))
    spread += uneven * chunksize
    return profile.per_item_seconds * min(chunksize, spread)


def chunk_candidates(n: int, workers: int) -> list[int]:
    """Chunk sizes giving 1, 2, 4, ... chunks per worker, and single items."""
    sizes = {1}
    for k in _CHUNKS_PER_WORKER:
        sizes.add(max(1, math.ceil(n / (workers * k))))
    return sorted(sizes)


def thread_counts(n: int, cpus: int, max_workers: int | None) -> list[int]:
    counts = {c for c in THREAD_COUNTS if c <= max(2, n)} | {cpus}
    if max_workers is not None:
        counts = {min(c, max_workers) for c in counts}
    return sorted(c for c in counts if c >= 2 and c <= max(2, n))


def process_counts(n: int, cpus: int, max_workers: int | None) -> list[int]:
    """Up to twice the CPUs: a call that waits part of the time leaves its core to another
    worker (the model tells when that pays)."""
    top = min(_PROCESSES_PER_CPU * cpus, n, max_workers or _PROCESSES_PER_CPU * cpus)
    return list(range(2, top + 1))


def best_candidates(
    profile: Profile,
    n: int,
    cpus: int,
    ovh: Overheads,
    executors: Iterable[str],
    max_workers: int | None = None,
    is_warm: Callable[[str, int], bool] = lambda e, j: False,
    startup_share: float = 1.0,
    corrections: dict[str, float] | None = None,
    chunksize: int | None = None,
    background: float = 0.0,
    apart: float = 0.0,
) -> dict[str, Candidate]:
    """The fastest configuration of each allowed executor type (at most one per type).

    When serial is allowed, types that cannot beat it are not evaluated: threads when calls do
    not overlap at all, processes (and interpreters) when the whole serial run is shorter than
    one round trip; interpreters also when calls do not compute (``interpreters_may_pay``)."""
    corrections = corrections or {}
    out: dict[str, Candidate] = {}
    executors = set(executors)
    if "serial" in executors or not executors:
        out["serial"] = Candidate("serial", 1, chunksize or max(1, n),
                                  predicted_seconds("serial", 1, 1, profile, n, cpus, ovh,
                                                    corrections=corrections,
                                                    background=background, apart=apart))
    if n < 2 or max_workers == 1:
        return out
    prune = "serial" in executors
    counts: dict[ExecutorType, list[int]] = {}
    if "thread" in executors and (not prune or thread_parallel_fraction(profile) >= _MIN_THREAD_OVERLAP):
        counts["thread"] = thread_counts(n, cpus, max_workers)
    cannot_pay = prune and n * profile.per_item_seconds < ovh.process_latency
    if "process" in executors and profile.picklable and not cannot_pay:
        counts["process"] = process_counts(n, cpus, max_workers)
    too_short = prune and n * profile.per_item_seconds < ovh.interpreter_latency
    if "interpreter" in executors and not too_short and (
            interpreters_may_pay(profile) if prune else profile.picklable):
        counts["interpreter"] = process_counts(n, cpus, max_workers)
    for executor, workers in counts.items():
        by_workers: dict[int, Candidate] = {}
        for w in workers:
            for c in [chunksize] if chunksize else chunk_candidates(n, w):
                s = predicted_seconds(executor, w, c, profile, n, cpus, ovh, is_warm,
                                      startup_share, corrections, background, apart)
                if w not in by_workers or s < by_workers[w].seconds:
                    by_workers[w] = Candidate(executor, w, c, s)
        if by_workers:
            fastest = min(c.seconds for c in by_workers.values())
            out[executor] = min((c for c in by_workers.values()
                                 if c.seconds <= fastest * FEWER_WORKERS_WITHIN), key=lambda c: c.n_jobs)
    return out


def predicted_seconds(
    executor: ExecutorType,
    n_jobs: int,
    chunksize: int,
    profile: Profile,
    n: int,
    cpus: int,
    ovh: Overheads,
    is_warm: Callable[[str, int], bool] = lambda e, j: False,
    startup_share: float = 1.0,
    corrections: dict[str, float] | None = None,
    background: float = 0.0,
    apart: float = 0.0,
) -> float:
    """The predicted wall time of one configuration beside ``background`` tasks that want the
    CPUs too, corrected by what earlier runs of it showed of the model's error."""
    fix = (corrections or {}).get(executor, 1.0)
    if executor == "serial":
        return serial_seconds(profile, n, cpus, background, apart) * fix
    warm = is_warm(executor, n_jobs)
    if executor == "thread":
        return thread_seconds(profile, n, n_jobs, chunksize, cpus, ovh, warm, background,
                              apart) * fix
    if executor == "interpreter":
        return interpreter_seconds(profile, n, n_jobs, chunksize, cpus, ovh, warm,
                                   startup_share, background, apart) * fix
    return process_seconds(profile, n, n_jobs, chunksize, cpus, ovh, warm, startup_share,
                           background, apart) * fix


def choose(candidates: dict[str, Candidate], min_speedup: float) -> Candidate:
    """Serial unless the fastest parallel candidate beats it by ``min_speedup``; threads over
    processes or interpreters when their predictions are within ``PREFER_THREADS_WITHIN`` of
    each other (no copies, no pickling, less memory, and a prediction is not more exact than
    that). Processes over interpreters unless interpreters are ``PREFER_PROCESSES_WITHIN``
    faster."""
    serial = candidates.get("serial")
    parallel = [c for k, c in candidates.items() if k != "serial"]
    best = min(parallel, key=lambda c: c.seconds, default=None)
    process = candidates.get("process")
    if (best is not None and best.executor_type == "interpreter" and process is not None
            and process.seconds <= best.seconds * PREFER_PROCESSES_WITHIN):
        best = process
    thread = candidates.get("thread")
    if (best is not None and best.executor_type in ("process", "interpreter") and thread is not None
            and thread.seconds <= best.seconds * PREFER_THREADS_WITHIN):
        best = thread
    if serial is None:
        return best if best is not None else Candidate("serial", 1, 1, 0.0)
    if best is not None and best.seconds * min_speedup < serial.seconds:
        return best
    return serial
