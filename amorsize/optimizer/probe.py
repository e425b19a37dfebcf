"""The probe: observations of real calls in, a ``Profile`` out -- for every front end.

``amorsize.map``/``optimize`` (``sampling`` picks the items), the joblib backend (the first
tasks of a call) and the Dask scheduler (a graph's root tasks) see work differently, but they
measure it here, the same way: each call timed where it ran with the same two clocks
(``worker.now``: wall time and this process's CPU time, so a call that uses several cores
itself shows a CPU/wall ratio above 1), sizes and times of what would travel to a process with
the serializer the pools use (cloudpickle), and the two-thread overlap test. Front ends feed
observations; none keeps statistics of its own.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from amorsize import system
from amorsize.pools import worker
from amorsize.workload import Profile

CPU_CLOCK_MIN_SECONDS = 2e-3
# the overlap test: each of its two threads makes about a millisecond of calls, at most eight;
# shorter calls would time the handing out of work, longer ones cost too much to test. Beside
# other tasks that want a CPU, about 10 ms: a thread woken there may wait for a core for a
# scheduler tick, which in a millisecond's test hides most of the overlap
PAIR_MIN_SECONDS = 10e-6
PAIR_TARGET_SECONDS = 1e-3
PAIR_TARGET_BUSY_SECONDS = 10e-3
PAIR_MAX = 8
PAIR_MAX_SECONDS = 0.25
PAIR_TESTS = 3  # at most, while none shows a clear overlap (``Probe.overlap``)
PAIR_ITEMS = PAIR_TESTS * 2 * PAIR_MAX  # the most calls the tests make
CLEAR_OVERLAP = 1.6
_COMPUTING = 0.3
_START_TOGETHER_SECONDS = 0.2


@dataclass
class Sample:
    """A measured profile, and the results of the calls made to measure it (by the caller's
    key: an item's index, a task's key), which are never computed again; ``seconds`` is how long
    each timed call took (the calls of the two-thread test are not timed one by one)."""

    profile: Profile
    results: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


class Probe:
    """Collects observations of one function's calls and turns them into a ``Profile``."""

    def __init__(self, measured_by: str) -> None:
        self.measured_by = measured_by
        self.walls: list[float] = []
        self.positions: list[float] = []
        self.cpus: list[float] = []
        self.blocked: list[int] = []
        self.pickling: dict[str, Any] = {}
        self.thread_scaling: float | None = None
        self.n_overlap = 0

    def __len__(self) -> int:
        return len(self.walls)

    @property
    def seconds(self) -> float:
        """Wall time of the calls observed so far."""
        return sum(self.walls)

    def observe(self, wall: float, cpu: float, blocked: int = -1,
                position: float | None = None) -> None:
        """One call that took ``wall`` seconds, ``cpu`` of them on this process's CPUs, during
        which its thread blocked ``blocked`` times (-1: unknown; see ``worker.waits``), on the
        item at ``position`` in the input (default: calls are observed in input order)."""
        self.positions.append(len(self.walls) if position is None else position)
        self.walls.append(wall)
        self.cpus.append(cpu)
        self.blocked.append(blocked)

    def observe_shipping(self, func: Any, pairs: Iterable[tuple[Any, Any]],
                         shared_arguments: bool = False) -> None:
        """What would travel to a process worker: ``func`` once, then each (argument, result)
        pair; measured once per probe, on the first pairs it is given. ``shared_arguments``:
        the arguments' large buffers go through shared memory (``shipping``)."""
        if not self.pickling:
            self.pickling = shipping(func, pairs, shared_arguments)

    def profile(self) -> Profile:
        """The profile of the calls observed. Calls that were off the CPU without ever blocking
        were pre-empted by other work on a busy machine, not waiting: they count as computing,
        and the part of a core they got (``cpu_share``) is taken out of their time, so that
        ``per_item_seconds`` is what a call takes on a core of its own; the decision charges
        the load it finds when it plans (``cost_model.pace``)."""
        walls = self.walls
        total = sum(walls)
        cpu_ratio = sum(self.cpus) / total if total >= CPU_CLOCK_MIN_SECONDS else 1.0
        share = 1.0
        if cpu_ratio < 1.0 and self.blocked and all(b == 0 for b in self.blocked):
            share, cpu_ratio = cpu_ratio, 1.0
            walls = [wall * share for wall in walls]
        typical = typical_seconds(walls)
        per_item = max(typical - timing_overhead(), 0.1 * typical)
        spread = statistics.pstdev(walls) / per_item if len(walls) > 1 and per_item > 0 else 0.0
        return Profile(
            per_item_seconds=per_item,
            per_item_spread=spread,
            cost_trend=rank_correlation(walls, self.positions),
            cpu_ratio=cpu_ratio,
            thread_scaling=self.thread_scaling,
            n_measured=len(walls) + self.n_overlap,
            measured_by=self.measured_by,
            cpu_share=share,
            **self.pickling,
        )

    def overlap(self, pool: Any, runs: Sequence[Callable[[], Any]], serial_seconds: float,
                more: Sequence[Sequence[Callable[[], Any]]] = ()) -> list[list]:
        """Run the two ``runs`` at once on two threads of ``pool`` and compare with
        ``serial_seconds``, what they take one after the other: 1.0 if the GIL serialised them,
        up to 2.0 if they overlapped (I/O, C code that releases the GIL, a free-threaded
        interpreter). Returns what the runs returned, one list per pair of runs made.

        Anything short of a clear overlap may be the machine's doing rather than the
        function's: the other core taken by someone else, or a thread woken onto the busy
        core and moved only milliseconds later (short calls of C code that releases the GIL
        looked GIL-bound that way). So the test is made again on each pair in ``more`` (other
        calls: none is made twice, and their results are kept) until one shows a clear
        overlap, and the largest figure is kept: outside load only ever makes overlap look
        smaller. Calls that hold the GIL show about 1.0 every time.

        Only calls that compute are pinned to a core each (``_two_cores``): calls that mostly
        wait are woken wherever a core is free first, as they are in a run, and as the calls
        timed one at a time that ``serial_seconds`` comes from were; pinned to cores busy with
        other work, their waits stretch and their overlap reads as none.
        """
        pin = self.profile().cpu_ratio >= _COMPUTING
        outcomes, scaling = _two_at_once(pool, runs, serial_seconds, pin)
        made = [outcomes]
        for again in more:
            if scaling >= CLEAR_OVERLAP:
                break
            outcomes, repeated = _two_at_once(pool, again, serial_seconds, pin)
            made.append(outcomes)
            scaling = max(scaling, repeated)
        self.thread_scaling = scaling
        return made

    def overlap_on(self, pool: Any, tests: list[list[Any]],
                   run: Callable[[list[Any]], list]) -> list[list]:
        """``overlap`` on groups from ``overlap_tests``: half of a group's keys on each thread,
        ``run(keys)`` giving their results in order. Returns the results of each group tested,
        in order (groups after a clear overlap are not run)."""
        halves = [[group[:len(group) // 2], group[len(group) // 2:]] for group in tests]
        runs = [[functools.partial(run, half) for half in pair] for pair in halves]
        made = self.overlap(pool, runs[0], len(tests[0]) * self.profile().per_item_seconds,
                            runs[1:])
        results = [[*first, *second] for first, second in made]
        self.n_overlap += sum(map(len, results))
        return results

    def overlap_results(self, keys: Sequence[Any], run: Callable[[list[Any]], list],
                        lease: Callable[[], AbstractContextManager[Any]] | None) -> dict:
        """The overlap test on ``keys`` (grouped by ``overlap_tests``), on the two-thread pool
        that ``lease()`` holds, entered only when there is a test to make; None: no test (threads
        not allowed, or nested in a worker whose threads may be the ones waiting). Returns
        ``{key: result}`` of the calls made."""
        tests = [] if lease is None else overlap_tests(keys, self.profile().per_item_seconds)
        if lease is None or not tests:
            return {}
        with lease() as pool:
            made = self.overlap_on(pool, tests, run)
        return {key: result for test, results in zip(tests, made)
                for key, result in zip(test, results)}


def overlap_tests(keys: Sequence[Any], per_item: float) -> list[list[Any]]:
    """``keys`` (items, tasks) grouped for the overlap test: each group two threads' worth of
    calls of ``per_item`` seconds, at most ``PAIR_TESTS`` groups; none when the calls are too
    short or too long to test, or there are too few keys for one group. Longer tests when other
    tasks want a CPU now (``PAIR_TARGET_BUSY_SECONDS``)."""
    busy = system.runnable_elsewhere() >= 1
    size = 2 * calls_per_thread(per_item, PAIR_TARGET_BUSY_SECONDS if busy else PAIR_TARGET_SECONDS)
    if not size:
        return []
    return [list(keys[i:i + size]) for i in range(0, len(keys) - size + 1, size)][:PAIR_TESTS]


def calls_per_thread(per_item: float, target: float = PAIR_TARGET_SECONDS) -> int:
    """How many calls each thread of the overlap test makes for about ``target`` seconds of
    them; 0 when calls of ``per_item`` seconds are too short or too long to test."""
    if not PAIR_MIN_SECONDS <= per_item <= PAIR_MAX_SECONDS:
        return 0
    return max(1, min(PAIR_MAX, math.ceil(target / per_item)))


def _two_at_once(pool: Any, runs: Sequence[Callable[[], Any]],
                 serial_seconds: float, pin: bool = True) -> tuple[list, float]:
    """The runs at once on two threads; how many of them ran at a time, on average.

    Both start together (a barrier): a pool hands its second task to whichever thread is free
    first, and a thread woken late finds the first one done and takes the second task too. A
    barrier that breaks (the pool's other thread is busy with someone else's work) leaves the
    runs one after the other, and no overlap is claimed.

    Work that computes is judged by the CPU time each thread got (their sum over the wall time
    they took together: 1.0 when the GIL let one run at a time, 2.0 when both ran), which needs
    no serial baseline -- a baseline measured a moment earlier, on a machine whose load
    changes, is what made this test lie. Work that mostly waits gets no CPU time to judge by:
    it is set against ``serial_seconds``, what the runs take one after the other."""
    start = threading.Barrier(len(runs), timeout=_START_TOGETHER_SECONDS)
    cores = _two_cores() if pin else [None, None]
    threads_before = _thread_ids()
    began = [threading.Event() for _ in runs]
    futures: list[Future] = [pool.submit(_timed, run, start, core, event)
                             for run, core, event in zip(runs, cores, began)]
    outcomes = []
    for future, run, event in zip(futures, runs, began):
        # a run that has not begun by the time the barrier gave up waits for a pool thread
        # that may never come (this caller is itself one of the pool's threads): run it here
        if not event.wait(2 * _START_TOGETHER_SECONDS) and future.cancel():
            outcomes.append(_timed(run, start))
        else:
            outcomes.append(future.result())
    _unpin_new_threads(threads_before)
    together = max(o[2] for o in outcomes) - min(o[1] for o in outcomes)
    if start.broken:
        return [o[0] for o in outcomes], 1.0
    if together <= 0:
        return [o[0] for o in outcomes], 2.0
    cpu = sum(o[3] for o in outcomes)
    on_cpu = cpu / sum(o[2] - o[1] for o in outcomes)
    ran = cpu / together if on_cpu >= _COMPUTING else serial_seconds / together
    return [o[0] for o in outcomes], max(0.5, min(2.0, ran))


def _two_cores() -> list[int | None]:
    """Two of the cores this process may use, one per run of the test (Linux), or no pinning.

    A thread is woken onto the core of the thread that woke it and moved to an idle core only
    milliseconds later: both runs of a sub-millisecond test shared one core (measured on 2
    cores), and C code that releases the GIL looked GIL-bound. The runs of the overlap test are
    pinned to a core each (the pool's threads get their affinity back after), so the test
    measures the calls, not where the scheduler put them first; a real run lasts long enough
    for the scheduler to spread its threads. Threads the calls start meanwhile get every core
    back after the test (``_unpin_new_threads``); a process they start keeps the one core."""
    getter = getattr(os, "sched_getaffinity", None)
    cores = sorted(getter(0)) if getter is not None else []
    return [cores[0], cores[1]] if len(cores) >= 2 else [None, None]


def _timed(run: Callable[[], Any], start: threading.Barrier, core: int | None = None,
           began: threading.Event | None = None) -> tuple[Any, float, float, float]:
    if began is not None:
        began.set()
    with contextlib.ExitStack() as stack:
        if core is not None:
            stack.enter_context(_pinned(core))
        with contextlib.suppress(threading.BrokenBarrierError):
            start.wait()
        cpu = time.thread_time()
        begin = time.perf_counter()
        out = run()
        return out, begin, time.perf_counter(), time.thread_time() - cpu


@contextlib.contextmanager
def _pinned(core: int) -> Iterator[None]:
    """This thread on ``core`` only, for the block (``sched_setaffinity(0)`` is per thread)."""
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {core})
    except OSError:  # a core taken away meanwhile: run unpinned
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, before)


def _thread_ids() -> set[str]:
    """This process's threads (Linux), to find the ones a pinned run started."""
    try:
        return set(os.listdir("/proc/self/task"))
    except OSError:
        return set()


def _unpin_new_threads(before: set[str]) -> None:
    """Threads the function started during the test (a lazily made executor, an OpenMP team
    made per calling thread) inherited their creator's single core: give them back every core
    this process may use, as they would have had without the test."""
    new = _thread_ids() - before
    if not new:
        return
    cores = os.sched_getaffinity(0)
    for tid in new:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), cores)


