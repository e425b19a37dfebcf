"""Workers and the fork server exit on their own when the user's process is killed (see
``amorsize/orphans.py``): each case runs a real program in a subprocess and kills it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from amorsize.pools import orphans

ROOT = str(Path(__file__).resolve().parents[1])

BUSY_PROGRAM = """
import sys, threading, time
import amorsize

def busy(x):
    print("busy", flush=True)
    time.sleep(30)
    return x

def run():
    amorsize.map(busy, range(8), executor="process", n_jobs=2)

if sys.argv[1] == "thread":  # the pool is made on this thread; the main thread waits
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
else:
    run()
"""

THREAD_POOLS_PROGRAM = """
import threading, time
import amorsize

manager = amorsize.PoolManager()
pools = {}

def make(method):
    pools[method] = manager.get_pool(2, "process", start_method=method)

for method in ("forkserver", "spawn", "fork"):
    t = threading.Thread(target=make, args=(method,))
    t.start()
    t.join()
time.sleep(1.0)  # the threads that started the workers and the fork server have ended
for method, pool in pools.items():
    print(method, pool.map(abs, [-1, -2, -3]), flush=True)
manager.shutdown()
"""


def _run(program: str, *args: str, start_method: str | None = None,
         stderr: object = None) -> subprocess.Popen:
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    if start_method:
        env["AMORSIZE_START_METHOD"] = start_method
    return subprocess.Popen([sys.executable, "-c", program, *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=stderr)


def _running(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("start_method", "sig", "pool_made_on"), [
    ("forkserver", signal.SIGKILL, "main"),
    ("forkserver", signal.SIGTERM, "thread"),
    ("spawn", signal.SIGKILL, "thread"),
    ("spawn", signal.SIGTERM, "main"),
])
def test_workers_and_fork_server_exit_when_the_program_is_killed(start_method, sig, pool_made_on):
    with tempfile.TemporaryFile("w+") as err:
        child = _run(BUSY_PROGRAM, pool_made_on, start_method=start_method, stderr=err)
        descendants: list[psutil.Process] = []
        try:
            assert child.stdout.readline().strip() == "busy", "no item started"
            descendants = psutil.Process(child.pid).children(recursive=True)
            # two workers and the resource tracker, and the fork server when there is one
            assert len(descendants) >= (4 if start_method == "forkserver" else 3), descendants
            child.send_signal(sig)  # not reaped until the end: a zombie parent is a dead one
            deadline = time.monotonic() + 20.0
            while _running(descendants) and time.monotonic() < deadline:
                time.sleep(0.1)
            left = [(p.pid, " ".join(p.cmdline())[-60:]) for p in _running(descendants)]
            err.seek(0)
            assert not left, f"still running 20 s after the parent's death: {left}\n{err.read()}"
        finally:
            for p in _running(descendants):
                p.kill()
            child.kill()
            child.communicate()


@pytest.mark.timeout(60)
def test_pools_made_on_a_thread_that_ended_keep_working():
    """The parent-death signal follows the thread that forked: the end of that thread must not
    stop the pool's workers, nor the fork server it started."""
    child = _run(THREAD_POOLS_PROGRAM)
    out, _ = child.communicate(timeout=50)
    assert child.returncode == 0
    assert out.splitlines() == [f"{m} [1, 2, 3]" for m in ("forkserver", "spawn", "fork")]


@pytest.mark.skipif(orphans._stat(os.getpid()) is None, reason="needs /proc")
def test_a_zombie_or_a_new_process_with_the_same_pid_is_not_alive():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = orphans._stat(sleeper.pid)[1]
        assert orphans._alive(sleeper.pid, started)
        assert not orphans._alive(sleeper.pid, str(int(started) + 1))
        os.kill(sleeper.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20.0
        while orphans._stat(sleeper.pid)[0] != "Z" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not orphans._alive(sleeper.pid, started)  # dead, though not reaped yet
    finally:
        sleeper.kill()
        sleeper.wait()


ARMED_PROGRAM = """
import multiprocessing, os
import psutil
from amorsize.pools.processes import ProcessPool

def catches_sigalrm(pid):
    with open(f"/proc/{pid}/status") as f:
        caught = next(line for line in f if line.startswith("SigCgt")).split()[1]
    return bool(int(caught, 16) >> 13 & 1)  # bit 13: SIGALRM

pool = ProcessPool(1, "forkserver")
[server] = [c.pid for c in psutil.Process().children()
            if c.pid not in pool.worker_pids() and "forkserver" in " ".join(c.cmdline())]
print(catches_sigalrm(server), catches_sigalrm(pool.worker_pids()[0]), flush=True)
pool.shutdown()
"""


@pytest.mark.timeout(60)
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/status")
def test_the_fork_server_arms_its_exit_and_its_workers_drop_it():
    """The fork server, and it alone, imports ``amorsize.pools.fork_server``, which arms the
    SIGALRM handler that exits it once the user's process is gone."""
    out, _ = _run(ARMED_PROGRAM).communicate(timeout=50)
    assert out.split() == ["True", "False"]
