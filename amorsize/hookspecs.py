"""Every extension point of amorsize, in one place.

Each function below is a hook specification: its docstring is its documentation. Plugins
implement any of them with ``@amorsize.hookimpl`` and are found through the ``amorsize``
entry-point group or ``amorsize.register_plugin()``. amorsize's own optimizer and pool provider
are plugins too (``amorsize.default_plugins``), so a plugin stands on equal footing with them.

Which hooks may fail a run: ``amorsize_make_plan``, ``amorsize_adjust_plan`` and
``amorsize_get_pool`` decide how work runs, so an exception in them stops the run before any item
is computed and reaches the caller as ``amorsize.PluginError`` naming the plugin. The observers
``amorsize_pool_event`` and ``amorsize_run_finished`` only watch: an exception there is reported
as a ``amorsize.PluginWarning`` and the run's results are kept.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("amorsize")
hookimpl = pluggy.HookimplMarker("amorsize")


@hookspec(firstresult=True)
def amorsize_make_plan(func: Any, sample: Any, workload: Any) -> Any:
    """Decide how to run ``func``: return an ``amorsize.Plan``, or None to let the next plugin decide.

    Called once per ``amorsize.map``/``imap``/``optimize`` call, joblib ``Parallel`` call and Dask
    compute that needs a decision. ``sample`` is the measured ``amorsize.Profile`` of the function
    (per-item time, CPU/wall ratio, pickled sizes); ``workload`` is the ``amorsize.Workload``
    (number of items, allowed executors, caller). The first non-None result wins; mark an
    implementation ``tryfirst=True`` to decide before amorsize's own optimizer, which always answers.
    """


@hookspec
def amorsize_adjust_plan(plan: Any, workload: Any) -> Any:
    """Change a plan after it is made: return a new ``Plan`` (e.g. ``plan.replace(n_jobs=1)``) or None.

    Every implementation is called, in pluggy's order (``tryfirst`` first), each receiving the plan
    as left by the one before, so adjustments compose: cap workers on a shared host, force threads
    for a service, forbid processes under a debugger.
    """


@hookspec(firstresult=True)
def amorsize_get_pool(executor: str, n_jobs: int, create: bool) -> Any:
    """Return a pool of ``n_jobs`` workers of kind ``executor`` ("serial", "thread", "process").

    The pool has ``map(func, iterable, chunksize=1) -> list``, ``submit(fn, *args, **kwargs) ->
    Future`` and ``submit_chunk(func, items) -> Future`` of ``(results, compute_seconds)``. With
    ``create=False`` return only an already-running (warm) pool, or None: the optimizer asks this
    to know whether a pool start-up must be paid. The default is the global ``PoolManager``.
    """


@hookspec
def amorsize_pool_event(event: str, key: tuple, stats: dict) -> None:
    """Observe a pool's life: ``event`` is "created", "reused", "evicted", "broken" or "shutdown".

    ``key`` identifies the pool (executor type, n_jobs, start method, ...); ``stats`` holds
    figures about it (e.g. ``startup_seconds`` on "created"). Called in the thread that caused it;
    keep it cheap. Exceptions become warnings.
    """


@hookspec
def amorsize_run_finished(plan: Any, report: Any) -> None:
    """Observe a finished run: the ``plan`` it followed and the measured ``amorsize.RunReport``.

    The report has ``wall_seconds``, ``n_items``, ``n_chunks``, ``compute_seconds`` (time spent
    inside the function, summed over workers), ``predicted_seconds``, ``predicted_speedup`` and
    ``actual_speedup``. amorsize's optimizer uses it to correct the next plan for the same
    function. Exceptions become warnings.
    """
