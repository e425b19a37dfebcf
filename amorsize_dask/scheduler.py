"""The ``"amorsize"`` Dask scheduler: Dask's own ``get_async`` loop on amorsize's warm pools.

Dask decides *what* runs when (dependencies, memory-friendly order, callbacks); amorsize decides
*where*: serially in the caller, on threads or on processes, how many workers, and how many ready
tasks travel together per submission. The decision comes from the optimizer through
``amorsize.plugins``, fed with task times measured on the graph (see ``measure``) and
corrected after every compute, remembered per graph shape. Pools are the shared warm ones, so a
second compute pays no process start-up.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any

from dask import config
from dask.callbacks import Callback
from dask.local import get_async
from dask.multiprocessing import pack_exception as pack_remote_exception
from dask.multiprocessing import reraise as reraise_remote
from dask.task_spec import DataNode
from dask.threaded import pack_exception as pack_local_exception

from amorsize import plugins
from amorsize.errors import (
    EXECUTOR_TYPES,
    ExecutorType,
    WorkerCrashedError,
    check_executor_type,
    check_flag,
    check_positive_int,
)
from amorsize.optimizer.learned import Learned
from amorsize.plan import Plan
from amorsize.pools.payloads import OutOfBand, Placed
from amorsize.pools.worker import inside_worker
from amorsize.run.control import Run
from amorsize.workload import Profile, Workload
from amorsize_dask import tasks
from amorsize_dask.graph import GraphWork, as_graph, needed_work, shape_key
from amorsize_dask.measure import measure

PROCESS_BATCHES_PER_WORKER = 2
UNMEASURED = Profile(per_item_seconds=1e-3, measured_by="nothing yet: first compute")


def get(
    dsk: Any,
    keys: Sequence | Any,
    cache: dict | None = None,
    num_workers: int | None = None,
    executor: ExecutorType | None = None,
    chunksize: int | None = None,
    callbacks: Any = None,
    progress: bool = False,
    **kwargs: Any,
) -> Any:
    """Compute ``keys`` of a Dask graph on amorsize's warm pools; Dask's scheduler interface.

    ``dsk`` is whatever ``dask.compute`` hands a scheduler (an expression, a HighLevelGraph or a
    dict of legacy tasks). ``num_workers`` caps the workers, ``executor`` ("serial", "thread",
    "process") and ``chunksize`` (tasks per submission) force a choice; pass them through
    ``x.compute(scheduler="amorsize", executor="process")``. ``progress=True`` reports tasks
    done to the ``amorsize_run_progress`` hook (a tqdm bar by default). Other keywords go to
    ``dask.local.get_async`` (e.g. ``rerun_exceptions_locally``). The options are checked on
    every compute (``check_options``), whatever was remembered about the graph.

    A compute that fails (a task's error, Ctrl-C) cancels its run: batches not started are
    dropped, and workers still busy with its tasks are stopped (see ``amorsize.run.control``).

    The first compute of a new kind of graph runs a few of its tasks in the calling thread to
    measure them, except when Dask callbacks are active (they must see every task) or a thread
    or process executor is forced (the caller asked that no task run here, e.g. to survive a
    task that kills its process); those computes are planned without measurements and teach
    the next one.
    """
    check_options(num_workers, executor, chunksize, progress)
    if num_workers is None:
        num_workers = config.get("num_workers", None)
        if num_workers is not None:
            check_positive_int("num_workers (from dask.config)", num_workers)
    _warn_if_client_bypassed()
    graph = as_graph(dsk)
    if cache is None:
        cache = config.get("cache", None)
    work = needed_work(graph, keys, cache)
    if tasks.in_task() or inside_worker() or not work.tasks:
        # nested in a task or an amorsize worker: the pool that would run it may be the one
        # waiting here, as amorsize.map and the joblib backend also run a plain loop there
        executor = "serial"
    shape = shape_key(work)
    learned = plugins.recall(shape)
    recalled = learned is not None
    done: dict = {}
    executors: tuple[ExecutorType, ...] = (executor,) if executor else EXECUTOR_TYPES
    if learned is None:
        if _callbacks_active(callbacks) or executor not in (None, "serial"):
            profile = UNMEASURED
            if executor is None:
                executors = ("thread",)
        else:
            # no overlap test when threads cannot be chosen, or nested in a worker (the test's
            # two threads may be the ones waiting here)
            threads = "thread" in executors and not (tasks.in_task() or inside_worker())
            sample = measure(work, cache, partial(plugins.leased_pool, 2, "thread") if threads
                             else None)
            profile = UNMEASURED if sample is None else sample.profile
            done = {} if sample is None else sample.results
        plugins.remember(shape, profile)
        learned = plugins.recall(shape) or Learned(profile)
    for key, value in done.items():
        graph[key] = DataNode(key, value)
    workload = Workload(
        n_items=work.n_tasks,
        source="dask",
        executors=executors,
        max_workers=num_workers,
        previous_runs=learned.runs,
        key=shape,
        already_done=len(done),
        recalled=recalled,
        chunksize=chunksize,
        learned=learned,
    )
    plan = plugins.make_plan(tasks.run_node, learned.profile, workload)
    with Runner(plan, progress, work.n_tasks, len(done)) as runner:
        start = time.perf_counter()
        result = get_async(
            runner.submit,
            runner.num_workers,
            graph,
            keys,
            cache=cache,
            callbacks=callbacks,
            chunksize=runner.chunksize,
            **runner.get_async_options(),
            **kwargs,
        )
        runner.finished(shape, work, time.perf_counter() - start)
    return result


def check_options(num_workers: object, executor: object, chunksize: object,
                  progress: object) -> None:
    """Refuse a bad option of ``get``, naming it and the fix; options all at their defaults
    are valid, so a compute in a loop checks nothing more."""
    if num_workers is None and executor is None and chunksize is None and progress is False:
        return
    check_positive_int("num_workers", num_workers, allow_none=True)
    if executor is not None:
        check_executor_type("executor", executor)
    check_positive_int("chunksize", chunksize, allow_none=True)
    check_flag("progress", progress)


class Runner:
    """Runs the batches ``get_async`` submits as one ``amorsize.run.control.Run`` of the plan, and times
    them; a context manager whose failure cancels the run.

    Each batch is timed inside its worker (``tasks.run_tasks``); the run's counts are what the
    finished run reports, so the next compute of the same kind of graph is planned from what
    tasks took. To process workers, the large buffers a batch's tasks carry (an array every
    task reads) cross through shared memory, placed once per compute (``Placed``), as the
    joblib backend's do.
    """

    def __init__(self, plan: Plan, progress: bool = False, n_tasks: int | None = None,
                 done: int = 0) -> None:
        self.plan = plan
        self.run = Run(plan, progress=progress, description="dask", total=n_tasks, done=done)
        self.uses_processes = False
        self.cpu_seconds = 0.0
        self.placed: Placed | None = None

    def __enter__(self) -> Runner:
        self.run.__enter__()
        pool = self.run.pool
        self.num_workers = 1 if pool is None else pool.n_jobs
        self.uses_processes = pool is not None and pool.uses_processes
        if self.uses_processes:
            self.num_workers *= PROCESS_BATCHES_PER_WORKER
            self.placed = Placed()
        self.chunksize = 1 if pool is None else max(1, self.plan.chunksize)
        self._run_tasks = tasks.run_tasks if pool is None else pool.prepare(tasks.run_tasks)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.run.__exit__(*exc)

    def get_async_options(self) -> dict[str, Any]:
        """How errors travel: with their traceback from processes, with their original type
        either way. Tasks need no ``dumps``/``loads`` here: amorsize's process pools already ship
        every call and result by value (cloudpickle)."""
        if self.uses_processes:
            return {
                "get_id": tasks.process_id,
                "pack_exception": pack_remote_exception,
                "raise_exception": reraise_remote,
            }
        return {"get_id": tasks.thread_id, "pack_exception": pack_local_exception}

    def submit(self, fn: Callable, batch: list) -> Future:
        """``get_async``'s ``submit(batch_execute_tasks, batch)``: run it timed instead."""
        if self.run.pool is None:
            future: Future = Future()
            try:
                results, wall, cpu = tasks.run_tasks(batch)
                self.cpu_seconds += cpu  # the calling thread only: no lock needed
                future.set_result(self._record((results, wall, cpu)))
            except BaseException as exc:  # noqa: B036 - delivered through the future, as executors do
                future.set_exception(exc)
            return future
        outer: Future = Future()
        sent = batch if self.placed is None else OutOfBand(batch, self.placed)
        self.run.submit(self._run_tasks, sent).add_done_callback(partial(self._relay, outer))
        return outer

    def _relay(self, outer: Future, inner: Future) -> None:
        try:
            outer.set_result(self._record(inner.result()))
        except BrokenProcessPool as exc:
            outer.set_exception(exc if isinstance(exc, WorkerCrashedError) else _crashed(exc))
        except BaseException as exc:  # noqa: B036 - delivered through the future, as executors do
            outer.set_exception(exc)

    def _record(self, timed: tuple[list, float, float]) -> list:
        results, wall, _ = timed
        self.run.record(len(results), wall)
        return results

    def finished(self, shape: Any, work: GraphWork, wall_seconds: float) -> None:
        """Tell the optimizer what the run took, from the moment its pool was ready (a pool's
        start-up is the optimizer's to predict, not a sign the plan ran slow).

        The measured CPU share of the tasks is kept only from serial runs: a task sharing the
        machine with its neighbours (threads holding the GIL, processes on busy cores) spends
        time off the CPU without waiting for anything, and would look I/O-bound. For the same
        reason a run on several threads reports the remembered per-task time, not the time
        each task spent in its thread (which counts waiting for the GIL): such a run corrects
        the thread model's prediction, not what a task costs.
        """
        plan, run = self.plan, self.run
        n_tasks = run.n_items
        learned = plugins.recall(shape)
        compute_seconds = run.compute_seconds
        if learned is not None and plan.executor_type == "serial" and compute_seconds > 0:
            ratio = self.cpu_seconds / compute_seconds
            plugins.remember(shape, learned.profile.replace(cpu_ratio=ratio))
        if plan.executor_type == "thread" and plan.n_jobs > 1 and learned is not None:
            compute_seconds = learned.profile.per_item_seconds * n_tasks
        run.finish(
            chunksize=self.chunksize,
            n_items=n_tasks,
            wall_seconds=wall_seconds,
            compute_seconds=compute_seconds,
        )


