"""The large arguments every task of a joblib call carries (``delayed(fit)(X, y, ...)``) cross
to process workers once, through shared memory, not with every batch; the cost model charges
them once; and nothing of them is left behind (``amorsize_joblib/chunks.py``,
``amorsize/pools/payloads.py``)."""

from __future__ import annotations

import gc
import os
import pickle
import time

import numpy as np
import pytest
from joblib import Parallel, delayed
from shm_helpers import (
    big_array,
    count_sent,
    held,
    holding,
    kill_all,
    left_in_shm,
    start_program,
)

from amorsize.optimizer import probe
from amorsize.pools import payloads, shared
from amorsize_joblib import AmorsizeBackend

pytestmark = [pytest.mark.skipif(not shared.available(), reason="shared memory needs Linux"),
              pytest.mark.timeout(90)]

N_TASKS = 24


@pytest.fixture
def sent(monkeypatch) -> list[int]:
    """The pickled size of what each chunk sent to a worker carries (but the function)."""
    return count_sent(monkeypatch)


def slice_sum(array: np.ndarray, i: int, offset: float = 0.0) -> float:
    return float(array[i * 1000:(i + 1) * 1000].sum()) + offset


def frame_sum(frame, i: int) -> float:
    return float(frame.iloc[i * 100:(i + 1) * 100].to_numpy().sum())


def as_seen(array: np.ndarray, i: int) -> tuple[bool, bool, list[str]]:
    """How a worker sees the array: writeable, owning its data, and the segments it mapped."""
    return array.flags.writeable, array.flags.owndata, sorted(shared.mapped_tokens())


def write_into(array: np.ndarray, i: int) -> None:
    array[i] = -1.0


def on_processes(func, *args_of_task) -> list:
    """``func`` over the tasks, on two process workers, one task per chunk (many chunks)."""
    backend = AmorsizeBackend(executor="process")
    return Parallel(n_jobs=2, backend=backend)(delayed(func)(*args) for args in args_of_task)


def test_results_are_those_of_the_serial_loop():
    x, y = big_array(4, seed=1), big_array(2, seed=2)
    out = on_processes(slice_sum, *[(x, i, float(y[i])) for i in range(N_TASKS)])
    assert out == [slice_sum(x, i, float(y[i])) for i in range(N_TASKS)]


def test_the_array_does_not_travel_with_each_chunk(sent):
    x = big_array(4, seed=3)
    on_processes(slice_sum, *[(x, i) for i in range(N_TASKS)])
    assert len(sent) >= N_TASKS  # one task per chunk
    assert max(sent) < 20_000


def test_a_pandas_frame_crosses_out_of_band_too(sent):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(big_array(4, seed=4).reshape(-1, 4), columns=list("abcd"))
    out = on_processes(frame_sum, *[(frame, i) for i in range(N_TASKS)])
    assert out == [frame_sum(frame, i) for i in range(N_TASKS)]
    assert max(sent) < 20_000


def test_workers_read_the_array_as_a_read_only_view_of_its_segment():
    x = big_array(4, seed=5)
    before = held()
    seen = on_processes(as_seen, *[(x, i) for i in range(N_TASKS)])
    (token,) = held() - before
    assert all(not writeable and not owns and token in mapped for writeable, owns, mapped in seen)


def test_a_worker_writing_into_the_array_gets_an_error_not_a_silent_copy():
    with pytest.raises(ValueError, match="read-only"):
        on_processes(write_into, *[(big_array(2, seed=6), i) for i in range(2)])


def test_the_array_is_placed_once_for_every_chunk_of_the_call():
    x = big_array(4, seed=7)
    before = held()
    on_processes(slice_sum, *[(x, i) for i in range(N_TASKS)])
    assert len(held() - before) == 1


def test_a_second_call_over_the_same_array_places_nothing_new():
    x = big_array(4, seed=8)
    on_processes(slice_sum, *[(x, i) for i in range(N_TASKS)])
    after_first = held()
    again = on_processes(slice_sum, *[(x, i) for i in range(N_TASKS)])
    assert held() - after_first == set()
    assert again == [slice_sum(x, i) for i in range(N_TASKS)]


def test_a_second_call_compares_the_array_with_its_segment_instead_of_checksumming(monkeypatch):
    x = big_array(4, seed=18)
    on_processes(slice_sum, *[(x, i) for i in range(N_TASKS)])
    calls = []
    place = shared.place
    monkeypatch.setattr(shared, "place", lambda buffers: calls.append(1) or place(buffers))
    on_processes(slice_sum, *[(x, i) for i in range(N_TASKS)])
    assert calls == []
    x[-1] = -1.0  # the last byte differs: the comparison sees it
    again = on_processes(slice_sum, *[(x, i) for i in range(N_TASKS)])
    assert calls == [1]
    assert again == [slice_sum(x, i) for i in range(N_TASKS)]


def test_an_array_changed_in_place_between_calls_is_seen_changed():
    x = big_array(4, seed=9)
    on_processes(slice_sum, *[(x, i) for i in range(N_TASKS)])
    x += 1.0
    again = on_processes(slice_sum, *[(x, i) for i in range(N_TASKS)])
    assert again == [slice_sum(x, i) for i in range(N_TASKS)]


