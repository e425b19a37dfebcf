"""amorsize.map / imap / optimize as a user sees them."""

from __future__ import annotations

import functools
import itertools
import os
import threading
import time
import warnings

import pytest
from core_helpers import (
    FakeClock,
    MarkOnce,
    Recorder,
    TwoPartError,
    burn,
    computes_on_the_fake_clock,
    die_in_worker,
    fail_on_seven,
    fail_two_part_on_seven,
    nap,
    nested_map,
    pid_of,
    square,
    waits_on_the_fake_clock,
)
from plugin_helpers import Measured, registered

import amorsize
from amorsize.optimizer.decision import _DECISIONS
from amorsize.optimizer.learned import LEARNED, function_key
from amorsize.optimizer.sampling import spread_indices


@pytest.mark.parametrize("executor", ["serial", "thread", "process"])
def test_results_come_back_in_input_order(executor):
    data = list(range(200))
    assert amorsize.map(square, data, executor=executor, chunksize=7) == [x * x for x in data]


@pytest.mark.parametrize("executor", [None, "thread", "process"])
def test_every_item_is_computed_exactly_once(tmp_path, executor):
    func = MarkOnce(tmp_path)
    data = list(range(150))
    assert amorsize.map(func, data, executor=executor, chunksize=4) == [x * 2 for x in data]
    assert sorted(int(p.name) for p in tmp_path.iterdir()) == data


def test_items_measured_while_sampling_are_not_run_again():
    record = Recorder()
    data = list(range(1000))
    assert amorsize.map(record, data) == data
    assert sorted(record.calls) == data


def test_optimize_samples_items_spread_over_the_data_and_keeps_their_results():
    plan = amorsize.optimize(square, list(range(10_000)))
    indices = sorted(plan.sampled_results)
    assert len(indices) >= 2
    assert indices[0] > 0 and indices[-1] > 5000
    assert all(plan.sampled_results[i] == i * i for i in indices)


def test_run_plan_reuses_what_optimize_measured(tmp_path):
    func = MarkOnce(tmp_path)
    plan = amorsize.optimize(func, list(range(50)))
    assert amorsize.run_plan(func, plan) == [x * 2 for x in range(50)]


def test_map_accepts_generators_and_other_iterables():
    assert amorsize.map(square, (x for x in range(100))) == [x * x for x in range(100)]
    assert amorsize.map(square, {3: "a", 1: "b"}) == [9, 1]
    assert amorsize.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_imap_is_lazy_over_a_generator():
    consumed = itertools.count()

    def items():
        for x in range(10**7):
            next(consumed)
            yield x

    results = amorsize.imap(square, items(), executor="thread", n_jobs=2, chunksize=10)
    assert list(itertools.islice(results, 100)) == [x * x for x in range(100)]
    assert next(consumed) < 10_000


def test_imap_yields_everything_in_order():
    assert list(amorsize.imap(square, iter(range(3000)))) == [x * x for x in range(3000)]


def test_optimize_puts_consumed_iterator_items_back():
    plan = amorsize.optimize(square, iter(range(100)))
    assert list(plan.data) == list(range(100))


def test_empty_input_gives_an_empty_list():
    assert amorsize.map(square, []) == []
    assert list(amorsize.imap(square, iter([]))) == []
    assert amorsize.optimize(square, []).executor_type == "serial"


@pytest.mark.parametrize("executor", ["serial", "thread", "process"])
def test_error_in_the_function_keeps_its_type_and_message(executor):
    with pytest.raises(KeyError, match="bad item 7"):
        amorsize.map(fail_on_seven, list(range(20)), executor=executor, chunksize=3)


def test_error_raised_while_sampling_keeps_its_type():
    with pytest.raises(KeyError, match="bad item 7"):
        amorsize.map(fail_on_seven, [7, 7, 7])


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"func": 42, "data": [1]}, TypeError, "func"),
        ({"func": square, "data": None}, TypeError, "data"),
        ({"func": square, "data": 5}, TypeError, "data"),
        ({"func": square, "data": [1], "n_jobs": 0}, ValueError, "n_jobs"),
        ({"func": square, "data": [1], "n_jobs": "2"}, TypeError, "n_jobs"),
        ({"func": square, "data": [1], "executor": "gpu"}, ValueError, "executor"),
        ({"func": square, "data": [1], "chunksize": 0}, ValueError, "chunksize"),
        ({"func": square, "data": [1], "min_speedup": 0.5}, ValueError, "min_speedup"),
        ({"func": square, "data": [1], "sample_size": -1}, ValueError, "sample_size"),
        ({"func": square, "data": [1], "resample": "yes"}, TypeError, "resample"),
    ],
)
@pytest.mark.parametrize("entry", [amorsize.map, amorsize.optimize, amorsize.imap])
def test_bad_input_is_rejected_naming_the_argument(entry, kwargs, error, names):
    kwargs = dict(kwargs)
    with pytest.raises(error, match=names):
        entry(kwargs.pop("func"), kwargs.pop("data"), **kwargs)


