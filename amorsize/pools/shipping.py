"""How objects are pickled for process workers: cloudpickle, with the functions and classes of
modules the workers cannot import sent by value.

cloudpickle sends a module's function by reference (module and name) and the worker imports the
module. A worker cannot do that for a module loaded from a file under a name of the caller's
choosing (``importlib.util.spec_from_file_location``), or found on a ``sys.path`` entry added
after the workers started; it would fail with ``ModuleNotFoundError``. Such modules are
registered with ``cloudpickle.register_pickle_by_value`` the first time one of their functions
or classes is pickled, as ``__main__``'s already are.
"""

from __future__ import annotations

import importlib.machinery
import io
import sys
import threading
import types
from typing import Any

import cloudpickle

from amorsize.pools import worker

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


def dumps(obj: Any, protocol: int | None = None) -> bytes:
    """``cloudpickle.dumps``, sending modules the workers cannot import by value. In a process
    worker (results on their way back) plain ``cloudpickle.dumps``: the caller has every module
    its workers have, and the check would cost each result a call."""
    if worker._IN_PROCESS_WORKER:
        return cloudpickle.dumps(obj, protocol=protocol)
    with io.BytesIO() as file:
        _Pickler(file, protocol=protocol).dump(obj)
        return file.getvalue()


_reduce = cloudpickle.Pickler.reducer_override


class _Pickler(cloudpickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (types.FunctionType, type)):
            _by_value_if_unimportable(getattr(obj, "__module__", None))
        return _reduce(self, obj)


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
