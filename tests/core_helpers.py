"""Module-level functions for core tests, importable by process-pool workers."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


def square(x: int) -> int:
    return x * x


def burn(x: int, loops: int = 20_000) -> int:
    acc = x
    for i in range(loops):
        acc = (acc * 31 + i) % 1_000_003
    return acc


def nap(x: int, seconds: float = 0.003) -> int:
    time.sleep(seconds)
    return x


def pid_of(_: object) -> int:
    return os.getpid()


def fail_on_seven(x: int) -> int:
    if x == 7:
        raise KeyError(f"bad item {x}")
    return x


class MarkOnce:
    """Creates one file per item; a second call on the same item raises FileExistsError."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __call__(self, x: int) -> int:
        (self.directory / str(x)).open("x").close()
        return x * 2


def die_in_worker(x: int) -> int:
    """Kills the worker process running it on item 5 (never the test process itself)."""
    if x == 5 and os.environ.get("AMORSIZE_IN_WORKER"):
        os._exit(1)
    return x


class Recorder:
    """Returns its argument and records every call (thread-safe), to count calls per item."""

    def __init__(self) -> None:
        self.calls: list = []
        self._lock = threading.Lock()

    def __call__(self, x: object) -> object:
        with self._lock:
            self.calls.append(x)
        return x


class TwoPartError(Exception):
    """An exception whose __init__ takes other arguments than its args: pickling alone loses it."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code


def fail_two_part_on_seven(x: int) -> int:
    if x == 7:
        raise TwoPartError(7, "seven")
    return x


def nested_map(x: int) -> list:
    import amorsize

    return amorsize.map(square, list(range(x, x + 20)))
