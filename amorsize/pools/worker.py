"""Code that runs inside pool workers: calling the user's function on a chunk, timed, and
naming the item that failed.

Kept tiny and free of heavy imports because every process worker imports it at start-up. What
crosses to and from a process worker is in ``payloads``; the board where workers say what they
run in ``board``; a process worker's set-up and memory rule in ``environment``. Their names used
across amorsize are importable from here too.
"""

from __future__ import annotations

import contextlib
import operator
import os
import resource
import threading
import time
from collections.abc import Callable
from typing import Any

from amorsize.pools import board, environment, shared
from amorsize.pools.board import GROWN, ITEM, OWNER, SLOT, STARTED, TOKEN, bind_thread_slot
from amorsize.pools.environment import initialize
from amorsize.pools.payloads import (
    FAILED_AT,
    ByValue,
    PickledFunction,
    RemoteTraceback,
    Star,
    call_by_value,
    initialize_by_value,
    pack_error,
    unpack_outcome,
)

# the names of board, environment and payloads that callers take from here
__all__ = ["GROWN", "ITEM", "OWNER", "SLOT", "STARTED", "TOKEN", "ByValue", "PickledFunction",
           "PlacedResult", "RemoteTraceback", "Star", "bind_thread_slot", "call", "call_by_value",
           "call_returning", "failed_at", "initialize", "initialize_by_value", "inside_worker",
           "item_note", "note_item_here", "now", "pack_error", "pid_after", "run_chunk",
           "run_timed", "spin", "stop", "unpack_outcome", "unstop", "waits", "where_running"]
_STOPPED: set[float] = set()


def _resolve(func: Any) -> Any:
    return func.load() if isinstance(func, PickledFunction) else func


_inside = threading.local()


def inside_worker() -> bool:
    """True while this thread runs a task for an amorsize pool (thread or process worker).

    A nested ``amorsize.map`` there must not wait on the pools its caller is occupying (a thread
    pool whose threads all wait on it never frees one) nor multiply processes: it runs serially.
    """
    return getattr(_inside, "depth", 0) > 0 or environment.in_process_worker()


def _enter() -> None:
    _inside.depth = getattr(_inside, "depth", 0) + 1


def _leave() -> None:
    _inside.depth -= 1


def run_chunk(func: Any, items: list, token: float = 0.0) -> tuple[list, float]:
    """Call ``func`` on each item; return the results and the seconds spent computing them.

    With a ``token`` a thread stops between items once its run cancelled it (``stop``), since
    a thread cannot be killed; a positive token (a run watching a time limit) also has each
    item's start written to this worker's slot of the pool's board, so the caller can tell
    which item runs too long. A negative one asks for the stop check alone.
    """
    environment.between_tasks()
    f = _resolve(func)
    _enter()
    try:
        start = time.perf_counter()
        if not token:
            it = iter(items)
            try:
                results = [f(x) for x in it]
            except Exception as exc:
                # the failing item is the last one taken: where it is costs nothing until then
                failed_at(exc, len(items) - operator.length_hint(it) - 1)
                raise
        else:
            slot = board.slot() if token > 0 else None
            results = []
            k = 0
            try:
                for k, x in enumerate(items):  # noqa: B007 - k is read if f raises
                    if token in _STOPPED:
                        break
                    if slot is not None:
                        board.mark(slot, token, k)
                    results.append(f(x))
            except Exception as exc:
                failed_at(exc, k)
                raise
            finally:
                if slot is not None:
                    board.mark(slot, 0.0, 0)
                _STOPPED.discard(token)
        return results, time.perf_counter() - start
    finally:
        _leave()


