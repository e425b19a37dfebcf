"""What crosses to and from a process worker: the call, its arguments, its result or its
exception, all as cloudpickle bytes.

Process workers do not import the parent's ``__main__`` (as loky's workers do not): a script
without an ``if __name__ == "__main__":`` guard is never run again in a worker. So everything
crossing to and from a process worker travels by value (``ByValue``): cloudpickle carries
``__main__`` functions and classes that way. Each worker keeps the last few unpickled functions
(``PickledFunction``) so a chunk does not pay to unpickle again; a function's large buffers
cross once per worker, through shared memory (``shared``).

Imported by every process worker and sub-interpreter worker: kept light.
"""

from __future__ import annotations

import copy
import functools
import pickle
import threading
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

from amorsize.pools import environment, shared
from amorsize.pools.shared import Segment, SegmentRef

_FUNC_CACHE: OrderedDict[bytes, Any] = OrderedDict()
_FUNC_CACHE_SIZE = 16
# the cached functions whose buffers are in shared memory: digest -> their segment's token
_SHARED_BY: dict[bytes, str] = {}
_LIVE_SEEN = -1
_INITIALIZED: set[str] = set()
_MAIN_GLOBALS: dict | None = None
# the mark ``worker.failed_at`` sets on an exception: which item raised it, and where
FAILED_AT = "_amorsize_failed_at"


class OutOfBand:
    """An object on its way to process workers as cloudpickle bytes, but for its buffers of
    ``shared.SHARED_MIN_BYTES`` or more (numpy arrays, big ``bytes`` and ``bytearray``, anything
    pickled as a ``PickleBuffer``), which wait in shared-memory segments (``shared``): what
    crosses is the small rest of the pickle and the segments' addresses. A worker maps each
    segment once and unpickles with read-only views into it (a numpy array without a copy).

    ``place`` puts the big buffers in segments: all in one by default (a function's), one
    each with ``Placed`` (a call's arguments, met again batch after batch). It holds its
    segments while it lives (the chunk carrying it holds it until done); ``live`` names the
    segments the caller still holds, so a worker lets go of the others. Elsewhere than Linux
    everything is in the bytes; ``by_value`` is the same object with its big buffers carried
    along (``inline``), for a worker that cannot open the segments."""

    __slots__ = ("inline", "live", "payload", "plain", "refs", "segments")

    def __init__(self, obj: Any, place: Callable[[list[pickle.PickleBuffer]],
                                                 list[Segment]] | None = None) -> None:
        self.payload, big = pickled_apart(obj)
        self.segments = (place or _one_segment)(big) if big else []
        self.refs = tuple(cast(SegmentRef, s.ref) for s in self.segments)
        self.live = shared.live_tokens()
        self.inline: list[bytes] | None = None
        self.plain: OutOfBand | None = None

    def __getstate__(self) -> tuple:
        if self.inline is not None:
            return self.payload, (), None, self.inline
        return self.payload, self.refs, self.live

    def __setstate__(self, state: tuple) -> None:
        self.payload, self.refs, self.live = state[:3]
        self.inline = state[3] if len(state) == 4 else None
        self.segments, self.plain = [], None

    @property
    def segment(self) -> Segment | None:
        """The first segment holding its big buffers, if any (a function's only one)."""
        return self.segments[0] if self.segments else None

    def by_value(self) -> OutOfBand:
        """This object with its big buffers in what crosses, copied from its segments: what is
        sent again when a worker cannot open them (``amorsize.pools.processes``); made once."""
        if not self.segments:
            return self
        if self.plain is None:
            plain = copy.copy(self)
            plain.refs, plain.segments, plain.live, plain.plain = (), [], None, None
            plain.inline = [bytes(memoryview(segment.map)[at:at + size])
                            for segment in self.segments
                            for at, size in cast(SegmentRef, segment.ref).layout]
            self.plain = plain
        return self.plain

    def load(self) -> Any:
        """In a worker: the object, its big buffers read-only views into the segments."""
        if self.live is not None:
            _forget_released(self.live)
        return _unpickled(self.payload, self.refs, self.inline)


def pickled_apart(obj: Any) -> tuple[bytes, list[pickle.PickleBuffer]]:
    """``obj`` as cloudpickle bytes (protocol 5), and apart the buffers of
    ``shared.SHARED_MIN_BYTES`` or more left out of them: none elsewhere than Linux, where
    everything is in the bytes."""
    from amorsize.pools import shipping

    if not shared.available():
        return shipping.dumps(obj), []
    big: list[pickle.PickleBuffer] = []

    def in_band(buffer: pickle.PickleBuffer) -> bool:
        if shared.in_band(buffer):
            return True
        big.append(buffer)
        return False

    payload = shipping.dumps(obj, protocol=5, buffer_callback=in_band, big_bytes=False)
    if len(payload) >= shared.SHARED_MIN_BYTES:
        # big ``bytes`` or ``bytearray`` may be in it: pickled again, handing them out too
        # (each object pickled then costs a call: only when the pickle is big anyway)
        big.clear()
        payload = shipping.dumps(obj, protocol=5, buffer_callback=in_band)
    return payload, big


