"""A large object shared by every item (a partial or closure over a big array) crosses to each
process worker once, through shared memory, and nothing of it is left behind
(``amorsize/pools/shared.py``)."""

from __future__ import annotations

import errno
import functools
import gc
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from shm_helpers import big_array, holding, kill_all, left_in_shm, start_program

import amorsize
from amorsize.optimizer import cost_model
from amorsize.optimizer.overheads import Overheads
from amorsize.pools import payloads, shared, worker
from amorsize.pools.manager import PoolManager
from amorsize.workload import Profile

pytestmark = pytest.mark.skipif(not shared.available(), reason="shared memory needs Linux")

ROOT = str(Path(__file__).resolve().parents[1])
MB = 2**20
LOADS = 0  # in each process: how many times a Counted was unpickled


class Counted:
    """An array that counts, in each process, how many times it was unpickled."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def __reduce__(self) -> tuple:
        return _rebuild, (self.array,)


def _rebuild(array: np.ndarray) -> Counted:
    global LOADS
    LOADS += 1
    return Counted(array)


def slice_sum(array: np.ndarray, i: int) -> float:
    return float(array[i * 1000:(i + 1) * 1000].sum())


def loads_here(counted: Counted, i: int) -> tuple[int, int, float]:
    return os.getpid(), LOADS, float(counted.array[i])


def write_into(array: np.ndarray, i: int) -> None:
    array[i] = -1.0


def mapped_here(_: object) -> set[str]:
    return shared.mapped_tokens()


@pytest.fixture(scope="module")
def manager():
    with PoolManager() as m:
        yield m


def test_results_are_those_of_the_serial_loop_for_a_partial_over_a_large_array():
    array = big_array(24)
    func = functools.partial(slice_sum, array)
    expected = [func(i) for i in range(300)]
    assert amorsize.map(func, range(300), executor="process", n_jobs=2, chunksize=7) == expected


def closure_over(array: np.ndarray):
    def total(i: int) -> float:
        return float(array[i * 1000:(i + 1) * 1000].sum())
    return total


def test_a_closure_over_a_large_array_shares_it_too(manager):
    array = big_array(24)
    pool = manager.get_pool(2, "process")
    assert pool.prepare(closure_over(array)).shared is not None
    assert pool.map(closure_over(array), range(100), chunksize=9) == [
        slice_sum(array, i) for i in range(100)]


def test_the_array_is_not_in_what_travels_with_each_chunk(manager):
    array = big_array(24)
    prepared = manager.get_pool(2, "process").prepare(functools.partial(slice_sum, array))
    assert prepared.shared is not None and prepared.shared.nbytes == array.nbytes
    assert len(prepared.payload) < 10_000
    assert len(worker.ByValue(prepared).data) < 10_000


def test_each_worker_unpickles_the_shared_object_once_over_many_chunks_and_two_calls(manager):
    counted = Counted(big_array(8))
    pool = manager.get_pool(2, "process")
    func = functools.partial(loads_here, counted)
    first = pool.map(func, range(200), chunksize=3)
    again = pool.map(functools.partial(loads_here, counted), range(200), chunksize=3)
    assert [r[2] for r in first + again] == [float(counted.array[i]) for i in range(200)] * 2
    assert {loads for _, loads, _ in first + again} == {1}
    assert len({pid for pid, _, _ in first + again}) == 2


def test_a_later_call_over_the_same_array_reuses_its_segment(manager):
    array = big_array(24)
    pool = manager.get_pool(2, "process")
    one = pool.prepare(functools.partial(slice_sum, array))
    other = pool.prepare(functools.partial(slice_sum, array))  # a new partial, the same data
    assert one.shared.token == other.shared.token
    assert one.digest == other.digest


def test_an_array_changed_in_place_crosses_again_and_the_workers_see_the_change(manager):
    array = big_array(24)
    pool = manager.get_pool(2, "process")
    before = pool.map(functools.partial(slice_sum, array), range(10))
    array[:5000] = 0.0
    after = pool.map(functools.partial(slice_sum, array), range(10))
    assert after == [slice_sum(array, i) for i in range(10)]
    assert after[:5] == [0.0] * 5 and before[:5] != after[:5]


def test_workers_see_the_shared_array_read_only(manager):
    pool = manager.get_pool(2, "process")
    with pytest.raises(ValueError, match="read-only"):
        pool.map(functools.partial(write_into, big_array(4)), range(4))


def byte_at(data: bytes, i: int) -> tuple[int, str]:
    return data[i], type(data).__name__


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_a_partial_over_large_bytes_shares_them_too(manager, kind):
    data = kind(bytes(range(256)) * 8192)  # 2 MB
    pool = manager.get_pool(2, "process")
    prepared = pool.prepare(functools.partial(byte_at, data))
    assert prepared.shared is not None and len(prepared.payload) < 10_000
    assert pool.map(functools.partial(byte_at, data), range(300), chunksize=7) == [
        (i % 256, kind.__name__) for i in range(300)]


def test_small_buffers_still_travel_with_the_function(manager):
    prepared = manager.get_pool(2, "process").prepare(
        functools.partial(slice_sum, np.ones(1000)))
    assert prepared.shared is None


def test_a_released_segment_is_let_go_by_the_caller_and_the_workers(manager, monkeypatch):
    monkeypatch.setattr(shared, "KEPT_SEGMENTS", 1)
    pool = manager.get_pool(1, "process")
    first = pool.prepare(functools.partial(slice_sum, big_array(4, seed=1)))
    token = first.shared.token
    pool.map(first, range(20))  # the workers map it
    del first
    pool.prepare(functools.partial(slice_sum, big_array(4, seed=2)))  # evicts the first
    gc.collect()
    assert token not in (shared.live_tokens() or (0, ()))[1]
    assert holding(token, [os.getpid()]) == []
    # a worker learns it with the next function it loads, and unmaps it
    assert all(token not in mapped for mapped in pool.map(mapped_here, range(2)))
    assert holding(token, pool.worker_pids()) == []


def test_idle_workers_let_go_of_a_segment_the_caller_released(manager):
    array = big_array(4, seed=9)
    pool = manager.get_pool(2, "process")
    pool.map(functools.partial(slice_sum, array), range(40), chunksize=1)
    token = pool.prepare(functools.partial(slice_sum, array)).shared.token
    assert holding(token, pool.worker_pids())
    del array
    gc.collect()
    deadline = time.monotonic() + 10.0  # the workers check twice a second; no task is sent
    while holding(token, pool.worker_pids()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert holding(token, pool.worker_pids()) == []


def test_the_segment_is_released_once_the_array_is_collected(manager):
    array = big_array(4, seed=6)
    pool = manager.get_pool(2, "process")
    pool.map(functools.partial(slice_sum, array), range(4))
    token = pool.prepare(functools.partial(slice_sum, array)).shared.token
    assert holding(token, [os.getpid()])
    del array
    gc.collect()
    assert holding(token, [os.getpid()]) == []


def test_an_array_changed_in_place_lets_go_of_its_old_segment(manager):
    array = big_array(4, seed=8)
    pool = manager.get_pool(2, "process")
    old = pool.prepare(functools.partial(slice_sum, array)).shared.token
    array[0] = -1.0
    new = pool.prepare(functools.partial(slice_sum, array)).shared.token
    gc.collect()
    assert new != old
    assert holding(old, [os.getpid()]) == [] and holding(new, [os.getpid()])


def touch_all(array: np.ndarray, i: int) -> float:
    return float(array.sum()) if i else 0.0  # the first task leaves it untouched


def test_reading_a_shared_array_is_not_a_worker_s_memory_growth():
    with PoolManager(max_memory_growth_mb=16) as limited:
        pool = limited.get_pool(1, "process")
        array = big_array(48, seed=7)
        pool.map(functools.partial(touch_all, array), range(5), chunksize=1)
        assert not pool.recycle_due


def test_a_small_shm_folder_falls_back_to_a_file_in_the_temporary_folder(manager, monkeypatch):
    free = shared.free_bytes
    monkeypatch.setattr(shared, "free_bytes",
                        lambda d: 64 * MB if d == shared.SHM_DIR else free(d))
    array = big_array(80, seed=3)
    func = functools.partial(slice_sum, array)
    segment = shared.place([pickle_buffer(array)])
    assert segment.directory == tempfile.gettempdir()
    assert amorsize.map(func, range(50), executor="process", n_jobs=2) == [
        func(i) for i in range(50)]


def pickle_buffer(array: np.ndarray):
    import pickle

    return pickle.PickleBuffer(array)


def test_a_shm_folder_that_runs_out_of_room_falls_back_too(monkeypatch):
    allocate = os.posix_fallocate
    shm_device = os.stat(shared.SHM_DIR).st_dev

    def out_of_room(fd: int, offset: int, size: int) -> None:
        if os.fstat(fd).st_dev == shm_device:
            raise OSError(errno.ENOSPC, "No space left on device")
        allocate(fd, offset, size)

    monkeypatch.setattr(os, "posix_fallocate", out_of_room)
    segment = shared.place([pickle_buffer(big_array(2, seed=4))])
    assert segment.directory == tempfile.gettempdir()


def test_the_plan_says_the_shared_data_crosses_once():
    array = big_array(8, seed=5)
    amorsize.map(functools.partial(slice_sum, array), range(20), executor="process", n_jobs=2)
    reason = amorsize.last_plan().reasons[0]
    assert "8.0 MB of large buffers cross to process workers once, through shared memory" \
        in reason
    assert "in a file" not in reason


def test_the_plan_says_when_the_shared_data_goes_to_a_file(monkeypatch):
    monkeypatch.setattr(shared, "free_bytes", lambda d: 0)
    array = big_array(8, seed=5)
    amorsize.map(functools.partial(slice_sum, array), range(20), executor="process", n_jobs=2)
    assert (f"through shared memory in a file in {tempfile.gettempdir()} "
            f"({shared.SHM_DIR} has too little room)") in amorsize.last_plan().reasons[0]


def test_cpu_heavy_items_over_a_big_shared_array_plan_processes():
    shared_input = Profile(per_item_seconds=2.75e-3, func_bytes=200e6 + 2000, shared_bytes=200e6,
                           arg_bytes=20, result_bytes=20)
    by_value = shared_input.replace(shared_bytes=0.0)  # where it cannot be shared

    def chosen(profile: Profile) -> str:
        candidates = cost_model.best_candidates(profile, 400, 2, Overheads(),
                                                ["serial", "process"], is_warm=lambda e, j: True)
        return cost_model.choose(candidates, 1.2).executor_type

    assert chosen(shared_input) == "process"
    assert chosen(by_value) == "serial"


def test_a_function_loaded_before_any_segment_keeps_loading(manager):
    # a PickledFunction of the old form (digest, payload) still loads
    plain = payloads.PickledFunction(abs)
    state = plain.__getstate__()[:2]
    copy = payloads.PickledFunction.__new__(payloads.PickledFunction)
    copy.__setstate__(state)
    assert copy.load()(-3) == 3


PROGRAM = """
import functools, os, signal, sys, time
import numpy as np
import amorsize
from amorsize.pools import shared

