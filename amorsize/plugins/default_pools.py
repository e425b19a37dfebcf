"""Built-in plugin: pools come from the global PoolManager."""

from __future__ import annotations

from typing import Any

from amorsize.errors import ExecutorType
from amorsize.plugins.hookspecs import hookimpl
from amorsize.pools.manager import get_global_pool_manager


@hookimpl(trylast=True)
def amorsize_get_pool(n_jobs: int, executor_type: ExecutorType, create: bool, start_method: str | None,
                      initializer: Any, initargs: tuple, max_tasks_per_child: int | None) -> Any:
    process = executor_type == "process"
    return get_global_pool_manager().get_pool(
        n_jobs, executor_type, create=create, start_method=start_method if process else None,
        initializer=initializer, initargs=initargs,
        max_tasks_per_child=max_tasks_per_child if process else None)
