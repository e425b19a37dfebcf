"""The plugin layer: plans, pools, learned profiles and observers, through pluggy.

``hookspecs`` is the contract, ``registry`` the one plugin manager and what is registered in it,
``relay`` the calls every front end makes through it; ``default_optimizer``, ``default_pools``,
``progress_bar`` and ``plan_chain`` are amorsize's own behaviour, registered as ordinary
plugins. The public names are re-exported here, so ``amorsize.plugins.make_plan`` is the call
an adapter makes.
"""

from amorsize.plugins.registry import (
    BUILTIN_NAMES,
    DISABLE_ENV,
    ENTRY_POINT_GROUP,
    broken_entry_points,
    disabled_entry_points,
    plugin_names,
    pm,
    register_plugin,
    unregister_plugin,
)
from amorsize.plugins.relay import (
    get_pool,
    leased_pool,
    make_plan,
    pool_event,
    recall,
    remember,
    run_finished,
    run_progress,
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