def work(array, i):
    if i == 0:
        print("token", shared_token(), flush=True)
    time.sleep(0 if sys.argv[1] == "exit" else 0.05)
    return float(array[i])

def shared_token():
    return next(iter(shared.mapped_tokens()))

array = np.ones(int(float(sys.argv[2]) * 2**20 / 8))
try:
    amorsize.map(functools.partial(work, array), range(400), executor="process", n_jobs=2,
                 chunksize=1)
except BaseException as exc:
    print("ended", type(exc).__name__, flush=True)
    raise SystemExit(0)
print("done", flush=True)
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("how", "mb"), [("SIGKILL", 200), ("SIGINT", 24),
                                          ("worker", 24), ("exit", 24)])
def test_nothing_is_left_behind(how, mb):
    """The caller killed by SIGKILL mid-run, interrupted (Ctrl-C), one of its workers killed, or
    ending normally: 5 s later no process holds the segment, and nothing is named in /dev/shm."""
    child, line = start_program(PROGRAM, how, str(mb))
    everyone: list[int] = []
    try:
        assert line[:1] == ["token"], line
        token = line[1]
        everyone = [child.pid] + [p.pid for p in psutil.Process(child.pid).children(recursive=True)]
        assert holding(token, everyone)
        if how == "SIGKILL":
            child.kill()
        elif how == "SIGINT":
            child.send_signal(signal.SIGINT)
        elif how == "worker":
            workers = [p for p in psutil.Process(child.pid).children(recursive=True)
                       if holding(token, [p.pid])]
            workers[0].kill()
        if how != "SIGKILL":
            child.communicate(timeout=60)
        time.sleep(5.0)
        assert holding(token, everyone) == []
        assert holding(token, [p.pid for p in psutil.process_iter()]) == []
        assert left_in_shm() == []
    finally:
        kill_all(everyone, child)


