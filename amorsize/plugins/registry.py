"""The one plugin manager of the process and what is registered in it.

The built-in plugins, then those of the ``amorsize`` entry-point group, loaded by pluggy
(``load_setuptools_entrypoints``) the first time amorsize needs a plan or a pool, and checked by
pluggy (``check_pending``). What is amorsize's own: a broken entry point is skipped with one
warning instead of stopping every run, ``AMORSIZE_DISABLE_PLUGINS`` skips some or all of them,
and a plugin is refused for what pluggy accepts but would make it misbehave.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import inspect
import os
import sys
import threading
import types
import warnings

import pluggy

from amorsize.errors import PluginWarning
from amorsize.plugins import hookspecs

ENTRY_POINT_GROUP = "amorsize"
DISABLE_ENV = "AMORSIZE_DISABLE_PLUGINS"
BUILTIN_NAMES = (  # an exception that comes through one of these is amorsize's or the user's
    "amorsize.plugins.default_optimizer",
    "amorsize.plugins.default_pools",
    "amorsize.plugins.progress_bar",
    "amorsize.plugins.plan_chain",
)
_OFF = {"", "0", "false", "no", "off"}
_ALL = {"1", "true", "yes", "on", "all"}
# frames in these directories are not the caller a warning should point at
_OWN_DIRS = (os.path.dirname(os.path.dirname(__file__)) + os.sep,
             os.path.dirname(pluggy.__file__) + os.sep)

pm = pluggy.PluginManager("amorsize")
pm.add_hookspecs(hookspecs)

_loaded = False
_load_lock = threading.Lock()


def _reset_lock_in_child() -> None:
    global _load_lock
    _load_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock_in_child)
_broken: dict[str, tuple[str, str]] = {}


def load_plugins() -> None:
    """Load the plugins unless they are loaded (every call through the relay starts here)."""
    if not _loaded:
        _load()


def _load() -> None:
    """Register the built-in plugins, then third-party ones from entry points (once).

    Each entry point is loaded by pluggy (``load_setuptools_entrypoints``), one name at a time,
    so that a broken one is skipped with a ``PluginWarning`` while the others load: one broken
    install must not stop every run, nor the tools that would diagnose it.
    """
    global _loaded
    with _load_lock:
        if _loaded:
            return
        from amorsize.plugins import default_optimizer, default_pools, plan_chain, progress_bar

        for module in (default_optimizer, default_pools, progress_bar, plan_chain):
            if not pm.is_registered(module) and not pm.is_blocked(module.__name__):
                pm.register(module, name=module.__name__)
        skip = disabled_entry_points()
        if skip is None:
            _loaded = True
            return
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in skip or pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
                continue
            try:
                pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name)
                _validate(pm.get_plugin(ep.name))
            except Exception as exc:
                _entry_point_failed(ep.name, ep.value, exc)
            else:
                _broken.pop(ep.name, None)
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


def _entry_point_failed(name: str, value: str, exc: Exception) -> None:
    """Record a broken entry point; warn about it the first time only (it is met on each load)."""
    error = f"{type(exc).__name__}: {exc}"
    seen = _broken.get(name) == (value, error)
    _broken[name] = (value, error)
    if not seen:
        warn_at_caller(f"amorsize plugin entry point {name!r} ({value}) failed to load and is "
                       f"skipped: {error} (fix or uninstall the distribution that provides it, or "
                       f"set {DISABLE_ENV}={name} to skip it silently)")


def warn_at_caller(message: str, category: type[Warning] = PluginWarning) -> None:
    """Warn at the first frame outside amorsize and pluggy: the user's call (or, for an event
    raised in one of amorsize's threads, the thread's start)."""
    if sys.version_info >= (3, 12):
        warnings.warn(message, category, skip_file_prefixes=_OWN_DIRS)
        return
    frame: types.FrameType | None = inspect.currentframe()
    frame = frame.f_back if frame is not None else None
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(_OWN_DIRS):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


def broken_entry_points() -> list[tuple[str, str, str]]:
    """Entry points that failed to load, as (name, value, "ExceptionType: message"), for
    ``amorsize plugins`` to show what was skipped and why."""
    load_plugins()
    return [(name, value, error) for name, (value, error) in _broken.items()]


def register_plugin(plugin: object, name: str | None = None) -> str:
    """Register a plugin object or module from user code; returns the name it got.

    Raises ``pluggy.PluginValidationError`` for an implementation that no hook specification
    knows (a misspelt name), that asks for an argument the hook does not have, that gives a hook
    argument a default value or that wraps ``amorsize_adjust_plan``, and for a plugin that is
    not hashable; ``ValueError`` if the plugin or its name is already registered, or the name
    is blocked.
    """
    load_plugins()
    registered = pm.register(plugin, name=name or _default_name(plugin))
    if registered is None:
        raise ValueError(f"plugin name {name!r} is blocked (pm.set_blocked); choose another name")
    _validate(plugin)
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


def _validate(plugin: object) -> None:
    """``pm.check_pending`` (unknown hook names, with a suggestion), and what pluggy accepts and
    amorsize refuses; the plugin at fault is unregistered."""
    try:
        pm.check_pending()
        problems = []
        if getattr(plugin, "__hash__", None) is None:
            problems.append("it is not hashable, and pluggy keeps plugins in sets (a dataclass "
                            "plugin needs eq=False or frozen=True)")
        for caller in pm.get_hookcallers(plugin) or []:
            for impl in [i for i in caller.get_hookimpls() if i.plugin is plugin]:
                spec_args = caller.spec.argnames if caller.spec else ()
                defaulted = sorted(set(spec_args) & set(impl.kwargnames))
                if defaulted:
                    problems.append(f"{caller.name} gives {', '.join(defaulted)} a default value: "
                                    "pluggy before 1.7 never passes such an argument; remove it")
                if caller.name == "amorsize_adjust_plan" and (impl.wrapper or impl.hookwrapper):
                    problems.append("amorsize_adjust_plan cannot be a wrapper: wrap "
                                    "amorsize_make_plan (wrapper=True) instead, which sees the "
                                    "plan every adjuster left")
        if problems:
            raise pluggy.PluginValidationError(plugin, "; ".join(problems))
    except pluggy.PluginValidationError as exc:
        unknown = [c.name for c in pm.get_hookcallers(exc.plugin) or [] if not c.has_spec()]
        close = difflib.get_close_matches(unknown[0], dir(hookspecs), n=1) if unknown else []
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        pm.unregister(exc.plugin)
        raise pluggy.PluginValidationError(
            exc.plugin, f"amorsize plugin {exc.plugin!r}: {exc}{hint}") from exc


def unregister_plugin(plugin: object = None, name: str | None = None) -> object:
    """Unregister a plugin given as the object or by its name; returns the plugin.

    Built-in plugins can be unregistered too (by their names in ``BUILTIN_NAMES``), e.g. to
    replace the optimizer entirely; ``ValueError`` if no such plugin is registered.
    """
    if plugin is None and name is None:
        raise TypeError("unregister_plugin() needs the plugin object or name=")
    load_plugins()
    registered_name = pm.get_name(plugin) if plugin is not None else name
    if registered_name is None or pm.get_plugin(registered_name) is None:
        raise ValueError(f"plugin {name or plugin!r} is not registered; registered: "
                         f"{', '.join(n for n, _ in pm.list_name_plugin())}")
    return pm.unregister(plugin=plugin, name=registered_name)


def plugin_names() -> list[tuple[str, list[str]]]:
    """Every registered plugin with the hooks it implements (for ``amorsize plugins``), the most
    recently registered first (so the built-ins come last)."""
    load_plugins()
    return [(name, sorted(c.name for c in pm.get_hookcallers(plugin) or []))
            for name, plugin in reversed(pm.list_name_plugin()) if plugin is not None]
