"""``amorsize.Pool`` as a drop-in ``multiprocessing.Pool``: the asynchronous methods and their
``AsyncResult``, the checks at construction, and close/terminate/join.

Calls that must still be running are held by a gate (a file the test creates to let them go),
never by a sleep: ``gated`` marks that it started, then waits for the gate.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
from pathlib import Path

import psutil
import pytest

import amorsize
from amorsize import Pool

STATE: dict = {}


def square(x: int) -> int:
    return x * x


def power(base: int, exp: int = 2) -> int:
    return base**exp


def pid_of_caller() -> int:
    return os.getpid()


def raise_key_error() -> None:
    raise KeyError("key")


def raise_timeout_error() -> None:
    raise TimeoutError("the function's own")


def set_tag(tag: str) -> None:
    STATE["tag"] = tag


def read_tag() -> object:
    return STATE.get("tag")


def gated(where: str, x: int) -> int:
    """Write this worker's pid to ``started-x``, then wait until the file ``open`` exists."""
    folder = Path(where)
    (folder / f"pid-{x}").write_text(str(os.getpid()))
    (folder / f"pid-{x}").rename(folder / f"started-{x}")  # whole, never half-written
    while not (folder / "open").exists():
        threading.Event().wait(0.01)
    return x


def started_pid(folder: Path, x: int) -> int:
    marker = folder / f"started-{x}"
    while not marker.exists():
        threading.Event().wait(0.01)
    return int(marker.read_text())


def stopped(pid: int) -> bool:
    """True once process ``pid`` has exited (a zombie not yet reaped counts), within 30 s: a
    killed process may take a moment to go on a busy machine, a running one never does."""
    for _ in range(3000):
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        threading.Event().wait(0.01)
    return False


def open_gate(folder: Path) -> None:
    (folder / "open").write_text("")


@pytest.fixture
def pool():
    with Pool(2) as pool:
        yield pool


def test_apply_returns_the_result_of_func_called_with_args_and_kwds(pool):
    assert pool.apply(power, (3,)) == 9
    assert pool.apply(power, (2,), {"exp": 5}) == 32
    assert pool.apply(power, kwds={"base": 4}) == 16


def test_apply_runs_the_call_on_a_process_worker(pool):
    assert pool.apply(pid_of_caller) != os.getpid()


def test_apply_raises_the_functions_own_exception(pool):
    with pytest.raises(KeyError, match="key"):
        pool.apply(raise_key_error)


def test_apply_async_get_returns_the_result(pool):
    assert pool.apply_async(square, (4,)).get(timeout=30) == 16


def test_map_async_get_returns_the_results_in_input_order(pool):
    assert pool.map_async(square, range(20)).get(timeout=60) == [x * x for x in range(20)]


def test_starmap_async_unpacks_each_item_as_arguments(pool):
    assert pool.starmap_async(power, [(2, 3), (3, 2), (5, 0)]).get(timeout=60) == [8, 9, 1]


def test_many_async_calls_each_get_their_own_result(pool):
    results = [pool.apply_async(square, (x,)) for x in range(40)]
    assert [r.get(timeout=60) for r in results] == [x * x for x in range(40)]


def test_callback_gets_the_result_once_before_the_result_is_ready(pool):
    seen: list = []
    result = pool.apply_async(square, (5,), callback=seen.append, error_callback=seen.append)
    assert result.get(timeout=30) == 25
    assert seen == [25]


def test_map_async_callback_gets_the_list_of_results(pool):
    seen: list = []
    pool.map_async(int, ["1", "2"], callback=seen.append, error_callback=seen.append).wait()
    assert seen == [[1, 2]]


def test_error_callback_gets_the_exception_that_get_raises(pool):
    seen: list = []
    result = pool.apply_async(raise_key_error, callback=seen.append, error_callback=seen.append)
    with pytest.raises(KeyError) as raised:
        result.get(timeout=30)
    assert seen == [raised.value]


def test_map_async_error_callback_gets_the_first_error(pool):
    seen: list = []
    result = pool.map_async(int, ["1", "a"], callback=seen.append, error_callback=seen.append)
    result.wait()
    assert len(seen) == 1 and isinstance(seen[0], ValueError)
    with pytest.raises(ValueError):
        result.get()


