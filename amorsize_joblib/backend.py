"""The joblib backend "amorsize": optimizer-chosen executor and batch size, on shared warm pools.

joblib's ``Parallel`` hands a backend one ``BatchedCalls`` at a time and asks it how big the next
batch should be. This backend answers both from amorsize's optimizer (through the hook relay
``amorsize.plugins``): the first tasks of an unknown function are run one by one in the calling
thread and timed there (wall and CPU time, no dispatch noise, results kept), then one batch of a
few tasks runs on two threads at once (the probe's overlap test), the optimizer picks
serial, threads or processes and a chunk size, and what was learned is kept per function so the
next call starts with the right plan and skips measuring. A batch is then run where the plan says:
in the calling thread (a serial plan costs no hand-off at all), or split into chunks of the plan's
size on a shared warm pool, timed inside the worker. Shared pools are never shut down here: an
abort cancels only this call's own pending chunks.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future, InvalidStateError, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypedDict

from joblib.parallel import (
    FallbackToBackend,
    ParallelBackendBase,
    SequentialBackend,
    ThreadingBackend,
)

from amorsize import plugins, system
from amorsize.errors import (
    EXECUTOR_TYPES,
    ExecutorType,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    WorkerCrashedError,
    check_executor_type,
    check_flag,
    check_min_speedup,
    check_positive_int,
)
from amorsize.optimizer.learned import function_key
from amorsize.optimizer.probe import PAIR_TESTS, Probe, calls_per_thread, overlap_tests
from amorsize.options import DEFAULTS, complete
from amorsize.plan import Plan
from amorsize.pools.worker import inside_worker, now, waits, where_running
from amorsize.run.control import Run
from amorsize.workload import Profile, Workload

PROBE_MAX_TASKS = 8
PROBE_MIN_TASKS = 3
PROBE_ENOUGH_SECONDS = 0.005
PROBE_MAX_SECONDS = 0.03
PROBE_WAIT_SECONDS = 0.05
SERIAL_FIRST_BATCH = 4096
_MAX_BATCH = 1 << 22
# require="sharedmem" (or prefer="threads"): every executor that shares the caller's memory
_SHAREDMEM_EXECUTORS: tuple[ExecutorType, ...] = tuple(e for e in EXECUTOR_TYPES if e != "process")
MIN_SPEEDUP = DEFAULTS["min_speedup"]


class BackendOptions(TypedDict, total=False):
    """The keyword options of ``AmorsizeBackend``, as given to
    ``joblib.parallel_config(backend="amorsize", ...)``."""

    nesting_level: int | None
    inner_max_num_threads: int | None
    n_jobs_cap: int | None
    min_speedup: float
    executor: ExecutorType | None
    progress: bool


# given to Parallel(...) instead, they would reach configure() and be ignored
_OPTIONS_NOT_OF_PARALLEL = ("executor", "min_speedup", "progress", "inner_max_num_threads")


def run_joblib_batch(batch: Any, inner_max_num_threads: int | None = None) -> tuple[list, float, float]:
    """Run a joblib batch where it lands (caller, pool thread or process worker), timed there.

    Returns the results, the wall seconds and the CPU seconds (the probe's clocks), so the optimizer
    learns compute time, not dispatch-to-callback time. On a process pool the batch, its results
    and its errors travel by value (cloudpickle, done by amorsize's pools), so lambdas,
    ``__main__`` functions and exception classes work as with loky.
    """
    start, cpu0 = now()
    try:
        if inner_max_num_threads is None:
            results = batch()
        else:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=inner_max_num_threads):
                results = batch()
    except Exception as exc:
        exc.add_note(f"a task of a joblib batch of {len(batch)}, run {where_running()}")
        raise
    end, cpu1 = now()
    return results, end - start, cpu1 - cpu0


def _probe_batch(batch: Any, inner_max_num_threads: int | None) -> tuple[list, float, float, int]:
    """``run_joblib_batch`` for a task being measured: also how often its thread blocked
    (``amorsize.pools.worker.waits``), which tells waiting from being pre-empted."""
    before = waits()
    results, wall, cpu = run_joblib_batch(batch, inner_max_num_threads)
    return results, wall, cpu, -1 if before < 0 else waits() - before


class AmorsizeBackend(ParallelBackendBase):
    """A joblib backend whose executor, worker count and batch size come from amorsize's plan.

    Capabilities are declared as joblib expects. ``supports_sharedmem`` is true because
    ``require="sharedmem"`` (or ``prefer="threads"``) restricts the plan to serial or threads
    instead of making joblib fall back to its threading backend. ``default_n_jobs = -1`` makes
    ``Parallel()`` inside ``parallel_config(backend="amorsize")`` run in parallel. Backend
    parameters: ``executor`` forces "serial", "thread" or "process" (the optimizer still sizes
    workers and batches), ``min_speedup`` is the margin parallel must win by, ``progress=True``
    reports tasks done to the ``amorsize_run_progress`` hook. They are checked when the backend
    is made and again on every call (see ``check_options``). Nested calls get joblib's
    threading backend capped at the cores left per outer worker (or run sequentially), so
    nothing oversubscribes.
    """

    default_n_jobs = -1
    supports_retrieve_callback = True
    supports_return_generator = True
    supports_timeout = True
    supports_inner_max_num_threads = True
    supports_sharedmem = True
    uses_threads = False
    _serial_batch: int  # set per call by _reset_call

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        n_jobs_cap: int | None = None,
        min_speedup: float = MIN_SPEEDUP,
        executor: ExecutorType | None = None,
        progress: bool = False,
        **backend_kwargs: Any,
    ) -> None:
        super().__init__(
            nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads,
            **backend_kwargs,
        )
        self.n_jobs_cap = n_jobs_cap
        self.min_speedup = min_speedup
        self.executor = executor
        self.progress = progress
        self.check_options()
        self.parallel: Any = None
        self.plan: Plan | None = None
        self.batch_sizes: list[int] = []
        self._lock = threading.Lock()
        self._local = threading.local()
        self._helper_executor: ThreadPoolExecutor | None = None
        self._n_jobs = 1
        self._max_workers: int | None = None
        self._executors: tuple[ExecutorType, ...] = EXECUTOR_TYPES
        self._reset_call()

    def __reduce__(self) -> tuple:
        """Travel to workers inside each batch as the nested backend: settings only, no state."""
        return (type(self), (self.nesting_level, self.inner_max_num_threads, self.n_jobs_cap,
                             self.min_speedup, self.executor))

    def check_options(self) -> None:
        """Refuse a bad option, naming it and the fix; at construction and on every call (they
        are attributes a caller may change in between). Options all at their defaults are valid:
        a call in a loop checks nothing more."""
        if (self.min_speedup is MIN_SPEEDUP and self.executor is None and self.progress is False
                and self.n_jobs_cap is None and self.inner_max_num_threads is None
                and not self.backend_kwargs):
            return
        if self.backend_kwargs:
            complete("AmorsizeBackend", self.backend_kwargs, BackendOptions)
        check_min_speedup("min_speedup", self.min_speedup)
        if self.executor is not None:
            check_executor_type("executor", self.executor)
        check_flag("progress", self.progress)
        check_positive_int("inner_max_num_threads", self.inner_max_num_threads, allow_none=True)
        check_positive_int("n_jobs_cap", self.n_jobs_cap, allow_none=True)

    @property
    def run(self) -> Run | None:
        """The run of the current call once its plan is made (see ``amorsize.run.control.Run``)."""
        return self._run

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """Workers joblib slices the work for: -1 means amorsize's usable CPUs (affinity and
        cgroup quota aware), like joblib's ``cpu_count``."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs < 0:
            return max(system.usable_cpus() + 1 + n_jobs, 1)
        return n_jobs

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        """Resolve ``n_jobs`` and the allowed executors; nested calls are handed to joblib's own
        threading (capped) or sequential backend, as joblib does for its backends. The options
        are checked first, whatever runs the call."""
        self.check_options()
        for name in _OPTIONS_NOT_OF_PARALLEL:
            if name in backend_kwargs:
                raise InvalidArgumentTypeError(
                    f"{name} is an option of the joblib backend 'amorsize', not of Parallel: pass "
                    f"joblib.parallel_config(backend='amorsize', {name}=...), or "
                    f"Parallel(backend=AmorsizeBackend({name}=...))")
        level = self.nesting_level or 0
        if level > 0 or os.environ.get("AMORSIZE_IN_WORKER") == "1":
            if level > 1:
                raise FallbackToBackend(SequentialBackend(nesting_level=level))
            cap = self.n_jobs_cap or _worker_cap()
            raise FallbackToBackend(_CappedThreadingBackend(cap, nesting_level=level))
        effective = self.effective_n_jobs(n_jobs)
        if effective == 1:
            raise FallbackToBackend(SequentialBackend(nesting_level=level))
        sharedmem = require == "sharedmem" or prefer == "threads"
        self._executors = _SHAREDMEM_EXECUTORS if sharedmem else EXECUTOR_TYPES
        if self.executor is not None:
            if self.executor not in self._executors:
                raise InvalidArgumentError(
                    f"executor={self.executor!r} contradicts require={require!r}/prefer={prefer!r}"
                    ", which allow only serial or threads; drop one of them")
            self._executors = (self.executor,)
        requested = self.default_n_jobs if n_jobs is None else n_jobs
        self._max_workers = None if requested == -1 else effective
        self._n_jobs = effective
        self.parallel = parallel
        return effective

    def start_call(self) -> None:
        self._reset_call()

    def stop_call(self) -> None:
        """Tell the optimizer what the call took, so the next call of this function starts right;
        a call kept quiet to its end (serial, or measured throughout) says once that it is done."""
        quiet = self._verbose is not None and not self._aborting
        try:
            self._report()
        finally:
            self._close_run()
        if quiet and self.parallel is not None:
            self.parallel.print_progress()

    def _report(self) -> None:
        key, plan, run = self._key, self.plan, self._run
        if key is None or self._aborting:
            return
        if plan is None or run is None:
            if self._probe_profile() is not None:
                plugins.remember(key, self._probe_profile())
            return
        if run.n_items == 0:
            return
        if plugins.recall(key) is None:
            plugins.remember(key, Profile(run.compute_seconds / run.n_items,
                                          n_measured=run.n_items, measured_by="joblib"))
        run.finish(wall_seconds=time.perf_counter() - self._decided,
                   predicted_seconds=self._checkable_prediction(plan))

    @staticmethod
    def _checkable_prediction(plan: Plan) -> float | None:
        """The prediction to set against the wall time, so the optimizer corrects its pool model
        for this function (joblib's dispatch and polling included: they are a real cost of a
        pool under joblib). None when the item count was guessed, or for a serial plan, whose
        cost is its per-item time, which every report updates anyway."""
        if plan.executor_type == "serial" or plan.workload.n_items is None:
            return None
        return plan.predicted_seconds

    def terminate(self) -> None:
        """Release this call's pools and helper thread; the shared pools stay warm for the next
        caller (unless an abort had to stop work still running on them)."""
        self._close_run()
        helper, self._helper_executor = self._helper_executor, None
        if helper is not None:
            helper.shutdown(wait=False)

    def compute_batch_size(self) -> int:
        """Tasks per joblib batch: one while measuring (a slow task measured must not hold others
        back) but for one batch of the overlap test, then one wave of the plan's chunks
        (one chunk per worker), or everything left at once for a serial plan."""
        plan = self.plan
        if plan is None:
            return PAIR_TESTS * self._overlap_tasks() or 1
        if plan.executor_type != "serial":
            return max(1, min(_MAX_BATCH, plan.chunksize * plan.n_jobs))
        total = getattr(self.parallel, "n_tasks", None) or _last_count(self._key)
        if total:
            done = getattr(self.parallel, "n_dispatched_tasks", 0)
            return max(1, -(-(total - done) // self._n_jobs))
        self._serial_batch = min(_MAX_BATCH, self._serial_batch * 2)
        return self._serial_batch

    def submit(self, func: Any, callback: Callable | None = None) -> Future:
        """Run one joblib batch per the plan (measuring first if the function is new)."""
        if self.plan is not None and self.plan.executor_type != "serial":
            self._speak_again()  # the batches measured have all completed, quietly
        future: Future = Future()
        if callback is not None:
            future.add_done_callback(callback)
        self.batch_sizes.append(len(func))
        if self._key is None:
            self._identify(func)
        if self.plan is None or self.plan.executor_type == "serial":
            self._run_in_order(func, future)
        else:
            self._run_on_pool(func, future)
        return future

    def retrieve_result_callback(self, out: Future) -> list:
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel this call's run (``Run.cancel``): its pending chunks are dropped, and a shared
        pool still busy with its work -- or the measuring thread, if a task measured is still
        running -- is stopped and replaced, so the next call runs at full speed."""
        self._aborting = True
        if self._run is not None:
            self._run.cancel()
        unfinished = [f for f in self._measuring if not f.cancel() and not f.done()]
        if unfinished:
            self._probe_pool.terminate()
        self._close_run()

    def get_nested_backend(self) -> tuple[ParallelBackendBase, int | None]:
        """Inner calls get this backend at the next nesting level (so workers know the name
        "amorsize"), capped at the cores left per outer worker."""
        plan = self.plan
        outer = plan.n_jobs if plan is not None and plan.executor_type != "serial" else 1
        cap = max(1, system.usable_cpus() // max(1, outer))
        nested = AmorsizeBackend(
            nesting_level=(self.nesting_level or 0) + 1,
            inner_max_num_threads=self.inner_max_num_threads,
            n_jobs_cap=cap,
            min_speedup=self.min_speedup,
        )
        return nested, None

    def _reset_call(self) -> None:
        self.plan = None
        self._on_processes = False
        self.batch_sizes = []
        self._key: Hashable | None = None
        self._func: Any = None
        self._run: Run | None = None
        self._stack = contextlib.ExitStack()
        self._probe_pool: Any = None
        self._measuring: list[Future] = []
        self._runner: Any = None
        self._aborting = False
        self._observed = Probe("joblib")
        self._verbose: int | None = None
        self._serial_batch = SERIAL_FIRST_BATCH // 2
        self._decided = time.perf_counter()

    def _identify(self, batch: Any) -> None:
        """Key the call on its first task's function; a known function gets its plan now."""
        func = batch.items[0][0]
        self._func = func
        self._key = function_key(func)
        learned = plugins.recall(self._key)
        if learned is not None:
            self._decide(learned.profile, learned.runs, already_done=0, recalled=True)
        elif self.executor is not None and self.executor != "serial":
            self._use_forced_executor(self.executor)
        else:
            self._quiet()

    def _quiet(self) -> None:
        """Hold joblib's progress lines back while tasks run in the calling thread (measured
        ones, and a serial plan's batches): each completes inside joblib's first dispatch,
        before joblib knows it is iterating, so its ``verbose`` would print "Done N out of N ...
        finished" for each batch (20 such lines for 1,000 tasks)."""
        parallel = self.parallel
        verbose: int = getattr(parallel, "verbose", 0) or 0
        if parallel is not None and verbose:
            self._verbose, parallel.verbose = verbose, 0

    def _speak_again(self) -> None:
        if self._verbose is not None and self.parallel is not None:
            self.parallel.verbose, self._verbose = self._verbose, None

    def _use_forced_executor(self, executor: ExecutorType) -> None:
        """A forced pool executor never runs tasks in the caller, not even to measure: the first
        call runs one task per chunk on the pool and learns from the times taken there."""
        workload = Workload(
            None, "joblib", self._executors, self._max_workers, self.min_speedup, key=self._key)
        plan = Plan(
            executor_type=executor, n_jobs=self._n_jobs, chunksize=1,
            estimated_speedup=1.0, reasons=[
                f"executor={executor!r} forced by the caller and nothing measured yet: one "
                "task per chunk, timed in the workers, to size the next call's chunks"],
            profile=Profile(0.0, measured_by="none"), workload=workload, decided_by="joblib")
        self._open_run(plan)

    def _decide(self, profile: Profile, previous_runs: int, already_done: int,
                recalled: bool = False) -> None:
        total = getattr(self.parallel, "n_tasks", None)
        if total is None:
            total = _last_count(self._key)
        workload = Workload(
            n_items=total,
            source="joblib",
            executors=self._executors,
            max_workers=self._max_workers,
            min_speedup=self.min_speedup,
            previous_runs=previous_runs,
            key=self._key,
            already_done=already_done,
            recalled=recalled,
        )
        self._open_run(plugins.make_plan(self._func, profile, workload))
        self._decided = time.perf_counter()

    def _open_run(self, plan: Plan) -> None:
        """Start the call's run on the plan: lease its pool for the rest of the call."""
        total = getattr(self.parallel, "n_tasks", None) or _last_count(self._key)
        run = Run(plan, progress=self.progress, description=_name(self._func), total=total,
                  done=self.n_probed)
        self._stack.enter_context(run)
        if run.pool is not None:
            self._runner = run.pool.prepare(run_joblib_batch)
        self._on_processes = run.pool is not None and run.pool.uses_processes
        self._run = run
        self.plan = plan
        self._say_plan(plan)
        if plan.executor_type == "serial":
            self._quiet()

    def _say_plan(self, plan: Plan) -> None:
        """With ``verbose``, tell what runs the call: joblib's "concurrent workers" line is
        printed before any plan exists, so it shows the CPU count, not the plan's workers."""
        if self._verbose or getattr(self.parallel, "verbose", 0):
            where = "the calling thread" if plan.executor_type == "serial" else (
                f"{plan.n_jobs} {plan.executor_type}{'s' if plan.n_jobs > 1 else ''}, "
                f"chunks of {plan.chunksize}")
            print(f"[{self.parallel}]: amorsize runs it on {where} (estimated speedup "
                  f"{plan.estimated_speedup:.2f}x; plan.explain() says why)", file=sys.stderr)

    def _close_run(self) -> None:
        self._speak_again()
        self._run = None
        self._stack.close()

    def _on_measuring_thread(self, fn: Callable, *args: Any) -> Future:
        """Run ``fn(*args)`` on a thread of the shared pools held for the call: measured tasks
        run there (so the caller can stop waiting for a slow one), and serial batches when joblib
        has a timeout; an abort abandons what still runs there."""
        if self._probe_pool is None:
            self._probe_pool = self._stack.enter_context(plugins.leased_pool("thread", 1))
        future = self._probe_pool.submit(fn, *args)
        self._measuring = [f for f in self._measuring if not f.done()] + [future]
        return future

    def _run_in_order(self, batch: Any, future: Future) -> None:
        """Measure or run a serial batch, one after the other: in the calling thread (through a
        trampoline, so batches completing inside callbacks do not recurse), or on the measuring
        thread when ``timeout`` is set so that joblib can still time the call out (and an abort
        can abandon it)."""
        if getattr(self.parallel, "timeout", None) is not None:
            self._on_measuring_thread(self._run_here, batch, future)
            return
        queue = getattr(self._local, "queue", None)
        if queue is None:
            queue = self._local.queue = deque()
        queue.append((batch, future))
        if getattr(self._local, "running", False):
            return
        self._local.running = True
        try:
            while queue:
                self._run_here(*queue.popleft())
        finally:
            self._local.running = False

    def _run_here(self, batch: Any, future: Future) -> None:
        if future.done():
            return
        if self._aborting:
            future.cancel()
            return
        if self.plan is not None and self.plan.executor_type != "serial":
            self._run_on_pool(batch, future)
            return
        try:
            if self.plan is None:
                results = self._measure(batch, future)
                if results is None:
                    return
            else:
                results, wall, _ = run_joblib_batch(batch, self.inner_max_num_threads)
                self._record(len(results), wall)
        except BaseException as exc:  # noqa: BLE001 - delivered to joblib through the future
            _settle(future, exception=exc)
            return
        _settle(future, result=results)

    def _measure(self, batch: Any, future: Future) -> list | None:
        """Run the batch's tasks one at a time on the measuring thread, timing each, until the
        profile is good enough; then decide, and send what is left of the batch where the plan
        says (None: sent). A task still running after ``PROBE_WAIT_SECONDS`` is not waited for:
        it is slow enough to decide on, and the rest of the call goes ahead meanwhile. The
        batch's first tasks make the overlap test, when one is due."""
        cls, args = _batch_parts(batch)
        tasks, rest = args[0], args[1:]
        results: list = []
        while self._overlap_tasks():  # again if a test could not start (no overlap measured)
            tests = overlap_tests(tasks, self._observed.profile().per_item_seconds)
            measured = self._measure_overlap(cls, tests, rest) if tests else []
            if not measured:
                break
            results += measured
            tasks = tasks[len(measured):]
            if self._probe_is_enough():
                self._decide_from_probe()
        on_measuring_thread = getattr(self.parallel, "timeout", None) is not None
        for i, task in enumerate(tasks):
            if self.plan is not None:
                remainder = cls(tasks[i:], *rest)
                if self.plan.executor_type == "serial":
                    more, wall, _ = run_joblib_batch(remainder, self.inner_max_num_threads)
                    self._record(len(more), wall)
                    return results + more
                self._run_on_pool(remainder, future, prefix=results)
                return None
            one = cls([task], *rest)
            if on_measuring_thread:
                out, wall, cpu, blocked = _probe_batch(one, self.inner_max_num_threads)
            else:
                started = time.perf_counter()
                probe = self._on_measuring_thread(_probe_batch, one, self.inner_max_num_threads)
                try:
                    out, wall, cpu, blocked = probe.result(timeout=PROBE_WAIT_SECONDS)
                except TimeoutError:
                    if probe.done():
                        raise
                    if self._decide_while_running(time.perf_counter() - started):
                        rest_of_batch = cls(tasks[i + 1:], *rest) if i + 1 < len(tasks) else None
                        self._run_on_pool(rest_of_batch, future, prefix=results, leading=probe)
                        return None
                    out, wall, cpu, blocked = probe.result()
            results.extend(out)
            self._observed.observe(wall, cpu, blocked)
            func, args, kwargs = task
            self._observed.observe_shipping(func, [((args, kwargs), out[0])])
            if self._probe_is_enough():
                self._decide_from_probe()
        return results

    def _decide_from_probe(self) -> None:
        profile = self._probe_profile()
        assert profile is not None
        plugins.remember(self._key, profile)
        learned = plugins.recall(self._key)
        runs = learned.runs if learned is not None else 0
        self._decide(profile, runs, already_done=self.n_probed)

    def _overlap_tasks(self) -> int:
        """Tasks of one overlap test (two threads' worth, ``probe.calls_per_thread``; the batch
        asked for holds ``PAIR_TESTS`` of them),
        once a few tasks have been timed one at a time; 0 when there is no test to make: done
        already, threads not allowed, a time limit (the test's tasks would run unwatched), or
        tasks too slow to wait for two at once, or a call nested in an amorsize worker (the
        test's threads may be the very ones waiting for it)."""
        probe = self._observed
        if (probe.thread_scaling is not None or len(probe) < PROBE_MIN_TASKS
                or "thread" not in self._executors or self._n_jobs == 1 or inside_worker()
                or getattr(self.parallel, "timeout", None) is not None):
            return 0
        per_task = probe.profile().per_item_seconds
        return 2 * calls_per_thread(per_task) if per_task <= PROBE_WAIT_SECONDS else 0

    def _measure_overlap(self, cls: Any, tests: list[list], rest: tuple) -> list:
        """Half of each test's tasks on each of two threads at once (the probe's overlap test,
        as ``amorsize.map`` and the Dask scheduler make it, repeated on the next test until one
        overlaps clearly): tells C code that releases the GIL (threads) from pure-Python work
        (processes). The results of the tests made are kept, in order."""
        def run(part: list) -> list:
            return run_joblib_batch(cls(part, *rest), self.inner_max_num_threads)[0]

        with plugins.leased_pool("thread", 2) as pair:
            made = self._observed.overlap_on(pair, tests, run)
        return [result for test_results in made for result in test_results]

    def _decide_while_running(self, elapsed: float) -> bool:
        """Decide with a task still running, counting it at what it took so far (a lower
        bound) and as computing; True if the plan runs on a pool (the task's result then joins
        the batch when it comes)."""
        self._observed.observe(elapsed, elapsed)
        self._decide_from_probe()
        return self.plan is not None and self.plan.executor_type != "serial"

    @property
    def n_probed(self) -> int:
        """Tasks of this call measured before its plan (one at a time, or two at once)."""
        return len(self._observed) + self._observed.n_overlap

    def _probe_is_enough(self) -> bool:
        n, spent = len(self._observed), self._observed.seconds
        if (PROBE_MIN_TASKS <= n < PROBE_MAX_TASKS and spent < PROBE_MAX_SECONDS
                and self._overlap_tasks()):
            return False  # the next batch is the overlap test's (unless joblib's batch size
            # is fixed: then the probe is enough without it once single tasks say so)
        return (n >= PROBE_MAX_TASKS or (n >= PROBE_MIN_TASKS and spent >= PROBE_ENOUGH_SECONDS)
                or spent >= PROBE_MAX_SECONDS)

    def _probe_profile(self) -> Profile | None:
        return self._observed.profile() if len(self._observed) else None

    def _run_on_pool(self, batch: Any, future: Future, prefix: list | None = None,
                     leading: Future | None = None) -> None:
        """Split the batch into the plan's chunks (at most one per worker, so joblib's small tail
        batches still spread over the pool) on the run's pool; the batch completes when all its
        chunks have -- and ``leading``, a task still being measured whose results come first --
        results in order."""
        plan, run = self.plan, self._run
        assert plan is not None and run is not None
        size = 1 if batch is None else max(1, min(plan.chunksize, -(-len(batch) // plan.n_jobs)))
        chunks = [] if batch is None else _split(batch, size)
        parts = [leading] if leading is not None else []
        gather = _Gather(self, future, len(parts) + len(chunks), prefix or [], len(parts))
        for index, part in enumerate(parts):
            part.add_done_callback(functools.partial(gather.part_done, index))
        for index, chunk in enumerate(chunks, start=len(parts)):
            if self._aborting:
                gather.cancel()
                return
            try:
                part = run.submit(self._runner, chunk, self.inner_max_num_threads)
            except BaseException as exc:  # noqa: BLE001 - e.g. unpicklable task: joblib raises it
                gather.fail(exc)
                return
            part.add_done_callback(functools.partial(gather.part_done, index))

    def _complete(self, future: Future, **outcome: Any) -> None:
        """Settle a batch; off a process pool's manager thread, so joblib's callback (which
        pickles and submits the next batch) never stalls the shared pool's result delivery."""
        if self._on_processes:
            try:
                self._helper().submit(_settle, future, **outcome)
                return
            except RuntimeError:
                pass
        _settle(future, **outcome)

    def _helper(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._helper_executor is None:
                self._helper_executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="amorsize-joblib")
            return self._helper_executor

    def _record(self, n_items: int, seconds: float) -> None:
        if self._run is not None:
            self._run.record(n_items, seconds)


class _Gather:
    """Collects the chunks of one joblib batch and settles its future once, in order."""

    def __init__(self, backend: AmorsizeBackend, future: Future, n_parts: int, prefix: list,
                 n_measured: int = 0) -> None:
        self.backend = backend
        self.n_measured = n_measured
        self.future = future
        self.parts: list[list | None] = [None] * n_parts
        self.left = n_parts
        self.prefix = prefix
        self.finished = False
        self.lock = threading.Lock()

    def part_done(self, index: int, part: Future) -> None:
        if part.cancelled():
            self.cancel()
            return
        error = part.exception()
        if error is not None:
            if isinstance(error, BrokenProcessPool) and not isinstance(error, WorkerCrashedError):
                error = WorkerCrashedError(
                    f"a worker process died while running a joblib batch ({error}); the pool is "
                    "replaced on the next call")
            self.fail(error)
            return
        try:
            results, wall = part.result()[:2]
        except BaseException as exc:  # noqa: BLE001 - the task's own error, raised by joblib
            self.fail(exc)
            return
        if index >= self.n_measured:  # a measured task is counted as measured already
            self.backend._record(len(results), wall)
        with self.lock:
            self.parts[index] = results
            self.left -= 1
            if self.left or self.finished:
                return
            self.finished = True
        out = self.prefix
        for chunk in self.parts:
            out.extend(chunk or ())
        self.backend._complete(self.future, result=out)

    def fail(self, error: BaseException) -> None:
        with self.lock:
            if self.finished:
                return
            self.finished = True
        self.backend._complete(self.future, exception=error)

    def cancel(self) -> None:
        with self.lock:
            if self.finished:
                return
            self.finished = True
        self.future.cancel()


class _CappedThreadingBackend(ThreadingBackend):
    """joblib's threading backend for nested calls, with ``n_jobs=-1`` meaning the cores left
    per outer worker rather than every core (``cap=1`` runs the inner call sequentially)."""

    def __init__(self, cap: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cap = cap

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        n = super().effective_n_jobs(n_jobs)
        return min(n, self.cap) if n_jobs is None or n_jobs < 0 else n


def _settle(future: Future, result: Any = None, exception: BaseException | None = None) -> None:
    """Set a future's outcome unless an abort cancelled it first."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


def _batch_parts(batch: Any) -> tuple[Any, tuple]:
    """A ``BatchedCalls`` as (class, constructor arguments), through its pickling protocol, so
    sub-batches keep the nested backend and settings without touching private attributes."""
    cls, args = batch.__reduce__()
    return cls, args


def _split(batch: Any, size: int) -> list:
    if len(batch) <= size:
        return [batch]
    cls, args = _batch_parts(batch)
    tasks, rest = args[0], args[1:]
    return [cls(tasks[i:i + size], *rest) for i in range(0, len(tasks), size)]


def _name(func: Any) -> str:
    return getattr(func, "__qualname__", None) or type(func).__name__


def _last_count(key: Hashable | None) -> int | None:
    """How many tasks the last call of this function had: joblib does not know a generator's
    length, and the optimizer plans better for the size it saw last time than for a guess."""
    learned = None if key is None else plugins.recall(key)
    return learned.last_n_items if learned is not None else None


def _worker_cap() -> int:
    """Threads a nested call may use inside a worker: what the pool left it for BLAS."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1
