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

import pickle
import types
from collections import OrderedDict
from typing import Any, cast

from amorsize.pools import environment, shared

_FUNC_CACHE: OrderedDict[bytes, Any] = OrderedDict()
_FUNC_CACHE_SIZE = 16
# the cached functions whose buffers are in shared memory: digest -> their segment's token
_SHARED_BY: dict[bytes, str] = {}
_LIVE_SEEN = -1
_INITIALIZED: set[str] = set()
_MAIN_GLOBALS: dict | None = None
# the mark ``worker.failed_at`` sets on an exception: which item raised it, and where
FAILED_AT = "_amorsize_failed_at"


class PickledFunction:
    """A function shipped as cloudpickle bytes, with a digest so workers can cache it.

    Its buffers of ``shared.SHARED_MIN_BYTES`` or more (a partial or closure over a big array
    or ``bytes``) are not in the bytes: they wait in a shared-memory segment (``shared``) that
    each worker maps once, and the function keeps its segment held while it lives. ``live``
    names the segments the caller still holds: a worker forgets the functions of the others.
    ``by_value`` is the same function with those buffers carried along instead."""

    __slots__ = ("digest", "inline", "live", "payload", "plain", "segment", "shared")

    def __init__(self, func: Any) -> None:
        import hashlib

        from amorsize.pools import shipping

        big: list[pickle.PickleBuffer] = []
        if shared.available():
            def in_band(buffer: pickle.PickleBuffer) -> bool:
                if shared.in_band(buffer):
                    return True
                big.append(buffer)
                return False

            self.payload = shipping.dumps(func, protocol=5, buffer_callback=in_band)
        else:
            self.payload = shipping.dumps(func)
        self.segment = shared.place(big) if big else None
        self.shared = None if self.segment is None else self.segment.ref
        self.inline: list[bytes] | None = None
        self.plain: PickledFunction | None = None
        self.live = shared.live_tokens()
        digest = hashlib.blake2b(self.payload, digest_size=16)
        if self.shared is not None:
            digest.update(self.shared.token.encode())
        self.digest = digest.digest()

    def by_value(self) -> PickledFunction:
        """This function with its large buffers in what crosses, not in shared memory: what is
        sent again when a worker cannot open the segment (``shared.SharedMemoryUnreachable``)."""
        if self.segment is None or self.shared is None:
            return self
        if self.plain is None:
            plain = PickledFunction.__new__(PickledFunction)
            plain.digest, plain.payload, plain.live = self.digest, self.payload, None
            plain.segment = plain.shared = plain.plain = None
            whole = memoryview(self.segment.map)
            plain.inline = [bytes(whole[at:at + size]) for at, size in self.shared.layout]
            self.plain = plain
        return self.plain

    def __getstate__(self) -> tuple:
        if self.inline is not None:
            return self.digest, self.payload, None, None, self.inline
        if self.live is None:
            return self.digest, self.payload
        return self.digest, self.payload, self.shared, self.live

    def __setstate__(self, state: tuple) -> None:
        self.segment = self.plain = None
        self.inline = state[4] if len(state) == 5 else None
        if len(state) == 2:
            (self.digest, self.payload), self.shared, self.live = state, None, None
        else:
            self.digest, self.payload, self.shared, self.live = state[:4]

    def load(self) -> Any:
        if self.live is not None:
            _forget_released(self.live)
        func = _FUNC_CACHE.get(self.digest)
        if func is None:
            ref = self.shared
            if ref is None and self.inline is None:
                func = _into_main(pickle.loads(self.payload))  # what ``cloudpickle.loads`` is
            else:  # bytes placed out of band need shipping's persistent ids read back
                from amorsize.pools import shipping

                buffers = self.inline if ref is None else shared.views(ref)
                func = _into_main(shipping.loads(self.payload, buffers=buffers))
            _FUNC_CACHE[self.digest] = func
            if ref is not None:
                _SHARED_BY[self.digest] = ref.token
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


