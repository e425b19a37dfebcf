"""The decision amorsize made for one function and data: what to run on, and why."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from amorsize.errors import ExecutorType
from amorsize.workload import Profile, Workload


@dataclass
class Plan:
    """How to run ``func`` over ``data``: executor, workers, chunk size, and the reasons.

    ``data`` holds every item to run (a consumed iterator's items are put back in front).
    ``sampled_results`` maps the index of each item that was run while measuring to its result,
    so ``amorsize.map`` never calls the function on an item twice. ``predictions`` is the
    predicted wall time of the best configuration of each executor type considered.
    """

    executor_type: ExecutorType
    n_jobs: int
    chunksize: int
    estimated_speedup: float
    reasons: list[str]
    profile: Profile
    workload: Workload
    predictions: dict[str, float] = field(default_factory=dict)
    overheads: dict[str, float] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    data: Any = None
    sampled_results: dict[int, Any] = field(default_factory=dict, repr=False)
    decided_by: str = "amorsize.optimizer"

    @property
    def n_items(self) -> int | None:
        return self.workload.n_items

    @property
    def predicted_seconds(self) -> float | None:
        return self.predictions.get(self.executor_type)

    def replace(self, **changes: Any) -> Plan:
        """A copy with some fields changed (what an ``amorsize_adjust_plan`` plugin returns).

        A shallow copy, as ``dataclasses.replace`` makes, at a fifth of its cost: every call of
        ``map`` copies its plan."""
        unknown = changes.keys() - _FIELDS
        if unknown:
            raise TypeError(f"Plan has no field {', '.join(sorted(unknown))}")
        new = copy.copy(self)
        new.__dict__.update(changes)
        return new

    def explain(self) -> str:
        """A readable report of the choice and the measured figures behind it."""
        p = self.profile
        n = "unknown" if self.n_items is None else f"{self.n_items:,}"
        lines = [
            f"amorsize plan: {self.executor_type}, n_jobs={self.n_jobs}, "
            f"chunksize={self.chunksize}, estimated speedup {self.estimated_speedup:.2f}x "
            f"(decided by {self.decided_by})",
            f"  items: {n}; {measured_how(p, self.workload)}",
            f"  per item: {_fmt_seconds(p.per_item_seconds)} "
            f"(spread {p.per_item_spread:.0%}), CPU/wall {p.cpu_ratio:.2f}"
            + ("" if p.thread_scaling is None else f", 2 threads ran {p.thread_scaling:.2f}x"),
            f"  pickled: item {_fmt_bytes(p.arg_bytes)}, result {_fmt_bytes(p.result_bytes)}, "
            f"{_fmt_seconds(p.pickle_seconds)} per item"
            + ("" if p.picklable else f"; not picklable: {p.unpicklable_reason}"),
        ]
        if self.machine:
            lines.append(
                "  machine: " + ", ".join(f"{k}={v}" for k, v in sorted(self.machine.items()))
            )
        if self.overheads:
            lines.append(
                "  overheads: "
                + ", ".join(f"{k}={_fmt_overhead(k, v)}" for k, v in sorted(self.overheads.items()))
            )
        if self.predictions:
            lines.append(
                "  predicted wall time: "
                + ", ".join(f"{k} {_fmt_seconds(v)}" for k, v in self.predictions.items())
            )
        lines.append("  why:")
        lines.extend(f"    - {r}" for r in self.reasons)
        return "\n".join(lines)


_FIELDS = frozenset(f.name for f in dataclasses.fields(Plan))


def measured_how(profile: Profile, workload: Workload) -> str:
    """Where a profile's figures come from: this call's measuring, or memory."""
    if profile.measured_by == "runs":
        return "recalled from earlier runs"
    where = f"{profile.n_measured} items ({profile.measured_by})"
    if workload.options.get("recalled"):
        return f"recalled: measured on {where} in an earlier call"
    return f"measured on {where}"


def _fmt_seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if b < 1024 or unit == "GB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b:.1f} GB"


def _fmt_overhead(key: str, v: float) -> str:
    if key.endswith("per_byte"):
        return f"{v * 1e9:.2f} ns/B"
    return _fmt_seconds(v)