def test_a_callback_that_raises_leaves_the_result_standing(pool, capsys):
    def bad_callback(_: object) -> None:
        raise RuntimeError("in the callback")

    assert pool.apply_async(square, (3,), callback=bad_callback).get(timeout=30) == 9
    assert "in the callback" in capsys.readouterr().err


def test_successful_is_a_value_error_until_ready_then_says_how_it_ended(pool, tmp_path):
    held = pool.apply_async(gated, (str(tmp_path), 1))
    with pytest.raises(ValueError, match="not ready"):
        held.successful()
    open_gate(tmp_path)
    held.wait()
    assert held.ready() and held.successful()
    failed = pool.apply_async(raise_key_error)
    failed.wait()
    assert failed.ready() and not failed.successful()


def test_get_with_a_timeout_raises_multiprocessing_timeout_error_and_the_call_goes_on(pool, tmp_path):
    held = pool.apply_async(gated, (str(tmp_path), 6))
    with pytest.raises(multiprocessing.TimeoutError):
        held.get(timeout=0.05)
    assert not held.ready()
    open_gate(tmp_path)
    assert held.get(timeout=30) == 6


def test_wait_with_a_timeout_returns_without_a_result(pool, tmp_path):
    held = pool.apply_async(gated, (str(tmp_path), 2))
    held.wait(timeout=0.05)
    assert not held.ready()
    open_gate(tmp_path)
    held.wait()
    assert held.ready()


def test_a_timeout_error_of_the_function_is_not_taken_for_a_get_timeout(pool):
    result = pool.apply_async(raise_timeout_error)
    with pytest.raises(TimeoutError, match="the function's own") as raised:
        result.get(timeout=30)
    assert not isinstance(raised.value, multiprocessing.TimeoutError)


def test_a_killed_worker_fails_get_with_worker_crashed_error(pool):
    result = pool.apply_async(os._exit, (1,))
    with pytest.raises(amorsize.WorkerCrashedError):
        result.get(timeout=60)
    assert pool.apply(square, (7,)) == 49  # the next call gets a fresh pool


def test_initializer_runs_in_the_worker_of_apply():
    with Pool(1, initializer=set_tag, initargs=("pool",)) as pool:
        assert pool.apply(read_tag) == "pool"


def test_join_after_close_waits_for_the_calls_given_before(tmp_path):
    pool = Pool(2)
    held = pool.apply_async(gated, (str(tmp_path), 3))
    pool.close()
    opener = threading.Thread(target=lambda: (started_pid(tmp_path, 3), open_gate(tmp_path)))
    opener.start()
    pool.join()
    assert held.ready() and held.get() == 3
    opener.join()


def test_terminate_fails_the_calls_still_running_and_stops_their_worker(tmp_path):
    pool = Pool(2)
    held = pool.apply_async(gated, (str(tmp_path), 4))
    pid = started_pid(tmp_path, 4)
    pool.terminate()
    with pytest.raises(amorsize.RunCancelledError, match="terminated"):
        held.get(timeout=30)
    assert stopped(pid)
    pool.join()


def _pool_on_processes_that_knows_gated(tmp_path, monkeypatch) -> tuple[Pool, Path]:
    """A Pool that runs on processes (what amorsize would choose) and has measured ``gated``
    already, so its next call measures nothing in the Pool's thread; and a gate, held shut."""
    learned, held = tmp_path / "learned", tmp_path / "held"
    learned.mkdir()
    held.mkdir()
    pool = Pool(2)
    monkeypatch.setitem(pool._options, "executor", "process")
    open_gate(learned)
    pool.starmap(gated, [(str(learned), x) for x in range(4)])
    return pool, held


def test_terminate_stops_a_map_async_running_on_processes(tmp_path, monkeypatch):
    pool, held = _pool_on_processes_that_knows_gated(tmp_path, monkeypatch)
    result = pool.starmap_async(gated, [(str(held), x) for x in range(4)], chunksize=1)
    pid = started_pid(held, 0)
    pool.terminate()
    with pytest.raises(amorsize.RunCancelledError):
        result.get(timeout=30)
    assert stopped(pid)
    pool.join()


