"""The board: one row of numbers per worker of a pool, where workers say what they run.

A process pool's board is shared memory (``multiprocessing.Array``), a thread pool's a list.
Each worker holds a slot of ``SLOT`` numbers: TOKEN, ITEM, STARTED -- the item running for a
watched chunk and when it started (time limits read them: ``running_items``); OWNER -- the pid
of the process worker holding the slot (0: free); GROWN -- the MB a process worker's memory grew
past its pool's limit (0: not past it). A worker replacing a retired one takes its free slot.

Imported by every process worker: kept light.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

SLOT = 5
TOKEN, ITEM, STARTED, OWNER, GROWN = range(SLOT)
_CLAIM_WAIT_SECONDS = 2.0
_thread = threading.local()  # a pool thread's slot
_process_slot: tuple[Any, int] | None = None  # this process worker's slot


def slot() -> tuple[Any, int] | None:
    """This worker's place on its pool's board: (board, offset), or None outside a pool."""
    return getattr(_thread, "slot", None) or _process_slot


def thread_slot() -> tuple[Any, int] | None:
    """The calling pool thread's slot, or None off a pool thread."""
    return getattr(_thread, "slot", None)


def process_slot() -> tuple[Any, int] | None:
    """This process worker's slot, or None (not a process worker, or it got none)."""
    return _process_slot


def mark(place: tuple[Any, int], token: float, k: int) -> None:
    """Write that item ``k`` of the chunk with ``token`` starts now (``token`` 0: none runs);
    the token goes last, so a reader never pairs it with the previous item's start."""
    board, at = place
    board[at + TOKEN] = 0.0
    board[at + ITEM] = k
    board[at + STARTED] = time.monotonic()
    board[at + TOKEN] = token


def bind_thread_slot(board: Any, index: int) -> None:
    """Give the calling pool thread its slot on the board."""
    _thread.slot = (board, SLOT * index)


def bind_process_slot(board: Any, index: int) -> None:
    """Give this worker -- a sub-interpreter, which has one thread of work and a module state
    of its own -- slot ``index`` of the board."""
    global _process_slot
    _process_slot = (board, SLOT * index)


def claim_process_slot(board: Any, claimed: Any) -> None:
    """Make the first slot whose owner is none or gone this process worker's: a worker replacing
    a retired one (``max_tasks_per_child``) reuses its slot. ``claimed`` counts the claims (its
    lock makes them one at a time). The retired worker may still be exiting: wait for it a
    little; past that the worker runs without a slot, and no time limit sees its items."""
    global _process_slot
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
                    _process_slot = (board, at)
                    return
        if time.monotonic() > deadline:
            with claimed.get_lock():
                claimed.value += 1
            return
        time.sleep(0.005)


def owners(board: Any) -> list[int]:
    """The pids holding a slot of a process pool's board."""
    return [int(pid) for pid in board[OWNER::SLOT] if pid]


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie counts as ended)."""
    from amorsize.pools import orphans

    return not orphans.running(pid)
