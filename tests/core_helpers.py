"""Module-level functions for core tests, importable by process-pool workers."""

from __future__ import annotations

import os
import sys
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


class FakeClock:
    """The clocks the probe and the workers read, moved only by the calls under test.

    Each thread keeps its own wall and CPU time (a new clock starts every thread at 0, as two
    runs started together would be): a call that ``wait``s moves its thread's wall time and
    counts a block; one that ``compute``s moves its wall and CPU time, and on a thread other
    than the clock's maker its wall time moves ``sharing`` times as far (the threads of a pair
    taking turns on the GIL). Measured figures are then exact however busy the machine is.
    """

    def __init__(self, sharing: int = 2) -> None:
        self.sharing = sharing
        self._maker = threading.current_thread()
        self._local = threading.local()

    def perf_counter(self) -> float:
        return getattr(self._local, "wall", 0.0)

    def thread_time(self) -> float:
        return getattr(self._local, "cpu", 0.0)

    process_time = thread_time

    def waits(self) -> int:
        return getattr(self._local, "blocked", 0)

    def wait(self, x: int, seconds: float = 0.003) -> int:
        self._local.wall = self.perf_counter() + seconds
        self._local.blocked = self.waits() + 1
        return x

    def compute(self, x: int, seconds: float = 0.003) -> int:
        shared = 1 if threading.current_thread() is self._maker else self.sharing
        self._local.wall = self.perf_counter() + seconds * shared
        self._local.cpu = self.thread_time() + seconds
        return x

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)   # sleep, monotonic, ...: the real ones

    def install(self, monkeypatch) -> FakeClock:
        """Make this the clock of the probe and of the workers in this process."""
        from amorsize.optimizer import probe
        from amorsize.pools import worker

        monkeypatch.setattr(probe, "time", self)
        monkeypatch.setattr(worker, "time", self)
        monkeypatch.setattr(worker, "waits", self.waits)
        monkeypatch.setattr(sys.modules[__name__], "_installed", self)
        return self


_installed: FakeClock | None = None


def waits_on_the_fake_clock(x: int, seconds: float = 0.003) -> int:
    """``FakeClock.wait`` on the installed clock, as a module-level (picklable) function."""
    assert _installed is not None, "install a FakeClock first"
    return _installed.wait(x, seconds)


def computes_on_the_fake_clock(x: int, seconds: float = 0.003) -> int:
    """``FakeClock.compute`` on the installed clock, as a module-level (picklable) function."""
    assert _installed is not None, "install a FakeClock first"
    return _installed.compute(x, seconds)