def test_terminate_stops_a_map_running_in_another_thread(tmp_path, monkeypatch):
    pool, held = _pool_on_processes_that_knows_gated(tmp_path, monkeypatch)
    outcome: list = []

    def run_map() -> None:
        try:
            outcome.append(pool.starmap(gated, [(str(held), x) for x in range(4)], chunksize=1))
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcome.append(exc)

    caller = threading.Thread(target=run_map)
    caller.start()
    pid = started_pid(held, 0)
    pool.terminate()
    caller.join()
    assert isinstance(outcome[0], amorsize.RunCancelledError), outcome
    assert stopped(pid)


def test_terminate_does_not_wait_for_work_running_in_its_threads(tmp_path):
    release = threading.Event()

    def wait_for_release(x: int) -> int:
        release.wait()
        return x

    pool = Pool(2)
    result = pool.map_async(wait_for_release, range(10))  # measured here, on one of its threads
    pool.terminate()
    pool.join()
    with pytest.raises(amorsize.RunCancelledError):
        result.get(timeout=30)
    release.set()


@pytest.mark.parametrize("use", [
    lambda p: p.apply(square, (1,)),
    lambda p: p.apply_async(square, (1,)),
    lambda p: p.map(square, [1]),
    lambda p: p.map_async(square, [1]),
    lambda p: p.starmap_async(power, [(1, 2)]),
    lambda p: p.imap(square, [1]),
])
def test_a_closed_pool_refuses_work_with_value_error(use):
    pool = Pool(1)
    pool.close()
    with pytest.raises(ValueError, match="Pool not running"):
        use(pool)


def test_join_while_running_is_a_value_error():
    pool = Pool(1)
    with pytest.raises(ValueError, match="close"):
        pool.join()
    pool.close()
    pool.join()


def test_entering_a_terminated_pool_is_a_value_error():
    pool = Pool(1)
    with pool:
        pass
    with pytest.raises(ValueError, match="not running"), pool:
        pass


@pytest.mark.parametrize("processes", [0, -3])
def test_processes_below_one_is_refused_at_construction(processes):
    with pytest.raises(amorsize.InvalidArgumentError, match=r"processes must be at least 1"):
        Pool(processes)
    assert issubclass(amorsize.InvalidArgumentError, ValueError)


@pytest.mark.parametrize("processes", ["x", 2.0, True])
def test_processes_of_another_type_is_refused_at_construction(processes):
    with pytest.raises(amorsize.InvalidArgumentTypeError, match="processes must be an int"):
        Pool(processes)
    assert issubclass(amorsize.InvalidArgumentTypeError, TypeError)


def test_initializer_must_be_callable():
    with pytest.raises(amorsize.InvalidArgumentTypeError, match="initializer must be callable"):
        Pool(1, initializer=42)


@pytest.mark.parametrize("initargs", [5, "abc"])
def test_initargs_must_be_a_tuple_of_arguments(initargs):
    with pytest.raises(amorsize.InvalidArgumentTypeError, match="initargs must be a tuple"):
        Pool(1, initializer=set_tag, initargs=initargs)


def test_initargs_may_be_any_iterable_of_arguments():
    with Pool(1, initializer=set_tag, initargs=["listed"]) as pool:
        assert pool.apply(read_tag) == "listed"


@pytest.mark.parametrize("value", [0, -1, 0.5, "12"])
def test_maxtasksperchild_must_be_an_int_of_at_least_one(value):
    with pytest.raises(amorsize.InvalidArgumentError, match="maxtasksperchild must be an int"):
        Pool(1, maxtasksperchild=value)


def test_maxtasksperchild_is_refused_with_the_fork_start_method():
    with pytest.raises(amorsize.InvalidArgumentError, match="maxtasksperchild=5 cannot"):
        Pool(1, maxtasksperchild=5, context=multiprocessing.get_context("fork"))


def test_context_must_be_a_multiprocessing_context():
    with pytest.raises(amorsize.InvalidArgumentTypeError, match="context must be"):
        Pool(1, context="spawn")


def test_a_pool_cannot_be_pickled():
    with Pool(1) as pool, pytest.raises(NotImplementedError, match="cannot be pickled"):
        pickle.dumps(pool)
