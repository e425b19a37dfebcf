"""A large result (a numpy array, ``bytes`` or ``bytearray`` of 1 MB or more) comes back from a
process worker through a file of shared memory the caller lends the call, not through the
pipe; the caller gets ordinary, writable objects, and nothing of the files is left behind
(``amorsize/pools/shared.py``, ``worker.placed``)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from shm_helpers import kill_all, start_program

import amorsize
from amorsize.errors import WorkerCrashedError
from amorsize.pools import shared, worker
from amorsize.pools.manager import PoolManager

pytestmark = pytest.mark.skipif(not shared.available(), reason="shared memory needs Linux")

MB = 2**20


def array_of(i: int) -> np.ndarray:
    return np.full(2 * MB // 8, float(i))


def bytes_of(i: int) -> bytes:
    return bytes([i % 256]) * (2 * MB)


def bytearray_of(i: int) -> bytearray:
    return bytearray(bytes_of(i))


def small_and_large(i: int) -> tuple[int, np.ndarray, str]:
    return i, array_of(i), "x" * i


@pytest.fixture(scope="module")
def manager():
    with PoolManager() as m:
        yield m


@pytest.fixture
def reads(monkeypatch):
    """How many results the caller read out of a result file."""
    count = [0]
    read = shared.read_result

    def counted(*args):
        count[0] += 1
        return read(*args)

    monkeypatch.setattr(shared, "read_result", counted)
    return count


@pytest.mark.parametrize("make", [array_of, bytes_of, bytearray_of, small_and_large])
def test_large_results_are_those_of_the_serial_loop(manager, reads, make):
    pool = manager.get_pool(2, "process")
    results = pool.map(make, range(12), chunksize=2)
    expected = [make(i) for i in range(12)]
    assert len(results) == 12
    for got, want in zip(results, expected, strict=True):
        assert type(got) is type(want)
        if isinstance(want, tuple):
            assert got[0] == want[0] and got[2] == want[2]
            got, want = got[1], want[1]
        assert np.array_equal(got, want) if isinstance(want, np.ndarray) else got == want
    assert reads[0] == 6  # each chunk's through a result file


def test_a_large_result_comes_back_writable(manager):
    results = manager.get_pool(2, "process").map(array_of, range(4))
    assert all(r.flags.writeable for r in results)
    results[1][:] = -1.0
    assert float(results[1].sum()) == -results[1].size
    assert float(results[2][0]) == 2.0


def test_a_large_result_of_submit_comes_back_through_a_result_file_too(manager, reads):
    got = manager.get_pool(1, "process").submit(array_of, 5).result()
    assert np.array_equal(got, array_of(5))
    assert reads[0] == 1


def test_small_results_come_through_the_pipe(manager, reads):
    assert manager.get_pool(2, "process").map(abs, range(-50, 50), chunksize=10) == [
        abs(i) for i in range(-50, 50)]
    assert reads[0] == 0


def test_what_crosses_the_pipe_is_the_small_rest_and_the_file_is_emptied_once_read():
    file = shared.lend()
    assert file is not None
    try:
        packed = worker.placed((True, [array_of(3), array_of(4)]), file.ref)
        assert isinstance(packed, worker.PlacedResult)
        assert len(worker.ByValue(packed).data) < 10_000
        assert os.fstat(file.fd).st_size >= 4 * MB
        ok, (three, four) = packed.load()
        assert ok and float(three[0]) == 3.0 and float(four[-1]) == 4.0
        assert os.fstat(file.fd).st_size == 0
    finally:
        shared.give_back(file, reusable=True)


def test_a_result_comes_through_the_pipe_when_shm_has_too_little_room(monkeypatch):
    monkeypatch.setattr(shared, "free_bytes", lambda d: 3 * MB)
    file = shared.lend()
    assert file is not None
    try:
        packed = worker.placed((True, array_of(7)), file.ref)
        assert isinstance(packed, worker.ByValue)
        assert np.array_equal(packed.load()[1], array_of(7))
        assert os.fstat(file.fd).st_size == 0
    finally:
        shared.give_back(file, reusable=True)


def test_no_result_file_is_lent_once_shared_memory_is_off(monkeypatch, manager, reads):
    monkeypatch.setattr(shared, "_off_because", "a worker could not open it (test)")
    assert shared.lend() is None
    results = manager.get_pool(2, "process").map(array_of, range(4))
    assert [float(r[0]) for r in results] == [0.0, 1.0, 2.0, 3.0]
    assert reads[0] == 0


def test_after_a_run_no_result_file_is_lent_and_the_kept_ones_are_empty(manager):
    manager.get_pool(2, "process").map(array_of, range(20), chunksize=1)
    assert shared._lent == 0
    assert all(os.fstat(f.fd).st_size == 0 for f in shared._idle_files)


def test_no_more_result_files_are_lent_than_the_limit(monkeypatch, manager):
    monkeypatch.setattr(shared, "LENT_RESULT_FILES", 2)
    pool = manager.get_pool(2, "process")
    futures = [pool.submit(array_of, i) for i in range(10)]
    assert [float(f.result()[0]) for f in futures] == [float(i) for i in range(10)]
    assert shared._lent == 0


PROGRAM = """
import os, sys, time
import numpy as np
import amorsize

