"""Code that runs inside pool workers: calling the user's function on a chunk, timed.

Kept tiny and free of heavy imports because every process worker imports it at start-up.

Process workers do not import the parent's ``__main__`` (as loky's workers do not): a script
without an ``if __name__ == "__main__":`` guard is never run again in a worker. So everything
crossing to and from a process worker -- the call, its arguments, its result or its exception --
travels as cloudpickle bytes (``ByValue``), which carry ``__main__`` functions and classes by
value. Each worker keeps the last few unpickled functions so a chunk does not pay to unpickle again.
"""

from __future__ import annotations

import contextlib
import gc
import operator
import os
import pickle
import resource
import sys
import threading
import time
import types
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

_BLAS_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
_FUNC_CACHE: OrderedDict[bytes, Any] = OrderedDict()
_FUNC_CACHE_SIZE = 16
_IN_PROCESS_WORKER = False
_PROCESS_SLOT: tuple[Any, int] | None = None
# A pool's board: SLOT numbers per worker. TOKEN, ITEM, STARTED: the item running for a watched
# chunk (time limits); OWNER: the pid of the process worker holding the slot (0: free);
# GROWN: the MB a process worker's memory grew past its pool's limit (0: not past it).
SLOT = 5
TOKEN, ITEM, STARTED, OWNER, GROWN = range(SLOT)
_CLAIM_WAIT_SECONDS = 2.0
# [limit KB, baseline KB, flagged, tasks started] in a process worker whose pool watches memory
_memory: list | None = None
_STOPPED: set[float] = set()
_INITIALIZED: set[str] = set()
_MAIN_GLOBALS: dict | None = None


class PickledFunction:
    """A function shipped as cloudpickle bytes, with a digest so workers can cache it."""

    __slots__ = ("digest", "payload")

    def __init__(self, func: Any) -> None:
        import hashlib

        from amorsize.pools import shipping

        self.payload = shipping.dumps(func)
        self.digest = hashlib.blake2b(self.payload, digest_size=16).digest()

    def __getstate__(self) -> tuple[bytes, bytes]:
        return self.digest, self.payload

    def __setstate__(self, state: tuple[bytes, bytes]) -> None:
        self.digest, self.payload = state

    def load(self) -> Any:
        func = _FUNC_CACHE.get(self.digest)
        if func is None:
            import cloudpickle

            func = _into_main(cloudpickle.loads(self.payload))
            _FUNC_CACHE[self.digest] = func
            if len(_FUNC_CACHE) > _FUNC_CACHE_SIZE:
                _FUNC_CACHE.popitem(last=False)
        return func


class ByValue:
    """An object pickled with cloudpickle, so ``__main__`` functions and classes in it travel by
    value; cloudpickle keeps class identity, so a ``__main__`` class sent back is the parent's."""

    __slots__ = ("data",)

    def __init__(self, obj: Any) -> None:
        from amorsize.pools import shipping

        self.data = shipping.dumps(obj, protocol=5)

    def __getstate__(self) -> bytes:
        return self.data

    def __setstate__(self, data: bytes) -> None:
        self.data = data

    def load(self) -> Any:
        import cloudpickle

        return cloudpickle.loads(self.data)


class Star:
    """``func`` called with an item's elements as its arguments: what ``starmap`` maps.

    Remembered as ``func`` itself would be (``__wrapped__``), and carried by value to
    processes like any function."""

    __slots__ = ("__wrapped__",)

    def __init__(self, func: Any) -> None:
        self.__wrapped__ = _into_main(func)

    def __call__(self, args: Any) -> Any:
        return self.__wrapped__(*args)

    def __reduce__(self) -> tuple:
        return (Star, (self.__wrapped__,))


class RemoteTraceback(Exception):
    """Shows where in the worker an exception was raised (as ``concurrent.futures`` does)."""

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.args[0]}\"\"\""