def _one_segment(buffers: list[pickle.PickleBuffer]) -> list[Segment]:
    return [shared.place(buffers)]


def _unpickled(payload: bytes, refs: tuple[SegmentRef, ...], inline: list[bytes] | None) -> Any:
    if not refs and inline is None:
        return pickle.loads(payload)  # what ``cloudpickle.loads`` is
    from amorsize.pools import shipping

    # big ``bytes`` placed out of band need shipping's persistent ids read back
    buffers = inline if inline is not None else [view for ref in refs for view in shared.views(ref)]
    return shipping.loads(payload, buffers=buffers)


class Placed:
    """Where one call's arguments put their big buffers: a segment each, so a buffer every task
    carries (the ``X`` of every ``delayed(fit)(X, y, ...)``) is placed once, and found again
    by later calls (``shared.place`` keeps segments by content), while one that differs from
    task to task does not make the others cross again.

    Within the call, a buffer met again (the same object, or a view of the same memory, still
    alive) takes its segment without a checksum: a call sees its arrays as they were when it
    first sent them. A later call compares a numpy array it finds placed before, still kept,
    with its segment (``memcmp``, cheaper than a checksum), so it sees an array
    changed in place in between; other buffers are checksummed again (``shared.place``)."""

    def __init__(self) -> None:
        # held while placing, so two chunks sent at once place an array once
        self._lock = threading.Lock()
        # (id of the object owning the memory, address, size) -> (a weak reference to the
        # object, one to its segment: held by the chunks in flight and among the last kept,
        # not here, so arrays that differ from task to task are not all held to the end)
        self._met: dict[tuple[int, int, int], tuple[weakref.ref, weakref.ref[Segment]]] = {}

    def __call__(self, buffers: list[pickle.PickleBuffer]) -> list[Segment]:
        placed = []
        with self._lock:
            for buffer in buffers:
                owner, key = memory_of(buffer.raw())
                met = self._met.get(key)
                if met is not None and met[0]() is owner:
                    known = met[1]()
                    if known is not None:
                        shared.keep(known)
                        placed.append(known)
                        continue
                segment = _placed_before(owner, key, buffer.raw())
                if segment is None:
                    segment = shared.place([buffer])
                placed.append(segment)
                try:
                    # the callback holds this object weakly: no cycle keeps its segments
                    ref = weakref.ref(owner, functools.partial(_forget, weakref.ref(self), key))
                except TypeError:  # bytes and the like: checksummed each time
                    continue
                self._met[key] = (ref, weakref.ref(segment))
                if key[1]:
                    _remember_placed(owner, key, segment)
        return placed


# the numpy arrays earlier calls placed, by ``memory_of``'s key: (a weak reference to the
# object owning the memory, one to its segment)
_before_lock = threading.RLock()
_before: dict[tuple[int, int, int], tuple[weakref.ref, weakref.ref[Segment]]] = {}
_memcmp: Any = None


def _remember_placed(owner: object, key: tuple[int, int, int], segment: Segment) -> None:
    with _before_lock:
        if key not in _before:
            _before[key] = (weakref.ref(owner, functools.partial(_forget_before, key)),
                            weakref.ref(segment))


def _forget_before(key: tuple[int, int, int], _: object) -> None:
    # No lock: a collection can run this on a thread holding ``shared``'s lock while another
    # thread, holding this module's, waits for that one. ``dict.pop`` is atomic on its own.
    _before.pop(key, None)


def _placed_before(owner: object, key: tuple[int, int, int], view: memoryview) -> Segment | None:
    """The segment an earlier call placed this memory in, if the caller still keeps it and it
    holds the same bytes now; None otherwise."""
    with _before_lock:
        before = _before.get(key)
    if before is None or before[0]() is not owner:
        return None
    segment = before[1]()
    if segment is None or not shared.keep(segment) or not _same_bytes(segment, key[1], view.nbytes):
        return None
    return segment


def _same_bytes(segment: Segment, address: int, nbytes: int) -> bool:
    """Whether the ``nbytes`` at ``address`` are those of ``segment``'s (only) buffer."""
    global _memcmp
    import ctypes

    layout = cast(SegmentRef, segment.ref).layout
    if len(layout) != 1 or layout[0][1] != nbytes:
        return False
    if _memcmp is None:
        memcmp = ctypes.CDLL(None).memcmp
        memcmp.restype = ctypes.c_int
        memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        _memcmp = memcmp
    start = ctypes.c_char.from_buffer(segment.map, layout[0][0])
    try:
        return bool(_memcmp(ctypes.addressof(start), address, nbytes) == 0)
    finally:
        del start  # lets go of the map, which must be closable


def _forget(placed: weakref.ref[Placed], key: tuple[int, int, int], _: object) -> None:
    """An object whose buffer a call placed was collected: its segment is no longer met."""
    alive = placed()
    if alive is not None:
        alive._met.pop(key, None)  # no lock, as in ``_forget_before``


