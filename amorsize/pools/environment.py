"""A process worker's set-up and its memory: BLAS threads capped, a slot on the board, the
parent watched, and the memory-growth rule that flags a worker for recycling.

Imported by every process worker: kept light.
"""

from __future__ import annotations

import gc
import os
import resource
import sys
from typing import Any

from amorsize.pools import board

_BLAS_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
_in_process_worker = False
_in_interpreter_worker = False
# [limit KB, baseline KB, flagged, tasks started] in a process worker whose pool watches memory
_memory: list | None = None


def in_process_worker() -> bool:
    """True in a process worker of an amorsize pool (once ``initialize`` ran)."""
    return _in_process_worker


def in_interpreter_worker() -> bool:
    """True in a sub-interpreter worker of an amorsize pool (``initialize_interpreter`` ran);
    ``in_process_worker`` is true there too."""
    return _in_interpreter_worker


def initialize(blas_threads: int | None, pool_board: Any = None, claimed: Any = None,
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
    global _in_process_worker, _memory
    _in_process_worker = True
    if pool_board is not None and claimed is not None:
        board.claim_process_slot(pool_board, claimed)
    if memory_limit_mb is not None:
        _memory = [memory_limit_mb * 1024, 0.0, False, 0]
    if parent is not None:
        from amorsize.pools import orphans, payloads

        orphans.check_each_interval(payloads.forget_released)
        orphans.watch_parent(parent, forked_on_main_thread)


def initialize_interpreter(pool_board: Any, index: int) -> None:
    """Sub-interpreter worker set-up (``pools.interpreters``): it counts as a worker, as a
    process worker does (a nested amorsize call there runs serially; ``__main__`` functions
    share one namespace), and holds slot ``index`` of ``pool_board`` for the items it runs.
    Process-wide state -- environment variables, BLAS threads, the parent watch -- is the
    user's process's own, shared with it, and left alone."""
    global _in_process_worker, _in_interpreter_worker
    _in_process_worker = _in_interpreter_worker = True
    board.bind_process_slot(pool_board, index)


def between_tasks() -> None:
    """In a process worker whose pool watches memory: flag this worker on the board once its
    memory grew more than the limit since its first task ended, so imports and caches loaded by
    the first task are not growth (the rule and the 300 MB default are loky's, which replaces
    the one worker; ``concurrent.futures`` can only replace the pool). Checked as a task starts:
    the previous task's results are sent and freed by then, so they are not counted. Costs one
    ``getrusage`` while the peak stays under the limit."""
    memory = _memory
    place = board.process_slot()
    if memory is None or memory[2] or place is None:
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
        pool_board, at = place
        pool_board[at + board.GROWN] = max(grown / 1024, 1e-3)


def _peak_kb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KB elsewhere


def _resident_kb() -> float:
    """This process's resident memory now (KB), but for the pages it shares (shared memory,
    mapped files): a function's large input read through shared memory (``shared``) is not
    this worker's growth. /proc on Linux, psutil elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
        return (int(fields[1]) - int(fields[2])) * (os.sysconf("SC_PAGE_SIZE") / 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return psutil.Process().memory_info().rss / 1024
    except Exception:  # noqa: BLE001 - fall back to the peak, an upper bound
        return _peak_kb()
