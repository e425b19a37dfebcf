"""Built-in plugin: amorsize's optimizer makes the plan, keeps what was measured per function,
and learns from finished runs."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from typing import Any

from amorsize.errors import ExecutorType
from amorsize.optimizer import decision
from amorsize.optimizer.learned import LEARNED, function_key
from amorsize.plugins import relay
from amorsize.plugins.hookspecs import hookimpl

_last = threading.local()


class HookedPools:
    """The pools the decision may look at, asked for through ``amorsize_get_pool``: a plugin
    that provides pools provides the ones the decision measures and finds warm."""

    def is_warm(self, n_jobs: int, executor_type: ExecutorType, start_method: str) -> bool:
        return relay.get_pool(n_jobs, executor_type, create=False,
                              start_method=start_method) is not None

    def lease(self, n_jobs: int, executor_type: ExecutorType,
              start_method: str) -> AbstractContextManager[Any]:
        return relay.leased_pool(n_jobs, executor_type, start_method=start_method)


POOLS = HookedPools()


@hookimpl(trylast=True)
def amorsize_make_plan(func: Any, sample: Any, workload: Any) -> Any:
    learned = workload.learned
    if learned is None:
        learned = relay.recall(function_key(func) if workload.key is None else workload.key)
    plan = _last.plan = decision.decide(func, sample, workload, pools=POOLS, learned=learned)
    return plan


def made(plan: Any) -> bool:
    """Whether ``plan`` is the one the optimizer just made in this thread: its ``decided_by``
    cannot say, a plugin's ``amorsize.Plan(...)`` has the same default."""
    return _last.__dict__.pop("plan", None) is plan


@hookimpl
def amorsize_run_finished(plan: Any, report: Any) -> None:
    key = plan.workload.key
    if key is not None:
        machine = plan.machine
        decision.learn(key, report, plan.workload.already_done,
                       machine.background if machine is not None else 0.0,
                       machine.apart if machine is not None else 0.0)


@hookimpl(trylast=True)
def amorsize_recall(key: Any) -> Any:
    return LEARNED.recall(key)


@hookimpl
def amorsize_remember(key: Any, profile: Any) -> None:
    LEARNED.remember(key, profile)