# -- workers that cannot open the caller's shared memory ----------------------------------


def refuse_proc_open() -> None:
    """A worker initializer: opening any descriptor of another process through /proc fails, as
    for a non-dumpable caller or a /proc mounted with hidepid."""
    def refused(pid: int, fd: int, flags: int) -> int:
        raise PermissionError(errno.EACCES, "Permission denied", f"/proc/{pid}/fd/{fd}")

    shared._open_held = refused


def become_nobody() -> None:
    """A worker initializer: the worker runs as another user than its caller."""
    os.setgid(65534)
    os.setuid(65534)


@pytest.fixture
def shared_memory_on(monkeypatch):
    """Shared memory in use, and in use again after the test, however it ended."""
    monkeypatch.setattr(shared, "_off_because", None)


@pytest.mark.parametrize("initializer", [
    refuse_proc_open,
    pytest.param(become_nobody, marks=pytest.mark.skipif(
        os.geteuid() != 0, reason="a worker becomes another user only when started as root")),
])
def test_workers_that_cannot_open_the_segment_still_give_the_serial_results(shared_memory_on,
                                                                             initializer):
    array = big_array(4, seed=11)
    func = functools.partial(slice_sum, array)
    with PoolManager() as own:
        pool = own.get_pool(2, "process", initializer=initializer)
        prepared = pool.prepare(func)
        assert prepared.shared is not None
        assert pool.map(prepared, range(100), chunksize=3) == [func(i) for i in range(100)]


