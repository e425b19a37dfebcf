"""What amorsize remembers about each function within this process.

A repeated call on a known function skips sampling (its profile is recalled), and every finished
run corrects what is remembered: the per-item time measured inside the workers is averaged with
the estimate, each weighted by the items behind it (a run of 100,000 items all but replaces
what 8 sampled items said, so the next call's plan is settled at once; a run of 10 barely moves
what 100,000 measured), and the ratio of actual to predicted wall time corrects the model for
the executor that ran (halfway from the correction so far, or all the way for a run 1.5x or more
off its prediction that lasted long enough for that not to be one pre-emption by other work).
Kept in memory only; nothing is written to disk.

A finished run's figures are written into its entry's array of numbers and folded in when the
entry is next read (the next call's planning, before its items run). Folding makes new Python
objects (a profile, floats); made right after a run, they would land in the memory arenas of
the results the caller is about to receive, and keep an arena mapped after those results are
freed while the one they kept before is unmapped: trivial calls in a row then each paid for
fresh page faults (docs/benchmarks.md has the figures).
"""

from __future__ import annotations

import functools
import math
import os
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from amorsize.errors import EXECUTOR_TYPES, ExecutorType
from amorsize.workload import Profile

_MAX_ENTRIES = 512
_SMOOTHING = 0.5
_FAR_OFF = 1.5
# a run shorter than this may be 1.5x off its prediction from the machine's other work alone:
# beside other programs a thread waits for a core up to a few time slices at once, which says
# nothing of the next run
FAR_OFF_MIN_SECONDS = 0.1
# the machine's load (tasks elsewhere that want a CPU) moved by this many: what a correction
# learned at one load said is set aside at the other (see ``Learned.corrected_at``)
LOAD_MOVED = 0.5


class _Unread:
    """Slots of a finished run's figures in ``Learned.unread`` (an ``array('d')``, written in
    place so that recording a run creates no object that outlives it); NaN for None."""

    EXECUTOR, N_ITEMS, COMPUTE, WALL, PREDICTED, N_INPUT, WORKERS_PER_CORE, BACKGROUND = range(8)

    @staticmethod
    def empty() -> array[float]:
        return array("d", [math.nan] * 8)


@dataclass
class Learned:
    """What is known about one function: its profile, how often it ran, how many items its last
    run had (the best guess when the next input is an iterator of unknown length), and the
    model's corrections by executor type, with the load each was learned at (``corrected_at``:
    the tasks elsewhere that wanted a CPU). A correction learned beside two busy programs
    corrected an error the model now counts itself; at another load it is set aside
    (``corrections_at``), not carried over."""

    profile: Profile
    runs: int = 0
    last_n_items: int | None = None
    corrections: dict[str, float] = field(default_factory=dict)
    corrected_at: dict[str, float] = field(default_factory=dict)
    # the last finished run, not yet folded in: see _Unread
    unread: array[float] = field(default_factory=_Unread.empty, repr=False, compare=False)

    def corrections_at(self, background: float) -> dict[str, float]:
        """The corrections learned at about this load (``background``: tasks elsewhere that
        want a CPU); the same dict when none is set aside."""
        at = self.corrected_at
        if all(abs(at.get(k, 0.0) - background) < LOAD_MOVED for k in self.corrections):
            return self.corrections
        return {k: v for k, v in self.corrections.items()
                if abs(at.get(k, 0.0) - background) < LOAD_MOVED}