def initialize_by_value(call: ByValue) -> None:
    """Run a user's worker initializer that came by value (a lambda or ``__main__`` function
    works); its exception propagates, so a worker whose set-up failed never takes tasks.

    The globals it sets or changes are kept from then on: a ``__main__`` function that comes
    later by value brings the parent's values of its globals, which would otherwise overwrite
    them (the ``conn = connect()`` of an initializer, replaced by the parent's ``conn = None``;
    the ``CACHE`` dict it filled, replaced by the parent's empty one). The globals it only
    reads keep following the parent's values, as the calls' own globals do."""
    fn, args = call.load()
    fn = _into_main(fn)
    namespace = getattr(fn, "__globals__", None)
    before = dict(namespace) if namespace is not None else {}
    as_sent = {k: _pickled(v) for k, v in before.items() if not k.startswith("__")}
    fn(*args)
    if namespace is not None:
        _INITIALIZED.update(k for k, v in namespace.items() if k not in before or before[k] is not v
                            or (k in as_sent and (as_sent[k] is None or _pickled(v) != as_sent[k])))


def _pickled(value: Any) -> bytes | None:
    """``value``'s pickle, to tell whether an initializer changed it in place; None when it
    cannot be pickled (then it is taken as changed: the worker's own is kept)."""
    if isinstance(value, types.ModuleType | types.FunctionType | type):
        return b""  # a module, function or class is not worker state an initializer fills
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - any pickling failure means "cannot tell"
        return None


def _into_main(obj: Any) -> Any:
    """In a process worker, the parent's ``__main__`` functions -- each arriving by value with
    its own copy of the globals it uses -- share one namespace, as they do in the parent: what
    an initializer sets (``conn = connect()``) is what a task reads. Later arrivals refresh the
    parent's values, except the names the initializer set."""
    global _MAIN_GLOBALS
    if not _in_main(obj):
        return obj
    if _MAIN_GLOBALS is None:
        _MAIN_GLOBALS = obj.__globals__
        return obj
    arrived = obj.__globals__
    if arrived is _MAIN_GLOBALS:
        return obj
    for name, value in arrived.items():
        if name not in _INITIALIZED or name not in _MAIN_GLOBALS:
            if isinstance(value, types.FunctionType) and value.__globals__ is arrived:
                value = _rebound(value)
            _MAIN_GLOBALS[name] = value
    return _rebound(obj)


def _in_main(obj: Any) -> bool:
    """A parent's ``__main__`` function, arrived by value in a process worker."""
    return (_IN_PROCESS_WORKER and isinstance(obj, types.FunctionType)
            and obj.__module__ == "__main__")


def _rebound(func: types.FunctionType) -> types.FunctionType:
    # set by the caller (``by_value``) before any function is rebound to it
    main_globals = cast(dict[str, Any], _MAIN_GLOBALS)
    new = types.FunctionType(func.__code__, main_globals, func.__name__, func.__defaults__,
                             func.__closure__)
    new.__kwdefaults__ = func.__kwdefaults__
    new.__qualname__ = func.__qualname__
    new.__module__ = func.__module__
    new.__dict__.update(func.__dict__)
    return new


def call_by_value(call: ByValue) -> ByValue:
    """What a process worker runs: unpack ``(fn, args)``, call, and pack the outcome by value.

    The outcome is ``(True, result)`` or ``(False, (exception, traceback text))``: an exception
    is returned, never raised, so ``multiprocessing`` never pickles it by reference (it cannot
    for a class that came by value).
    """
    fn, args = call.load()
    try:
        result = fn(*args)
    except Exception as exc:
        return pack_error(exc)
    return ByValue((True, result))


