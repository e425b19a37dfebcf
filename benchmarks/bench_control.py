"""How fast a running call stops, and what sharing pools costs it: the figures of docs/control.md.

    python3 benchmarks/bench_control.py

Each row runs in a fresh interpreter where a signal or a dying process is involved, against the
plain tool a user would otherwise reach for. Prints a table; asserts nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPIN = """
import time
def spin(x, seconds=4.0):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return x
"""

CTRL_C = {
    "amorsize, processes": SPIN + """
import amorsize
amorsize.map(spin, range(2), executor="process", n_jobs=2, chunksize=1, sample_size=1)
print("ready", flush=True)
amorsize.map(spin, range(8), executor="process", n_jobs=2, chunksize=1, sample_size=1)
""",
    "amorsize, threads": SPIN + """
import amorsize
amorsize.map(spin, range(2), executor="thread", n_jobs=2, chunksize=1, sample_size=1)
print("ready", flush=True)
amorsize.map(spin, range(8), executor="thread", n_jobs=2, chunksize=1, sample_size=1)
""",
    "ProcessPoolExecutor": SPIN + """
from concurrent.futures import ProcessPoolExecutor
if __name__ == "__main__":
    with ProcessPoolExecutor(2) as ex:
        list(ex.map(spin, range(2), [0.01] * 2))
        print("ready", flush=True)
        list(ex.map(spin, range(8)))
""",
}


def ctrl_c(script: str) -> tuple[float, float, int]:
    """Seconds from SIGINT to the KeyboardInterrupt traceback and to the exit; workers left."""
    path = os.path.join(ROOT, "benchmarks", ".ctrl_c_script.py")
    with open(path, "w") as f:
        f.write(textwrap.dedent(script))
    try:
        proc = subprocess.Popen([sys.executable, path], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": ROOT})
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        children = psutil.Process(proc.pid).children(recursive=True)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        interrupted = None
        for line in proc.stderr:
            if interrupted is None and "Traceback" in line:
                interrupted = time.monotonic() - sent
        proc.wait(60)
        exited = time.monotonic() - sent
        time.sleep(2.0)
        left = sum(1 for c in children
                   if c.is_running() and c.status() != psutil.STATUS_ZOMBIE
                   and "forkserver" not in " ".join(c.cmdline())
                   and "resource_tracker" not in " ".join(c.cmdline()))
        return interrupted or exited, exited, left
    finally:
        os.remove(path)


def timeout_row(executor: str) -> float:
    import amorsize

    def slow_fifth(x):
        end = time.perf_counter() + (6.0 if x == 5 else 0.02)
        while time.perf_counter() < end:
            time.sleep(0.001) if executor == "thread" else None
        return x

    start = time.perf_counter()
    try:
        amorsize.map(slow_fifth, range(12), executor=executor, n_jobs=2, timeout=1)
    except TimeoutError:
        pass
    return time.perf_counter() - start


def joblib_after_timeout(backend: str) -> tuple[float, float]:
    import joblib

    import amorsize_joblib  # noqa: F401

    start = time.perf_counter()
    try:
        joblib.Parallel(n_jobs=2, backend=backend, timeout=0.5)(
            joblib.delayed(time.sleep)(5) for _ in range(6))
    except Exception:  # noqa: BLE001 - joblib's TimeoutError
        pass
    raised = time.perf_counter() - start
    start = time.perf_counter()
    joblib.Parallel(n_jobs=2, backend=backend)(joblib.delayed(abs)(-i) for i in range(6))
    return raised, time.perf_counter() - start


def imap_rows() -> tuple[float, int]:
    import amorsize

    def half_second(x):
        time.sleep(0.5)
        return x

    start = time.perf_counter()
    it = amorsize.imap(half_second, (i for i in range(40)), n_jobs=2)
    next(it)
    first = time.perf_counter() - start
    it.close()

    calls = []

    def counted(x):
        calls.append(x)
        time.sleep(0.005)
        return x

    for i, _ in enumerate(amorsize.imap(counted, (i for i in range(4000)))):
        if i == 100:
            break
    time.sleep(0.5)
    return first, len(calls) - 101


def clear_under_load(callers: int = 16, calls: int = 10) -> tuple[int, int]:
    import amorsize

    manager = amorsize.get_global_pool_manager()
    failures, done = [], []
    stop = threading.Event()

    def clear():
        while not stop.is_set():
            manager.clear()
            time.sleep(0.001)

    def call(i):
        for _ in range(calls):
            try:
                out = amorsize.map(abs, range(-200, 0), executor=("thread", "process")[i % 2],
                                   n_jobs=2)
                assert out == list(range(200, 0, -1))
                done.append(1)
            except Exception as exc:  # noqa: BLE001 - counted
                failures.append(exc)

    t = threading.Thread(target=clear)
    t.start()
    workers = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    t.join()
    return len(done), len(failures)


def main() -> None:
    print("| what | figure |")
    print("|---|---|")
    for name, script in CTRL_C.items():
        interrupted, exited, left = ctrl_c(script)
        print(f"| Ctrl-C, 4 s items, {name} | KeyboardInterrupt after {interrupted:.2f} s, "
              f"exit after {exited:.2f} s, {left} workers left |")
    for executor in ("thread", "process"):
        print(f"| timeout=1 on a 6 s item, {executor} plan | raised after "
              f"{timeout_row(executor):.2f} s |")
    for backend in ("amorsize", "loky"):
        raised, after = joblib_after_timeout(backend)
        print(f"| joblib Parallel(timeout=0.5) over 5 s tasks, {backend} | raised after "
              f"{raised:.2f} s, next call {after:.2f} s |")
    first, extra = imap_rows()
    print(f"| imap over a 40-item generator of 0.5 s items | first result after {first:.2f} s |")
    print(f"| break after 101 of 4,000 streamed items (5 ms each) | {extra} more computed |")
    done, failed = clear_under_load()
    print(f"| 16 threads calling map while another calls clear() in a loop | {done} calls, "
          f"{failed} failed |")


if __name__ == "__main__":
    main()
