"""The one plugin manager of the process, and the hook relay every caller goes through.

amorsize.map/imap, the joblib backend and the Dask scheduler get plans and pools only through the
functions here, so a plugin that replaces or observes a decision does so for all of them at once.

Hooks with pluggy's own semantics (``amorsize_make_plan``, ``amorsize_get_pool``,
``amorsize_recall``, ``amorsize_remember``) are called through ``pm.hook``, so pluggy's tracing
(``pm.enable_tracing``) and ``add_hookcall_monitoring`` see them. Each implementation is wrapped
when its plugin is registered (``_credited``), so an error or a bad return value still names
the plugin it came from. The relay loops over implementations itself (in pluggy's order,
wrappers included) only where amorsize's semantics differ: ``amorsize_adjust_plan`` hands each
plugin the plan left by the one before, and a failing observer must not keep the next observer
from being called.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.metadata
import os
import sys
import threading
import types
import warnings
from collections.abc import Generator, Iterator
from typing import Any, Literal, cast, overload

import pluggy

from amorsize.errors import (
    EXECUTOR_TYPES,
    ExecutorType,
    PluginError,
    PluginWarning,
    PoolClosedError,
    PoolManagerClosedError,
)
from amorsize.plan import Plan
from amorsize.plugins import hookspecs
from amorsize.pools.contract import PoolLike, missing_pool_members
from amorsize.pools.pool import Pool
from amorsize.workload import Workload

ENTRY_POINT_GROUP = "amorsize"
DISABLE_ENV = "AMORSIZE_DISABLE_PLUGINS"
BUILTIN_NAMES = (
    "amorsize.plugins.default_optimizer",
    "amorsize.plugins.default_pools",
    "amorsize.plugins.progress_bar",
)
_LEASE_ATTEMPTS = 5
_DEFAULT_DECIDED_BY = "amorsize.optimizer"
_OFF = {"", "0", "false", "no", "off"}
_ALL = {"1", "true", "yes", "on", "all"}

pm = pluggy.PluginManager("amorsize")
pm.add_hookspecs(hookspecs)

_loaded = False
_load_lock = threading.Lock()


def _reset_lock_in_child() -> None:
    global _load_lock
    _load_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_in_child)


def _load_plugins() -> None:
    """Register the built-in plugins, then third-party ones from entry points (once).

    An entry point that fails to load is skipped with a ``PluginWarning`` (see
    ``_load_entry_points``): one broken install must not stop every run, nor the tools that
    would diagnose it.
    """
    global _loaded
    if _loaded:
        return
    with _load_lock:
        if _loaded:
            return
        from amorsize.plugins import default_optimizer, default_pools, progress_bar

        for module in (default_optimizer, default_pools, progress_bar):
            if not pm.is_registered(module) and not pm.is_blocked(module.__name__):
                pm.register(module, name=module.__name__)
                _credited(module)
        _load_entry_points(disabled_entry_points())
        _loaded = True


def disabled_entry_points() -> set[str] | None:
    """What ``AMORSIZE_DISABLE_PLUGINS`` skips: None for every entry point ("1", "true", "all"),
    else the set of entry-point names it lists, comma-separated (empty when unset or "0")."""
    setting = os.environ.get(DISABLE_ENV, "").strip()
    if setting.lower() in _ALL:
        return None
    if setting.lower() in _OFF:
        return set()
    return {name.strip() for name in setting.split(",") if name.strip()}


def _load_entry_points(skip: set[str] | None) -> None:
    """Load and register each entry point of the group not skipped, blocked or already there.

    A failing one (its import raises, or its plugin is refused) is recorded for
    ``broken_entry_points()`` and reported once per process with a ``PluginWarning``; the others
    still load. The entry point is loaded here rather than by pluggy, so that what
    ``importlib.metadata.entry_points`` lists is exactly what is loaded.
    """
    if skip is None:
        return
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in skip or pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
            _check_or_unregister(plugin)
            _credited(plugin)
        except Exception as exc:
            _entry_point_failed(ep.name, ep.value, exc)
        else:
            _broken.pop(ep.name, None)


_broken: dict[str, tuple[str, str]] = {}


def _entry_point_failed(name: str, value: str, exc: Exception) -> None:
    """Record a broken entry point; warn about it the first time only (it is met on each load)."""
    error = f"{type(exc).__name__}: {exc}"
    seen = _broken.get(name) == (value, error)
    _broken[name] = (value, error)
    if not seen:
        warnings.warn(
            f"amorsize plugin entry point {name!r} ({value}) failed to load and is skipped: "
            f"{error} (fix or uninstall the distribution that provides it, or set "
            f"{DISABLE_ENV}={name} to skip it silently)",
            PluginWarning,
            stacklevel=_caller_stacklevel(),
        )


def _caller_stacklevel() -> int:
    """The ``stacklevel`` of the first frame outside amorsize, so a warning points at the
    user's call (which call first loads the plugins varies)."""
    package = os.path.dirname(__file__) + os.sep
    frame: types.FrameType | None = sys._getframe(2)
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def broken_entry_points() -> list[tuple[str, str, str]]:
    """Entry points that failed to load, as (name, value, "ExceptionType: message"), for
    ``amorsize plugins`` to show what was skipped and why."""
    _load_plugins()
    return [(name, value, error) for name, (value, error) in _broken.items()]


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object or module from user code; returns the name it got.

    Raises ``pluggy.PluginValidationError`` for an implementation that no hook specification
    knows (a misspelt name), that asks for an argument the hook does not have, or that gives a
    hook argument a default value (pluggy would never pass it); ``ValueError`` if the plugin or
    its name is already registered, or the name is blocked.
    """
    _load_plugins()
    registered = pm.register(plugin, name=name or _default_name(plugin))
    if registered is None:
        raise ValueError(f"plugin name {name!r} is blocked (pm.set_blocked); choose another name")
    _check_or_unregister(plugin)
    _credited(plugin)
    return registered


def _default_name(plugin: object) -> str:
    """A plugin registered without a name is named after its module or class (numbered if that
    name is taken), so errors say which plugin failed instead of an object id."""
    if isinstance(plugin, types.ModuleType):
        base = plugin.__name__
    else:
        cls = plugin if isinstance(plugin, type) else type(plugin)
        base = f"{cls.__module__}.{cls.__qualname__}"
    name, n = base, 1
    while pm.get_plugin(name) is not None or pm.is_blocked(name):
        n += 1
        name = f"{base}#{n}"
    return name


_CREDITED_HOOKS = ("amorsize_make_plan", "amorsize_get_pool", "amorsize_recall",
                   "amorsize_remember")
_credit = threading.local()


def _credited(plugin: object) -> None:
    """Wrap the plugin's implementations of the hooks called through ``pm.hook`` so that each
    non-None result, and each exception, is credited to the plugin (pluggy's call does not
    say which implementation answered or raised)."""
    for caller in pm.get_hookcallers(plugin) or []:
        if caller.name not in _CREDITED_HOOKS:
            continue
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and not (impl.wrapper or impl.hookwrapper) \
                    and not getattr(impl.function, "_amorsize_credited", False):
                # pluggy declares it Final; crediting rewraps it on purpose, once per plugin
                impl.function = _crediting(impl.function, impl.plugin_name)  # type: ignore[misc]


def _crediting(function: Any, plugin_name: str) -> Any:
    def credited(*args: Any) -> Any:
        try:
            result = function(*args)
        except Exception as exc:
            if not hasattr(exc, "amorsize_plugin"):
                exc.amorsize_plugin = plugin_name  # type: ignore[attr-defined]
            raise
        if result is not None:
            _credit.by = plugin_name
        return result

    credited._amorsize_credited = True  # type: ignore[attr-defined]
    return credited


def _hook(hook_name: str, kwargs: dict[str, Any]) -> tuple[Any, str | None]:
    """``pm.hook.<hook_name>(**kwargs)``; returns (result, the plugin that gave it). A
    third-party plugin's exception becomes a ``PluginError`` naming it; wrappers see it first,
    as pluggy does. A built-in plugin's passes through as it is (``_builtin``)."""
    _credit.by = None
    try:
        result = getattr(pm.hook, hook_name)(**kwargs)
    except PluginError:
        raise
    except Exception as exc:
        plugin_name = getattr(exc, "amorsize_plugin", "<a wrapper>")
        if _builtin(plugin_name, exc):
            raise
        raise PluginError(plugin_name, hook_name, exc) from exc
    return result, _credit.by