def test_process_executor_runs_in_worker_processes():
    pids = set(amorsize.map(pid_of, list(range(20)), executor="process", n_jobs=2, chunksize=1))
    workers = set(amorsize.get_global_pool_manager().get_pool(2, "process").worker_pids())
    assert pids - {os.getpid()}, "every item ran in the caller"
    assert pids - {os.getpid()} <= workers


def test_lambdas_and_closures_run_on_processes():
    offset = 5
    assert amorsize.map(lambda x: x + offset, list(range(30)), executor="process",
                        chunksize=4) == [x + 5 for x in range(30)]


def test_trivial_work_stays_serial(monkeypatch):
    FakeClock().install(monkeypatch)   # measured as costing nothing, however busy the machine
    plan = amorsize.optimize(square, list(range(100_000)))
    assert plan.executor_type == "serial"
    assert any("serial" in r for r in plan.reasons)


def test_io_bound_work_gets_threads_sized_to_latency(monkeypatch):
    FakeClock().install(monkeypatch)   # 3 ms of waiting per call, however busy the machine
    plan = amorsize.optimize(waits_on_the_fake_clock, list(range(300)))
    assert plan.executor_type == "thread"
    assert plan.n_jobs > os.cpu_count()
    assert plan.profile.cpu_ratio == 0.0


@pytest.mark.timeout(120)
def test_cpu_bound_python_work_goes_to_processes(monkeypatch):
    FakeClock().install(monkeypatch)   # 20 ms of computing per call, holding the GIL
    plan = amorsize.optimize(functools.partial(computes_on_the_fake_clock, seconds=0.02),
                             list(range(150)))
    assert plan.profile.cpu_ratio == 1.0 and plan.profile.thread_scaling == 1.0
    assert plan.executor_type == "process", plan.explain()
    assert plan.estimated_speedup > 1.2


def test_large_payload_with_cheap_work_is_not_sent_to_processes():
    data = [bytes(1_000_000) for _ in range(60)]
    plan = amorsize.optimize(len, data)
    assert plan.executor_type != "process", plan.explain()


def test_unpicklable_function_runs_on_threads_or_serially_with_a_reason():
    lock = threading.Lock()

    def holds_lock(x):
        with lock:
            return burn(x, 5000)

    plan = amorsize.optimize(holds_lock, list(range(100)))
    assert plan.executor_type in ("serial", "thread")
    assert not plan.profile.picklable
    assert any("pickle" in r for r in plan.reasons)
    assert amorsize.map(holds_lock, list(range(10))) == [burn(x, 5000) for x in range(10)]


@pytest.mark.parametrize(("resample", "measures_again"), [(False, False), (True, True)])
def test_a_function_seen_before_is_sampled_again_only_when_asked(resample, measures_again):
    record = Recorder()
    amorsize.optimize(record, list(range(500)))
    first = len(record.calls)
    amorsize.optimize(record, list(range(500)), resample=resample)
    assert first > 0
    assert (len(record.calls) > first) is measures_again


def test_finished_runs_are_remembered_and_correct_the_profile():
    amorsize.map(nap, list(range(40)), executor="process", n_jobs=2)
    memory = LEARNED.recall(function_key(nap))
    assert memory is not None and memory.runs == 1
    assert memory.profile.measured_by == "runs"
    assert memory.profile.per_item_seconds == pytest.approx(0.003, rel=0.9)


def test_forced_executor_and_chunksize_are_honoured_and_n_jobs_caps_workers():
    plan = amorsize.optimize(square, list(range(1000)), executor="thread", n_jobs=3, chunksize=11)
    assert (plan.executor_type, plan.chunksize) == ("thread", 11)
    assert 2 <= plan.n_jobs <= 3
    capped = amorsize.optimize(nap, list(range(300)), n_jobs=4)
    assert capped.n_jobs <= 4


def test_explain_shows_the_measured_figures_and_reasons():
    text = amorsize.optimize(nap, list(range(100))).explain()
    for word in ("per item", "CPU/wall", "predicted", "why"):
        assert word in text


@pytest.mark.timeout(120)
def test_a_worker_dying_raises_instead_of_hanging_and_the_next_call_works():
    with pytest.raises(amorsize.WorkerCrashedError):
        amorsize.map(die_in_worker, list(range(40)), executor="process", n_jobs=2, chunksize=2)
    assert amorsize.map(square, list(range(40)), executor="process", n_jobs=2,
                        chunksize=2) == [x * x for x in range(40)]