def rank_correlation(values: Sequence[float], positions: Sequence[float] | None = None) -> float:
    """Spearman's rank correlation of ``values`` with ``positions`` (default: their order), -1
    to 1 (tied values share their mean rank): whether costs rise or fall along the input. The
    first call observed is left out (it pays for warm-up), and fewer than 7 after it say
    nothing: 4 random values are in order or reversed 1 time in 12."""
    values = values[1:]
    n = len(values)
    if n < 7:
        return 0.0
    value_ranks = _ranks(values)
    position_ranks = _ranks(positions[1:]) if positions is not None else [float(i) for i in range(n)]
    mean = (n - 1) / 2
    covariance = sum((r - mean) * (p - mean) for r, p in zip(value_ranks, position_ranks))
    spread = math.sqrt(sum((r - mean) ** 2 for r in value_ranks)
                       * sum((p - mean) ** 2 for p in position_ranks))
    return covariance / spread if spread > 0 else 0.0


def _ranks(values: Sequence[float]) -> list[float]:
    """0-based ranks of ``values``, ties sharing their mean rank."""
    n = len(values)
    order = sorted(range(n), key=values.__getitem__)
    ranks = [0.0] * n
    start = 0
    while start < n:
        end = start
        while end + 1 < n and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2
        start = end + 1
    return ranks


