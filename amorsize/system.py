"""What this machine offers: usable CPUs, memory, start method, BLAS thread pools."""

from __future__ import annotations

import collections
import functools
import math
import multiprocessing
import os
import statistics
import sys
import threading
import time
from pathlib import Path

from amorsize.errors import check_start_method

START_METHOD_ENV = "AMORSIZE_START_METHOD"


@functools.cache
def usable_cpus() -> int:
    """CPUs this process may really use: affinity mask, then any cgroup CPU quota.

    ``os.cpu_count()`` counts the host's cores, which in a container or under ``taskset`` is
    more than the process gets; over-counting makes every process pool oversubscribed. In a
    sub-interpreter, where psutil refuses to load, the mask is ``os.sched_getaffinity``'s.
    """
    try:
        import psutil
    except ImportError:
        affinity = getattr(os, "sched_getaffinity", None)
        count = (len(affinity(0)) if affinity else 0) or os.cpu_count() or 1
    else:
        try:
            count = len(psutil.Process().cpu_affinity() or []) or (psutil.cpu_count() or 1)
        except (AttributeError, OSError):
            count = psutil.cpu_count() or os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.floor(quota)))
    return max(1, count)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` or v1 CFS quota, or None when unlimited."""
    try:
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


# where Linux tells how many tasks are running or waiting for a CPU right now (4th field: "3/318")
LOADAVG = Path("/proc/loadavg")
# a plan reads the load as the median of the readings of about the last second: a load that
# lasts moves it, a task that only passes through (a daemon waking for a moment) does not
LOAD_WINDOW_SECONDS = 1.0
_readings: collections.deque[tuple[float, int]] = collections.deque(maxlen=15)
_load_lock = threading.Lock()
_clock = time.monotonic  # the readings' clock (a test injects its own)


def runnable_elsewhere() -> float:
    """Tasks besides the caller that want a CPU now, in tasks' worth (0.0: the cores are ours).

    Read from the kernel's count of running and runnable tasks (``/proc/loadavg``), less the
    thread reading it: two ``yes > /dev/null`` beside a call read 2. Each reading is a moment,
    so the answer is the median of this process's readings of the last ``LOAD_WINDOW_SECONDS``
    (``optimize`` reads once before measuring too, so a first plan is not one moment's). 0.0
    where nothing tells (not Linux), and when this process may use fewer CPUs than the machine
    has (an affinity mask, a container's quota): the count is the whole machine's, not about
    this process's cores; the time the measured calls got on the CPU still tells a busy
    machine there (``Profile.cpu_share``)."""
    tasks = _tasks_running()
    if tasks is None:
        return 0.0
    now = _clock()
    with _load_lock:
        _readings.append((now, tasks))
        recent = [count for at, count in _readings if now - at <= LOAD_WINDOW_SECONDS]
    return float(statistics.median(recent))


def runnable_apart(tasks: float) -> float:
    """Of ``tasks`` that want a CPU besides the caller (``runnable_elsewhere``), how many the
    kernel schedules apart from this process, in groups of their own: with Linux's autogroup
    on, those of other sessions (a program started in another terminal, a daemon). More workers
    take a larger part of the cores from tasks of their own group only (``cost_model.pace``).
    0.0 with autogroup off (every task on its own) or nothing to count. Counted from the
    processes running now, at most once per ``LOAD_WINDOW_SECONDS`` (its cost grows with the
    number of processes); a process whose running thread is not its first is taken as apart."""
    if tasks <= 0 or not _autogroup_on():
        return 0.0
    now = _clock()
    with _load_lock:
        counted = _apart["share"] if now - _apart["at"] <= LOAD_WINDOW_SECONDS else None
    if counted is None:
        counted = _share_apart()
        with _load_lock:
            _apart.update(share=counted, at=now)
    return tasks * counted


_apart = {"share": 0.0, "at": -math.inf}


@functools.cache
def _autogroup_on() -> bool:
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        return False


def _share_apart(proc: str = "/proc") -> float:
    """The part of the running processes (but this one) in another session than this one's."""
    session, me = os.getsid(0), os.getpid()
    ours = apart = 0
    for name in os.listdir(proc):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            fd = os.open(f"{proc}/{name}/stat", os.O_RDONLY)
            try:
                stat = os.read(fd, 512)
            finally:
                os.close(fd)
            state, _, _, sid = stat[stat.rindex(b")") + 2:].split(b" ", 4)[:4]
        except (OSError, ValueError):
            continue
        if state == b"R":
            if int(sid) == session:
                ours += 1
            else:
                apart += 1
    return apart / (ours + apart) if ours + apart else 1.0


def _tasks_running() -> int | None:
    """Running and runnable tasks on the machine, less this reading one; None: unknown."""
    if not _load_counts_ours():
        return None
    try:
        return max(0, int(_read_loadavg().split()[3].split(b"/")[0]) - 1)
    except (OSError, ValueError, IndexError):
        return None


def _read_loadavg() -> bytes:
    fd = os.open(LOADAVG, os.O_RDONLY)
    try:
        return os.read(fd, 128)
    finally:
        os.close(fd)


@functools.cache
def _load_counts_ours() -> bool:
    """Whether the machine-wide task count is about this process's cores: it uses them all."""
    return sys.platform.startswith("linux") and usable_cpus() >= (os.cpu_count() or 1)


def _reset_load_lock() -> None:
    """A fork taken while another thread read the load would leave the lock held in the child."""
    global _load_lock
    _load_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_load_lock)


def available_memory() -> int:
    """Bytes of memory available without swapping."""
    import psutil

    return int(psutil.virtual_memory().available)


def gil_enabled() -> bool:
    """False on a free-threaded interpreter (3.13t and later, with the GIL off): there, Python
    code that computes runs in parallel on threads, as it does on processes."""
    check = getattr(sys, "_is_gil_enabled", None)
    return True if check is None else bool(check())


def default_start_method() -> str:
    """The start method for process pools: ``AMORSIZE_START_METHOD`` if set, else forkserver
    where it exists, else spawn.

    Not fork: amorsize keeps threads alive (thread pools, the executors' manager threads), and
    forking a process that has threads can deadlock the child on a lock held at fork time. Python
    3.14 made forkserver the default on Linux for this reason.
    """
    chosen = os.environ.get(START_METHOD_ENV)
    if chosen:
        check_start_method(START_METHOD_ENV, chosen)
        return chosen
    return _platform_start_method()


@functools.cache
def _platform_start_method() -> str:
    """Asked on every call of ``map``: the platform's answer does not change."""
    if "forkserver" in multiprocessing.get_all_start_methods() and sys.platform != "darwin":
        return "forkserver"
    return "spawn"


def blas_pools() -> list[dict]:
    """BLAS/OpenMP thread pools loaded in this process (threadpoolctl), for reports."""
    from threadpoolctl import threadpool_info

    return [
        {k: info.get(k) for k in ("user_api", "internal_api", "num_threads", "version")}
        for info in threadpool_info()
    ]


def describe() -> dict:
    """A summary for ``amorsize info`` and plan reports."""
    import psutil

    return {
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "logical_cpus": psutil.cpu_count() or os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "other_runnable_tasks": runnable_elsewhere(),
        "cgroup_cpu_quota": cgroup_cpu_quota(),
        "available_memory_gb": round(available_memory() / 2**30, 2),
        "start_method": default_start_method(),
    }
