"""amorsize: parallel map that is fast by default.

``amorsize.map(func, data)`` measures a few calls, decides between serial, threads and processes
(with how many workers and what chunk size), and runs on warm pools reused across calls.
"""

from amorsize.errors import (
    AmorsizeError,
    InvalidArgumentError,
    InvalidArgumentTypeError,
    PluginError,
    PluginWarning,
    PoolClosedError,
    PoolManagerClosedError,
    RunCancelledError,
    TimeoutError,
    WorkerCrashedError,
)
from amorsize.optimizer.optimize import optimize
from amorsize.options import DecideOptions, MapOptions
from amorsize.plan import Plan
from amorsize.plugins import register_plugin, unregister_plugin
from amorsize.plugins.hookspecs import hookimpl
from amorsize.pools.manager import (
    PoolManager,
    get_global_pool_manager,
    managed_pool,
    shutdown_global_pool_manager,
)
from amorsize.run.control import RunProgress
from amorsize.run.log import last_plan
from amorsize.run.mapping import imap, imap_unordered, istarmap, map, run_plan, starmap
from amorsize.run.multiprocessing_pool import Pool
from amorsize.run.report import RunReport
from amorsize.workload import Profile, Workload

__version__ = "0.1.0"

__all__ = [
    "AmorsizeError",
    "DecideOptions",
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "MapOptions",
    "Plan",
    "Pool",
    "PluginError",
    "PluginWarning",
    "PoolManager",
    "PoolClosedError",
    "PoolManagerClosedError",
    "Profile",
    "RunCancelledError",
    "RunProgress",
    "RunReport",
    "TimeoutError",
    "WorkerCrashedError",
    "Workload",
    "get_global_pool_manager",
    "hookimpl",
    "imap",
    "imap_unordered",
    "istarmap",
    "last_plan",
    "managed_pool",
    "map",
    "optimize",
    "register_plugin",
    "run_plan",
    "shutdown_global_pool_manager",
    "starmap",
    "unregister_plugin",
]