def memory_of(view: memoryview) -> tuple[object, tuple[int, int, int]]:
    """The object owning a buffer's memory and what tells that memory apart while it lives:
    a numpy view made for pickling (``a.T`` of a Fortran-ordered ``a``) is a new object each
    time, its base the same."""
    owner: Any = view.obj
    interface = getattr(owner, "__array_interface__", None)
    if not isinstance(interface, dict):
        return owner, (id(owner), 0, view.nbytes)
    while getattr(owner, "base", None) is not None:
        owner = owner.base
    return owner, (id(owner), interface["data"][0], view.nbytes)


class PickledFunction(OutOfBand):
    """A function shipped as cloudpickle bytes, with a digest so workers can cache it.

    Its buffers of ``shared.SHARED_MIN_BYTES`` or more (a partial or closure over a big array
    or ``bytes``) are not in the bytes: they wait in one shared-memory segment (``OutOfBand``)
    that each worker maps once, and each worker keeps the function until the segment is
    released."""

    __slots__ = ("digest",)

    def __init__(self, func: Any) -> None:
        import hashlib

        super().__init__(func)
        digest = hashlib.blake2b(self.payload, digest_size=16)
        for ref in self.refs:
            digest.update(ref.token.encode())
        self.digest = digest.digest()

    @property
    def shared(self) -> SegmentRef | None:
        """The segment of the function's big buffers, if it has any."""
        return self.refs[0] if self.refs else None

    def __getstate__(self) -> tuple:
        if self.inline is not None:
            return self.digest, self.payload, None, None, self.inline
        if self.live is None:
            return self.digest, self.payload
        return self.digest, self.payload, self.shared, self.live

    def __setstate__(self, state: tuple) -> None:
        self.segments, self.plain = [], None
        self.inline = state[4] if len(state) == 5 else None
        if len(state) == 2:
            (self.digest, self.payload), self.refs, self.live = state, (), None
        else:
            self.digest, self.payload, ref, self.live = state[:4]
            self.refs = () if ref is None else (ref,)

    def load(self) -> Any:
        if self.live is not None:
            _forget_released(self.live)
        func = _FUNC_CACHE.get(self.digest)
        if func is None:
            func = _FUNC_CACHE[self.digest] = _into_main(
                _unpickled(self.payload, self.refs, self.inline))
            if self.refs:
                _SHARED_BY[self.digest] = self.refs[0].token
            if len(_FUNC_CACHE) > _FUNC_CACHE_SIZE:
                _SHARED_BY.pop(_FUNC_CACHE.popitem(last=False)[0], None)
        return func


def forget_released() -> None:
    """In a process worker, every half second (``orphans``): drop the functions, and the
    mappings, of the segments whose maker let go of them, so their memory goes though no
    function comes to name the live ones (``_forget_released``)."""
    gone = shared.released()
    for token in gone:
        for digest, owner in list(_SHARED_BY.items()):
            if owner == token:
                _FUNC_CACHE.pop(digest, None)
                _SHARED_BY.pop(digest, None)
        shared.unmap(token)
    if gone:
        import gc

        gc.collect()  # a function that came by value may sit in a reference cycle


def _forget_released(live: tuple[int, tuple[str, ...]]) -> None:
    """Drop the functions, and the mappings, of the segments the caller released (named by
    the newest list of live segments seen: an older list may arrive later, with a chunk of a
    function prepared before)."""
    global _LIVE_SEEN
    generation, tokens = live
    if generation <= _LIVE_SEEN:
        return
    _LIVE_SEEN = generation
    for digest, token in list(_SHARED_BY.items()):
        if token not in tokens:
            _FUNC_CACHE.pop(digest, None)
            _SHARED_BY.pop(digest, None)
    for token in shared.mapped_tokens().difference(tokens):
        shared.unmap(token)


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
        # ``cloudpickle.loads`` is ``pickle.loads``: cloudpickle is imported only by the data
        # that needs it (something sent by value), not by a worker loading plain data
        return pickle.loads(self.data)

    @classmethod
    def returned(cls, obj: Any) -> ByValue:
        """``obj`` on its way back from a sub-interpreter: pickled by reference where pickle
        can (the caller has every module the interpreter has), so an interpreter whose calls
        brought nothing by value never imports cloudpickle (a large part of its start-up); by
        value, as ``ByValue(obj)``, what pickle cannot send (what came by value, a lambda)."""
        try:
            data = pickle.dumps(obj, protocol=5)
        except Exception:  # noqa: BLE001 - whatever pickle refuses goes by value
            return cls(obj)
        packed = cls.__new__(cls)
        packed.data = data
        return packed


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
    if not (environment.in_process_worker() and isinstance(obj, types.FunctionType)
            and obj.__module__ == "__main__"):
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


def run_by_value(call: ByValue) -> ByValue:
    """What a sub-interpreter worker runs (``interpreters``): ``call_by_value``, except that
    failing to unpack ``(fn, args)`` is the call's exception too -- a module that cannot load in
    a sub-interpreter fails it with ``ImportError``, returned like any other."""
    try:
        fn, args = call.load()
        return ByValue.returned((True, fn(*args)))
    except Exception as exc:
        return pack_error(exc)


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
    if FAILED_AT in vars(exc):  # the failing item is still named
        vars(stand_in)[FAILED_AT] = vars(exc)[FAILED_AT]
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