def run_timed(
    func: Any, items: list, budget: float, token: float = 0.0
) -> tuple[list, list[float], list[float], list[int]]:
    """Call ``func`` on items one at a time, timed each (wall, CPU, times blocked), stopping once
    at least two ran and ``budget`` seconds are spent (or four budgets after one): what
    measuring runs, in the caller or on a worker. Returns the results so far and, per call, its
    wall and CPU seconds and how often it blocked (-1: unknown)."""
    environment.between_tasks()
    f = _resolve(func)
    slot = board.slot() if token else None
    results: list = []
    walls: list[float] = []
    cpus: list[float] = []
    blocked: list[int] = []
    _enter()
    try:
        started = time.perf_counter()
        for k, x in enumerate(items):
            if slot is not None:
                board.mark(slot, token, k)
            w0 = waits()
            t0, c0 = now()
            try:
                results.append(f(x))
            except Exception as exc:
                failed_at(exc, k)
                raise
            t1, c1 = now()
            walls.append(t1 - t0)
            cpus.append(c1 - c0)
            blocked.append(-1 if w0 < 0 else waits() - w0)
            spent = t1 - started
            if (len(walls) >= 2 and spent > budget) or spent > 4 * budget:
                break
        return results, walls, cpus, blocked
    finally:
        if slot is not None:
            board.mark(slot, 0.0, 0)
        _leave()


def failed_at(exc: BaseException, k: int) -> None:
    """Mark ``exc`` as raised by the ``k``-th item of the items a worker was given, and where
    that ran; whoever knows the item's place in the input turns the mark into a note
    (``item_note``). An exception marked already (by a nested call) keeps its first mark."""
    if FAILED_AT not in vars(exc):
        vars(exc)[FAILED_AT] = (k, where_running())


def item_note(exc: BaseException, index: Callable[[int], int | None],
              total: int | None = None) -> None:
    """Add the note that names the failing item, ``index(k)`` being its input position (None:
    unknown), e.g. "item 57 of 200, run on process worker 2 (pid 4242)", and remove the mark;
    nothing for an exception ``failed_at`` did not mark."""
    mark = vars(exc).pop(FAILED_AT, None)
    if mark is None:
        return
    k, where = mark
    position = index(k)
    item = "an item" if position is None else f"item {position}"
    of = "" if total is None or position is None else f" of {total}"
    with contextlib.suppress(TypeError):  # __notes__ set to something else: the error matters
        exc.add_note(f"{item}{of}, run {where}")


def note_item_here(exc: BaseException, index: int | None, total: int | None = None) -> None:
    """``item_note`` for an item that ran in this thread, at input position ``index``."""
    failed_at(exc, 0)
    item_note(exc, lambda _: index, total)


def where_running() -> str:
    """Where the caller runs, as a failing item's note says it: "on process worker 2 (pid
    4242)", "on interpreter worker 1", "on thread amorsize-1" or "in this process" (any front
    end may name a failing task's worker with it)."""
    if environment.in_process_worker():
        place = board.process_slot()
        number = "" if place is None else f" {place[1] // board.SLOT + 1}"
        if environment.in_interpreter_worker():
            return f"on interpreter worker{number}"
        return f"on process worker{number} (pid {os.getpid()})"
    if board.thread_slot() is not None:
        return f"on thread {threading.current_thread().name}"
    return "in this process"


def stop(tokens: list[float]) -> None:
    """Have the thread workers running chunks with these tokens stop before their next item."""
    _STOPPED.update(tokens)


def unstop(token: float) -> None:
    """Forget a stop for a chunk that has ended."""
    _STOPPED.discard(token)


def now() -> tuple[float, float]:
    """The two clocks every measurement uses: wall time, and this process's CPU time (which
    counts the cores a call uses itself, e.g. BLAS threads)."""
    return time.perf_counter(), time.process_time()


def waits() -> int:
    """How many times this thread has blocked (voluntary context switches), or -1 where the
    system does not tell (Linux does).

    A call that was off the CPU without blocking was pre-empted -- the machine is busy -- not
    waiting for I/O: the probe uses this to keep a computing call from looking I/O-bound on a
    loaded machine."""
    try:
        return resource.getrusage(resource.RUSAGE_THREAD).ru_nvcsw
    except (AttributeError, OSError):
        return -1


def call(func: Any, args: tuple, kwargs: dict) -> Any:
    """Call a (possibly pickled) function with arguments: what ``WorkerPool.submit`` runs."""
    environment.between_tasks()
    _enter()
    try:
        return _resolve(func)(*args, **kwargs)
    finally:
        _leave()


def spin(cpu_seconds: float) -> None:
    """Compute for ``cpu_seconds`` of this process's CPU time (not wall time: a worker waiting for
    a busy core takes longer, as real work would). Measures what chunks cost busy workers."""
    end = time.process_time() + cpu_seconds
    while time.process_time() < end:
        pass


