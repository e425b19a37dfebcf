"""The decision amorsize made for one function and data: what to run on, and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from amorsize.errors import ExecutorType
from amorsize.workload import Profile, Workload, copy_with


@dataclass(frozen=True)
class Machine:
    """The facts about this machine a plan was decided on; ``background``: the other tasks that
    wanted a CPU then, in tasks' worth (``amorsize.system.runnable_elsewhere``)."""

    usable_cpus: int
    start_method: str
    background: float = 0.0
    apart: float = 0.0  # of those, the ones in other scheduling groups (``runnable_apart``)


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


@dataclass(repr=False)
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

    def __repr__(self) -> str:
        """One short line: the choice, not every figure (``explain()`` has those)."""
        n = "?" if self.n_items is None else f"{self.n_items:,}"
        return (f"Plan({self.executor_type}, n_jobs={self.n_jobs}, chunksize={self.chunksize}, "
                f"speedup {self.estimated_speedup:.2f}x, {n} items)")

    def summary(self) -> str:
        """The choice in one sentence a newcomer reads: what an item costs, where the items
        run, and the time that buys against a plain loop."""
        p = self.profile
        n = self.n_items
        if n == 0:
            return "The input is empty: there is nothing to run."
        what = _each_item(p)
        done = self.workload.already_done
        if n is not None and done >= n:
            return f"{what}; every item already ran while measuring, so nothing is left to run."
        left = None if n is None else n - done
        items = ("the items" if left is None
                 else f"the {left:,} item{'s' if left != 1 else ''}"
                 + (" left after measuring" if done else ""))
        serial = self.predictions.get("serial")
        mine = self.predicted_seconds
        if self.cluster is not None:  # batches on a cluster's threads; predicted as "serial"
            where = f"the cluster's {self.cluster.describe()}"
            batch = f" (batches of up to {self.chunksize})" if self.chunksize > 1 else ""
            loop = None if left is None else left * p.per_item_seconds
        elif self.executor_type == "serial":
            others = {k: v for k, v in self.predictions.items() if k != "serial"}
            if serial is None or not others:
                return f"{what}; {items} run here, one after another."
            kind, best = min(others.items(), key=lambda kv: kv[1])
            return (f"{what}; {items} run here, one after another, in about "
                    f"{format_seconds(serial)}: handing them to {kind} workers would take "
                    f"{format_seconds(best)}.")
        else:
            where = f"{self.n_jobs} {_WORKERS.get(self.executor_type, self.executor_type)}"
            batch = f" ({self.chunksize} items at a time)" if self.chunksize > 1 else ""
            loop = serial
        if mine is None or loop is None:
            return f"{what}; {where} run {items}{batch}."
        return (f"{what}; {where} should finish {items}{batch} in about {format_seconds(mine)} "
                f"instead of {format_seconds(loop)} one after another "
                f"({self.estimated_speedup:.2f}x as fast).")

    def explain(self) -> str:
        """The choice in plain words, then the measured figures behind it, with their units,
        then the reasons in the order they were weighed."""
        p = self.profile
        n = "unknown" if self.n_items is None else f"{self.n_items:,}"
        per_item = [f"{format_seconds(p.per_item_seconds)}", _spread(p.per_item_spread),
                    f"CPU {p.cpu_ratio:.0%} of wall time"]
        if p.cost_trend:
            per_item.append(f"cost trend along the input {p.cost_trend:+.2f} "
                            "(rank correlation: 0 none, +1 later items dearer)")
        if p.thread_scaling is not None:
            per_item.append(f"two at once on two threads: {p.thread_scaling:.2f}x the work of one "
                            "(2.00: they overlap fully; 1.00 or less: not at all)")
        how = (f"{self.executor_type}, n_jobs={self.n_jobs}, chunksize={self.chunksize}"
               if self.cluster is None else
               f"dask.distributed, {self.n_jobs} threads, batches of up to {self.chunksize}")
        lines = [
            self.summary(),
            f"  plan: {how}, estimated speedup {self.estimated_speedup:.2f}x "
            f"(decided by {self.decided_by})",
            f"  items: {n}; {measured_how(p, self.workload)}",
            "  per item: " + "; ".join(per_item),
            f"  pickled: item {format_bytes(p.arg_bytes)}, result {format_bytes(p.result_bytes)}, "
            f"{format_seconds(p.pickle_seconds)} per item to pickle both"
            + ("" if p.picklable else f"; not picklable: {p.unpicklable_reason}"),
        ]
        if self.machine is not None:
            busy = (f", {self.machine.background:.1f} other tasks wanting a CPU"
                    if self.machine.background >= 0.05 else "")
            lines.append(f"  machine: {self.machine.usable_cpus} usable CPUs, start method "
                         f"{self.machine.start_method}{busy}")
        if self.cluster is not None:
            c = self.cluster
            lines.append(f"  cluster: {c.describe()} at {c.address}; a task costs "
                         f"{format_seconds(c.task_seconds)} when the cluster is busy, "
                         f"{format_seconds(c.round_trip_seconds)} alone")
        if self.overheads:
            lines.append("  pool costs: " + ", ".join(
                f"{_OVERHEAD_NAMES.get(k, k)} {_format_overhead(k, v)}"
                for k, v in sorted(self.overheads.items(), key=_overhead_order)))
        if self.predictions:
            lines.append(
                "  predicted wall time: "
                + ", ".join(f"{k} {format_seconds(v)}" for k, v in self.predictions.items())
            )
        lines.append("  why:")
        lines.extend(f"    - {r}" for r in self.reasons)
        return "\n".join(lines)


_WORKERS = {"process": "processes", "thread": "threads", "interpreter": "interpreters"}
_OVERHEAD_NAMES = {
    "process_start": "process pool start",
    "process_latency": "process round trip",
    "process_per_chunk": "process per chunk",
    "process_busy_per_chunk": "process per chunk while every core computes",
    "process_per_byte": "process per byte sent",
    "shared_per_byte": "shared memory per byte placed",
    "thread_start": "thread pool start",
    "thread_per_chunk": "thread per chunk",
    "interpreter_start": "interpreter pool start",
    "interpreter_latency": "interpreter round trip",
    "interpreter_per_chunk": "interpreter per chunk",
    "interpreter_busy_per_chunk": "interpreter per chunk while every core computes",
    "interpreter_per_byte": "interpreter per byte sent",
}


def _overhead_order(item: tuple[str, float]) -> tuple[int, str]:
    names = list(_OVERHEAD_NAMES)
    return (names.index(item[0]) if item[0] in names else len(names), item[0])


def _each_item(p: Profile) -> str:
    took = format_seconds(p.per_item_seconds)
    if p.cpu_ratio >= 0.8:
        return f"Each item takes about {took} of computing"
    if p.cpu_ratio < 0.3:
        return f"Each item takes about {took}, mostly waiting ({p.cpu_ratio:.0%} of it computing)"
    return f"Each item takes about {took} ({p.cpu_ratio:.0%} of it computing)"


def _spread(spread: float) -> str:
    if spread >= 10:
        return f"item times vary widely (standard deviation {spread:.0f}x the mean)"
    return f"item times vary by {spread:.0%} (standard deviation over the mean)"


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


