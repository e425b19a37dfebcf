"""The decision amorsize made for one function and data: what to run on, and why."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from amorsize.errors import ExecutorType
from amorsize.workload import Profile, Workload, copy_with


@dataclass(frozen=True)
class Machine:
    """The facts about this machine a plan was decided on."""

    usable_cpus: int
    start_method: str


@dataclass(frozen=True)
class Cluster:
    """The facts about a ``dask.distributed`` cluster a plan was decided on (``amorsize_dask``).

    ``threads`` maps each worker's address to its threads; ``task_seconds`` is what one more
    task costs the cluster when it is busy (measured on a burst of empty tasks),
    ``round_trip_seconds`` what one task costs alone (submit to result).
    """

    address: str
    threads: dict[str, int]
    task_seconds: float
    round_trip_seconds: float

    @property
    def n_threads(self) -> int:
        return max(1, sum(self.threads.values()))

    def describe(self) -> str:
        """"2 workers × 1 thread", or "3 workers, 5 threads" when they differ."""
        per_worker = set(self.threads.values())
        workers = f"{len(self.threads)} worker{'s' if len(self.threads) != 1 else ''}"
        if len(per_worker) == 1:
            (n,) = per_worker
            return f"{workers} × {n} thread{'s' if n != 1 else ''}"
        return f"{workers}, {self.n_threads} threads"


@dataclass
class Plan:
    """How to run ``func`` over ``data``: executor, workers, chunk size, and the reasons.

    ``data`` holds every item to run (a consumed iterator's items are put back in front).
    ``sampled_results`` maps the index of each item that was run while measuring to its result,
    so ``amorsize.map`` never calls the function on an item twice; ``sampled_seconds`` is how long
    each of those calls took, where it was timed alone. ``predictions`` is the
    predicted wall time of the best configuration of each executor type considered.
    ``cluster`` is set on a plan for a ``dask.distributed`` cluster (``amorsize_dask.map``): the
    items run in batches of at most ``chunksize``, each batch one loop on a worker thread
    (``executor_type`` "serial"), on the cluster's ``n_jobs`` threads.
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
    machine: Machine | None = None
    data: Any = None
    sampled_results: dict[int, Any] = field(default_factory=dict, repr=False)
    sampled_seconds: dict[int, float] = field(default_factory=dict, repr=False)
    decided_by: str = "amorsize.optimizer"
    cluster: Cluster | None = None

    @property
    def n_items(self) -> int | None:
        return self.workload.n_items

    @property
    def predicted_seconds(self) -> float | None:
        return self.predictions.get(self.executor_type)

    def replace(self, **changes: Any) -> Plan:
        """A copy with some fields changed (what an ``amorsize_adjust_plan`` plugin returns);
        see ``amorsize.workload.copy_with``."""
        return copy_with(self, changes)

    def explain(self) -> str:
        """A readable report of the choice and the measured figures behind it."""
        p = self.profile
        n = "unknown" if self.n_items is None else f"{self.n_items:,}"
        how = (f"{self.executor_type}, n_jobs={self.n_jobs}, chunksize={self.chunksize}"
               if self.cluster is None else
               f"dask.distributed, {self.n_jobs} threads, batches of up to {self.chunksize}")
        lines = [
            f"amorsize plan: {how}, estimated speedup {self.estimated_speedup:.2f}x "
            f"(decided by {self.decided_by})",
            f"  items: {n}; {measured_how(p, self.workload)}",
            f"  per item: {format_seconds(p.per_item_seconds)} "
            f"(spread {p.per_item_spread:.0%}, trend along the input {p.cost_trend:+.2f}), "
            f"CPU/wall {p.cpu_ratio:.2f}"
            + ("" if p.thread_scaling is None else f", 2 threads ran {p.thread_scaling:.2f}x"),
            f"  pickled: item {format_bytes(p.arg_bytes)}, result {format_bytes(p.result_bytes)}, "
            f"{format_seconds(p.pickle_seconds)} per item"
            + ("" if p.picklable else f"; not picklable: {p.unpicklable_reason}"),
        ]
        if self.machine is not None:
            facts = dataclasses.asdict(self.machine)
            lines.append("  machine: " + ", ".join(f"{k}={v}" for k, v in sorted(facts.items())))
        if self.cluster is not None:
            c = self.cluster
            lines.append(f"  cluster: {c.describe()} at {c.address}; a task costs "
                         f"{format_seconds(c.task_seconds)} when the cluster is busy, "
                         f"{format_seconds(c.round_trip_seconds)} alone")
        if self.overheads:
            lines.append(
                "  overheads: "
                + ", ".join(f"{k}={_format_overhead(k, v)}" for k, v in sorted(self.overheads.items()))
            )
        if self.predictions:
            lines.append(
                "  predicted wall time: "
                + ", ".join(f"{k} {format_seconds(v)}" for k, v in self.predictions.items())
            )
        lines.append("  why:")
        lines.extend(f"    - {r}" for r in self.reasons)
        return "\n".join(lines)


def measured_how(profile: Profile, workload: Workload) -> str:
    """Where a profile's figures come from: this call's measuring, or what an earlier call learned."""
    if profile.measured_by == "runs":
        return "recalled from earlier runs"
    where = f"{profile.n_measured} items ({profile.measured_by})"
    if workload.recalled:
        return f"recalled: measured on {where} in an earlier call"
    return f"measured on {where}"


def format_seconds(s: float) -> str:
    """Seconds as a person reads them: 1.20 s, 3.40 ms, 12.0 µs."""
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def format_bytes(b: float) -> str:
    """A size as a person reads it: 12 B, 3.4 KB, 1.0 MB."""
    for unit in ("B", "KB", "MB", "GB"):
        if b < 1024 or unit == "GB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    return f"{b:.1f} GB"


def _format_overhead(key: str, v: float) -> str:
    if key.endswith("per_byte"):
        return f"{v * 1e9:.2f} ns/B"
    return format_seconds(v)