class PlacedResult:
    """A call's outcome whose large buffers wait in the caller's result file (``shared.fill``):
    what crosses the pipe is the rest of its pickle and where they are. Loaded in the caller,
    it reads them into memory of the caller's own, and empties the file."""

    __slots__ = ("as_bytes", "data", "layout", "ref")

    def __init__(self, data: bytes, ref: tuple[int, int, str],
                 layout: tuple[tuple[int, int], ...], as_bytes: tuple[bool, ...]) -> None:
        # ``as_bytes``: which buffers were ``bytes`` (read back as such, the others writable)
        self.data, self.ref, self.layout, self.as_bytes = data, ref, layout, as_bytes

    def __getstate__(self) -> tuple:
        return self.data, self.ref, self.layout, self.as_bytes

    def __setstate__(self, state: tuple) -> None:
        self.data, self.ref, self.layout, self.as_bytes = state

    def load(self) -> Any:
        from amorsize.pools import shipping

        _, fd, token = self.ref
        buffers = shared.read_result(fd, token, self.layout, self.as_bytes)
        return shipping.loads(self.data, buffers=buffers)


def call_returning(call: ByValue, result_file: tuple[int, int, str] | None) -> ByValue | PlacedResult:
    """What a process worker runs: ``call_by_value``, except that the result's large buffers
    (``SHARED_MIN_BYTES`` or more: numpy arrays, ``bytes``...) go into the caller's
    ``result_file`` when it lends one (``shared.lend``), not through the pipe."""
    if result_file is None:
        return call_by_value(call)
    fn, args = call.load()
    try:
        result = fn(*args)
    except Exception as exc:
        return pack_error(exc)
    return placed((True, result), result_file)


def placed(outcome: Any, result_file: tuple[int, int, str]) -> ByValue | PlacedResult:
    """``outcome`` packed with its large buffers in ``result_file``; by value, as
    ``ByValue(outcome)``, if it has none or they cannot go there."""
    from amorsize.pools import shipping

    big: list = []

    def out_of_band(buffer: Any) -> bool:
        if shared.in_band(buffer):
            return True
        big.append(buffer)
        return False

    # numpy arrays and other PickleBuffers first, at no cost to a result of many small objects;
    # big bytes (a call for every object pickled) only when the pickle is big and holds some
    data = shipping.dumps(outcome, protocol=5, buffer_callback=out_of_band, big_bytes=False)
    if len(data) >= shared.SHARED_MIN_BYTES and _holds_big_bytes(outcome):
        big.clear()
        data = shipping.dumps(outcome, protocol=5, buffer_callback=out_of_band)
    if big:
        try:
            views = [buffer.raw() for buffer in big]
        except BufferError:  # a buffer that is not contiguous: pickled in band
            return ByValue(outcome)
        layout = shared.fill(result_file, views)
        if layout is None:
            return ByValue(outcome)
        return PlacedResult(data, result_file, layout,
                            tuple(type(view.obj) is bytes for view in views))
    packed = ByValue.__new__(ByValue)
    packed.data = data
    return packed


def _holds_big_bytes(obj: Any, depth: int = 5, budget: int = 10_000) -> bool | None:
    """Whether ``obj``, or a tuple, list or dict in it ``depth`` levels down, holds ``bytes`` or
    a ``bytearray`` of ``SHARED_MIN_BYTES`` or more (a chunk's results are three levels down);
    None if there is more to look at than ``budget`` objects (a result of many small ones)."""
    level = [obj]
    for _ in range(depth + 1):
        below: list = []
        for x in level:
            kind = type(x)
            if kind is bytes or kind is bytearray:
                if len(x) >= shared.SHARED_MIN_BYTES:
                    return True
            elif kind is tuple or kind is list or kind is dict:
                if len(below) + len(x) > budget:
                    return None
                below.extend(x.values() if kind is dict else x)
        level = below
    return False


def pid_after(seconds: float) -> int:
    """Stay busy briefly, then tell which worker ran: used to start every worker of a pool."""
    time.sleep(seconds)
    return os.getpid()