def _builtin(plugin_name: str, exc: Exception) -> bool:
    """Whether ``exc`` came from a built-in plugin: amorsize's own error (a closed manager, an
    argument a pool refuses) or the user's (an initializer that raised) -- which keeps its type.
    Only a third-party plugin's failure is a ``PluginError``. The crediting mark is removed, so
    the exception reaches the caller as it was raised."""
    if plugin_name not in BUILTIN_NAMES:
        return False
    with contextlib.suppress(AttributeError):
        del exc.amorsize_plugin  # type: ignore[attr-defined]
    return True


def unregister_plugin(plugin: object = None, name: str | None = None) -> object:
    """Unregister a plugin given as the object or by its name; returns the plugin.

    Built-in plugins can be unregistered too (by their names in ``BUILTIN_NAMES``), e.g. to
    replace the optimizer entirely; ``ValueError`` if no such plugin is registered.
    """
    if plugin is None and name is None:
        raise TypeError("unregister_plugin() needs the plugin object or name=")
    _load_plugins()
    registered_name = pm.get_name(plugin) if plugin is not None else name
    if registered_name is None or pm.get_plugin(registered_name) is None:
        raise ValueError(f"plugin {name or plugin!r} is not registered; registered: "
                         f"{', '.join(n for n, _ in pm.list_name_plugin())}")
    return pm.unregister(plugin=plugin, name=registered_name)