@pytest.mark.timeout(120)
def test_32_threads_calling_map_at_once_all_get_their_results():
    from concurrent.futures import ThreadPoolExecutor

    def call(k):
        func = (square, nap)[k % 2]
        data = list(range(k, k + 60))
        return amorsize.map(func, data) == [func(x) for x in data]

    with ThreadPoolExecutor(32) as ex:
        assert all(ex.map(call, range(32)))


def test_an_iterator_of_unknown_length_is_planned_for_the_size_of_the_last_run():
    amorsize.map(square, list(range(300)))
    memory = LEARNED.recall(function_key(square))
    memory.corrections.clear()  # what the run taught about the model is not under test here
    _DECISIONS.forget()  # a fresh decision, so its predictions are for this call
    plan = amorsize.optimize(square, iter(range(300)))
    assert plan.n_items is None
    expected = (memory.last_n_items - len(plan.sampled_results)) * plan.profile.per_item_seconds
    assert plan.predictions["serial"] == pytest.approx(expected)


class _NoProcessPools:
    """No pool runs pure-Python work in parallel: processes, nor sub-interpreters (3.14+)."""

    @amorsize.hookimpl(tryfirst=True)
    def amorsize_get_pool(self, executor_type, create):
        if executor_type in ("process", "interpreter") and create:
            raise OSError("no more processes allowed here")


def test_when_no_process_pool_can_start_the_work_still_runs_without_processes():
    amorsize.shutdown_global_pool_manager()  # no warm process pool: one would have to start
    # a second of pure-Python work a call, as measured: processes win however costly to start
    heavy = amorsize.Profile(per_item_seconds=1.0, cpu_ratio=1.0, thread_scaling=1.0,
                             n_measured=8)
    with registered(_NoProcessPools()), registered(Measured(heavy)):
        with pytest.warns(RuntimeWarning, match="could not start"):
            plan = amorsize.optimize(square, list(range(60)))
        assert plan.executor_type != "process"
        assert any("no more processes allowed here" in r for r in plan.reasons)
        # the next call keeps that decision, or tries processes again and warns again
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "amorsize: processes excluded", RuntimeWarning)
            assert amorsize.map(square, list(range(60))) == [x * x for x in range(60)]


@pytest.mark.timeout(120)
def test_the_start_method_asked_for_is_the_one_the_pool_uses():
    amorsize.map(square, list(range(20)), executor="process", n_jobs=2, start_method="spawn")
    pools = amorsize.get_global_pool_manager().get_stats()["pools"]
    assert any(p["start_method"] == "spawn" for p in pools.values())


