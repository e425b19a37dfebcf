"""How objects are pickled to and from process workers: cloudpickle, with the functions and
classes of modules the workers cannot import sent by value, and code sent by value keeping its
file name.

cloudpickle sends a module's function by reference (module and name) and the worker imports the
module. A worker cannot do that for a module loaded from a file under a name of the caller's
choosing (``importlib.util.spec_from_file_location``), or found on a ``sys.path`` entry added
after the workers started; it would fail with ``ModuleNotFoundError``. Such modules are
registered with ``cloudpickle.register_pickle_by_value`` the first time one of their functions
or classes is pickled, as ``__main__``'s already are.

cloudpickle names code it pickles by value "<dynamic-code>" (its ``_code_reduce``), which a
traceback in a worker then shows instead of the user's file. Here a code object is pickled as
cloudpickle pickles it and renamed on loading (``_named_code``): the unchanged ``_code_reduce``
does the version-specific work, and the name is the code's own, so the payload stays the same
for the same function (workers cache functions by its digest). A source that linecache holds
but no file does (a notebook cell, ``<stdin>``) travels with it.
"""

from __future__ import annotations

import importlib.machinery
import io
import linecache
import pickle
import sys
import threading
import types
from collections.abc import Callable, Iterable
from typing import Any

import cloudpickle

from amorsize.pools import environment, shared

_lock = threading.Lock()
# what every process worker started so far has on its sys.path (None: no worker started yet)
_worker_path: list[str] | None = None
_checked: dict[str, bool] = {}


def workers_start_with(path: list[str]) -> None:
    """Note the ``sys.path`` that process workers being started now are given: a module counts
    as importable by the workers only if it is found on every such path."""
    global _worker_path
    with _lock:
        kept = list(path) if _worker_path is None else [p for p in _worker_path if p in path]
        if kept != _worker_path:
            _worker_path = kept
            _checked.clear()


def dumps(obj: Any, protocol: int | None = None,
          buffer_callback: Callable[[pickle.PickleBuffer], Any] | None = None,
          big_bytes: bool = True) -> bytes:
    """``cloudpickle.dumps``, with code keeping its file name, and modules the workers cannot
    import sent by value. In a process worker (results on their way back) no module is judged:
    the caller has every module its workers have, and the check would cost each result a call.
    ``buffer_callback`` (protocol 5) is pickle's: a buffer it returns false for is left out;
    big ``bytes`` and ``bytearray`` are handed to it too, which pickle does not do (read them
    with ``loads``), unless ``big_bytes`` is false: then each object pickled costs nothing more
    (telling big ``bytes`` apart is a call for every object)."""
    with io.BytesIO() as file:
        kind = _BufferingPickler if buffer_callback is not None and big_bytes else _Pickler
        pickler = kind(file, protocol=protocol, buffer_callback=buffer_callback)
        pickler.judge_modules = not environment.in_process_worker()
        pickler.dump(obj)
        return file.getvalue()


def loads(data: bytes, buffers: Iterable[Any] | None = None) -> Any:
    """What ``dumps`` pickled, its out-of-band ``buffers`` given (``pickle.loads``'s)."""
    with io.BytesIO(data) as file:
        return _Unpickler(file, buffers=buffers).load()



_DYNAMIC_CODE = "<dynamic-code>"


class _Pickler(cloudpickle.Pickler):
    judge_modules = True

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.CodeType and obj.co_filename != _DYNAMIC_CODE:
            renamed = obj.replace(co_filename=_DYNAMIC_CODE)  # pickled by cloudpickle
            return _named_code, (renamed, obj.co_filename, _unfiled_source(obj))
        if self.judge_modules and isinstance(obj, (types.FunctionType, type)):
            _by_value_if_unimportable(getattr(obj, "__module__", None))
        return super().reducer_override(obj)


class _BufferingPickler(_Pickler):
    """Hands big ``bytes`` and ``bytearray`` to ``buffer_callback`` as a ``PickleBuffer``:
    pickle saves them in band without asking ``reducer_override`` (bytes) or the callback, but
    asks ``persistent_id`` first, whose answer it pickles (the buffer, then, in band or out)."""

    def persistent_id(self, obj: Any) -> Any:
        kind = type(obj)
        if kind in _BY_BUFFER and len(obj) >= shared.SHARED_MIN_BYTES:
            return _BY_BUFFER[kind], pickle.PickleBuffer(obj)
        return None


_BY_BUFFER: dict[type, str] = {bytes: "amorsize-bytes", bytearray: "amorsize-bytearray"}
_FROM_BUFFER = {name: kind for kind, name in _BY_BUFFER.items()}


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        kind = _FROM_BUFFER.get(pid[0]) if isinstance(pid, tuple) and len(pid) == 2 else None
        if kind is None:
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        return kind(pid[1])  # a copy: neither can be a view of the shared memory


def _unfiled_source(code: types.CodeType) -> list[str] | None:
    """The lines of ``code``'s source if only linecache has them (no file by that name)."""
    name = code.co_filename
    if not (name.startswith("<") and name.endswith(">")):
        return None
    entry = linecache.cache.get(name)
    return list(entry[2]) if entry is not None and len(entry) == 4 else None


def _named_code(code: types.CodeType, filename: str, lines: list[str] | None) -> types.CodeType:
    """``code`` under its own file name again; its source lines, if they came along, are put
    where tracebacks look for them."""
    if lines is not None:
        linecache.cache[filename] = (sum(map(len, lines)), None, lines, filename)
    return code.replace(co_filename=filename)


def _by_value_if_unimportable(name: object) -> None:
    if not isinstance(name, str) or name == "__main__":
        return
    importable = _checked.get(name)
    if importable is None:
        importable = _checked[name] = _importable(name)
        module = sys.modules.get(name)
        if not importable and isinstance(module, types.ModuleType):
            cloudpickle.register_pickle_by_value(module)


def _importable(name: str) -> bool:
    """Whether a worker importing ``name`` gets the module this process has under that name."""
    top = name.partition(".")[0]
    if top in sys.builtin_module_names or top in sys.stdlib_module_names:
        return True
    module = sys.modules.get(top)
    if module is None:   # a submodule loaded without its package: only by its file
        return name not in sys.modules
    spec = getattr(module, "__spec__", None)
    if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
        return True   # not a plain .py file (built-in, extension, zip, a custom importer's)
    path = sys.path if _worker_path is None else _worker_path
    for finder in sys.meta_path:
        find_spec = getattr(finder, "find_spec", None)
        if find_spec is None:
            continue
        try:
            found = (importlib.machinery.PathFinder.find_spec(top, path)
                     if finder is importlib.machinery.PathFinder else find_spec(top, None))
        except Exception:
            continue
        if found is not None:
            return found.origin == spec.origin
    return False