def function_key(func: Callable) -> Hashable:
    """A key that is equal for calls of the same code, stable across re-created closures, bound
    methods and callable objects (a lambda defined in a loop is one function for this purpose)."""
    if isinstance(func, functools.partial):
        # Small settings (``loops=5000``, ``mode="fast"``) often set what a call costs, so a
        # partial that differs in one is another function here; a large or unhashable
        # argument (an array, a model) counts by its type only, so a new one is not a stranger.
        # Past ``_SETTINGS_PER_FUNCTION`` settings of one function (a seed or a path per
        # call), the settings are left out: each call would otherwise be measured anew.
        shape = ("partial", function_key(func.func), len(func.args), tuple(sorted(func.keywords)))
        settings = (tuple(_setting(a) for a in func.args),
                    tuple(sorted((k, _setting(v)) for k, v in func.keywords.items())))
        with _SETTINGS_LOCK:
            seen = _SETTINGS_SEEN.setdefault(shape, set())
            if settings not in seen:
                if len(seen) >= _SETTINGS_PER_FUNCTION:
                    return shape
                seen.add(settings)
                if len(_SETTINGS_SEEN) > _MAX_ENTRIES:
                    _SETTINGS_SEEN.pop(next(iter(_SETTINGS_SEEN)))
        return shape, settings
    code = getattr(func, "__code__", None)  # functions, lambdas, closures, bound methods
    if code is not None:
        return code
    wrapped = getattr(func, "__wrapped__", None)  # a callable object around a function (starmap)
    if wrapped is not None and callable(wrapped):
        return (type(func).__qualname__, function_key(wrapped))
    # A callable object is known by its class's __call__: keying by the object itself would
    # keep it (and whatever it holds) alive in this memory.
    call = next((vars(c)["__call__"] for c in type(func).__mro__ if "__call__" in vars(c)), None)
    code = getattr(call, "__code__", None)
    if code is not None:
        return code
    try:
        hash(func)
        return func
    except TypeError:
        return ("type", type(func))


_SETTINGS_PER_FUNCTION = 8
# the settings met per partial's function and argument shape (oldest function dropped first)
_SETTINGS_SEEN: dict[Hashable, set] = {}
_SETTINGS_LOCK = threading.Lock()
_SETTING_TYPES = (int, float, complex, str, bytes, bool, type(None))
_SETTING_MAX_LEN = 64


def _setting(value: object) -> Hashable:
    """A partial's argument as part of its key: its value if a small scalar, else its type."""
    if (isinstance(value, _SETTING_TYPES) and value == value  # noqa: PLR0124 - NaN never matches
            and not (isinstance(value, str | bytes) and len(value) > _SETTING_MAX_LEN)):
        return (type(value), value)
    return type(value).__qualname__, type(value).__module__


