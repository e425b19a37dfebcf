"""Sub-interpreters (Python 3.14+): pure-Python CPU work in parallel inside this process.

Each worker is a thread of this process that owns an interpreter of its own
(``concurrent.interpreters``, what ``concurrent.futures.InterpreterPoolExecutor`` runs on), with
its own GIL and its own modules: Python code computes in parallel, as on processes, with no
process to start and no ``__main__`` to import. Nothing is shared but memory views: the call,
its arguments, its result and its exception cross by value (cloudpickle, ``payloads``) as they do
to a process worker, and every module the function needs is imported again in each
interpreter (of amorsize, only the few light modules a worker runs: ``_BOOTSTRAP``). Extension
modules that do not declare support for sub-interpreters (numpy, psutil and most C extensions
so far) refuse to load there with an ``ImportError``: the optimizer tries a
measured item in an interpreter before it plans on them, and leaves them out, with the reason,
when it fails.

The workers are daemon threads (``threads.DaemonThreadExecutor``), each holding a slot on the
pool's board, a memory view every interpreter writes its items' starts to, so time limits see
each item. An interpreter cannot be killed or interrupted: a cancelled or timed-out run drops
its queued chunks and abandons a running one, which finishes in the background (as a thread's
would) and never holds up the interpreter's exit; the pool is replaced.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from amorsize.pools import board as boards
from amorsize.pools import environment, shipping, worker
from amorsize.pools.payloads import ByValue, run_by_value, unpack_outcome
from amorsize.pools.threads import DaemonThreadExecutor
from amorsize.pools.worker_pool import WorkerPool

_here = threading.local()  # the interpreter of the pool thread running
_IDLE_CLOSE_SECONDS = 1.0  # how long a shutdown that does not wait waits for idle workers


class InterpreterPool(WorkerPool):
    """Sub-interpreters: parallel pure-Python work in one process, everything crossing by value."""

    executor_type = "interpreter"

    def __init__(
        self, n_jobs: int, initializer: Callable | None = None, initargs: tuple = ()
    ) -> None:
        super().__init__(n_jobs)
        start = time.perf_counter()
        # shared with every interpreter as it is (a memory view is never copied between them)
        self.board = memoryview(bytearray(8 * worker.SLOT * n_jobs)).cast("d")
        self._executor = _InterpreterExecutor(n_jobs, self.board, initializer, initargs)
        self.startup_seconds = time.perf_counter() - start

    @property
    def broken(self) -> bool:
        return self._terminated or self._executor.broken is not None

    def prepare(self, func: Callable) -> Any:
        return func if isinstance(func, worker.PickledFunction) else worker.PickledFunction(func)

    def _submit(self, fn: Callable, *args: Any) -> Future:
        return self._executor.submit(self._executor.run, fn, args)

    def shutdown(self, wait: bool = True, force: bool = False) -> None:
        """``force`` drops queued calls and waits only briefly; a running call cannot be
        stopped: it ends in the background, and its interpreter is closed after it. The idle
        interpreters are closed before this returns, however it was called: one left open
        when this process exits makes its exit hang or crash."""
        self.closed = True
        if os.getpid() != self._pid:  # a forked child's copy: its threads and interpreters are not here
            return
        self._executor.shutdown(wait=wait and not force, cancel_futures=force)
        self._executor.join(None if wait and not force else _IDLE_CLOSE_SECONDS)


class _InterpreterExecutor(DaemonThreadExecutor):
    """Daemon threads, each entering an interpreter of its own for every call it runs."""

    def __init__(self, n_jobs: int, board: Any, initializer: Callable | None,
                 initargs: tuple) -> None:
        self._busy: set[int] = set()  # the threads running a call (``threading.get_ident``)
        super().__init__(n_jobs, board, _start_interpreter, (board, initializer, initargs))

    def run(self, fn: Callable, args: tuple) -> Any:
        """On a pool thread: ``fn(*args)`` in its interpreter, the thread counted busy meanwhile."""
        me = threading.get_ident()
        self._busy.add(me)
        try:
            return _call_inside(fn, args)
        finally:
            self._busy.discard(me)

    def join(self, timeout: float | None) -> None:
        """Wait for the workers to end (each closes its interpreter), at most ``timeout``
        seconds in all (None: no limit); with a limit, not for those running a call."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            if t is not threading.current_thread() and (deadline is None
                                                        or t.ident not in self._busy):
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _work(self, index: int, board: Any, initializer: Callable | None,
              initargs: tuple) -> None:
        try:
            super()._work(index, board, initializer, initargs)
        finally:
            interp = getattr(_here, "interp", None)
            _here.interp = None
            if interp is not None:
                with contextlib.suppress(Exception):  # already closed at exit
                    interp.close()