def _check_or_unregister(plugin: object) -> None:
    """Refuse what pluggy accepts silently: unknown hook names and defaulted hook arguments."""
    problems = []
    for caller in pm.get_hookcallers(plugin) or []:
        impls = [i for i in caller.get_hookimpls() if i.plugin is plugin]
        if not caller.has_spec():
            if not all(i.optionalhook for i in impls):
                close = difflib.get_close_matches(caller.name, _hook_names(), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"{caller.name} is not an amorsize hook{hint}")
            continue
        spec_args = set(caller.spec.argnames) if caller.spec else set()
        for impl in impls:
            defaulted = sorted(spec_args & set(impl.kwargnames))
            if defaulted:
                problems.append(
                    f"{caller.name} gives {', '.join(defaulted)} a default value: pluggy never "
                    "passes such an argument; remove the default")
    if problems:
        pm.unregister(plugin)
        raise pluggy.PluginValidationError(
            plugin, f"amorsize plugin {plugin!r}: " + "; ".join(problems))


def _hook_names() -> list[str]:
    return [name for name in dir(hookspecs) if name.startswith("amorsize_")]


def plugin_names() -> list[tuple[str, list[str]]]:
    """Every registered plugin with the hooks it implements (for ``amorsize plugins``), the most
    recently registered first (so the built-ins come last)."""
    _load_plugins()
    out = []
    for name, plugin in reversed(pm.list_name_plugin()):
        if plugin is None:
            continue
        hooks = sorted(c.name for c in pm.get_hookcallers(plugin) or [])
        out.append((name, hooks))
    return out


def make_plan(func: Any, sample: Any, workload: Any) -> Plan:
    """The plan for ``func``: ``amorsize_make_plan``, then each ``amorsize_adjust_plan`` in order.

    The plan returned is always a new object, so a plugin may return the same plan every time
    without callers (which attach the data to it) sharing it.
    """
    _load_plugins()
    plan, by = _hook("amorsize_make_plan", {"func": func, "sample": sample, "workload": workload})
    if plan is None:
        raise PluginError("<none>", "amorsize_make_plan", RuntimeError(
            "no plugin made a plan (was amorsize.plugins.default_optimizer unregistered?)"))
    _check_plan(plan, by, "amorsize_make_plan")
    changes: dict[str, Any] = {}
    if plan.decided_by == _DEFAULT_DECIDED_BY and by != BUILTIN_NAMES[0]:
        changes["decided_by"] = by
    plan = plan.replace(**changes)
    if not pm.hook.amorsize_adjust_plan.get_hookimpls():
        return plan
    adjusted, _ = _call("amorsize_adjust_plan", {"plan": plan, "workload": workload},
                        chain="plan", check=_check_plan)
    return adjusted


