"""Code that runs where Dask tasks run (a pool worker, or the calling thread): timed batches.

Kept free of heavy imports because every process worker imports it. ``dask.local.get_async``
hands the scheduler batches of ``(key, task_info, dumps, loads, get_id, pack_exception)``;
``run_tasks`` executes them with Dask's own ``batch_execute_tasks`` and adds how long they took,
measured inside the worker, so queueing and transfer never count as the tasks' compute time.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from amorsize.pools.payloads import OutOfBand
from amorsize.pools.worker import now, where_running

_state = threading.local()


def run_tasks(sent: list[tuple] | OutOfBand) -> tuple[list, float, float]:
    """Run one batch of Dask tasks; return their results, wall seconds and CPU seconds.

    The clocks are the probe's (``amorsize.pools.worker.now``); their ratio tells waiting work (I/O)
    from computing work. A batch sent to a process worker comes as ``OutOfBand``: its large
    buffers wait in shared memory.
    """
    from dask.local import batch_execute_tasks

    batch: list[tuple] = sent.load() if isinstance(sent, OutOfBand) else sent

    outer = getattr(_state, "active", False)
    _state.active = True
    wall, cpu = now()
    try:
        results = batch_execute_tasks([(key, info, dumps, loads, get_id, _noting(key, pack))
                                       for key, info, dumps, loads, get_id, pack in batch])
    finally:
        _state.active = outer
    wall_end, cpu_end = now()
    return results, wall_end - wall, cpu_end - cpu


def _noting(key: Any, pack: Any) -> Any:
    """Dask's ``pack_exception``, after ``note_task``."""
    def pack_exception(exc: BaseException, dumps: Any) -> Any:
        note_task(exc, key)
        return pack(exc, dumps)

    return pack_exception


def note_task(exc: BaseException, key: Any) -> None:
    """Note on a task's exception which of the graph's tasks raised it (its key) and where it
    ran."""
    if isinstance(exc, Exception):
        exc.add_note(f"dask task {key!r}, run {where_running()}")


def in_task() -> bool:
    """True inside a Dask task run by amorsize: a compute started there runs serially, instead
    of waiting for a pool whose workers are busy running the task that waits."""
    return getattr(_state, "active", False)


def thread_id() -> int | None:
    """Worker id reported to Dask callbacks (``Profiler``) for thread and serial runs."""
    return threading.get_ident()


def process_id() -> int:
    """Worker id reported to Dask callbacks for process runs."""
    return os.getpid()


def run_node(node: Any, data: dict) -> Any:
    """Run one task-spec node on the values of its dependencies: what a Dask task is, as a
    function, for the plan and its plugins to see."""
    return node(data)
