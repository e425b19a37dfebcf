"""joblib's batches on a ``dask.distributed`` cluster: inside ``with Client(...)`` the backend
"amorsize" sends each batch to the cluster as one task, in batches sized by ``amorsize_dask``'s
cluster plan, so scikit-learn's ``n_jobs`` scales out with the same backend.

A call finds its cluster as joblib's own "dask" backend does: the Client given as the backend's
``client=``, else the current one (``distributed.Client.current()``); ``client=False`` keeps every
call on this machine. ``distributed`` is looked for only once the caller has imported it (nobody
holds a Client otherwise), so a script without Dask pays one dictionary lookup per call.

On the cluster, the first tasks of a function go one per batch, each timed on its worker; once
a few came back, or ``SAMPLE_BUDGET_SECONDS`` of them, ``cluster_plan`` sizes the
batches for the cluster's threads and what a task costs it (``cluster_facts``), as for
``amorsize_dask.map``, and what was measured is remembered under the same key, so either front
end plans the function from what the other learned. joblib keeps the results in order, enforces
``timeout`` and stops at the first error; an abort cancels the call's tasks on the cluster.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import sys
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from joblib.parallel import ParallelBackendBase

from amorsize import plugins
from amorsize.errors import InvalidArgumentTypeError
from amorsize.optimizer.learned import function_key
from amorsize.optimizer.probe import Probe
from amorsize.plan import Plan
from amorsize.run import log
from amorsize.run.control import RunProgress, announce_planning
from amorsize.run.report import RunReport
from amorsize.workload import Profile, Workload
from amorsize_joblib import batches
from amorsize_joblib.batches import CallSettings, call_settings
from amorsize_joblib.chunks import call_batch, settle
from amorsize_joblib.measure import PROBE_MIN_TASKS

# as ``amorsize_dask``: what a function costs on a cluster's worker is remembered apart from
# what it costs here, under the key ``amorsize_dask.map`` uses
SOURCE = "dask.distributed"
MEASURED_BY = "a cluster worker"
SAMPLE_BUDGET_SECONDS = 0.1
WAIT_FOR_WORKERS_SECONDS = 10.0
# an argument at least this large that a second task passes goes to the cluster once
SHARED_ARG_BYTES = 100_000
_PLAIN = (int, float, str, bool, bytes, type(None))


def check_client(client: object) -> None:
    """``client=`` is None (the current Client, if any), False (never a cluster) or a
    ``distributed.Client``; anything else is refused, naming the forms."""
    if client is None or client is False:
        return
    try:
        from distributed import Client
    except ImportError:  # then nothing can be a Client
        is_client = False
    else:
        is_client = isinstance(client, Client)
    if not is_client:
        raise InvalidArgumentTypeError(
            "client must be a distributed.Client, None (the current Client, if any) or False "
            f"(this machine only), got {type(client).__name__} {client!r}")


def client_for(chosen: Any) -> Any:
    """The Client a call runs on for ``client=chosen``, or None: this machine. None outside a
    Client, and inside a task running on a cluster's worker, whose threads the call could wait
    for (joblib's nested calls there run as on any worker)."""
    if chosen is False:
        return None
    if chosen is None and "distributed" not in sys.modules:
        return None
    import distributed

    if chosen is None:
        try:
            chosen = distributed.Client.current()
        except ValueError:
            return None
    try:
        distributed.get_worker()
    except ValueError:
        return None if chosen.asynchronous else chosen
    return None


def client_of(backend: Any) -> Any:
    """The Client the calls of an ``AmorsizeBackend`` run on, or None: this machine (a nested
    call, or one whose ``executor=`` names a local executor, never runs on a cluster)."""
    if (backend.nesting_level or 0) > 0 or backend.executor is not None:
        return None
    return client_for(backend.client)


def effective_n_jobs(client: Any, n_jobs: int | None) -> int:
    """Workers joblib slices the work for: -1 (or None) means every thread of the cluster
    (waiting up to ``WAIT_FOR_WORKERS_SECONDS`` for a first worker), a positive count itself."""
    if n_jobs == 0:
        raise ValueError("n_jobs == 0 in Parallel has no meaning")
    if n_jobs is not None and n_jobs > 0:
        return n_jobs
    threads = sum(client.nthreads().values())
    if threads == 0:  # a cluster still starting (or scaling up)
        try:
            client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS_SECONDS)
        except TimeoutError as exc:
            raise TimeoutError(
                f"the dask cluster at {client.scheduler.address} has no worker after "
                f"{WAIT_FOR_WORKERS_SECONDS:.0f} s; start workers, or pass "
                "parallel_config(backend='amorsize', client=False) to run here") from exc
        threads = sum(client.nthreads().values())
    return max(1, threads)