def big(i):
    time.sleep(0.05)
    return np.full(4 * 2**20 // 8, float(i))

try:
    for k, r in enumerate(amorsize.imap(big, range(400), executor="process", n_jobs=2,
                                        chunksize=1)):
        assert float(r[0]) == k
        if k == 3:
            print("running", flush=True)
except BaseException as exc:
    print("ended", type(exc).__name__, flush=True)
    raise SystemExit(0)
print("done", flush=True)
"""


def _pool_workers(pid: int) -> list[psutil.Process]:
    """The pool workers among the descendants of ``pid``: the fork server's children, or the
    direct children but the resource tracker (with another start method)."""
    descendants = psutil.Process(pid).children(recursive=True)
    forked = [p for p in descendants if p.ppid() != pid]
    return forked or [p for p in descendants if "resource_tracker" not in " ".join(p.cmdline())]


def _shm_files_held(pids: list[int]) -> set[str]:
    """The inodes of the unnamed files in /dev/shm the processes ``pids`` hold open."""
    device = os.stat(shared.SHM_DIR).st_dev
    found = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                stat = os.stat(f"/proc/{pid}/fd/{fd}")
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if stat.st_dev == device and "(deleted)" in link:
                found.add(str(stat.st_ino))
    return found


def _holding_any(inodes: set[str]) -> list[int]:
    """The processes that hold open or map a file with one of these inodes on /dev/shm."""
    holders = []
    for process in psutil.process_iter():
        pid = process.pid
        if inodes & _shm_files_held([pid]):
            holders.append(pid)
            continue
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            continue
        if any(len(line.split()) > 4 and line.split()[4] in inodes for line in maps.splitlines()):
            holders.append(pid)
    return holders


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT", "worker"])
def test_no_result_file_outlives_the_run(how):
    """The caller killed by SIGKILL mid-run, interrupted (Ctrl-C), or one of its workers killed
    (the run then fails with WorkerCrashedError, and does not hang): 5 s later no process
    holds the result files, and nothing is named in /dev/shm."""
    child, line = start_program(PROGRAM)
    everyone: list[int] = []
    try:
        assert line == ["running"], line
        workers = psutil.Process(child.pid).children(recursive=True)
        everyone = [child.pid] + [p.pid for p in workers]
        files = _shm_files_held([child.pid])
        assert files  # the result files lent
        if how == "SIGKILL":
            child.kill()
        elif how == "SIGINT":
            child.send_signal(signal.SIGINT)
        else:
            _pool_workers(child.pid)[0].kill()
        if how != "SIGKILL":
            out, _ = child.communicate(timeout=60)
            expected = "KeyboardInterrupt" if how == "SIGINT" else WorkerCrashedError.__name__
            assert f"ended {expected}" in out
        time.sleep(5.0)
        assert _holding_any(files) == []
        assert [name for name in os.listdir(shared.SHM_DIR) if name.startswith("amz-")] == []
    finally:
        kill_all(everyone, child)


def test_amorsize_map_gives_large_results_in_order():
    results = amorsize.map(array_of, range(30), executor="process", n_jobs=2)
    assert [float(r[0]) for r in results] == [float(i) for i in range(30)]
