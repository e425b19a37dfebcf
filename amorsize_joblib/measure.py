"""Measuring a function nobody has seen before, on the first tasks of its joblib call.

The tasks run one at a time, each timed where it runs (``amorsize.pools.worker.run_timed``, the
clocks ``amorsize.map`` measures with), until a few say what a task costs; then, when threads
may run the call, a few more run at once on two threads (the probe's overlap test, as for
``amorsize.map`` and the Dask scheduler), which tells C code that releases the GIL (hashing,
compression, numpy) from pure-Python work. Every result is kept: measuring computes no task
twice. A task still running after ``PROBE_WAIT_SECONDS`` is not waited for: it is slow enough
to decide on, and the rest of the call goes ahead while it finishes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from amorsize.optimizer.probe import CLEAR_OVERLAP, PAIR_TESTS, Probe, calls_per_thread
from amorsize.pools import worker
from amorsize.workload import Profile

PROBE_MAX_TASKS = 8
PROBE_MIN_TASKS = 3
PROBE_ENOUGH_SECONDS = 0.005
PROBE_MAX_SECONDS = 0.03
PROBE_WAIT_SECONDS = 0.05
# an overlap test due but never made (joblib's batch_size fixed at 1 gives no batch to make it
# on) is given up after this many tasks timed one at a time, or this long
GIVE_UP_TASKS = 2 * PROBE_MAX_TASKS
GIVE_UP_SECONDS = 0.1


@dataclass
class Measured:
    """What ``Measurement.run`` made of a list of tasks: the results of the first ones, in
    order, and the task after them when it is still running (its future gives
    ``(results, wall, cpu, blocked)``)."""

    results: list
    pending: Future | None = None


class Measurement:
    """The probe of one joblib call, fed task by task until the plan can be made.

    ``measuring_thread(fn, *args)`` runs a timed task on a thread the caller can stop waiting
    for (None: in this thread, e.g. when already on it); ``thread_pair()`` leases the two-thread
    pool of the overlap test (None: no test, as threads may not run the call).
    """

    def __init__(self, measuring_thread: Callable[..., Future] | None,
                 thread_pair: Callable[[], AbstractContextManager[Any]] | None) -> None:
        self.probe = Probe("joblib")
        self.measuring_thread = measuring_thread
        self.thread_pair = thread_pair
        self.overlap_tests = 0
        # the function and the first two tasks' ((args, kwargs), result): what would cross to
        # a process worker, and which large arguments every task carries
        self._shipped: list = []
        self._func: Any = None

    def __len__(self) -> int:
        """Tasks measured: one at a time, or two at once."""
        return len(self.probe) + self.probe.n_overlap

    def batch_size(self) -> int:
        """Tasks the next joblib batch should hold: one, or the tasks of the overlap tests."""
        return PAIR_TESTS * self.test_size() or 1

    def test_size(self) -> int:
        """Tasks of one overlap test when it is due, else 0: once tasks timed one at a time
        say what a task costs, unless it was made, cannot be (no threads; tasks too short,
        or too slow to run unwatched), or was given up on."""
        probe = self.probe
        n, spent = len(probe), probe.seconds
        if (self.thread_pair is None or self._overlap_known()
                or not (n >= PROBE_MIN_TASKS or spent >= PROBE_MAX_SECONDS)
                or n >= GIVE_UP_TASKS or spent >= GIVE_UP_SECONDS):
            return 0
        per_task = probe.profile().per_item_seconds
        return 2 * calls_per_thread(per_task) if per_task <= PROBE_WAIT_SECONDS else 0

    def enough(self) -> bool:
        """Whether the plan can be made: tasks timed one at a time say what a task costs,
        and no overlap test is due."""
        n, spent = len(self.probe), self.probe.seconds
        timed = (n >= PROBE_MAX_TASKS or (n >= PROBE_MIN_TASKS and spent >= PROBE_ENOUGH_SECONDS)
                 or spent >= PROBE_MAX_SECONDS)
        return timed and not self.test_size()

    def _overlap_known(self) -> bool:
        """A test showed a clear overlap, or ``PAIR_TESTS`` were made (as ``Probe.overlap``
        decides for ``amorsize.map``; here the tests may come from several batches)."""
        scaling = self.probe.thread_scaling
        return scaling is not None and (scaling >= CLEAR_OVERLAP
                                        or self.overlap_tests >= PAIR_TESTS)

    def profile(self) -> Profile | None:
        if not len(self.probe):
            return None
        self._observe_shipping()
        return self.probe.profile()

    def _observe_shipping(self) -> None:
        """What the first tasks would take to a process worker, where a chunk's large
        arguments cross through shared memory (``amorsize_joblib.chunks.PoolBatches``): one
        the tasks share crosses once per call, not with every chunk."""
        if self._shipped:
            self.probe.observe_shipping(self._func, self._shipped, shared_arguments=True)
            self._shipped = []

    def run(self, tasks: list, run_tasks: Callable[[list], list],
            decide: Callable[[], bool]) -> Measured:
        """Measure ``tasks`` (``run_tasks(some)`` computes some of them, results in order)
        until ``decide()`` is called, once the probe is ``enough`` or a task outlasts the
        wait; ``decide()`` makes the plan and says whether it runs on a pool (the caller then
        sends the tasks left there, and a task still running is not waited for)."""
        results: list = []
        while len(results) < len(tasks):
            rest = tasks[len(results):]
            made = self._overlap(rest, run_tasks) if self.test_size() else []
            if made:
                results += made
            else:
                out, pending = self._one(rest[0], run_tasks)
                if pending is not None:
                    if decide():
                        return Measured(results, pending)
                    return Measured(results + pending.result()[0])
                results += out
            if self.enough():
                decide()
                return Measured(results)
        return Measured(results)

    def _one(self, task: Any, run_tasks: Callable[[list], list]) -> tuple[list, Future | None]:
        """Run and time one task; (its results, None), or ([], its future) if it outlasts the
        wait, counted meanwhile at what it took so far (a lower bound) and as computing."""
        if self.measuring_thread is None:
            outs, walls, cpus, blocked = worker.run_timed(run_tasks, [[task]], math.inf)
        else:
            started = worker.now()[0]
            future = self.measuring_thread(worker.run_timed, run_tasks, [[task]], math.inf)
            try:
                outs, walls, cpus, blocked = future.result(timeout=PROBE_WAIT_SECONDS)
            except TimeoutError:
                if future.done():
                    raise
                elapsed = worker.now()[0] - started
                self.probe.observe(elapsed, elapsed)
                return [], _first_of(future)
        self.probe.observe(walls[0], cpus[0], blocked[0])
        if not self.probe.pickling:
            func, args, kwargs = task
            self._func = func
            self._shipped.append(((args, kwargs), outs[0][0]))
            if len(self._shipped) == 2:
                self._observe_shipping()
        return outs[0], None

    def _overlap(self, tasks: list, run_tasks: Callable[[list], list]) -> list:
        """The overlap tests that the first of ``tasks`` make: the results of the tasks they
        ran. The largest overlap of all tests made so far is kept: outside load only ever
        makes overlap look smaller."""
        assert self.thread_pair is not None
        size, before = self.test_size(), self.probe.thread_scaling

        def run(keys: list) -> list:
            return run_tasks([tasks[k] for k in keys])

        made = self.probe.overlap_results(range(len(tasks)), run, self.thread_pair)
        if made:
            self.overlap_tests += len(made) // size
            self.probe.thread_scaling = max(before or 0.0, self.probe.thread_scaling or 0.0)
        return [made[k] for k in range(len(made))]


def _first_of(future: Future) -> Future:
    """``run_timed``'s future as one of a batch's parts: ``(results, wall, ...)``."""
    part: Future = Future()

    def copy(done: Future) -> None:
        if done.cancelled():
            part.cancel()
        elif done.exception() is not None:
            part.set_exception(done.exception())
        else:
            outs, walls, cpus, _ = done.result()
            part.set_result((outs[0], walls[0], cpus[0]))

    future.add_done_callback(copy)
    return part