def typical_seconds(walls: list[float]) -> float:
    """Mean time per call, ignoring a first call that was a warm-up outlier (imports, caches)."""
    if len(walls) >= 3:
        rest = walls[1:]
        if walls[0] > 3 * statistics.median(rest):
            return statistics.fmean(rest)
    return statistics.fmean(walls) if walls else 0.0


@functools.cache
def timing_overhead() -> float:
    """Seconds the timing around one call adds (two clocks read twice, a call): left in, it
    would make a function of a few tens of nanoseconds look many times dearer than it is, and
    parallel worth it."""
    def nothing(x: Any) -> Any:
        return x

    laps = []
    for _ in range(200):
        t0, _ = worker.now()
        nothing(None)
        t1, _ = worker.now()
        laps.append(t1 - t0)
    return statistics.median(laps)


def shipping(func: Any, pairs: Iterable[tuple[Any, Any]],
             shared_arguments: bool = False) -> dict[str, Any]:
    """Sizes and round-trip times of (argument, result) pairs through cloudpickle, as the
    process pools ship them, and whether processes can run this at all: ``{}`` if there was
    nothing to measure, ``picklable=False`` with the reason if something cannot travel. The
    part of the function's bytes that crosses once, through shared memory, is counted apart
    too (``shared_bytes``), without copying it to count it.

    ``shared_arguments`` (the joblib backend's chunks, ``amorsize.pools.payloads.Placed``):
    the arguments' large buffers go through shared memory too. One that every pair carries (the
    same array) crosses once, like the function's, and is counted with them; one that differs
    from pair to pair still crosses with its item, and is counted with it."""
    import cloudpickle

    from amorsize.pools import payloads, shared
    from amorsize.pools import shipping as to_workers

    func_bytes = shared_bytes = 0
    if func is not None:
        try:
            payload, big = payloads.pickled_apart(func)
        except Exception as exc:  # noqa: BLE001 - any failure means: not for processes
            return {"picklable": False, "unpicklable_reason": f"the function: {exc}"}
        shared_bytes = sum(b.raw().nbytes for b in big)
        func_bytes = len(payload) + shared_bytes
    apart = shared_arguments and shared.available()
    sizes_in, sizes_out, seconds = [], [], []
    buffers_in: list[dict[tuple[int, int, int], int]] = []
    for argument, result in pairs:
        try:
            t0 = time.perf_counter()
            if apart:
                a, out_of_band = payloads.pickled_apart(argument)
                to_workers.loads(a, buffers=out_of_band)
                buffers_in.append({payloads.memory_of(b.raw())[1]: b.raw().nbytes for b in out_of_band})
            else:
                a = cloudpickle.dumps(argument, protocol=5)
                cloudpickle.loads(a)
            b = cloudpickle.dumps(result, protocol=5)
            cloudpickle.loads(b)
            seconds.append(time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001
            return {"picklable": False, "unpicklable_reason": f"an item or result: {exc}"}
        sizes_in.append(len(a))
        sizes_out.append(len(b))
    if not seconds:
        return {}
    if buffers_in:
        every = set(buffers_in[0]).intersection(*buffers_in[1:])
        once = sum(buffers_in[0][key] for key in every)
        func_bytes += once
        shared_bytes += once
        sizes_in = [size + sum(n for key, n in met.items() if key not in every)
                    for size, met in zip(sizes_in, buffers_in, strict=True)]
    return {
        "arg_bytes": statistics.fmean(sizes_in),
        "result_bytes": statistics.fmean(sizes_out),
        "pickle_seconds": statistics.fmean(seconds),
        "func_bytes": float(func_bytes),
        "shared_bytes": float(shared_bytes),
    }