class LearnedProfiles:
    """A bounded, thread-safe map from function key to ``Learned`` (least recently used dropped)."""

    def __init__(self, max_entries: int = _MAX_ENTRIES) -> None:
        self._entries: OrderedDict[Hashable, Learned] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_entries

    def _reset_lock(self) -> None:
        """A fork taken while another thread held the lock would leave it held in the child."""
        self._lock = threading.Lock()

    def recall(self, key: Hashable) -> Learned | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                _fold_unread(entry)
            return entry

    def remember(self, key: Hashable, profile: Profile) -> Learned:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = Learned(profile)
                if len(self._entries) > self._max:
                    self._entries.popitem(last=False)
            else:
                _fold_unread(entry)
                entry.profile = profile
            return entry

    def record_run(
        self,
        key: Hashable,
        executor_type: ExecutorType,
        n_items: int,
        compute_seconds: float,
        wall_seconds: float,
        predicted_seconds: float | None,
        n_input: int | None = None,
        workers_per_core: float = 1.0,
        background: float = 0.0,
    ) -> None:
        """Note a finished run of ``n_items``, to be folded into what is known when the entry
        is next read (see the module's docstring): per-item time (from serial and process runs,
        whose workers shared each core with ``workers_per_core`` - 1 others), the model's error
        for the executor that ran (whose plan was made beside ``background`` tasks that wanted
        a CPU), and the input's size (``n_input``, which counts the items measured before the
        run too)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            # a run not read yet (runs in a row, or callers in parallel): folded now, so only
            # these pay for objects made after their results
            _fold_unread(entry)
            unread = entry.unread
            unread[_Unread.EXECUTOR] = EXECUTOR_TYPES.index(executor_type)
            unread[_Unread.N_ITEMS] = n_items
            unread[_Unread.COMPUTE] = compute_seconds
            unread[_Unread.WALL] = wall_seconds
            unread[_Unread.PREDICTED] = math.nan if predicted_seconds is None else predicted_seconds
            unread[_Unread.N_INPUT] = math.nan if n_input is None else n_input
            unread[_Unread.WORKERS_PER_CORE] = workers_per_core
            unread[_Unread.BACKGROUND] = background

    def forget(self, key: Hashable | None = None) -> None:
        """Forget one function, or everything."""
        with self._lock:
            if key is None:
                self._entries.clear()
            else:
                self._entries.pop(key, None)


def _fold_unread(entry: Learned) -> None:
    """Fold the entry's unread run, if any, into its profile, counts and corrections."""
    unread = entry.unread
    if math.isnan(unread[_Unread.EXECUTOR]):
        return
    executor_type = EXECUTOR_TYPES[int(unread[_Unread.EXECUTOR])]
    n_items = int(unread[_Unread.N_ITEMS])
    compute_seconds, wall_seconds = unread[_Unread.COMPUTE], unread[_Unread.WALL]
    predicted_seconds, n_input = unread[_Unread.PREDICTED], unread[_Unread.N_INPUT]
    workers_per_core = unread[_Unread.WORKERS_PER_CORE]
    background = unread[_Unread.BACKGROUND]
    unread[_Unread.EXECUTOR] = math.nan
    entry.runs += 1
    entry.last_n_items = n_items if math.isnan(n_input) else int(n_input)
    # Time measured inside threads includes waiting for the GIL held by other threads:
    # it says how the thread run went (the correction below), not what one call costs.
    explained = 1.0
    if n_items > 0 and compute_seconds > 0 and executor_type != "thread":
        # 4 workers computing on 2 cores each take twice as long per item as one call
        # costs: the computing share of the time is stretched by how far the workers'
        # demand for cores (half of it for calls that wait half the time) exceeds them
        computing = min(1.0, entry.profile.cpu_ratio)
        stretch = (1 - computing) + computing * max(1.0, workers_per_core * computing)
        measured = compute_seconds / n_items / stretch
        old = entry.profile.per_item_seconds
        # at most ten times this run's items: a function whose data got heavier is
        # followed within a few calls, not a hundred
        behind = max(1, min(entry.profile.n_measured, 10 * n_items))
        weight = n_items / (n_items + behind)
        new = old + weight * (measured - old)
        # the part of the prediction's error that the new per-item time explains is
        # fixed here; only the rest is the model's, for the correction below
        explained = new / old if old > 0 else 1.0
        # what the estimate now stands for: a run of the same size as the last weighs
        # as much as everything before it (costs that drift are followed, not frozen)
        stands_for = max(n_items, round(behind * (1 - weight)))
        entry.profile = entry.profile.replace(
            per_item_seconds=new, n_measured=stands_for, measured_by="runs")
    if n_items > 0 and predicted_seconds > 0 and wall_seconds > 0:  # NaN compares False
        # the prediction already carried the correction so far: the run's error is on
        # top of it (taking it as the whole correction settled on its square root); one
        # learned at another load was set aside (``corrections_at``), and not carried
        old = entry.corrections.get(executor_type, 1.0)
        if abs(entry.corrected_at.get(executor_type, 0.0) - background) >= LOAD_MOVED:
            old = 1.0
        target = old * wall_seconds / (predicted_seconds * explained)
        target = min(10.0, max(0.1, target))
        # a run far off its prediction (the machine got busy, a pool stalled) is taken at its
        # word at once: halfway, the next call would repeat most of the loss; a short one only
        # halfway, as one wait for a core can make it so (its next calls come soon anyway)
        far_off = max(target / old, old / target) >= _FAR_OFF
        step = 1.0 if far_off and wall_seconds >= FAR_OFF_MIN_SECONDS else _SMOOTHING
        # a new dict, not a changed one: readers (and decisions made from it) keep it as it is,
        # outside the lock and without copying
        entry.corrections = {**entry.corrections, executor_type: old + step * (target - old)}
        entry.corrected_at = {**entry.corrected_at, executor_type: background}


LEARNED = LearnedProfiles()


def _reset_locks() -> None:
    """A fork taken while another thread held a lock would leave it held in the child."""
    global _SETTINGS_LOCK
    LEARNED._reset_lock()
    _SETTINGS_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_locks)
