"""Every extension point of amorsize, in one place.

Each function below is a hook specification: its docstring is its documentation. Plugins
implement any of them with ``@amorsize.hookimpl`` and are found through the ``amorsize``
entry-point group or ``amorsize.register_plugin()``. amorsize's own optimizer, pool
provider and progress bar are plugins too (``amorsize.plugins.default_optimizer``,
``default_pools``, ``progress_bar``), so a plugin stands on equal footing with them.

An implementation may take any subset of a hook's arguments, by name. No specification gives an
argument a default value, and an implementation must not either: pluggy does not pass an argument
that has a default, so the implementation would always see its default.

Which hooks may fail a run: ``amorsize_recall``, ``amorsize_remember``, ``amorsize_make_plan``,
``amorsize_adjust_plan`` and ``amorsize_get_pool`` decide how work runs, so an exception in them --
or a return value that is not what the hook promises -- stops the run before its work is
dispatched (only the few items measured while sampling have been computed) and reaches the caller
as ``amorsize.PluginError`` naming the plugin and the hook, chained from the original exception.
The observers ``amorsize_pool_event``, ``amorsize_run_progress`` and ``amorsize_run_finished``
only watch: an exception there becomes one ``amorsize.PluginWarning`` at the caller's line, the
observers not yet called are still called (the wrappers are not called again) and the run's
results are kept.

Order: every hook is called through ``pm.hook`` (``amorsize.plugins.pm``), so pluggy's tracing
and ``add_hookcall_monitoring`` see each call. Implementations run in pluggy's order --
``tryfirst`` ones first, ``trylast`` ones last, otherwise the most recently registered first --
with wrappers (``wrapper=True`` or the old-style ``hookwrapper=True``) around all of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from amorsize.errors import ExecutorType
    from amorsize.pools.contract import PoolLike

hookspec = pluggy.HookspecMarker("amorsize")
hookimpl = pluggy.HookimplMarker("amorsize")


@hookspec(firstresult=True)
def amorsize_make_plan(func: Any, sample: Any, workload: Any) -> Any:
    """Decide how to run ``func``: return an ``amorsize.Plan``, or None to let the next plugin decide.

    Called once per ``amorsize.map``/``imap``/``optimize`` call, joblib ``Parallel`` call and Dask
    compute that needs a decision, after a few items were measured. ``sample`` is the measured
    ``amorsize.Profile`` of the function (per-item time, CPU/wall ratio, pickled sizes);
    ``workload`` is the ``amorsize.Workload`` (number of items, allowed ``executors``,
    ``max_workers`` and ``source``, the caller: "map", "imap", "optimize", "joblib", "dask").
    The first non-None result wins: mark an implementation ``tryfirst=True`` to decide before
    amorsize's own optimizer, which is ``trylast`` and always answers.

    The plan must have an ``executor_type`` of "serial", "thread" or "process" and ``n_jobs`` and
    ``chunksize`` ints >= 1; the caller runs exactly that. A plan whose ``decided_by`` was left at
    its default is labelled with the name of the plugin that returned it (pluggy does not say
    which implementation answered: if several plugins implement this hook, the label names them
    all; set ``decided_by`` to be exact).

    To change every plan, whoever made it, wrap this hook (``wrapper=True``): ``plan = yield``
    gives the plan made and adjusted (``amorsize_adjust_plan``), and what the wrapper returns is
    the plan that runs. Wrappers apply from the innermost out: the most recently registered one
    last, a ``tryfirst`` one after all others. An exception of a maker or an adjuster is thrown
    into the wrapper at its ``yield``.
    """


@hookspec
def amorsize_adjust_plan(plan: Any, workload: Any) -> Any:
    """Change a plan after it is made: return a new ``Plan`` (e.g. ``plan.replace(n_jobs=1)``) or None.

    Called right after ``amorsize_make_plan``, for every plan, whoever made it, inside amorsize's
    own wrapper of ``amorsize_make_plan`` (``amorsize.plugins.plan_chain``). Every implementation
    is called through ``pm.hook``, one at a time in pluggy's order, each receiving the plan as
    left by the one before, so adjustments compose: cap workers on a shared host, force threads
    for a service, forbid processes under a debugger. A change of executor, workers or chunk size
    is added to the plan's ``reasons`` with the plugin's name. The predictions in the plan are
    those of the plan as made; a plugin that changes the plan may update them.

    An implementation cannot be a wrapper (it is refused when registered): wrap
    ``amorsize_make_plan`` instead, which sees the plan every adjuster left.
    """


@hookspec(firstresult=True)
def amorsize_get_pool(n_jobs: int, executor_type: ExecutorType, create: bool, start_method: str | None,
                      initializer: Any, initargs: tuple[Any, ...],
                      max_tasks_per_child: int | None) -> PoolLike | None:
    """Return a pool of ``n_jobs`` workers of kind ``executor_type`` ("serial", "thread", "process",
    "interpreter").

    The arguments are ``PoolManager.get_pool``'s, by the same names (``executor_type``, as on a
    ``Plan``); an implementation that takes ``executor`` is refused when registered.

    Called whenever amorsize, the joblib backend or the Dask scheduler needs workers to run a
    plan, and by the optimizer to learn which pools are warm. A pool behaves like
    ``amorsize.pools.WorkerPool``: the typed contract is ``amorsize.pools.contract.PoolLike``
    (``imap_chunks(func, iterable, chunksize)`` yielding ``(results, compute_seconds)`` per chunk
    in order, ``map(func, iterable, chunksize=1) -> list``, ``submit(fn, *args, **kwargs) ->
    Future``, ``submit_chunk``, ``prepare``, ``lease``, ``running_items``, ``terminate`` ...).
    A pool lacking any of its members fails the run with ``amorsize.PluginError`` naming them.

    ``start_method`` is the process start method asked for ("fork", "forkserver", "spawn"), or
    None for the provider's default; it means nothing to serial and thread pools.
    ``initializer`` (None or a callable) with ``initargs`` runs once in each worker before its
    first task (``map(..., initializer=...)``); it is part of which pool is meant.
    ``max_tasks_per_child`` (None or an int >= 1, ``map(..., max_tasks_per_child=...)``): each
    process worker is replaced by a fresh one after that many tasks (chunks); part of which
    pool is meant too. It means nothing to serial and thread pools.

    With ``create=False`` return only an already-running (warm) pool, or None: the optimizer asks
    this to know whether a pool start-up must be paid, and must not start one by asking. With
    ``create=True`` some plugin must return a pool. The default is the global ``PoolManager``.
    """


@hookspec(firstresult=True)
def amorsize_recall(key: Any) -> Any:
    """What is remembered about a function (or a Dask graph shape) ``key``: an
    ``amorsize.optimizer.learned.Learned`` (``profile``, ``runs``, ``last_n_items``, ``corrections``) or None.

    Called before measuring, by ``amorsize.map``/``optimize`` and both adapters: a remembered
    profile means the function is not measured again. The first non-None result wins; the
    default is the optimizer's in-process memory. May fail a run.
    """


@hookspec
def amorsize_remember(key: Any, profile: Any) -> None:
    """Keep ``profile`` (an ``amorsize.Profile`` just measured, or corrected) for ``key``.

    Called after measuring by ``amorsize.map``/``optimize`` and both adapters, so the next call
    starts from it. Every implementation is called. May fail a run.
    """


@hookspec
def amorsize_pool_event(event: str, key: tuple, stats: dict) -> None:
    """Observe a pool's life: ``event`` is "created", "reused", "evicted", "broken" (a worker
    died; the pool is discarded) or "shutdown".

    Called by the global ``PoolManager`` as it happens. ``key`` identifies the pool:
    ``(executor_type, n_jobs, start_method, (initializer, initargs) or None, max_tasks_per_child)``;
    ``stats`` holds figures about it: ``startup_seconds``, ``idle_seconds`` when a pool is
    closed, and on "evicted" the ``reason``: "idle" (past the idle timeout), "released"
    (``release_pool``), "force_new", "cancelled" (a cancelled run stopped its workers), "closed"
    (shut down by its user) or "recycled" (a worker's memory grew past the limit). Called in the
    thread that caused it, sometimes while the manager holds the lock of that pool: keep it cheap,
    and do not ask amorsize for pools or run ``amorsize.map`` from it. Exceptions become warnings.
    """


@hookspec
def amorsize_run_finished(plan: Any, report: Any) -> None:
    """Observe a finished run: the ``plan`` it followed and the measured ``amorsize.RunReport``.

    Called once per run, after the last result is computed and before ``amorsize.map`` returns
    (for ``imap``: when the iterator is exhausted; a run abandoned half-way or failed by the
    user's function reports nothing). The report has ``source``, ``executor_type``, ``n_jobs``,
    ``chunksize``, ``wall_seconds``, ``n_items`` and ``n_chunks`` (items computed in this run, not
    counting those computed while sampling), ``compute_seconds`` (time spent inside the function,
    summed over workers), ``predicted_seconds``, ``predicted_speedup`` and ``actual_speedup``.
    amorsize's optimizer uses it to correct the next plan for the same function. Exceptions
    become warnings.
    """


@hookspec
def amorsize_run_progress(progress: Any) -> None:
    """Observe a running call: ``progress`` is an ``amorsize.RunProgress``.

    Called only for calls that asked for progress (``progress=True`` on ``amorsize.map`` and
    ``imap``, the joblib backend parameter ``progress=True``, ``compute(scheduler="amorsize",
    progress=True)``): once with ``state`` "started", then "advanced" as items complete (at
    least every second or so for a run whose items keep completing), and once "finished" or
    "cancelled". ``run_id`` tells concurrent runs apart; ``n_done`` counts items (not chunks),
    including those computed while measuring; ``n_total`` is the number of items, the last
    input size remembered for an iterator of a known function, or None (an open count); at
    "finished" it equals ``n_done``. amorsize's own progress bar (tqdm) is a plugin of this hook.
    Called from whichever thread saw the items complete; keep it cheap. Exceptions become
    warnings.
    """