def test_arrays_that_differ_from_task_to_task_each_cross_with_their_task():
    arrays = [big_array(1.5, seed=10 + i) for i in range(6)]
    out = on_processes(slice_sum, *[(a, 0) for a in arrays])
    assert out == [slice_sum(a, 0) for a in arrays]


def test_arrays_that_differ_from_task_to_task_are_not_all_held_to_the_end_of_the_call():
    arrays = [big_array(1.5, seed=30 + i) for i in range(2 * shared.KEPT_SEGMENTS)]
    placed = payloads.Placed()  # one call's
    before = held()
    for a in arrays:
        payloads.OutOfBand([a, 0], placed)  # a chunk sent and done
    gc.collect()
    assert len(held() - before) <= shared.KEPT_SEGMENTS


def test_small_arguments_place_nothing():
    before = held()
    out = on_processes(slice_sum, *[(np.arange(5000.0), i) for i in range(4)])
    assert out == [slice_sum(np.arange(5000.0), i) for i in range(4)]
    assert held() - before == set()


def test_an_array_met_again_in_the_call_takes_its_segment_without_a_checksum(monkeypatch):
    placed = payloads.Placed()
    x = np.asfortranarray(big_array(2, seed=11).reshape(-1, 2))  # pickled as a new view each time
    calls = []
    place = shared.place
    monkeypatch.setattr(shared, "place", lambda buffers: calls.append(1) or place(buffers))
    first = payloads.OutOfBand([x, 1], placed)
    again = payloads.OutOfBand([x, 2], placed)
    assert first.refs == again.refs and len(first.refs) == 1
    assert len(calls) == 1


def test_the_probe_counts_an_array_every_task_carries_once():
    x = big_array(2, seed=12)
    shipped = probe.shipping(slice_sum, [(((x, 1), {}), 1.0), (((x, 2), {}), 2.0)],
                             shared_arguments=True)
    assert shipped["shared_bytes"] == x.nbytes
    assert shipped["func_bytes"] > x.nbytes
    assert shipped["arg_bytes"] < 1000


def test_the_probe_counts_arrays_that_differ_from_task_to_task_with_their_items():
    one, two = big_array(2, seed=13), big_array(2, seed=14)
    shipped = probe.shipping(slice_sum, [(((one, 1), {}), 1.0), (((two, 2), {}), 2.0)],
                             shared_arguments=True)
    assert shipped["shared_bytes"] == 0
    assert shipped["arg_bytes"] >= one.nbytes


def test_the_plan_charges_an_array_every_task_carries_once():
    x = big_array(4, seed=15)
    backend = AmorsizeBackend()
    Parallel(n_jobs=2, backend=backend)(delayed(slice_sum)(x, i) for i in range(40))
    profile = backend.plan.profile
    assert profile.shared_bytes == x.nbytes
    assert profile.arg_bytes < 1000


def test_the_segment_is_let_go_by_everyone_once_the_array_is_collected():
    import psutil

    x = big_array(4, seed=16)
    before = held()
    on_processes(slice_sum, *[(x, i) for i in range(N_TASKS)])
    (token,) = held() - before
    workers = [p.pid for p in psutil.Process().children(recursive=True)]
    assert holding(token, workers)
    del x
    gc.collect()
    assert holding(token, [os.getpid()]) == []
    deadline = time.monotonic() + 10.0  # idle workers check twice a second
    while holding(token, workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert holding(token, workers) == []
    assert left_in_shm() == []


PROGRAM = """
import os, sys, time
import numpy as np
from joblib import Parallel, delayed
from amorsize.pools import shared
from amorsize_joblib import AmorsizeBackend

def work(array, i):
    if i == 0:
        print("token", next(iter(shared.mapped_tokens())), flush=True)
    time.sleep(0.05)
    return float(array[i])

array = np.ones(int(24 * 2**20 / 8))
Parallel(n_jobs=2, backend=AmorsizeBackend(executor="process"))(
    delayed(work)(array, i) for i in range(400))
"""


def test_nothing_is_left_behind_when_the_caller_is_killed():
    import psutil

    child, line = start_program(PROGRAM)
    everyone: list[int] = []
    try:
        assert line[:1] == ["token"], line
        token = line[1]
        everyone = [child.pid] + [p.pid for p in psutil.Process(child.pid).children(recursive=True)]
        assert holding(token, everyone)
        child.kill()
        child.communicate(timeout=30)
        deadline = time.monotonic() + 10.0
        while holding(token, everyone) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert holding(token, everyone) == []
        assert left_in_shm() == []
    finally:
        kill_all(everyone, child)


def test_a_chunk_sent_again_by_value_carries_its_arrays():
    x = big_array(2, seed=17)
    sent = payloads.OutOfBand([x, 1], payloads.Placed())
    plain = sent.by_value()
    data = pickle.dumps(plain, protocol=5)
    assert plain.refs == () and len(data) > x.nbytes
    again, one = pickle.loads(data).load()
    assert one == 1 and np.array_equal(again, x)