def pack_error(exc: BaseException, max_bytes: int | None = None) -> ByValue:
    """``exc`` and its traceback's text as ``call_by_value`` returns them, in the plainest form
    that loads again; at most ``max_bytes`` (else a ``RuntimeError`` naming it stands in)."""
    import traceback

    # the worker's traceback from the user's code on: the frames of this module come first
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    for error in (exc, _ErrorState(exc)):
        try:
            packed = ByValue((False, (error, text)))
            packed.load()  # an exception whose __init__ takes other arguments won't load
        except Exception:  # noqa: BLE001, S112 - try the next, plainer form
            continue
        if max_bytes is None or len(packed.data) <= max_bytes:
            return packed
        break
    stand_in = RuntimeError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}"[:1000])
    if _FAILED_AT in vars(exc):  # the failing item is still named
        vars(stand_in)[_FAILED_AT] = vars(exc)[_FAILED_AT]
    return ByValue((False, (stand_in, text if max_bytes is None else text[-max_bytes // 2:])))


class _ErrorState:
    """An exception as its class, args and attributes, rebuilt without calling its
    ``__init__`` (which pickling calls with ``args``, and which may want something else)."""

    def __init__(self, exc: BaseException) -> None:
        self.cls, self.args, self.state = type(exc), exc.args, dict(vars(exc))

    def rebuild(self) -> BaseException:
        error = BaseException.__new__(self.cls)
        error.args = self.args
        error.__dict__.update(self.state)
        return error


def unpack_outcome(packed: ByValue) -> Any:
    """The result of ``call_by_value``, or its exception raised with the worker's traceback."""
    ok, value = packed.load()
    if ok:
        return value
    error, text = value
    if isinstance(error, _ErrorState):
        error = error.rebuild()
    raise error from RemoteTraceback(text)


def _resolve(func: Any) -> Any:
    return func.load() if isinstance(func, PickledFunction) else func


_inside = threading.local()


def inside_worker() -> bool:
    """True while this thread runs a task for an amorsize pool (thread or process worker).

    A nested ``amorsize.map`` there must not wait on the pools its caller is occupying (a thread
    pool whose threads all wait on it never frees one) nor multiply processes: it runs serially.
    """
    return getattr(_inside, "depth", 0) > 0 or _IN_PROCESS_WORKER


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
    _between_tasks()
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
            slot = _slot() if token > 0 else None
            results = []
            k = 0
            try:
                for k, x in enumerate(items):  # noqa: B007 - k is read if f raises
                    if token in _STOPPED:
                        break
                    if slot is not None:
                        _mark(slot, token, k)
                    results.append(f(x))
            except Exception as exc:
                failed_at(exc, k)
                raise
            finally:
                if slot is not None:
                    _mark(slot, 0.0, 0)
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
    _between_tasks()
    f = _resolve(func)
    slot = _slot() if token else None
    results: list = []
    walls: list[float] = []
    cpus: list[float] = []
    blocked: list[int] = []
    _enter()
    try:
        started = time.perf_counter()
        for k, x in enumerate(items):
            if slot is not None:
                _mark(slot, token, k)
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
            _mark(slot, 0.0, 0)
        _leave()


_FAILED_AT = "_amorsize_failed_at"


def failed_at(exc: BaseException, k: int) -> None:
    """Mark ``exc`` as raised by the ``k``-th item of the items a worker was given, and where
    that ran; whoever knows the item's place in the input turns the mark into a note
    (``item_note``). An exception marked already (by a nested call) keeps its first mark."""
    if _FAILED_AT not in vars(exc):
        vars(exc)[_FAILED_AT] = (k, where_running())


def item_note(exc: BaseException, index: Callable[[int], int | None],
              total: int | None = None) -> None:
    """Add the note that names the failing item, ``index(k)`` being its input position (None:
    unknown), e.g. "item 57 of 200, run on process worker 2 (pid 4242)", and remove the mark;
    nothing for an exception ``failed_at`` did not mark."""
    mark = vars(exc).pop(_FAILED_AT, None)
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
    4242)", "on thread amorsize-1" or "in this process" (any front end may name a failing
    task's worker with it)."""
    if _IN_PROCESS_WORKER:
        number = "" if _PROCESS_SLOT is None else f" {_PROCESS_SLOT[1] // SLOT + 1}"
        return f"on process worker{number} (pid {os.getpid()})"
    if getattr(_inside, "slot", None) is not None:
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


def _slot() -> tuple[Any, int] | None:
    """This worker's place on its pool's board: (board, offset), or None outside a pool."""
    return getattr(_inside, "slot", None) or _PROCESS_SLOT


def _mark(slot: tuple[Any, int], token: float, k: int) -> None:
    board, at = slot
    board[at + TOKEN] = 0.0
    board[at + ITEM] = k
    board[at + STARTED] = time.monotonic()
    board[at + TOKEN] = token


def bind_thread_slot(board: Any, index: int) -> None:
    """Give the calling pool thread its slot on the board (``SLOT`` numbers, see above)."""
    _inside.slot = (board, SLOT * index)


def _claim_slot(board: Any, claimed: Any) -> tuple[Any, int] | None:
    """Take the first slot whose owner is none or gone: a worker replacing a retired one
    (``max_tasks_per_child``) reuses its slot. ``claimed`` counts the claims (its lock makes
    them one at a time). The retired worker may still be exiting: wait for it a little."""
    pid = os.getpid()
    deadline = time.monotonic() + _CLAIM_WAIT_SECONDS
    while True:
        with claimed.get_lock():
            for at in range(0, len(board) - SLOT + 1, SLOT):
                owner = int(board[at + OWNER])
                if owner == 0 or _gone(owner):
                    for field in (TOKEN, ITEM, STARTED, GROWN):
                        board[at + field] = 0.0
                    board[at + OWNER] = pid
                    claimed.value += 1
                    return board, at
        if time.monotonic() > deadline:
            with claimed.get_lock():
                claimed.value += 1
            return None  # runs without a slot: no time limit can see its items
        time.sleep(0.005)


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie counts as ended)."""
    from amorsize.pools import orphans

    if orphans._WINDOWS:  # where os.kill(pid, 0) would terminate it
        import psutil

        return not psutil.pid_exists(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return True  # another user's process took the pid: ours is gone
    stat = orphans._stat(pid)
    return stat is not None and stat[0] in ("Z", "X")


def _between_tasks() -> None:
    """In a process worker whose pool watches memory: flag this worker on the board once its
    memory grew more than the limit since its first task ended (as loky does, so imports and
    caches loaded by the first task are not growth). Checked as a task starts: the previous
    task's results are sent and freed by then, so they are not counted. Costs one
    ``getrusage`` while the peak stays under the limit."""
    memory = _memory
    if memory is None or memory[2] or _PROCESS_SLOT is None:
        return
    limit, baseline, _, tasks = memory
    memory[3] = tasks + 1
    if tasks < 2:  # the first task has not started, or has just ended
        if tasks == 1:
            memory[1] = _resident_kb()
        return
    if _peak_kb() - baseline <= limit:  # the resident size is at most the peak
        return
    grown = _resident_kb() - baseline
    if grown > limit:
        gc.collect()  # reference cycles are not a leak
        grown = _resident_kb() - baseline
    if grown > limit:
        memory[2] = True
        board, at = _PROCESS_SLOT
        board[at + GROWN] = max(grown / 1024, 1e-3)


def _peak_kb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KB elsewhere


def _resident_kb() -> float:
    """This process's resident memory now (KB): /proc on Linux, psutil elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") / 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return psutil.Process().memory_info().rss / 1024
    except Exception:  # noqa: BLE001 - fall back to the peak, an upper bound
        return _peak_kb()


def call(func: Any, args: tuple, kwargs: dict) -> Any:
    """Call a (possibly pickled) function with arguments: what ``Pool.submit`` runs."""
    _between_tasks()
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


def pid_after(seconds: float) -> int:
    """Stay busy briefly, then tell which worker ran: used to start every worker of a pool."""
    time.sleep(seconds)
    return os.getpid()


def initialize(blas_threads: int | None, board: Any = None, claimed: Any = None,
               parent: int | None = None, forked_on_main_thread: bool = False,
               memory_limit_mb: float | None = None) -> None:
    """Process-worker initializer: cap BLAS/OpenMP threads so n workers do not oversubscribe,
    take a free slot on the pool's board (``claimed`` counts the claims), watch this worker's
    memory growth against ``memory_limit_mb`` (None: not watched), and exit once ``parent``,
    the user's process, has died, however it died (``amorsize.pools.orphans``).

    Environment variables are set before numpy is imported in the worker, as loky does; a value
    the user set explicitly is left alone.
    """
    if blas_threads is not None:
        for var in _BLAS_ENV_VARS:
            os.environ.setdefault(var, str(blas_threads))
    os.environ["AMORSIZE_IN_WORKER"] = "1"
    global _IN_PROCESS_WORKER, _PROCESS_SLOT, _memory
    _IN_PROCESS_WORKER = True
    if board is not None and claimed is not None:
        _PROCESS_SLOT = _claim_slot(board, claimed)
    if memory_limit_mb is not None:
        _memory = [memory_limit_mb * 1024, 0.0, False, 0]
    if parent is not None:
        from amorsize.pools import orphans

        orphans.watch_parent(parent, forked_on_main_thread)
