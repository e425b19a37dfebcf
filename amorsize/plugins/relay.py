"""The calls every front end makes through the plugin manager.

amorsize.map/imap, the joblib backend and the Dask scheduler get plans and pools only through the
functions here, so a plugin that replaces or observes a decision does so for all of them at once.
Every hook is called through ``pm.hook``, so pluggy's tracing (``pm.enable_tracing``) and
``pm.add_hookcall_monitoring`` see each call. What is amorsize's own: which plugin to blame for
an exception (``_culprit``), and that a failing observer is one warning, not a failed run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Literal, cast, overload

import pluggy

from amorsize.errors import (
    EXECUTOR_TYPES,
    ExecutorType,
    PluginError,
    PoolClosedError,
    PoolManagerClosedError,
)
from amorsize.plan import Plan
from amorsize.plugins.registry import BUILTIN_NAMES, load_plugins, pm, warn_at_caller
from amorsize.pools.contract import PoolLike, missing_pool_members
from amorsize.pools.worker_pool import WorkerPool
from amorsize.workload import Workload

_LEASE_ATTEMPTS = 5
Which = Literal["implementations", "wrappers", "all"]


def make_plan(func: Any, sample: Any, workload: Any) -> Plan:
    """The plan for ``func``: ``amorsize_make_plan``, with the adjusters and every plugin's
    wrappers around it (``plan_chain``); always a new object, which callers attach data to."""
    load_plugins()
    plan = _decide("amorsize_make_plan", func=func, sample=sample, workload=workload)
    check_plan(plan, "amorsize_make_plan", "wrappers")  # a plugin's wrapper may have replaced it
    return cast(Plan, plan)


@overload
def get_pool(n_jobs: int, executor_type: ExecutorType, *, create: Literal[True] = True,
             start_method: str | None = None, initializer: Any = None,
             initargs: tuple[Any, ...] = (),
             max_tasks_per_child: int | None = None) -> PoolLike: ...


@overload
def get_pool(n_jobs: int, executor_type: ExecutorType, *, create: bool,
             start_method: str | None = None, initializer: Any = None,
             initargs: tuple[Any, ...] = (),
             max_tasks_per_child: int | None = None) -> PoolLike | None: ...


def get_pool(n_jobs: int, executor_type: ExecutorType, *, create: bool = True,
             start_method: str | None = None, initializer: Any = None,
             initargs: tuple[Any, ...] = (),
             max_tasks_per_child: int | None = None) -> PoolLike | None:
    """A pool from the first plugin that provides one (by default the global PoolManager); with
    ``create=False`` only a warm one, or None. ``start_method`` None means the default. Its first
    two parameters are ``PoolManager.get_pool``'s; the rest are keywords, as the manager's third
    (``force_new``) has no meaning here."""
    load_plugins()
    pool = _decide("amorsize_get_pool", n_jobs=n_jobs, executor_type=executor_type, create=create,
                   start_method=start_method, initializer=initializer, initargs=initargs,
                   max_tasks_per_child=max_tasks_per_child)
    if pool is None and create:
        raise PluginError("<none>", "amorsize_get_pool", RuntimeError(
            f"no plugin provided a {executor_type} pool of {n_jobs} (was "
            f"{BUILTIN_NAMES[1]} unregistered?)"))
    # amorsize's own pools have every member by their class
    missing = [] if pool is None or isinstance(pool, WorkerPool) else missing_pool_members(pool)
    if missing:
        raise PluginError(answered_by("amorsize_get_pool"), "amorsize_get_pool",
                          TypeError(f"returned {type(pool).__name__}, which has no "
                                    f"{', '.join(missing)}; a pool must behave like "
                                    "amorsize.pools.WorkerPool (see amorsize.pools.contract.PoolLike)"))
    return cast(PoolLike | None, pool)


@contextlib.contextmanager
def leased_pool(n_jobs: int, executor_type: ExecutorType, *, start_method: str | None = None,
                initializer: Any = None, initargs: tuple[Any, ...] = (),
                max_tasks_per_child: int | None = None) -> Iterator[PoolLike]:
    """``get_pool`` and hold the pool for a ``with`` block (``WorkerPool.lease``): a pool retired by
    another thread in between (``clear()``, ``release_pool()``, idle eviction) is asked for
    again, so sharing pools never fails a call."""
    with contextlib.ExitStack() as stack:
        for attempt in range(_LEASE_ATTEMPTS):
            pool = get_pool(n_jobs, executor_type, start_method=start_method,
                            initializer=initializer, initargs=initargs,
                            max_tasks_per_child=max_tasks_per_child)
            try:
                stack.enter_context(pool.lease())
                break
            except (PoolClosedError, PoolManagerClosedError):  # asked again: a new manager
                if attempt == _LEASE_ATTEMPTS - 1:
                    raise
        yield pool


def recall(key: Any) -> Any:
    """What the first plugin that remembers ``key`` knows (a ``Learned``), or None."""
    load_plugins()
    return _decide("amorsize_recall", key=key)


def remember(key: Any, profile: Any) -> None:
    """Hand a measured profile to every plugin that keeps them (by default the optimizer)."""
    load_plugins()
    _decide("amorsize_remember", key=key, profile=profile)


def pool_event(event: str, key: tuple, stats: dict) -> None:
    """Tell observers about a pool; a failing observer becomes a warning, never a failed run."""
    load_plugins()
    _observe("amorsize_pool_event", {"event": event, "key": key, "stats": stats})


def run_progress(progress: Any) -> None:
    """Tell progress observers (a bar, a log) how far a run is; failures become warnings."""
    load_plugins()
    _observe("amorsize_run_progress", {"progress": progress})


def run_finished(plan: Any, report: Any) -> None:
    """Tell observers what a run took; a failing observer becomes a warning."""
    load_plugins()
    _observe("amorsize_run_finished", {"plan": plan, "report": report})


def _decide(hook_name: str, **kwargs: Any) -> Any:
    """``pm.hook.<hook_name>(**kwargs)``, where a third-party plugin's exception becomes a
    ``PluginError`` naming it. What comes through a built-in plugin -- amorsize's own error (a
    closed manager, an argument a pool refuses) or the user's (an initializer that raised) --
    keeps its type, even when a third-party wrapper let it through."""
    try:
        return getattr(pm.hook, hook_name)(**kwargs)
    except PluginError:
        raise
    except Exception as exc:
        impl = _culprit(getattr(pm.hook, hook_name), exc)
        if impl is None or impl.plugin_name in BUILTIN_NAMES:
            raise
        raise PluginError(impl.plugin_name, hook_name, exc) from exc


def _observe(hook_name: str, kwargs: dict[str, Any]) -> None:
    """``pm.hook.<hook_name>(**kwargs)`` for observers: an observer that raises is one
    ``PluginWarning``, and the observers pluggy had not called yet are called (through
    ``pm.subset_hook_caller``, without the wrappers, which have seen the exception)."""
    caller: pluggy.HookCaller = getattr(pm.hook, hook_name)
    while True:
        try:
            caller(**kwargs)
            return
        except Exception as exc:
            impl = _culprit(caller, exc)
            name = "<unknown>" if impl is None else impl.plugin_name
            warn_at_caller(f"amorsize plugin {name!r} raised {type(exc).__name__} in "
                           f"{hook_name}: {exc}; the run's results are kept")
            if impl is None or impl.wrapper or impl.hookwrapper:
                return
            impls = caller.get_hookimpls()  # pluggy calls them from the last to the first
            called = impls[impls.index(impl):]
            caller = pm.subset_hook_caller(hook_name, {i.plugin for i in called})


def _culprit(caller: pluggy.HookCaller, exc: BaseException) -> pluggy.HookImpl | None:
    """The implementation an exception of a hook call came from: the innermost frame of its
    traceback that runs one of the hook's implementations (an exception that a wrapper saw
    and let through is still the implementation's)."""
    by_code: dict[Any, list[pluggy.HookImpl]] = {}
    for impl in caller.get_hookimpls():
        by_code.setdefault(getattr(impl.function, "__code__", None), []).append(impl)
    found = None
    tb = exc.__traceback__
    while tb is not None:
        impls = by_code.get(tb.tb_frame.f_code)
        if impls:  # one class registered twice: the instance is the frame's self
            found = next((i for i in impls if tb.tb_frame.f_locals.get("self") is i.plugin),
                         impls[0])
        tb = tb.tb_next
    return found