def _callbacks_active(callbacks: Any) -> bool:
    """Dask callbacks (ProgressBar, Profiler) see every task only if none ran before the loop."""
    return bool(callbacks) or bool(Callback.active)


class ClientBypassedWarning(UserWarning):
    """A dask.distributed Client is the default, yet a compute ran on ``scheduler="amorsize"``."""


_warned_clients: set[int] = set()


def _warn_if_client_bypassed() -> None:
    """Say so, once per Client, when ``scheduler="amorsize"`` keeps work off an active cluster.

    Creating a ``Client`` sets ``scheduler="dask.distributed"`` in Dask's config, so the Client
    wins over an earlier global ``scheduler="amorsize"``; amorsize only runs while a Client is
    the default when asked for afterwards or explicitly, and that is worth one warning.
    """
    if "distributed" not in sys.modules:
        return
    from amorsize_dask.distributed import current_client

    client = current_client()
    if client is None or id(client) in _warned_clients:
        return
    _warned_clients.add(id(client))
    warnings.warn(
        f"a dask.distributed Client ({client.scheduler.address if client.scheduler else '?'}) "
        "is the default, but this compute runs on this machine with scheduler='amorsize'; "
        "pass scheduler=client (or leave scheduler unset) to use the cluster, or "
        "amorsize_dask.map(func, data, client=client) for batches sized for it",
        ClientBypassedWarning,
        stacklevel=4,
    )


def _crashed(exc: BaseException) -> WorkerCrashedError:
    error = WorkerCrashedError(
        "a worker process running Dask tasks died (killed, segfault or os._exit); the compute "
        "is abandoned, the pool is discarded and the next compute gets a fresh one"
    )
    error.__cause__ = exc
    return error
