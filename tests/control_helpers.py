"""Functions and a progress recorder for the tests of stopping, limiting and watching a run."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import amorsize

ROOT = Path(__file__).resolve().parents[1]


def sleep_on(x: int, slow: int = 5, seconds: float = 6.0, others: float = 0.02) -> int:
    """Sleeps ``seconds`` on item ``slow``, ``others`` on the rest."""
    time.sleep(seconds if x == slow else others)
    return x


def spin_on(x: int, slow: int = 5, seconds: float = 6.0, others: float = 0.02) -> int:
    """Like ``sleep_on`` but computing, so only killing the worker stops it."""
    end = time.perf_counter() + (seconds if x == slow else others)
    while time.perf_counter() < end:
        pass
    return x


def block_on(x: int, release: threading.Event, slow: int = 5, others: float = 0.02) -> int:
    """Blocks on item ``slow`` until ``release`` is set, sleeps ``others`` on the rest: a test
    that sets ``release`` only at its end passes only if nothing waited for that item."""
    if x == slow:
        release.wait()
    else:
        time.sleep(others)
    return x


def fail_fast_then_sleep(x: int) -> int:
    if x == 0:
        raise ValueError("item 0 fails")
    time.sleep(0.2)
    return x


def exit_in_worker(x: int) -> int:
    """Ends the process that runs it on item 3 -- the caller's own, if it ran there."""
    if x == 3:
        os._exit(17)
    return x


class Counter:
    """Counts calls (thread-safe); each call takes ``seconds``."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, x: int) -> int:
        with self._lock:
            self.calls += 1
        if self.seconds:
            time.sleep(self.seconds)
        return x


class ProgressRecorder:
    """Records every ``amorsize_run_progress`` call."""

    def __init__(self) -> None:
        self.seen: list[amorsize.RunProgress] = []
        self._lock = threading.Lock()

    @amorsize.hookimpl
    def amorsize_run_progress(self, progress):
        with self._lock:
            self.seen.append(progress)

    def states(self) -> list[str]:
        return [p.state for p in self.seen]

    def last(self) -> amorsize.RunProgress:
        return self.seen[-1]


def run_script(body: str, args: list[str] = ()) -> subprocess.Popen:  # type: ignore[assignment]
    """Start ``body`` as a Python script in a new interpreter (stdout and stderr piped)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
           "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(body), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
