"""Functions for tests to run on pool workers: importable by name, so spawn and forkserver
workers (which import modules afresh) find them."""

from __future__ import annotations

import os
import time

_marker = None


def square(x: int) -> int:
    return x * x


def worker_pid(_: object = None) -> int:
    return os.getpid()


def sleep_then_return(x: object, seconds: float = 30.0) -> object:
    time.sleep(seconds)
    return x


def mark_started_then_sleep(started: str, x: object, seconds: float) -> object:
    """Create the file ``started`` (the task is running: the caller may go on), then sleep."""
    open(started, "w").close()
    time.sleep(seconds)
    return x


def wait_for_file(path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was not created within {timeout} s")
        time.sleep(0.01)


def exit_abruptly(x: int) -> int:
    """Kill the worker the way a segfault or a C library's exit() would: no exception, no cleanup."""
    if x == 3:
        os._exit(1)
    return x


def fail_with_value_error(x: object) -> None:
    raise ValueError(f"bad item {x!r}")


def set_marker(value: object) -> None:
    """An initializer: leaves a trace that tasks can read."""
    global _marker
    _marker = value


def read_marker(_: object = None) -> object:
    return _marker


def failing_initializer() -> None:
    raise RuntimeError("initializer failed on purpose")


def shared_multiprocessing_pids() -> set[int]:
    """The fork server and resource tracker: singletons of the interpreter that multiprocessing
    starts on first use and shares between every pool, so they are not any manager's children."""
    from multiprocessing import forkserver, resource_tracker

    pids = {
        getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None),
        getattr(getattr(resource_tracker, "_resource_tracker", None), "_pid", None),
    }
    return {pid for pid in pids if pid}


def live_children() -> set[int]:
    """Descendants of this process that are running (zombies and multiprocessing's shared
    helpers left out)."""
    import psutil

    out = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                out.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return out - shared_multiprocessing_pids()


def alive(pids: object) -> set[int]:
    """Which of these pids still run (zombies count as gone)."""
    import psutil

    out = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.add(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def wait_until_gone(pids: object, timeout: float = 10.0) -> set[int]:
    """Poll until none of ``pids`` runs or ``timeout`` passes; return those still running."""
    deadline = time.monotonic() + timeout
    left = alive(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = alive(left)
    return left


class Marker:
    """An initializer argument whose lifetime a test can watch (weakly referenced)."""
