"""Plugins and functions for the plugin tests, importable by process-pool workers."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import amorsize


def pid_of(_: object) -> int:
    return os.getpid()


def thread_of(_: object) -> str:
    return threading.current_thread().name


def double(x: int) -> int:
    return 2 * x


def die_in_worker(x: int) -> int:
    """Kills the worker process running it (never the test process, where sampling runs)."""
    if os.environ.get("AMORSIZE_IN_WORKER"):
        os._exit(1)
    return x


def plan_for(workload: amorsize.Workload, executor: str, n_jobs: int, chunksize: int = 4,
             sample: amorsize.Profile | None = None) -> amorsize.Plan:
    """A plan made by hand, as a plugin would make one for a function it did not measure."""
    return amorsize.Plan(executor, n_jobs, chunksize, 1.0, ["forced by a test plugin"],
                         sample or amorsize.Profile(0.0), workload)


class ForcePlan:
    """Decides every plan itself (tryfirst), before amorsize's optimizer."""

    def __init__(self, executor: str, n_jobs: int, chunksize: int = 4) -> None:
        self.executor, self.n_jobs, self.chunksize = executor, n_jobs, chunksize
        self.calls = 0
        self.funcs: list = []

    @amorsize.hookimpl(tryfirst=True)
    def amorsize_make_plan(self, func, sample, workload):
        self.calls += 1
        self.funcs.append(func)
        return plan_for(workload, self.executor, self.n_jobs, self.chunksize, sample)


class Recorder:
    """Observes every pool event and every finished run."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple, dict]] = []
        self.runs: list[tuple[amorsize.Plan, amorsize.RunReport]] = []
        self._lock = threading.Lock()

    @amorsize.hookimpl
    def amorsize_pool_event(self, event, key, stats):
        with self._lock:
            self.events.append((event, key, stats))

    @amorsize.hookimpl
    def amorsize_run_finished(self, plan, report):
        self.runs.append((plan, report))

    def names(self, key_prefix: tuple = ()) -> list[str]:
        return [e for e, key, _ in self.events if key[:len(key_prefix)] == key_prefix]


@contextlib.contextmanager
def registered(plugin: object, name: str | None = None) -> Iterator[object]:
    """``plugin`` registered for the block, and unregistered however it ends (the plugin
    manager is global: a plugin left behind would observe every later test)."""
    amorsize.register_plugin(plugin, name=name)
    try:
        yield plugin
    finally:
        amorsize.unregister_plugin(plugin)


class Measured:
    """Has every front end recall ``profile`` for any function, as if it had just measured it:
    a decision made from it is the cost model's alone, whatever the machine's load."""

    def __init__(self, profile: amorsize.Profile) -> None:
        self.profile = profile

    @amorsize.hookimpl(tryfirst=True)
    def amorsize_recall(self, key):
        from amorsize.optimizer.learned import Learned

        return Learned(self.profile)