def test_a_worker_that_cannot_open_the_segment_turns_shared_memory_off(shared_memory_on):
    array = big_array(4, seed=12)
    func = functools.partial(slice_sum, array)
    with PoolManager() as own:
        pool = own.get_pool(1, "process", initializer=refuse_proc_open)
        pool.map(func, range(4))
        assert shared.turned_off()
        assert "cannot open the shared memory of process" in shared.unavailable_reason()
        assert pool.prepare(func).shared is None  # what comes next travels by value at once
        assert pool.submit(func, 7).result() == func(7)


def test_the_plan_says_why_the_function_crosses_with_each_chunk_once_shared_memory_is_off(
        monkeypatch):
    monkeypatch.setattr(shared, "_off_because", "process worker 1 cannot open it (test)")
    array = big_array(8, seed=14)
    amorsize.map(functools.partial(slice_sum, array), range(20), executor="process", n_jobs=2)
    assert ("the function's 8.0 MB cross with each chunk: no shared memory (process worker 1 "
            "cannot open it (test))") in amorsize.last_plan().reasons[0]


def test_a_call_sent_again_by_value_carries_the_large_buffers_with_it(shared_memory_on):
    array = big_array(4, seed=13)
    prepared = worker.PickledFunction(functools.partial(slice_sum, array))
    plain = prepared.by_value()
    assert plain.shared is None and plain.segment is None
    assert len(worker.ByValue(plain).data) > array.nbytes
    copy = worker.ByValue(plain).load()
    payloads._FUNC_CACHE.pop(copy.digest, None)
    assert copy.load()(3) == slice_sum(array, 3)


