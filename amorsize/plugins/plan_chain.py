"""Built-in plugin: the innermost wrapper around ``amorsize_make_plan``.

It sees the plan a maker returned before any plugin's wrapper does: it checks that a caller can
run it (else ``PluginError`` naming the maker), records who decided it (``Plan.decided_by``),
copies it (a maker may return the same plan every time; callers attach data to it), and applies
the plain ``amorsize_adjust_plan`` implementations in pluggy's order, each to the plan the one
before left. Plugins' own ``amorsize_make_plan`` wrappers run around it and see the result.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from amorsize.errors import PluginError
from amorsize.plan import Plan
from amorsize.plugins import default_optimizer, relay
from amorsize.plugins.hookspecs import hookimpl
from amorsize.plugins.registry import pm

# a plan made with ``amorsize.Plan(...)`` says this unless its maker said otherwise
UNSIGNED = Plan.__dataclass_fields__["decided_by"].default


@hookimpl(wrapper=True, trylast=True)
def amorsize_make_plan(workload: Any) -> Generator[None, Any, Plan]:
    plan = yield
    if plan is None:
        raise PluginError("<none>", "amorsize_make_plan", RuntimeError(
            "no plugin made a plan (was amorsize.plugins.default_optimizer unregistered?)"))
    relay.check_plan(plan, "amorsize_make_plan", "implementations")
    signed = plan.decided_by != UNSIGNED or default_optimizer.made(plan)
    plan = plan.replace() if signed else plan.replace(
        decided_by=relay.answered_by("amorsize_make_plan", "implementations"))
    adjusters = pm.hook.amorsize_adjust_plan.get_hookimpls()
    for impl in reversed(adjusters):  # pluggy's order: tryfirst first
        others = [other.plugin for other in adjusters if other is not impl]
        try:  # through pluggy, one adjuster at a time, so tracing shows each step
            adjusted = pm.subset_hook_caller("amorsize_adjust_plan", others)(
                plan=plan, workload=workload)
        except PluginError:
            raise
        except Exception as exc:
            raise PluginError(impl.plugin_name, "amorsize_adjust_plan", exc) from exc
        if adjusted:
            plan = _credited(plan, adjusted[0], impl.plugin_name)
    return plan


def _credited(before: Plan, after: Plan, by: str) -> Plan:
    """An adjuster's plan, checked, with its change of executor, workers or chunks in its
    reasons, so ``plan.explain()`` says who changed what."""
    relay.check_plan(after, "amorsize_adjust_plan", by=by)
    changed = [f"{field} {getattr(before, field)!r} -> {getattr(after, field)!r}"
               for field in ("executor_type", "n_jobs", "chunksize")
               if getattr(before, field) != getattr(after, field)]
    if not changed:
        return after
    return after.replace(
        reasons=[*after.reasons, f"adjusted by plugin {by!r}: " + ", ".join(changed)])