def answered_by(hook_name: str, which: Which = "all") -> str:
    """The third-party plugin that answered a hook: pluggy does not say which implementation gave
    a result, so when several of the hook's (``which`` of them) could have, it names them all."""
    names = [i.plugin_name for i in getattr(pm.hook, hook_name).get_hookimpls()
             if i.plugin_name not in BUILTIN_NAMES
             and (which == "all" or (which == "wrappers") == (i.wrapper or i.hookwrapper))]
    return " or ".join(dict.fromkeys(names)) or "<none>"


def check_plan(plan: Any, hook_name: str, which: Which = "all", by: str | None = None) -> None:
    """A plan a caller can run, or ``PluginError`` naming the plugin that returned it (``by``,
    else the third-party ``which`` implementations of the hook that could have)."""
    problem: Exception | None = None
    if not isinstance(plan, Plan):
        problem = TypeError(f"returned {type(plan).__name__} {plan!r:.80}, not an amorsize.Plan")
    elif plan.executor_type not in EXECUTOR_TYPES:
        problem = ValueError(f"returned a plan with executor_type {plan.executor_type!r}; "
                             f"it must be one of {', '.join(map(repr, EXECUTOR_TYPES))}")
    elif not isinstance(plan.workload, Workload):
        problem = TypeError(f"returned a plan whose workload is {type(plan.workload).__name__}, "
                            "not an amorsize.Workload (pass on the workload the hook received)")
    else:
        for field in ("n_jobs", "chunksize"):
            value = getattr(plan, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problem = ValueError(f"returned a plan with {field}={value!r}; it must be an int >= 1")
                break
    if problem is not None:
        raise PluginError(by or answered_by(hook_name, which), hook_name, problem)
