"""The hook relay: plans, pools, learned profiles and observers, through pluggy.

``hookspecs`` is the contract, ``relay`` the one plugin manager and the calls every front end
makes through it; ``default_optimizer``, ``default_pools`` and ``progress_bar`` are amorsize's
own behaviour, registered as ordinary plugins. The relay's public names are re-exported here,
so ``amorsize.plugins.make_plan`` is the call an adapter makes.
"""

from amorsize.plugins.relay import (
    BUILTIN_NAMES,
    DISABLE_ENV,
    ENTRY_POINT_GROUP,
    broken_entry_points,
    disabled_entry_points,
    get_pool,
    leased_pool,
    make_plan,
    plugin_names,
    pm,
    pool_event,
    recall,
    register_plugin,
    remember,
    run_finished,
    run_progress,
    unregister_plugin,
)

__all__ = [
    "BUILTIN_NAMES",
    "DISABLE_ENV",
    "ENTRY_POINT_GROUP",
    "broken_entry_points",
    "disabled_entry_points",
    "get_pool",
    "leased_pool",
    "make_plan",
    "plugin_names",
    "pm",
    "pool_event",
    "recall",
    "register_plugin",
    "remember",
    "run_finished",
    "run_progress",
    "unregister_plugin",
]
