"""Built-in plugin: amorsize's optimizer makes the plan, keeps what was measured per function,
and learns from finished runs."""

from __future__ import annotations

import threading
from typing import Any

from amorsize.optimizer import decision
from amorsize.optimizer.learned import LEARNED
from amorsize.plugins.hookspecs import hookimpl

_last = threading.local()


@hookimpl(trylast=True)
def amorsize_make_plan(func: Any, sample: Any, workload: Any) -> Any:
    plan = _last.plan = decision.decide(func, sample, workload)
    return plan


def made(plan: Any) -> bool:
    """Whether ``plan`` is the one the optimizer just made in this thread: its ``decided_by``
    cannot say, a plugin's ``amorsize.Plan(...)`` has the same default."""
    return _last.__dict__.pop("plan", None) is plan


@hookimpl
def amorsize_run_finished(plan: Any, report: Any) -> None:
    key = plan.workload.key
    if key is not None:
        decision.learn(key, report, plan.workload.already_done)


@hookimpl(trylast=True)
def amorsize_recall(key: Any) -> Any:
    return LEARNED.recall(key)


@hookimpl
def amorsize_remember(key: Any, profile: Any) -> None:
    LEARNED.remember(key, profile)
