"""The joblib backend "amorsize": optimizer-chosen executor and batch size, on shared warm pools.

joblib's ``Parallel`` hands a backend one batch of tasks at a time and asks it how big the next
batch should be. This backend answers both from amorsize's optimizer (through the hook relay
``amorsize.plugins``): the first tasks of an unknown function are measured (``measure``), the
optimizer picks serial, threads or processes and a chunk size, and what was learned is kept per
function so the next call starts with the right plan and skips measuring. A batch then runs where
the plan says: in the calling thread (a serial plan costs no hand-off at all), or split into
chunks of the plan's size on a shared warm pool, timed inside the worker (``chunks``). Shared
pools are never shut down here: an abort cancels only this call's own pending chunks.

Everything goes through joblib's backend API (``ParallelBackendBase``'s hooks); what it does not
tell a backend is read in one place, ``batches``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future
from functools import partial
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
    check_executor_type,
    check_flag,
    check_min_speedup,
    check_positive_int,
)
from amorsize.optimizer.learned import Learned, function_key
from amorsize.options import DEFAULTS, complete
from amorsize.plan import Plan
from amorsize.pools.worker import inside_worker
from amorsize.run.control import Run
from amorsize.workload import Profile, Workload
from amorsize_joblib import batches, cluster
from amorsize_joblib.batches import CallSettings, call_settings
from amorsize_joblib.chunks import PoolBatches, Unsettled, run_joblib_batch, settle
from amorsize_joblib.measure import Measurement

# A serial plan's batches: long enough that joblib's own cost per batch (its dispatch and
# callbacks, tens of microseconds) is a small share of them, yet holding few tasks: joblib
# keeps batch x n_jobs delayed calls alive at once, and past a few hundred they outlive the
# young garbage-collector generations and trigger full collections of the whole heap, which
# joblib's n_jobs=1 loop (one call alive at a time) never pays.
SERIAL_BATCH_SECONDS = 0.005
SERIAL_HELD_TASKS = 1024
SERIAL_MIN_BATCH = 32
_MAX_BATCH = 1 << 22
# sub-interpreters cannot run joblib's batches yet: unpickling one imports joblib, whose
# imports (faulthandler) refuse to load in a sub-interpreter
_JOBLIB_EXECUTORS: tuple[ExecutorType, ...] = tuple(e for e in EXECUTOR_TYPES if e != "interpreter")
# require="sharedmem" (or prefer="threads"): every executor that shares the caller's memory
_SHAREDMEM_EXECUTORS: tuple[ExecutorType, ...] = tuple(
    e for e in _JOBLIB_EXECUTORS if e != "process")
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
    client: Any


# given to Parallel(...) instead, they would reach configure() and be ignored
_OPTIONS_NOT_OF_PARALLEL = ("executor", "min_speedup", "progress", "inner_max_num_threads",
                            "client")


class AmorsizeBackend(ParallelBackendBase):
    """A joblib backend whose executor, worker count and batch size come from amorsize's plan.

    Capabilities are declared as joblib expects. ``supports_sharedmem`` is true because
    ``require="sharedmem"`` (or ``prefer="threads"``) restricts the plan to serial or threads
    instead of making joblib fall back to its threading backend. ``default_n_jobs = -1`` makes
    ``Parallel()`` inside ``parallel_config(backend="amorsize")`` run in parallel. Backend
    parameters: ``executor`` forces "serial", "thread" or "process" (the optimizer still sizes
    workers and batches), ``min_speedup`` is the margin parallel must win by, ``progress=True``
    reports tasks done to the ``amorsize_run_progress`` hook, ``client`` picks the
    ``dask.distributed`` cluster (None: the current Client, if any; False: never a cluster;
    see ``cluster``). They are checked when the backend is made and again on every call (see
    ``check_options``). Nested calls get joblib's threading backend capped at the cores left per
    outer worker (or run sequentially), so nothing oversubscribes.
    """

    default_n_jobs = -1
    supports_retrieve_callback = True
    supports_return_generator = True
    supports_timeout = True
    supports_inner_max_num_threads = True
    supports_sharedmem = True
    uses_threads = False
    _in_order: deque[tuple[Any, Future]]  # batches waiting for the calling thread

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        n_jobs_cap: int | None = None,
        min_speedup: float = MIN_SPEEDUP,
        executor: ExecutorType | None = None,
        progress: bool = False,
        client: Any = None,
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
        self.client = client
        self.check_options()
        self.parallel: Any = None
        self.plan: Plan | None = None
        self.batch_sizes: list[int] = []
        self._lock = threading.Lock()
        self._n_jobs = 1
        self._max_workers: int | None = None
        self._executors: tuple[ExecutorType, ...] = _JOBLIB_EXECUTORS
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
                and self.client is None and not self.backend_kwargs):
            return
        if self.backend_kwargs:
            complete("AmorsizeBackend", self.backend_kwargs, BackendOptions)
        check_min_speedup("min_speedup", self.min_speedup)
        if self.executor is not None:
            check_executor_type("executor", self.executor)
            if self.executor not in _JOBLIB_EXECUTORS:
                raise InvalidArgumentError(
                    f"executor={self.executor!r} cannot run joblib's batches: unpickling one "
                    "imports joblib, which sub-interpreters cannot load; use 'process' (or "
                    "amorsize.map, which runs on interpreters)")
        check_flag("progress", self.progress)
        check_positive_int("inner_max_num_threads", self.inner_max_num_threads, allow_none=True)
        check_positive_int("n_jobs_cap", self.n_jobs_cap, allow_none=True)
        cluster.check_client(self.client)

    @property
    def run(self) -> Run | None:
        """The run of the current call once its plan is made (see ``amorsize.run.control.Run``)."""
        return self._run

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """Workers joblib slices the work for: -1 means amorsize's usable CPUs (affinity and
        cgroup quota aware), like joblib's ``cpu_count``; inside ``with Client(...)``, the
        cluster's threads."""
        client = cluster.client_of(self)
        if client is not None:
            return cluster.effective_n_jobs(client, n_jobs)
        return self._local_n_jobs(n_jobs)

    def _local_n_jobs(self, n_jobs: int | None) -> int:
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
        if n_jobs != 1 and require != "sharedmem" and not inside_worker():
            client = cluster.client_of(self)
            if client is not None:  # inside ``with Client(...)``: the cluster runs the call
                raise FallbackToBackend(cluster.ClusterBackend(client, self))
        effective = self._local_n_jobs(n_jobs)
        if effective == 1 or inside_worker():
            # inside_worker: called by a task of an amorsize pool, whose threads may be the very
            # ones a plan would wait for; serial, as amorsize.map is there
            raise FallbackToBackend(SequentialBackend(nesting_level=level))
        sharedmem = require == "sharedmem" or prefer == "threads"
        self._executors = _SHAREDMEM_EXECUTORS if sharedmem else _JOBLIB_EXECUTORS
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
        self._call = call_settings(self.parallel)

    def stop_call(self) -> None:
        """Tell the optimizer what the call took, so the next call of this function starts
        right."""
        try:
            self._report()
        finally:
            self._close_run()

    def terminate(self) -> None:
        """Release this call's pools and helper thread; the shared pools stay warm for the next
        caller (unless an abort had to stop work still running on them)."""
        self._close_run()

    def compute_batch_size(self) -> int:
        """Tasks per joblib batch: one while measuring (a slow task measured must not hold
        others back) but for the overlap test's; then ``serial_batch_size`` for a serial plan,
        or one wave of a pool plan's chunks (one chunk per worker). Near the end of the call,
        what is left is shared evenly among joblib's ``n_jobs`` batches: joblib would cut its
        last slice of the input into twenty times as many batches (each split into tiny chunks
        on a pool)."""
        plan = self.plan
        if plan is None:
            return self._measurement.batch_size()
        if plan.executor_type == "serial":
            size = serial_batch_size(plan.profile.per_item_seconds, self._n_jobs)
        else:
            size = max(1, min(_MAX_BATCH, plan.chunksize * plan.n_jobs))
        total = self._total()
        left = None if total is None else total - self._dispatched
        if left is not None and 0 < left < size * self._n_jobs:
            return max(1, left // self._n_jobs)
        return size

    def submit(self, func: Any, callback: Callable | None = None) -> Future:
        """Run one joblib batch per the plan: on the run's pool at once, or, in the calling
        thread (measured, or a serial plan's), once joblib retrieves results (see
        ``retrieval_context``)."""
        future: Future = Future()
        self._unsettled.add(future)
        if callback is not None:
            future.add_done_callback(callback)
        # after joblib's callback, which dispatches the next batch first: no batch unsettled
        # then means no more to come
        future.add_done_callback(self._unsettled.settled)
        self.batch_sizes.append(len(func))
        self._dispatched += len(func)
        if self._key is None:
            self._identify(func)
        if self._pool_batches is not None:
            self._pool_batches.send(func, future)
        else:
            with self._lock:
                self._in_order.append((func, future))
            if self._retrieving:
                self._run_in_order()
        return future

    def retrieve_result_callback(self, out: Future) -> list:
        return out.result()

    @contextlib.contextmanager
    def retrieval_context(self) -> Iterator[None]:
        """Run the batches meant for the calling thread once joblib starts retrieving, not
        when they are dispatched: joblib has then counted every batch it dispatched first and
        knows it is iterating, so its ``verbose`` lines and its end of call come out as for
        any backend (a batch completed inside its own dispatch looks like the last one)."""
        self._retrieving = True
        self._run_in_order()
        if self._call.return_as == "list" and self._call.timeout is None:
            # joblib checks for settled batches every 10 ms: a list's results would wait up to
            # that long after the last came in (generators yield as results come, and a timeout
            # is enforced by joblib while it checks)
            self._unsettled.wait(lambda: self._aborting)
        yield

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel this call's run (``Run.cancel``): its pending chunks and waiting batches
        are dropped, and a shared pool still busy with its work -- or the measuring thread, if
        a task measured is still running -- is stopped and replaced, so the next call runs at
        full speed."""
        self._aborting = True
        if self._run is not None:
            self._run.cancel()
        with self._lock:
            waiting = list(self._in_order)
            self._in_order.clear()
        for _, future in waiting:
            future.cancel()
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
        return _nested_backend((self.nesting_level or 0) + 1, self.inner_max_num_threads, cap,
                               self.min_speedup), None

    @property
    def n_probed(self) -> int:
        """Tasks of this call measured before its plan (one at a time, or two at once)."""
        return len(self._measurement)

    def _reset_call(self) -> None:
        self.plan = None
        self.batch_sizes = []
        self._call = CallSettings()
        self._key: Hashable | None = None
        # what amorsize_recall gave for the key, asked once per call (and again once measured)
        self._learned: Learned | None = None
        self._func: Any = None
        self._run: Run | None = None
        self._pool_batches: PoolBatches | None = None
        self._stack = contextlib.ExitStack()
        self._probe_pool: Any = None
        self._measuring: list[Future] = []
        self._in_order = deque()
        self._running_in_order = False
        self._retrieving = False
        self._aborting = False
        self._dispatched = 0
        self._unsettled = Unsettled()
        self._measurement = Measurement(None, None)
        self._decided = time.perf_counter()

    def _total(self) -> int | None:
        """Tasks of the call: the iterable's length, else as many as the function's last call
        had (joblib learns a generator's length only once it is exhausted)."""
        if self._call.n_tasks is not None:
            return self._call.n_tasks
        learned = self._learned
        return learned.last_n_items if learned is not None else None

    def _identify(self, batch: Any) -> None:
        """Key the call on its first task's function; a known function gets its plan now."""
        func = batches.function_of(batch)
        self._func = func
        self._key = function_key(func)
        learned = self._learned = plugins.recall(self._key)
        if learned is not None:
            self._decide(learned.profile, learned.runs, recalled=True)
        elif self.executor is not None and self.executor != "serial":
            self._use_forced_executor(self.executor)
        else:
            watched = self._call.timeout is not None  # joblib must be able to give up on a task
            threads = "thread" in self._executors and not watched
            self._measurement = Measurement(
                None if watched else self._on_measuring_thread,
                partial(plugins.leased_pool, 2, "thread") if threads else None)

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

    def _decide_from_probe(self) -> bool:
        """Make the plan from what was measured; True if it runs on a pool. Nothing after an
        abort: a task measured on the measuring thread can end after its call was given up
        (a timeout), and must not open a run nobody will close."""
        if self._aborting:
            return False
        profile = self._measurement.profile()
        assert profile is not None  # decided only after a task was timed
        plugins.remember(self._key, profile)
        learned = self._learned = plugins.recall(self._key)
        self._decide(profile, learned.runs if learned is not None else 0)
        return self._pool_batches is not None

    def _decide(self, profile: Profile, previous_runs: int, recalled: bool = False) -> None:
        workload = Workload(
            n_items=self._total(),
            source="joblib",
            executors=self._executors,
            max_workers=self._max_workers,
            min_speedup=self.min_speedup,
            previous_runs=previous_runs,
            key=self._key,
            already_done=self.n_probed,
            recalled=recalled,
            learned=self._learned,
        )
        self._open_run(plugins.make_plan(self._func, profile, workload))
        self._decided = time.perf_counter()

    def _open_run(self, plan: Plan) -> None:
        """Start the call's run on the plan: lease its pool for the rest of the call."""
        run = Run(plan, progress=self.progress, description=_name(self._func),
                  total=self._total(), done=self.n_probed)
        self._stack.enter_context(run)
        if run.pool is not None:
            self._pool_batches = PoolBatches(run, self.inner_max_num_threads,
                                             lambda: self._aborting)
            self._stack.callback(self._pool_batches.close)
        self._run = run
        self.plan = plan
        self._say_plan(plan)

    def _say_plan(self, plan: Plan) -> None:
        """With ``verbose``, tell what runs the call: joblib's "concurrent workers" line is
        printed before any plan exists, so it shows the CPU count, not the plan's workers."""
        if self._call.verbose:
            workers = {"thread": "threads", "process": "processes"}.get(plan.executor_type, "")
            where = "the calling thread" if plan.executor_type == "serial" else (
                f"{plan.n_jobs} {workers if plan.n_jobs > 1 else plan.executor_type}, "
                f"chunks of {plan.chunksize}")
            print(f"[{self._call.name}]: amorsize runs it on {where} (estimated speedup "
                  f"{plan.estimated_speedup:.2f}x; plan.explain() says why)", file=sys.stderr)

    def _report(self) -> None:
        key, plan, run = self._key, self.plan, self._run
        if key is None or self._aborting:
            return
        if plan is None or run is None:
            profile = self._measurement.profile()
            if profile is not None:
                plugins.remember(key, profile)
            return
        if run.n_items == 0:
            return
        if self._learned is None and plugins.recall(key) is None:
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

    def _record(self, n_tasks: int, seconds: float) -> None:
        if self._run is not None:
            self._run.record(n_tasks, seconds)

    def _close_run(self) -> None:
        self._run = None
        self._pool_batches = None
        self._stack.close()

    def _on_measuring_thread(self, fn: Callable, *args: Any) -> Future:
        """Run ``fn(*args)`` on a thread of the shared pools held for the call: measured tasks
        run there (so the caller can stop waiting for a slow one), and the calling thread's
        batches when joblib has a timeout (so that joblib can time the call out); an abort
        abandons what still runs there."""
        if self._probe_pool is None:
            self._probe_pool = self._stack.enter_context(plugins.leased_pool(1, "thread"))
        future = self._probe_pool.submit(fn, *args)
        self._measuring = [f for f in self._measuring if not f.done()] + [future]
        return future

    def _run_in_order(self) -> None:
        """Run the batches waiting for the calling thread, one after the other, until none is
        left (batches completing dispatch more, which join the queue: no recursion); on the
        measuring thread instead when joblib has a timeout."""
        if self._call.timeout is not None:
            self._on_measuring_thread(self._run_waiting)
        else:
            self._run_waiting()

    def _run_waiting(self) -> None:
        with self._lock:
            if self._running_in_order:
                return
            self._running_in_order = True
        while True:
            with self._lock:
                if not self._in_order:
                    self._running_in_order = False
                    return
                batch, future = self._in_order.popleft()
            self._run_here(batch, future)

    def _run_here(self, batch: Any, future: Future) -> None:
        if future.done():
            return
        if self._aborting:
            future.cancel()
            return
        if self._pool_batches is not None:
            self._pool_batches.send(batch, future)
            return
        try:
            if self.plan is None:
                self._measure(batch, future)
                return
            results, wall, _ = run_joblib_batch(batch, self.inner_max_num_threads)
            self._record(len(results), wall)
        except BaseException as exc:  # noqa: BLE001 - delivered to joblib through the future
            self._fail(future, exc)
            return
        settle(future, result=results)

    def _fail(self, future: Future, error: BaseException) -> None:
        """A task failed: joblib stops at the first error, so the batches still waiting for
        the calling thread are dropped rather than run."""
        settle(future, exception=error)
        self._aborting = True

    def _measure(self, batch: Any, future: Future) -> None:
        """Measure the batch's tasks (and, for an overlap test due, those of the batches
        waiting after it: joblib's first batches hold one task each), then settle each batch
        measured; what is left when the plan is made goes where the plan says, and the batches
        not reached wait again, in order. A task's error fails the first batch not settled."""
        group = [(batch, future)]
        wanted = self._measurement.batch_size()
        with self._lock:
            while wanted > 1 and self._in_order and sum(len(b) for b, _ in group) < wanted:
                group.append(self._in_order.popleft())
        tasks = [task for b, _ in group for task in batches.tasks_of(b)]
        inner = self.inner_max_num_threads

        def run_tasks(some: list) -> list:
            return run_joblib_batch(batches.with_tasks(batch, some), inner)[0]

        try:
            measured = self._measurement.run(tasks, run_tasks, self._decide_from_probe)
        except BaseException as exc:  # noqa: BLE001 - delivered to joblib through the future
            self._fail(future, exc)
            for _, f in group[1:]:
                f.cancel()
            return
        if self._aborting:
            for _, f in group:
                f.cancel()
            return
        done, offset, not_reached = len(measured.results), 0, []
        for b, f in group:
            end = offset + len(b)
            if end <= done:
                settle(f, result=measured.results[offset:end])
            elif offset < done or (offset == done and measured.pending is not None):
                self._finish_batch(b, f, measured, offset, done)
            else:
                not_reached.append((b, f))
            offset = end
        with self._lock:
            self._in_order.extendleft(reversed(not_reached))

    def _finish_batch(self, batch: Any, future: Future, measured: Any, offset: int,
                      done: int) -> None:
        """A batch measured in part: its results so far, then the task still running, then
        the rest where the plan says."""
        tasks = batches.tasks_of(batch)
        start = done - offset + (measured.pending is not None)
        rest = batches.with_tasks(batch, tasks[start:]) if start < len(tasks) else None
        prefix = measured.results[offset:done]
        if self._pool_batches is not None:
            self._pool_batches.send(rest, future, prefix=prefix, leading=measured.pending)
            return
        more: list = []
        if rest is not None:
            more, wall, _ = run_joblib_batch(rest, self.inner_max_num_threads)
            self._record(len(more), wall)
        settle(future, result=prefix + more)


class _CappedThreadingBackend(ThreadingBackend):
    """joblib's threading backend for nested calls, with ``n_jobs=-1`` meaning the cores left
    per outer worker rather than every core (``cap=1`` runs the inner call sequentially)."""

    def __init__(self, cap: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cap = cap

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        n = super().effective_n_jobs(n_jobs)
        return min(n, self.cap) if n_jobs is None or n_jobs < 0 else n


@functools.lru_cache(maxsize=64)
def _nested_backend(nesting_level: int, inner_max_num_threads: int | None, n_jobs_cap: int,
                    min_speedup: float) -> AmorsizeBackend:
    """The backend joblib's batches carry for inner calls, made once per setting rather than
    for every batch joblib makes: it holds settings only, since an inner call falls back to
    joblib's own backends in ``configure`` before any call state is touched."""
    return AmorsizeBackend(nesting_level=nesting_level,
                           inner_max_num_threads=inner_max_num_threads, n_jobs_cap=n_jobs_cap,
                           min_speedup=min_speedup)


def serial_batch_size(per_item_seconds: float, n_jobs: int) -> int:
    """Tasks per joblib batch for a serial plan: ``SERIAL_BATCH_SECONDS`` of work, and no more
    than ``SERIAL_HELD_TASKS`` held by joblib over its ``n_jobs`` batches at once (at least
    ``SERIAL_MIN_BATCH``, so that many workers do not make the batches too small to pay for
    joblib's dispatch)."""
    held = max(SERIAL_MIN_BATCH, SERIAL_HELD_TASKS // max(1, n_jobs))
    if per_item_seconds <= 0:
        return held
    return max(1, min(held, math.ceil(SERIAL_BATCH_SECONDS / per_item_seconds)))


def _name(func: Any) -> str:
    return getattr(func, "__qualname__", None) or type(func).__name__


def _worker_cap() -> int:
    """Threads a nested call may use inside a worker: what the pool left it for BLAS."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1