@overload
def get_pool(executor: ExecutorType, n_jobs: int, create: Literal[True] = True,
             start_method: str | None = None, initializer: Any = None,
             initargs: tuple[Any, ...] = (), *,
             max_tasks_per_child: int | None = None) -> PoolLike: ...


@overload
def get_pool(executor: ExecutorType, n_jobs: int, create: bool,
             start_method: str | None = None, initializer: Any = None,
             initargs: tuple[Any, ...] = (), *,
             max_tasks_per_child: int | None = None) -> PoolLike | None: ...


def get_pool(executor: ExecutorType, n_jobs: int, create: bool = True,
             start_method: str | None = None, initializer: Any = None,
             initargs: tuple[Any, ...] = (), *,
             max_tasks_per_child: int | None = None) -> PoolLike | None:
    """A pool from the first plugin that provides one (by default the global PoolManager); with
    ``create=False`` only a warm one, or None. ``start_method`` None means the default."""
    _load_plugins()
    pool, by = _hook("amorsize_get_pool", {"executor": executor, "n_jobs": n_jobs, "create": create,
                                           "start_method": start_method,
                                           "initializer": initializer, "initargs": initargs,
                                           "max_tasks_per_child": max_tasks_per_child})
    if pool is None and create:
        raise PluginError("<none>", "amorsize_get_pool", RuntimeError(
            f"no plugin provided a {executor} pool of {n_jobs} (was "
            f"{BUILTIN_NAMES[1]} unregistered?)"))
    # amorsize's own pools have every member by their class
    missing = [] if pool is None or isinstance(pool, Pool) else missing_pool_members(pool)
    if missing:
        raise PluginError(by or "<unknown>", "amorsize_get_pool", TypeError(
            f"returned {type(pool).__name__}, which has no {', '.join(missing)}; a pool must "
            "behave like amorsize.pools.pool.Pool (see amorsize.pools.contract.PoolLike)"))
    return cast(PoolLike | None, pool)