def test_a_script_without_a_main_guard_runs_once_with_its_own_classes_by_value(tmp_path):
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""
        import dataclasses
        import amorsize

        @dataclasses.dataclass
        class Box:
            value: int

        class Bad(Exception):
            pass

        def work(box):
            if box.value < 0:
                raise Bad("negative")
            return Box(box.value * 2)

        print("top level ran")
        out = amorsize.map(work, [Box(i) for i in range(50)], executor="process", n_jobs=2)
        assert out == [Box(i * 2) for i in range(50)] and type(out[0]) is Box
        try:
            amorsize.map(work, [Box(1), Box(-1)] * 10, executor="process", n_jobs=2, chunksize=1)
        except Bad as exc:
            print("raised", type(exc).__name__, exc)
    """))
    for method in ("forkserver", "spawn"):
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             timeout=120, env={**os.environ, "AMORSIZE_START_METHOD": method})
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("top level ran") == 1, out.stdout
        assert "raised Bad negative" in out.stdout


@pytest.mark.timeout(60)
def test_a_map_inside_a_worker_runs_serially_instead_of_deadlocking_on_busy_pools():
    outer = amorsize.map(nested_map, list(range(8)), executor="thread", n_jobs=2, chunksize=1)
    assert outer == [[y * y for y in range(x, x + 20)] for x in range(8)]
    inner = amorsize.map(nested_map, list(range(4)), executor="process", n_jobs=2, chunksize=1)
    assert inner == [[y * y for y in range(x, x + 20)] for x in range(4)]


def test_forcing_processes_for_an_unpicklable_function_is_an_error_naming_the_fix():
    lock = threading.Lock()
    with pytest.raises(amorsize.InvalidArgumentError, match="executor='process'.*pickle"):
        amorsize.map(lambda x: (lock, x)[1], list(range(50)), executor="process")


@pytest.mark.parametrize("limits", [{"executor": "serial"}, {"n_jobs": 1}])
def test_when_threads_are_not_allowed_the_function_only_runs_in_the_calling_thread(limits):
    threads = set()

    def where(x):
        threads.add(threading.current_thread().name)
        return x

    assert amorsize.map(where, list(range(500)), **limits) == list(range(500))
    assert threads == {threading.current_thread().name}


def test_an_exception_whose_init_takes_other_arguments_keeps_its_type_from_processes():
    with pytest.raises(TwoPartError, match="7: seven") as info:
        amorsize.map(fail_two_part_on_seven, list(range(10)), executor="process", chunksize=1)
    assert info.value.code == 7


def test_a_slow_imap_consumer_does_not_teach_the_optimizer_that_parallel_is_slow():
    results = amorsize.imap(nap, list(range(40)), executor="thread", n_jobs=4, chunksize=2)
    for _ in results:
        time.sleep(0.002)
    assert "thread" not in LEARNED.recall(function_key(nap)).corrections


@pytest.mark.timeout(60)
def test_a_paused_imap_keeps_its_pool_while_idle_pools_are_evicted():
    manager = amorsize.get_global_pool_manager()
    saved, manager.idle_timeout = manager.idle_timeout, 0.05
    try:
        results = amorsize.imap(square, list(range(400)), executor="thread", n_jobs=4,
                                chunksize=5)
        head = list(itertools.islice(results, 10))
        time.sleep(0.2)
        manager.get_pool(3, "thread")
        assert head + list(results) == [x * x for x in range(400)]
    finally:
        manager.idle_timeout = saved


def test_serial_imap_yields_before_computing_a_large_block():
    consumed = itertools.count()

    def items():
        for x in range(10_000):
            next(consumed)
            yield x

    results = amorsize.imap(functools.partial(nap, seconds=0.0005), items(), executor="serial")
    assert list(itertools.islice(results, 20)) == list(range(20))
    assert next(consumed) < 500


def test_a_callable_object_is_not_kept_alive_by_what_amorsize_remembers():
    import gc
    import weakref

    record = Recorder()
    amorsize.map(record, list(range(100)))
    ref = weakref.ref(record)
    del record
    gc.collect()
    assert ref() is None


def test_results_measured_while_sampling_are_slotted_back_between_chunks_in_order():
    from amorsize.run.mapping import _Merger

    merger = _Merger({0: "r0", 5: "r5", 9: "r9"})
    out = []
    for chunk in (["r1", "r2"], ["r3", "r4", "r6"], ["r7", "r8"], ["r10"], ["r11", "r12"]):
        out += merger.feed(chunk)
    out += merger.rest()
    assert out == [f"r{i}" for i in range(13)]
    merger = _Merger({3: "r3"})
    assert merger.feed(["r0", "r1"]) == ["r0", "r1"]
    assert merger.feed(["r2", "r4"]) == ["r2", "r3", "r4"]
    assert merger.feed(["r5"]) == ["r5"] and merger.rest() == []


def _slow_at_2(x: int) -> int:
    if x == 2:
        time.sleep(0.5)
    return x


def test_a_slow_item_measured_while_planning_does_not_come_first_from_imap_unordered():
    # index 2 is among the items measured before the rest is dispatched (spread over 40)
    assert 2 in spread_indices(40, 8)
    out = list(amorsize.imap_unordered(_slow_at_2, range(40), executor="thread", n_jobs=4,
                                       resample=True, with_index=True))
    assert sorted(out) == [(i, i) for i in range(40)]
    assert out[0] != (2, 2)
    assert out.index((2, 2)) > out.index((7, 7))  # a fast measured item goes out first


@pytest.mark.parametrize("executor", ["serial", None])
def test_imap_unordered_with_index_pairs_each_result_with_its_position(executor):
    out = list(amorsize.imap_unordered(square, list(range(5)), executor=executor,
                                       with_index=True))
    assert sorted(out) == [(i, i * i) for i in range(5)]


@pytest.mark.parametrize("entry", [amorsize.map, amorsize.imap, amorsize.imap_unordered])
def test_progress_must_be_true_or_false(entry):
    with pytest.raises(amorsize.InvalidArgumentTypeError, match="progress must be True or False"):
        entry(square, [1, 2], progress="yes")


def _broken_input(n: int, bad: int):
    for i in range(n):
        if i == bad:
            raise KeyError("the input broke")
        yield i


@pytest.mark.parametrize("executor", ["serial", "thread", "process"])
@pytest.mark.parametrize("bad", [3, 50, 5000], ids=["while-measuring", "first-chunk", "later"])
@pytest.mark.parametrize("entry", [amorsize.imap, amorsize.imap_unordered])
def test_an_input_that_raises_gives_the_results_before_it_then_its_error(entry, bad, executor):
    out = []
    with pytest.raises(KeyError, match="the input broke"):
        for result in entry(square, _broken_input(10_000, bad), executor=executor):
            out.append(result)
    assert sorted(out) == [i * i for i in range(bad)]