def _start_interpreter(board: Any, initializer: Callable | None, initargs: tuple) -> None:
    """On a pool thread: make its interpreter, set it up as a worker with the thread's slot on
    the board, and run the user's initializer there (its exception is raised here, as it was
    raised there, and the pool does not start)."""
    interpreters: Any = importlib.import_module("concurrent.interpreters")  # Python 3.14+
    place = boards.thread_slot()
    index = 0 if place is None else place[1] // worker.SLOT
    _here.interp = interp = interpreters.create()
    bootstrap(interp)
    shipping.workers_start_with(sys.path)
    interp.call(environment.initialize_interpreter, board, index)
    if initializer is not None:
        _call_inside(initializer, initargs)


def bootstrap(interp: Any) -> None:
    """Set up a new interpreter to run amorsize's worker modules: this process's module path,
    as process workers get it (a new interpreter's own lacks what was added at run time, the
    script's folder, a test runner's), and ``amorsize`` standing unrun (``_BOOTSTRAP``)."""
    interp.prepare_main(path=tuple(sys.path), package=_PACKAGE_DIR,
                        init=os.path.join(_PACKAGE_DIR, "__init__.py"))
    interp.exec(_BOOTSTRAP)


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(boards.__file__)))
# Run first in each new interpreter. Importing any module of amorsize runs the package's
# ``__init__`` first, which imports all of amorsize (the optimizer, the pools, pluggy): most of
# an interpreter's start-up, for the few light modules a worker runs (``worker``, ``payloads``,
# ``environment``, ``board``). So ``amorsize`` stands there as the package not yet run, whose
# submodules import alone; the first other name asked of it (``amorsize.map`` in a nested
# call) runs its ``__init__`` then, into the same module.
_BOOTSTRAP = """
import _thread, sys, importlib.util
sys.path[:] = path
def _stand_in():
    spec = importlib.util.spec_from_file_location("amorsize", init,
                                                  submodule_search_locations=[package])
    amorsize = importlib.util.module_from_spec(spec)
    lock, running = _thread.RLock(), []
    def __getattr__(name):
        with lock:  # another thread asking meanwhile waits for the whole package
            if running:  # asked by the __init__ running: not there yet
                raise AttributeError(name)
            if "__getattr__" in vars(amorsize):
                running.append(name)
                try:
                    spec.loader.exec_module(amorsize)
                finally:
                    running.clear()
                    vars(amorsize).pop("__getattr__", None)
        return getattr(amorsize, name)
    amorsize.__getattr__ = __getattr__
    sys.modules["amorsize"] = amorsize
_stand_in()
del _stand_in, path, package, init, _thread, sys, importlib
"""


def _call_inside(fn: Callable, args: tuple) -> Any:
    """On a pool thread: ``fn(*args)`` in the thread's interpreter, its outcome unpacked."""
    return unpack_outcome(_here.interp.call(run_by_value, ByValue((fn, args))))


def refusal(exc: BaseException) -> str | None:
    """Why a function cannot run in a sub-interpreter, if ``exc`` (raised by trying it there)
    says it: a module that refuses to load in one. None for any other error."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ImportError):
            text = str(seen).strip()
            for line in text.splitlines():
                if "subinterpreter" in line or "sub-interpreter" in line:
                    return f"{type(seen).__name__}: {line.strip()}"
            name = getattr(seen, "name", None)
            first = text.splitlines()[0] if text else ""
            return f"{type(seen).__name__}{f' ({name})' if name else ''}: {first}".strip()
        seen = seen.__cause__ or seen.__context__
    return None