def run_batch(batch: Any, inner_max_num_threads: int | None) -> tuple[list, float, float]:
    """Run a joblib batch on a cluster's worker: its results, and the wall and CPU seconds of
    the worker's thread (a worker's other threads, its communication among them, share the
    process)."""
    start, cpu = time.perf_counter(), time.thread_time()
    try:
        results = call_batch(batch, inner_max_num_threads)
    except Exception as exc:
        import distributed

        exc.add_note(f"a task of a joblib batch of {len(batch)}, run on the dask worker "
                     f"{distributed.get_worker().address}")
        raise
    return results, time.perf_counter() - start, time.thread_time() - cpu


def run_tasks(batch: Any, tasks: list, inner_max_num_threads: int | None
              ) -> tuple[list, float, float]:
    """``run_batch`` for a batch sent without its tasks, which came as an argument of their own
    so that the cluster hands them the data of the arguments sent once (``SharedArguments``)."""
    return run_batch(batches.with_tasks(batch, tasks), inner_max_num_threads)


class SharedArguments:
    """Large arguments that several tasks of a call pass (scikit-learn's ``X`` and ``y``): sent
    to the cluster once (``client.scatter``), from the second task that passes them, instead of
    inside every batch's task; an argument only one task passes travels inside it.

    Arguments are known by identity, and only those that can be weakly referenced (arrays, data
    frames) are followed, so nothing of the call is kept alive; what was sent is released when
    the call ends.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._seen: dict[int, tuple[weakref.ref, Any]] = {}

    def tasks(self, batch: Any) -> list | None:
        """The batch's tasks with the shared large arguments replaced by their data on the
        cluster (dask hands a task the data of the futures among its arguments), or None when
        the batch has none."""
        from dask.sizeof import sizeof

        tasks = batches.tasks_of(batch)
        out = None
        for index, (func, args, kwargs) in enumerate(tasks):
            new_args = tuple(self._shared(a, sizeof) for a in args)
            new_kwargs = {k: self._shared(v, sizeof) for k, v in kwargs.items()}
            if any(a is not b for a, b in zip(new_args, args)) or any(
                    new_kwargs[k] is not v for k, v in kwargs.items()):
                out = list(tasks) if out is None else out
                out[index] = (func, new_args, new_kwargs)
        return out

    def _shared(self, arg: Any, sizeof: Callable[[Any], int]) -> Any:
        if isinstance(arg, _PLAIN):
            return arg
        try:
            ref = weakref.ref(arg)
        except TypeError:
            return arg
        known = self._seen.get(id(arg))
        if known is not None and known[0]() is arg:
            sent = known[1]
            if sent is None:
                sent = self.client.scatter([arg], hash=False)[0]
                self._seen[id(arg)] = (ref, sent)
            return sent
        if sizeof(arg) >= SHARED_ARG_BYTES:
            self._seen[id(arg)] = (ref, None)
        return arg

    def release(self) -> None:
        self._seen.clear()


class ClusterBackend(ParallelBackendBase):
    """The backend "amorsize" for calls made inside ``with Client(...)``: the configured
    ``AmorsizeBackend`` hands its call to it (joblib's ``FallbackToBackend``).

    ``n_jobs=-1`` (or None) is every thread of the cluster, which joblib slices the work for;
    the plan is kept on ``plan`` and on the backend that handed the call over.
    """

    default_n_jobs = -1
    supports_retrieve_callback = True
    supports_return_generator = True
    supports_timeout = True
    supports_inner_max_num_threads = True
    supports_sharedmem = False
    uses_threads = False

    def __init__(self, client: Any, origin: Any) -> None:
        super().__init__(nesting_level=origin.nesting_level,
                         inner_max_num_threads=origin.inner_max_num_threads)
        self.client = client
        self.origin = origin
        self.progress = origin.progress
        self.parallel: Any = None
        self._lock = threading.Lock()
        self._n_jobs = 2
        self._reset_call()

    def _reset_call(self) -> None:
        self.plan: Plan | None = None
        self.batch_sizes: list[int] = []
        self._call = CallSettings()
        self._key: Any = None
        self._func: Any = None
        self._probe: Probe | None = None
        self._in_flight: dict[Any, Future] = {}
        self._aborting = False
        self._dispatched = 0
        self._n_done = 0
        self._run_items = 0
        self._run_batches = 0
        self._run_seconds = 0.0
        self._decided = time.perf_counter()
        self._progress_id: int | None = None
        self._shared = SharedArguments(self.client)
        self._planned_from = 0
        self._planned_ends: list[int] = []
        self._planned_sizes: list[int] = []

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        return effective_n_jobs(self.client, n_jobs)

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, **backend_kwargs: Any
                  ) -> int:
        """Every thread of the cluster, and at least two: ``n_jobs=1`` would make joblib run
        the call here, when the caller asked for the cluster."""
        self.parallel = parallel
        self._n_jobs = max(2, self.effective_n_jobs(n_jobs))
        return self._n_jobs

    def start_call(self) -> None:
        from amorsize_dask.cluster_measure import cluster_facts

        with self._lock:
            self._reset_call()
            self._call = call_settings(self.parallel)
            self.origin.batch_sizes = self.batch_sizes
        self._facts = cluster_facts(self.client)

    def stop_call(self) -> None:
        """Report the run (what the cluster took corrects the next call's plan), and close
        its progress."""
        try:
            self._report()
        finally:
            self._shared.release()
            if self._progress_id is not None:
                state = "cancelled" if self._aborting else "finished"
                plugins.run_progress(RunProgress(
                    self._progress_id, SOURCE, _name(self._func), state, self._n_done,
                    self._total() if self._aborting else self._n_done))
                self._progress_id = None

    def compute_batch_size(self) -> int:
        """One task per batch while measuring (each timed on its worker), then the plan's
        batches in turn (they shrink toward the end, so the call ends evenly).

        joblib takes ``n_jobs`` times this many tasks from the input and cuts them into
        ``n_jobs`` batches, and when fewer are left, into batches ten times smaller: for an input
        of known length the size is kept to what is left over ``n_jobs``, so the last tasks
        go in batches of the plan's size, not in a tail of tiny tasks, each a round trip."""
        plan = self.plan
        if plan is None:
            return 1
        sent = self._dispatched
        at = bisect.bisect_right(self._planned_ends, sent - self._planned_from)
        size = self._planned_sizes[at] if at < len(self._planned_sizes) else plan.chunksize
        total = self._call.n_tasks
        if total is not None and total - sent >= self._n_jobs:
            size = min(size, (total - sent) // self._n_jobs)
        return max(1, size)

    def submit(self, func: Any, callback: Callable | None = None) -> Future:
        """Send one joblib batch to the cluster as one task; the future joblib waits on is
        settled from the task's when it completes."""
        future: Future = Future()
        if callback is not None:
            future.add_done_callback(callback)
        with self._lock:
            if self._key is None:
                self._identify(func)
            measuring = self.plan is None
            self._dispatched += len(func)
            self.batch_sizes.append(len(func))
        inner = self.inner_max_num_threads
        try:
            tasks = self._shared.tasks(func)
            if tasks is None:
                task = self.client.submit(run_batch, func, inner, pure=False)
            else:
                task = self.client.submit(run_tasks, batches.with_tasks(func, []), tasks, inner,
                                          pure=False)
        except BaseException as exc:  # noqa: BLE001 - e.g. an unpicklable task: joblib raises it
            settle(future, exception=exc)
            return future
        with self._lock:
            self._in_flight[task] = future
            aborted = self._aborting
        if aborted:
            self._cancel_in_flight()
            return future
        task.add_done_callback(functools.partial(
            self._completed, future, func if measuring else None))
        return future

    def retrieve_result_callback(self, out: Future) -> list:
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel the call's tasks still queued or running on the cluster (a task already
        running on a worker's thread runs to its end there; its result is dropped)."""
        self._aborting = True
        self._cancel_in_flight()

    def get_nested_backend(self) -> tuple[ParallelBackendBase, int | None]:
        """Calls made inside a task run on its worker, as nested calls of the backend do
        (``AmorsizeBackend`` at the next nesting level: threads capped for the worker)."""
        origin = self.origin
        nested = type(origin)(
            nesting_level=(self.nesting_level or 0) + 1,
            inner_max_num_threads=origin.inner_max_num_threads,
            min_speedup=origin.min_speedup,
        )
        return nested, None

    def _cancel_in_flight(self) -> None:
        with self._lock:
            pending = self._in_flight
            self._in_flight = {}
        if pending:
            self.client.cancel(list(pending), force=True)
        for future in pending.values():
            future.cancel()

    def _identify(self, batch: Any) -> None:
        """Key the call on its first task's function; one the cluster ran before is planned
        now from what its runs there taught."""
        self._func = batches.function_of(batch)
        self._key = (SOURCE, function_key(self._func))
        if self.progress:
            self._progress_id = announce_planning(SOURCE, _name(self._func), self._total())
        learned = plugins.recall(self._key)
        if learned is not None:
            self._decide(learned.profile, learned.runs, learned.corrections.get("serial", 1.0),
                         recalled=True)
        else:
            self._probe = Probe(MEASURED_BY)

    def _completed(self, future: Future, measured_batch: Any, task: Any) -> None:
        """A task of the call completed (on distributed's callback thread): its results go to
        joblib, whose callback dispatches the next batch; while measuring, its timing first."""
        with self._lock:
            self._in_flight.pop(task, None)
        if task.cancelled() or future.done():
            future.cancel()
            return
        try:
            results, wall, cpu = task.result()
        except BaseException as exc:  # noqa: BLE001 - the task's own error, raised by joblib
            settle(future, exception=exc)
            return
        del task
        with self._lock:
            self._note_batch(results, wall, cpu, measured_batch)
        settle(future, result=results)

    def _note_batch(self, results: list, wall: float, cpu: float, measured_batch: Any) -> None:
        n = len(results)
        self._n_done += n
        if self._progress_id is not None:
            plugins.run_progress(RunProgress(self._progress_id, SOURCE, _name(self._func),
                                             "advanced", self._n_done, self._total()))
        probe = self._probe
        if measured_batch is None or probe is None:
            self._run_items += n
            self._run_batches += 1
            self._run_seconds += wall
            return
        if not n or self.plan is not None:
            return
        for _ in range(n):
            probe.observe(wall / n, cpu / n)
        func, args, kwargs = batches.tasks_of(measured_batch)[0]
        probe.observe_shipping(func, [((args, kwargs), results[0])])
        if len(probe) >= PROBE_MIN_TASKS or probe.seconds >= SAMPLE_BUDGET_SECONDS:
            profile = probe.profile()
            plugins.remember(self._key, profile)
            learned = plugins.recall(self._key)
            self._decide(profile, learned.runs if learned is not None else 0, 1.0)

    def _decide(self, profile: Profile, runs: int, correction: float,
                recalled: bool = False) -> None:
        """The cluster plan for the tasks not yet sent (``amorsize_dask.cluster_plan``)."""
        from amorsize_dask.cluster_measure import burst_seconds
        from amorsize_dask.cluster_plan import batch_sizes, cluster_plan

        facts = self._facts
        total = self._total()
        done = self._dispatched
        if total is not None and total < done:
            total = None
        workload = Workload(n_items=total, source=SOURCE, executors=("serial",), key=self._key,
                            already_done=done, recalled=recalled, previous_runs=runs)
        sizes = None if total is None else batch_sizes(
            total - done, profile.per_item_seconds, facts.n_threads, facts.task_seconds,
            profile.arg_bytes)
        plan = cluster_plan(profile, workload, facts, sizes, correction=correction, runs=runs,
                            burst_seconds=burst_seconds(self.client))
        self._planned_from = done
        self._planned_sizes = sizes or []
        self._planned_ends = list(itertools.accumulate(self._planned_sizes))
        self.plan = self.origin.plan = plan
        self._decided = time.perf_counter()
        log.started(plan, _name(self._func))
        if self._call.verbose:
            print(f"[{self._call.name}]: amorsize runs it on the cluster's "
                  f"{facts.describe()}, batches of up to {plan.chunksize} (estimated speedup "
                  f"{plan.estimated_speedup:.2f}x; plan.explain() says why)", file=sys.stderr)

    def _total(self) -> int | None:
        """Tasks of the call: the iterable's length, else as many as the function's last run
        on the cluster had."""
        if self._call.n_tasks is not None:
            return self._call.n_tasks
        learned = None if self._key is None else plugins.recall(self._key)
        return learned.last_n_items if learned is not None else None

    def _report(self) -> None:
        """Tell the optimizer what the run took, so the next call on the cluster starts right;
        a call that ended before its plan leaves what was measured."""
        plan, key = self.plan, self._key
        if key is None or self._aborting:
            return
        if plan is None:
            if self._probe is not None and len(self._probe):
                plugins.remember(key, self._probe.profile())
            return
        if not self._run_items:
            return
        from amorsize_dask.cluster_measure import learn_from_run

        wall = time.perf_counter() - self._decided
        report = RunReport(source=SOURCE, executor_type="serial", n_jobs=plan.n_jobs,
                           chunksize=plan.chunksize, n_items=self._run_items,
                           n_chunks=self._run_batches, wall_seconds=wall,
                           compute_seconds=self._run_seconds,
                           predicted_seconds=plan.predicted_seconds,
                           predicted_speedup=plan.estimated_speedup)
        if plan.cluster is not None:
            learn_from_run(self.client, plan.cluster, wall, self._run_seconds,
                           self._run_batches)
        plugins.run_finished(plan, report)
        log.finished(plan, _name(self._func), report, self._n_done)


def _name(func: Any) -> str:
    return getattr(func, "__qualname__", None) or type(func).__name__
