"""Built-in plugin: amorsize's optimizer makes the plan, keeps what was measured per function,
and learns from finished runs."""

from __future__ import annotations

from typing import Any

from amorsize import optimizer
from amorsize.hookspecs import hookimpl
from amorsize.memory import MEMORY


@hookimpl(trylast=True)
def amorsize_make_plan(func: Any, sample: Any, workload: Any) -> Any:
    return optimizer.decide(func, sample, workload)


@hookimpl
def amorsize_run_finished(plan: Any, report: Any) -> None:
    key = plan.workload.options.get("key")
    if key is not None:
        optimizer.learn(key, report, plan.workload.options.get("already_done", 0))


@hookimpl(trylast=True)
def amorsize_recall(key: Any) -> Any:
    return MEMORY.recall(key)


@hookimpl
def amorsize_remember(key: Any, profile: Any) -> None:
    MEMORY.remember(key, profile)
