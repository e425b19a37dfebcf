"""What is known about a piece of work before deciding how to run it.

`Profile` holds what was measured about the function on real items; `Workload` holds what the
caller knows (how many items, which executors are allowed, who is asking). Both cross the hook
boundary (`amorsize_make_plan(func, sample, workload)`), so plugins and adapters build them too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

from amorsize.errors import EXECUTOR_TYPES, ExecutorType

_D = TypeVar("_D")


@dataclass(frozen=True)
class Profile:
    """Measured behaviour of one function on a few real items.

    ``thread_scaling`` is how much faster two calls ran at once on two threads than one after the
    other: 1.0 means the GIL serialised them, 2.0 means they overlapped fully (I/O, or C code that
    releases the GIL). ``None`` when it was not measured. ``cost_trend`` is how closely the cost
    of the calls followed their order in the input (a rank correlation, -1 to 1): costs that
    rise or fall along the input do not average out over a chunk of neighbouring items.
    ``func_bytes`` is the pickled function, with the large arguments every item carries where
    they cross once too (the joblib backend's ``X`` of every task); ``shared_bytes`` the part
    of it, its large buffers (a partial over a big array, that ``X``), that crosses to process
    workers once, through shared memory (``amorsize.pools.shared``), where the rest travels
    with every chunk.
    ``cpu_share`` is the part of a core the measured calls got while they computed (1.0: a core
    of their own; 0.67 beside two busy programs on 2 cores); ``per_item_seconds`` is then what a
    call takes on a core of its own, the wall time the machine's load added taken out.
    """

    per_item_seconds: float
    per_item_spread: float = 0.0
    cpu_ratio: float = 1.0
    arg_bytes: float = 0.0
    result_bytes: float = 0.0
    pickle_seconds: float = 0.0
    func_bytes: float = 0.0
    shared_bytes: float = 0.0
    thread_scaling: float | None = None
    picklable: bool = True
    unpicklable_reason: str = ""
    n_measured: int = 0
    measured_by: str = "sampling"
    cost_trend: float = 0.0
    cpu_share: float = 1.0

    @property
    def io_bound(self) -> bool:
        """Most of a call's time is spent waiting rather than computing."""
        return self.cpu_ratio < 0.5

    def replace(self, **changes: Any) -> Profile:
        """A copy with some fields changed (every finished run of a known function updates its
        profile); see ``copy_with``."""
        return copy_with(self, changes)


def copy_with(obj: _D, changes: dict[str, Any]) -> _D:
    """A shallow copy of the dataclass instance ``obj`` with ``changes``, as
    ``dataclasses.replace`` makes, at a third of its cost (no ``__init__``, frozen or not):
    ``map`` copies a plan on every call, and learning a profile on every run."""
    cls = type(obj)
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = frozenset(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    unknown = changes.keys() - names
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {', '.join(sorted(unknown))}")
    new = object.__new__(cls)
    object.__setattr__(new, "__dict__", {**obj.__dict__, **changes})  # a frozen one's too
    return new


_FIELD_NAMES: dict[type, frozenset[str]] = {}


@dataclass(frozen=True)
class Workload:
    """What the caller knows about the work: size, constraints and origin.

    ``n_items`` is None for an iterator of unknown length. ``executors`` restricts the choice
    (e.g. joblib's ``require="sharedmem"`` allows only serial and threads). ``previous_runs`` tells the
    optimizer how many times this function has already been run in this process, so the start-up
    of a pool can be amortised over calls that keep coming.

    ``key`` is what the function (or a Dask graph's shape) is remembered under, None for the
    function's own key; ``already_done`` items were computed while measuring and are not part of
    the run; ``recalled`` says the profile came from an earlier call. ``chunksize``,
    ``start_method``, ``initializer``/``initargs`` and ``max_tasks_per_child`` are the caller's
    choices (None: amorsize's), the last three part of which pool the run uses. ``learned`` is
    what ``amorsize_recall`` gave the caller for ``key`` when it has asked already (None: the
    plan maker asks), so a call does not ask twice.
    """

    n_items: int | None
    source: str = "map"
    executors: tuple[ExecutorType, ...] = EXECUTOR_TYPES
    max_workers: int | None = None
    min_speedup: float = 1.2
    previous_runs: int = 0
    key: Hashable | None = None
    already_done: int = 0
    recalled: bool = False
    chunksize: int | None = None
    start_method: str | None = None
    initializer: Callable[..., Any] | None = None
    initargs: tuple[Any, ...] = ()
    max_tasks_per_child: int | None = None
    learned: Any = dataclasses.field(default=None, repr=False, compare=False)