@contextlib.contextmanager
def leased_pool(executor: ExecutorType, n_jobs: int, start_method: str | None = None,
                initializer: Any = None, initargs: tuple[Any, ...] = (), *,
                max_tasks_per_child: int | None = None) -> Iterator[PoolLike]:
    """``get_pool`` and hold the pool for a ``with`` block (``Pool.lease``): a pool retired by
    another thread in between (``clear()``, ``release_pool()``, idle eviction) is asked for
    again, so sharing pools never fails a call."""
    with contextlib.ExitStack() as stack:
        for attempt in range(_LEASE_ATTEMPTS):
            pool = get_pool(executor, n_jobs, start_method=start_method,
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
    _load_plugins()
    learned, _ = _hook("amorsize_recall", {"key": key})
    return learned


def remember(key: Any, profile: Any) -> None:
    """Hand a measured profile to every plugin that keeps them (by default the optimizer)."""
    _load_plugins()
    _hook("amorsize_remember", {"key": key, "profile": profile})


def pool_event(event: str, key: tuple, stats: dict) -> None:
    """Tell observers about a pool; a failing observer becomes a warning, never a failed run."""
    _load_plugins()
    _call("amorsize_pool_event", {"event": event, "key": key, "stats": stats}, observe=True)


def run_progress(progress: Any) -> None:
    """Tell progress observers (a bar, a log) how far a run is; failures become warnings."""
    _load_plugins()
    _call("amorsize_run_progress", {"progress": progress}, observe=True)


def run_finished(plan: Any, report: Any) -> None:
    """Tell observers what a run took; a failing observer becomes a warning."""
    _load_plugins()
    _call("amorsize_run_finished", {"plan": plan, "report": report}, observe=True)


def _check_plan(plan: Any, by: str | None, hook_name: str) -> None:
    """A plan a caller can run, or ``PluginError`` naming the plugin that returned it."""
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
        raise PluginError(by or "<unknown>", hook_name, problem)


def _describe_change(before: Plan, after: Plan, by: str) -> str | None:
    changed = [f"{field} {getattr(before, field)!r} -> {getattr(after, field)!r}"
               for field in ("executor_type", "n_jobs", "chunksize")
               if getattr(before, field) != getattr(after, field)]
    return f"adjusted by plugin {by!r}: " + ", ".join(changed) if changed else None


def _call(
    hook_name: str,
    kwargs: dict[str, Any],
    *,
    chain: str | None = None,
    check: Any = None,
    observe: bool = False,
) -> tuple[Any, str | None]:
    """Call a hook's implementations in pluggy's order, for the hooks whose semantics are not
    pluggy's; return (result, name of its plugin).

    ``chain``: each non-None result replaces
    the argument of that name for the next implementation, and the last one is the result
    (``check`` validates each). ``observe``: an exception becomes a ``PluginWarning`` and the
    next implementation is still called; otherwise it stops the call as a ``PluginError``, which
    the open wrappers see (thrown in, as pluggy does) before it reaches the caller.
    """
    outcome: Any = kwargs[chain] if chain else None
    by: str | None = None
    error: BaseException | None = None
    opened: list[tuple[Any, Generator]] = []
    for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):
        try:
            args = [kwargs[name] for name in impl.argnames]
            if impl.wrapper or impl.hookwrapper:
                gen = impl.function(*args)
                next(gen)
                opened.append((impl, gen))
                continue
            value = impl.function(*args)
            if value is None:
                continue
            if chain:
                check(value, impl.plugin_name, hook_name)
                reason = _describe_change(kwargs[chain], value, impl.plugin_name)
                if reason:
                    value = value.replace(reasons=[*value.reasons, reason])
                kwargs = {**kwargs, chain: value}
                outcome, by = value, impl.plugin_name
            else:
                outcome, by = value, impl.plugin_name
        except Exception as exc:
            error = _failed(impl.plugin_name, hook_name, exc, observe)
            if error is not None:
                break
    for impl, gen in reversed(opened):
        before = outcome
        outcome, error = _close_wrapper(impl, gen, hook_name, outcome, error, chain, observe)
        if outcome is not before:
            by = impl.plugin_name
    if error is not None:
        raise error
    return outcome, by


def _close_wrapper(
    impl: Any, gen: Generator[Any, Any, Any], hook_name: str, outcome: Any, error: BaseException | None,
    chain: str | None, observe: bool,
) -> tuple[Any, BaseException | None]:
    """Run a wrapper's part after ``yield``; return the (outcome, error) it leaves."""
    result = pluggy.Result(outcome, error) if impl.hookwrapper else None
    try:
        if result is not None:
            gen.send(result)
        elif error is not None:
            gen.throw(error)
        else:
            gen.send(outcome)
    except StopIteration as stop:
        if result is not None:
            error = result.exception
            outcome = None if error is not None else result.get_result()
        elif not (chain and stop.value is None):
            outcome, error = stop.value, None
        else:
            error = None
    except Exception as exc:
        if exc is not error:
            error = _failed(impl.plugin_name, hook_name, exc, observe)
    else:
        gen.close()
        error = _failed(impl.plugin_name, hook_name, RuntimeError("wrapper yielded twice"), observe)
    if chain and error is None:
        try:
            _check_plan(outcome, impl.plugin_name, hook_name)
        except PluginError as exc:
            error = exc
    return outcome, error


def _failed(plugin_name: str, hook_name: str, exc: Exception,
            observe: bool) -> Exception | None:
    """For a deciding hook, a ``PluginError`` (a built-in plugin's exception as it is, see
    ``_builtin``); for an observer, a warning (and None)."""
    if not observe:
        if isinstance(exc, PluginError) or _builtin(plugin_name, exc):
            return exc
        error = PluginError(plugin_name, hook_name, exc)
        error.__cause__ = exc
        return error
    warnings.warn(
        f"amorsize plugin {plugin_name!r} raised {type(exc).__name__} in {hook_name}: {exc}; "
        "the run's results are kept",
        PluginWarning,
        stacklevel=4,
    )
    return None