def test_a_segment_released_before_a_worker_opens_it_is_not_a_lasting_failure():
    with tempfile.TemporaryFile() as other:
        with pytest.raises(shared.SharedMemoryUnreachable) as caught:
            shared.opened(os.getpid(), other.fileno(), "0:0", os.O_RDONLY)
    assert not caught.value.lasting
    assert "was released before" in str(caught.value)


def test_a_closed_descriptor_of_a_live_caller_is_not_a_lasting_failure(monkeypatch):
    monkeypatch.setattr(shared, "_unreachable", {})
    with pytest.raises(shared.SharedMemoryUnreachable) as caught:
        shared.opened(os.getpid(), 987654, "0:0", os.O_RDONLY)
    assert not caught.value.lasting


def test_a_refused_open_is_a_lasting_failure_and_is_not_tried_again(monkeypatch):
    monkeypatch.setattr(shared, "_unreachable", {})
    monkeypatch.setattr(shared, "_open_held", lambda pid, fd, flags: refuse())
    with pytest.raises(shared.SharedMemoryUnreachable) as caught:
        shared.opened(os.getpid(), 3, "0:0", os.O_RDONLY)
    assert caught.value.lasting
    monkeypatch.setattr(shared, "_open_held", lambda pid, fd, flags: pytest.fail("tried again"))
    with pytest.raises(shared.SharedMemoryUnreachable):
        shared.opened(os.getpid(), 3, "0:0", os.O_RDONLY)


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOMEM])
def test_running_out_of_descriptors_or_memory_is_not_a_lasting_failure(monkeypatch, code):
    """A worker short of descriptors for a moment must not turn shared memory off for good."""
    monkeypatch.setattr(shared, "_unreachable", {})

    def out_of(pid, fd, flags):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(shared, "_open_held", out_of)
    with pytest.raises(shared.SharedMemoryUnreachable) as caught:
        shared.opened(os.getpid(), 3, "0:0", os.O_RDONLY)
    assert not caught.value.lasting
    assert shared._unreachable == {}


def refuse() -> int:
    raise PermissionError(errno.EACCES, "Permission denied")


NOT_DUMPABLE = """
import ctypes, functools, sys
import numpy as np
import amorsize
from amorsize.pools import shared

def slice_sum(array, i):
    return float(array[i * 1000:(i + 1) * 1000].sum())

assert ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE
array = np.random.default_rng(0).random(4 * 2**20 // 8)
func = functools.partial(slice_sum, array)
results = amorsize.map(func, range(200), executor="process", n_jobs=2)
print(results == [func(i) for i in range(200)], shared.live_tokens() is None, flush=True)
print(amorsize.last_plan().reasons[0], flush=True)
arrays = amorsize.map(np.ones, [2**18] * 8, executor="process", n_jobs=2)  # 2 MB results
print(all(a.shape == (2**18,) and a.sum() == 2**18 for a in arrays), flush=True)
amorsize.shutdown_global_pool_manager()
"""


@pytest.mark.timeout(120)
def test_a_caller_that_is_not_dumpable_sends_the_function_by_value():
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-c", NOT_DUMPABLE], env={**os.environ, "PYTHONPATH": path},
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stderr
    right, nothing_placed = done.stdout.splitlines()[0].split()
    assert (right, nothing_placed) == ("True", "True")
    assert "no shared memory (this process is not dumpable" in done.stdout.splitlines()[1]
    assert done.stdout.splitlines()[2] == "True"  # large results come through the pipe
