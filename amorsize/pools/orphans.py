"""Process workers and the fork server exit on their own when the user's process dies, whatever
killed it (SIGKILL, SIGTERM, a crash).

Left alone they live on, as the standard library's and loky's do: a worker waits forever on its
task queue, and the fork server exits on end-of-file of its "alive" pipe, whose write end every
worker it forked holds too. So:

- a worker watches the user's process from a daemon thread, every ``INTERVAL`` seconds, and
  leaves with ``os._exit``. On Linux a parent-death signal (SIGKILL) also ends it at once when
  its direct parent dies: the fork server, which dies with the user's process (and whose death
  breaks the pool anyway), or the user's process itself for spawn and fork workers of a pool made
  on the main thread -- the signal comes when the *thread* that forked ends, not the process;
- the fork server gets no thread, since it must stay single-threaded to fork safely: a SIGALRM
  handler exits it once its parent is gone, raised by the parent-death signal on Linux (checked,
  as a thread of the user's process may have ended instead) and by an interval timer elsewhere.
  The user's process names itself in ``FORKSERVER_PARENT_ENV``; the server preloads
  ``amorsize.pools.fork_server``, which arms the handler at import.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable

FORKSERVER_PARENT_ENV = "AMORSIZE_FORKSERVER_PARENT"
INTERVAL = 0.5
_PR_SET_PDEATHSIG = 1
_server: tuple[int, int] | None = None  # (the fork server's pid, its parent's) once armed
_watching = False
_checks: list[Callable[[], None]] = []
_WINDOWS = sys.platform == "win32"


def watch_parent(parent: int, forked_on_main_thread: bool) -> None:
    """Make this process worker exit once ``parent``, the user's process, has died.

    ``forked_on_main_thread``: the pool was made (so its workers started) on the parent's main
    thread, which lives as long as the parent; only then may a direct child of the parent take
    the parent-death signal.
    """
    global _watching
    _disarm_server()
    if _watching:
        return
    _watching = True
    ppid = os.getppid()
    direct = ppid == parent
    if sys.platform.startswith("linux"):
        _parent_death_signal(signal.SIGKILL if forked_on_main_thread or not direct else 0)
    started = (_stat(parent) or (None, None))[1]
    ask = not direct or _WINDOWS  # Windows keeps the parent pid of a dead parent

    def orphaned() -> bool:
        return os.getppid() != ppid or (ask and not _alive(parent, started))

    if orphaned():  # died before the signal was set
        os._exit(1)
    threading.Thread(target=_watch, args=(orphaned,), name="amorsize-orphan-watch",
                     daemon=True).start()


def _watch(orphaned: Callable[[], bool]) -> None:
    while not orphaned():
        time.sleep(INTERVAL)
        for check in _checks:
            try:
                check()
            except Exception:  # noqa: BLE001, S112 - the watch must go on whatever a check does
                continue
    os._exit(1)


def check_each_interval(check: Callable[[], None]) -> None:
    """Have the watching thread of this process worker also call ``check`` every ``INTERVAL``
    (``payloads``: let go of shared memory the caller released, though no task comes)."""
    _checks.append(check)


def _alive(pid: int, started: str | None) -> bool:
    """Whether ``pid`` still runs: not gone, not a zombie, and (where /proc tells its start
    time) not a new process that took the same pid."""
    if _WINDOWS:  # where os.kill(pid, 0) would terminate it
        import psutil

        return psutil.pid_exists(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # a process of another user has this pid: /proc tells whether it is ours
    if started is None:
        return True
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X") and stat[1] == started


def running(pid: int) -> bool:
    """Whether process ``pid`` runs: not gone, not a zombie, and not another user's (which
    took the pid of ours)."""
    if _WINDOWS:  # where os.kill(pid, 0) would terminate it
        import psutil

        return psutil.pid_exists(pid)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    stat = _stat(pid)
    return stat is None or stat[0] not in ("Z", "X")


def _stat(pid: int) -> tuple[str, str] | None:
    """A process's state and start time from /proc (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        return fields[0].decode(), fields[19].decode()
    except (OSError, IndexError):
        return None


def _parent_death_signal(signum: int) -> bool:
    """Have the kernel send ``signum`` (0: nothing) to this process when the thread that made it
    ends (Linux ``prctl(PR_SET_PDEATHSIG)``). False where that cannot be done."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signum), ctypes.c_ulong(0),
                          ctypes.c_ulong(0), ctypes.c_ulong(0)) == 0
    except (OSError, AttributeError):
        return False


def arm_server(parent: int) -> None:
    """In the fork server: exit once ``parent`` is gone (see the module's docstring). Called
    by ``amorsize.pools.fork_server``, which only the fork server imports."""
    global _server
    _server = (os.getpid(), parent)
    signal.signal(signal.SIGALRM, _on_alarm)
    if not _parent_death_signal(signal.SIGALRM):
        signal.setitimer(signal.ITIMER_REAL, INTERVAL, INTERVAL)
    if os.getppid() != parent:
        os._exit(1)


def _on_alarm(signum: int, frame: object) -> None:
    if _server is not None and _server[0] == os.getpid() and os.getppid() != _server[1]:
        os._exit(1)


def _disarm_server() -> None:
    """In a worker the fork server forked: drop the server's SIGALRM handler it inherited, so
    the worker's own code gets the default (its timer and death signal are not inherited)."""
    global _server
    if _server is not None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        _server = None
