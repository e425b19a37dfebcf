"""The one plugin manager of the process, and the hook relay every caller goes through.

amorsize.map/imap, the joblib backend and the Dask scheduler get plans and pools only through the
functions here, so a plugin that replaces or observes a decision does so for all of them at once.
"""

from __future__ import annotations

import os
import threading
import warnings
from typing import Any

import pluggy

from amorsize import hookspecs
from amorsize.errors import PluginError, PluginWarning

ENTRY_POINT_GROUP = "amorsize"
DISABLE_ENV = "AMORSIZE_DISABLE_PLUGINS"

pm = pluggy.PluginManager("amorsize")
pm.add_hookspecs(hookspecs)

_loaded = False
_load_lock = threading.Lock()


def _load_plugins() -> None:
    """Register the built-in plugins, then third-party ones from entry points (once)."""
    global _loaded
    with _load_lock:
        if _loaded:
            return
        from amorsize.default_plugins import optimizer, pools

        for module in (optimizer, pools):
            if not pm.is_registered(module):
                pm.register(module, name=module.__name__)
        if not os.environ.get(DISABLE_ENV):
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        _loaded = True


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object or module from user code; returns the name it got."""
    _load_plugins()
    registered = pm.register(plugin, name=name)
    if registered is None:
        raise ValueError(f"plugin {name or plugin!r} is blocked or already registered")
    return registered


def unregister_plugin(plugin: object = None, name: str | None = None) -> None:
    """Unregister a plugin given as the object or by its name."""
    if plugin is None and name is None:
        raise TypeError("unregister_plugin() needs the plugin object or name=")
    pm.unregister(plugin=plugin, name=name)


def plugin_names() -> list[tuple[str, list[str]]]:
    """Every registered plugin with the hooks it implements (for ``amorsize plugins``)."""
    _load_plugins()
    out = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(c.name for c in pm.get_hookcallers(plugin) or [])
        out.append((name, hooks))
    return out


def make_plan(func: Any, sample: Any, workload: Any) -> Any:
    """The plan for ``func``: ``amorsize_make_plan``, then each ``amorsize_adjust_plan`` in order."""
    _load_plugins()
    hook = pm.hook.amorsize_make_plan
    try:
        plan = hook(func=func, sample=sample, workload=workload)
    except Exception as exc:
        raise _plugin_error("amorsize_make_plan", exc) from exc
    if plan is None:
        raise PluginError("<none>", "amorsize_make_plan", RuntimeError("no plugin made a plan"))
    for impl in reversed(pm.hook.amorsize_adjust_plan.get_hookimpls()):
        kwargs = {"plan": plan, "workload": workload}
        try:
            adjusted = impl.function(*(kwargs[a] for a in impl.argnames))
        except Exception as exc:
            raise PluginError(impl.plugin_name, "amorsize_adjust_plan", exc) from exc
        if adjusted is not None:
            plan = adjusted
    return plan


def get_pool(executor: str, n_jobs: int, create: bool = True) -> Any:
    """A pool from the first plugin that provides one (by default the global PoolManager)."""
    _load_plugins()
    try:
        return pm.hook.amorsize_get_pool(executor=executor, n_jobs=n_jobs, create=create)
    except Exception as exc:
        raise _plugin_error("amorsize_get_pool", exc) from exc


def pool_event(event: str, key: tuple, stats: dict) -> None:
    """Tell observers about a pool; a failing observer becomes a warning, never a failed run."""
    _notify("amorsize_pool_event", event=event, key=key, stats=stats)


def run_finished(plan: Any, report: Any) -> None:
    """Tell observers what a run took; a failing observer becomes a warning."""
    _notify("amorsize_run_finished", plan=plan, report=report)


def _notify(hook_name: str, **kwargs: Any) -> None:
    _load_plugins()
    for impl in reversed(getattr(pm.hook, hook_name).get_hookimpls()):
        try:
            impl.function(*(kwargs[a] for a in impl.argnames))
        except Exception as exc:
            warnings.warn(
                f"amorsize plugin {impl.plugin_name!r} raised {type(exc).__name__} in "
                f"{hook_name}: {exc}; the run's results are kept",
                PluginWarning,
                stacklevel=3,
            )


def _plugin_error(hook_name: str, exc: Exception) -> PluginError:
    """Name the plugin whose implementation raised, found from the traceback's frames."""
    impls = {impl.function.__code__: impl.plugin_name
             for impl in getattr(pm.hook, hook_name).get_hookimpls()
             if hasattr(impl.function, "__code__")}
    name = "<unknown>"
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in impls:
            name = impls[tb.tb_frame.f_code]
            break
        tb = tb.tb_next
    return PluginError(name, hook_name, exc)


__all__ = [
    "DISABLE_ENV",
    "ENTRY_POINT_GROUP",
    "get_pool",
    "make_plan",
    "plugin_names",
    "pm",
    "pool_event",
    "register_plugin",
    "run_finished",
    "unregister_plugin",
]
