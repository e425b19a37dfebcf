"""The joblib backend "amorsize" behaves as joblib requires of a backend (joblib's own
test_parallel.py is the reference), and adds warm shared pools and learned batch sizes."""

from __future__ import annotations

import contextlib
import multiprocessing
import threading

import cloudpickle
import joblib
import joblib_helpers as h
import pytest
from core_helpers import FakeClock
from joblib import Parallel, delayed, parallel_config
from plugin_helpers import Recorder, registered

import amorsize
import amorsize_joblib
from amorsize.optimizer.learned import LEARNED, function_key
from amorsize_joblib import AmorsizeBackend
from amorsize_joblib import backend as backend_module
from amorsize_joblib.measure import Measurement

cloudpickle.register_pickle_by_value(h)

pytestmark = pytest.mark.timeout(60)


def process_backend() -> AmorsizeBackend:
    return AmorsizeBackend(executor="process")


def test_import_registers_the_backend_and_register_is_idempotent():
    assert joblib.parallel.BACKENDS["amorsize"] is AmorsizeBackend
    amorsize_joblib.register()
    amorsize_joblib.register(make_default=False)
    assert joblib.parallel.BACKENDS["amorsize"] is AmorsizeBackend
    assert joblib.parallel.DEFAULT_BACKEND == "loky"


def test_parallel_config_by_name_runs_the_backend():
    with parallel_config(backend="amorsize"):
        out = Parallel(n_jobs=2)(delayed(h.square)(i) for i in range(50))
    assert out == [i * i for i in range(50)]


def test_parallel_backend_context_by_name_runs_the_backend():
    with joblib.parallel_backend("amorsize", n_jobs=2):
        out = Parallel()(delayed(h.square)(i) for i in range(20))
    assert out == [i * i for i in range(20)]


@pytest.mark.parametrize("executor", ["serial", "thread", "process"])
def test_results_come_back_in_input_order(executor):
    backend = AmorsizeBackend(executor=executor)
    out = Parallel(n_jobs=2, backend=backend)(
        delayed(h.wait)(i, 0.001 * (i % 3)) for i in range(60))
    assert out == list(range(60))
    assert backend.plan.executor_type == executor


def test_return_as_generator_yields_results_in_order():
    gen = Parallel(n_jobs=2, backend="amorsize", return_as="generator")(
        delayed(h.wait)(i, 0.001) for i in range(30))
    assert not isinstance(gen, list)
    assert list(gen) == list(range(30))


def test_return_as_generator_unordered_yields_every_result():
    gen = Parallel(n_jobs=2, backend=AmorsizeBackend(executor="thread"),
                   return_as="generator_unordered")(
        delayed(h.wait)(i, 0.001 * (5 - i % 5)) for i in range(30))
    assert sorted(gen) == list(range(30))


def test_timeout_raises_timeout_error():
    with pytest.raises(multiprocessing.TimeoutError):
        Parallel(n_jobs=2, backend="amorsize", timeout=0.1)(
            delayed(h.wait)(i, 0.5) for i in range(4))


@pytest.mark.parametrize("executor", ["serial", "thread", "process"])
def test_task_error_keeps_its_original_type(executor):
    with pytest.raises(h.TaskError, match="item 7 is bad"):
        Parallel(n_jobs=2, backend=AmorsizeBackend(executor=executor))(
            delayed(h.fail_on)(i, 7) for i in range(40))


def test_abort_on_first_error_replaces_the_pool_only_if_it_held_the_calls_work():
    """Process pools are counted by the events of this test's calls: a thread pool an earlier
    test cancelled (its items still sleeping) may be let go while these run."""
    Parallel(n_jobs=2, backend=process_backend())(delayed(h.square)(i) for i in range(4))
    with registered(Recorder()) as recorder:
        with pytest.raises(h.TaskError):
            Parallel(n_jobs=2, backend=process_backend())(
                delayed(h.fail_on)(i, 3) for i in range(200))
        out = Parallel(n_jobs=2, backend=process_backend())(
            delayed(h.square)(i) for i in range(20))
    assert out == [i * i for i in range(20)]
    process = [(event, stats) for event, key, stats in recorder.events if key[0] == "process"]
    cancelled = [e for e, stats in process if e == "evicted" and stats["reason"] == "cancelled"]
    created = [e for e, _ in process if e == "created"]
    assert len(created) == len(cancelled) <= 1


def test_abort_does_not_break_a_concurrent_call_on_the_same_pool():
    results: list = []

    def other_call():
        results.extend(Parallel(n_jobs=2, backend=process_backend())(
            delayed(h.wait)(i, 0.005) for i in range(60)))

    thread = threading.Thread(target=other_call)
    thread.start()
    with pytest.raises(h.TaskError):
        Parallel(n_jobs=2, backend=process_backend())(
            delayed(h.fail_on)(i, 2) for i in range(100))
    thread.join(30)
    assert results == list(range(60))


def test_nested_parallel_runs_inner_calls_on_threads_or_sequentially():
    out = Parallel(n_jobs=2, backend=process_backend())(
        delayed(h.nested_sum)(n) for n in (3, 4, 5, 6))
    assert [s for s, _ in out] == [5, 14, 30, 55]
    assert {name for _, name in out} <= {"_CappedThreadingBackend", "AmorsizeBackend",
                                         "SequentialBackend", "ThreadingBackend"}
    assert all(joblib.effective_n_jobs() >= 1 for _ in out)


def test_nested_backend_never_starts_processes():
    nested, _ = AmorsizeBackend(nesting_level=0).get_nested_backend()
    with parallel_config(backend=nested):
        out = Parallel(n_jobs=-1)(delayed(h.pid)() for _ in range(6))
    assert set(out) == {__import__("os").getpid()}


def test_require_sharedmem_runs_in_this_process_sharing_memory():
    seen: list[int] = []
    backend = AmorsizeBackend()
    Parallel(n_jobs=2, backend=backend, require="sharedmem")(
        delayed(seen.append)(i) for i in range(50))
    assert sorted(seen) == list(range(50))
    assert backend.plan.executor_type in ("serial", "thread")


def test_prefer_threads_keeps_work_in_this_process():
    backend = AmorsizeBackend()
    with parallel_config(backend=backend, prefer="threads"):
        out = Parallel(n_jobs=2)(delayed(h.pid)() for _ in range(10))
    assert set(out) == {__import__("os").getpid()}


def test_n_jobs_none_in_parallel_config_runs_in_parallel():
    LEARNED.remember(function_key(h.wait), amorsize.Profile(  # tasks that wait, as measured
        per_item_seconds=0.003, cpu_ratio=0.0, thread_scaling=2.0, n_measured=8))
    backend = AmorsizeBackend()
    with parallel_config(backend=backend):
        parallel = Parallel()
        out = parallel(delayed(h.wait)(i, 0.003) for i in range(200))
    assert out == list(range(200))
    assert parallel.n_jobs == -1
    assert backend.plan.executor_type == "thread" and backend.plan.n_jobs > 1


def test_workers_know_the_backend_name():
    out = Parallel(n_jobs=2, backend=process_backend())(
        delayed(h.inner_amorsize)(n) for n in (3, 4))
    assert out == [(5, True, "1"), (14, True, "1")]


def test_lambdas_and_closures_run_on_processes():
    offset = 10
    out = Parallel(n_jobs=2, backend=process_backend())(
        delayed(lambda x: x + offset)(i) for i in range(20))
    assert out == [i + 10 for i in range(20)]


def test_second_call_reuses_the_warm_pool():
    manager = amorsize.get_global_pool_manager()
    Parallel(n_jobs=2, backend=process_backend())(delayed(h.square)(i) for i in range(10))
    before = manager.get_stats()
    pids = Parallel(n_jobs=2, backend=process_backend())(delayed(h.pid)(i) for i in range(10))
    after = manager.get_stats()
    assert after["creations"] == before["creations"]
    assert after["hits"] > before["hits"]
    worker_pids = {p for pool in after["pools"].values() for p in pool["worker_pids"]}
    assert set(pids) <= worker_pids


def test_trivial_tasks_get_batches_joblib_holds_few_of_and_the_plan_is_remembered(monkeypatch):
    def triple(x):
        return 3 * x

    FakeClock().install(monkeypatch)  # measured as costing nothing, however busy the machine
    LEARNED.forget(function_key(triple))
    first = AmorsizeBackend()
    assert Parallel(n_jobs=2, backend=first)(delayed(triple)(i) for i in range(20_000)) == [
        3 * i for i in range(20_000)]
    assert first.plan.executor_type == "serial"
    assert first.n_probed > 0
    # joblib holds n_jobs batches at once: together no more than SERIAL_HELD_TASKS
    assert max(first.batch_sizes) == backend_module.SERIAL_HELD_TASKS // 2

    again = AmorsizeBackend()
    Parallel(n_jobs=2, backend=again)(delayed(triple)(i) for i in range(20_000))
    assert again.n_probed == 0
    assert again.plan.executor_type == "serial"
    assert max(again.batch_sizes) == backend_module.SERIAL_HELD_TASKS // 2
    assert LEARNED.recall(function_key(triple)).runs >= 2


@pytest.mark.parametrize(("per_item", "n_jobs", "size"), [
    (0.0, 2, backend_module.SERIAL_HELD_TASKS // 2),
    (1e-9, 2, backend_module.SERIAL_HELD_TASKS // 2),
    (backend_module.SERIAL_BATCH_SECONDS / 10, 2, 10),
    (backend_module.SERIAL_BATCH_SECONDS * 5, 2, 1),
    (1e-9, 1024, backend_module.SERIAL_MIN_BATCH),
])
def test_a_serial_plans_batch_is_a_few_milliseconds_of_work_held_few_at_a_time(
        per_item, n_jobs, size):
    assert backend_module.serial_batch_size(per_item, n_jobs) == size


def test_the_last_slice_of_a_known_input_is_shared_in_n_jobs_batches(monkeypatch):
    def halve(x):
        return x // 2

    FakeClock().install(monkeypatch)
    LEARNED.remember(function_key(halve), amorsize.Profile(per_item_seconds=1e-7, n_measured=8))
    full = backend_module.SERIAL_HELD_TASKS // 2  # a serial batch of trivial tasks, n_jobs=2
    n = 4 * full - 24  # two full batches, then less than two
    backend = AmorsizeBackend()
    out = Parallel(n_jobs=2, backend=backend)([delayed(halve)(i) for i in range(n)])
    assert out == [i // 2 for i in range(n)]
    assert backend.plan.executor_type == "serial"
    # after joblib's first single-task batches: full batches, then the rest halved (joblib by
    # itself cuts the last slice of its input into batches twenty times smaller)
    first = len(backend.batch_sizes) - sum(1 for s in backend.batch_sizes if s > 1)
    rest = n - first - 2 * full
    assert backend.batch_sizes[first:] == [full, full, rest // 2, rest - rest // 2]


def test_a_pool_plans_batches_carry_the_whole_input_in_n_jobs_batches():
    LEARNED.remember(function_key(h.wait), amorsize.Profile(
        per_item_seconds=0.01, cpu_ratio=0.0, thread_scaling=2.0, n_measured=8))
    backend = AmorsizeBackend()
    out = Parallel(n_jobs=2, backend=backend)([delayed(h.wait)(i, 0.001) for i in range(100)])
    assert out == list(range(100))
    assert backend.plan.executor_type == "thread"
    first = len(backend.batch_sizes) - sum(1 for s in backend.batch_sizes if s > 1)
    assert backend.batch_sizes[first:] == [(100 - first) // 2] * 2


class _WatchingRetrieval(AmorsizeBackend):
    """Notes how many batches are still unsettled when joblib starts retrieving results, then
    lets the tasks blocked on ``release`` go on."""

    def __init__(self, release: threading.Event, **kwargs) -> None:
        super().__init__(**kwargs)
        self.release = release
        self.unsettled_at_retrieval: list[int] = []

    @contextlib.contextmanager
    def retrieval_context(self):
        with super().retrieval_context():
            self.unsettled_at_retrieval.append(self._unsettled.count)
            self.release.set()
            yield


def test_a_list_call_starts_retrieving_once_every_batch_has_settled():
    release = threading.Event()
    backend = _WatchingRetrieval(release, executor="thread")
    out = Parallel(n_jobs=2, backend=backend)(delayed(h.wait)(i, 0.001) for i in range(40))
    assert out == list(range(40))
    assert backend.unsettled_at_retrieval == [0]


def test_a_generator_call_starts_retrieving_at_once():
    release = threading.Event()
    backend = _WatchingRetrieval(release, executor="thread")
    out = Parallel(n_jobs=2, backend=backend, return_as="generator")(
        delayed(_wait_for)(release, i) for i in range(8))
    assert list(out) == [True] * 8
    assert backend.unsettled_at_retrieval[0] > 0


def _wait_for(release: threading.Event, x: int, bad: int = -1, ended: list | None = None) -> bool:
    if x == bad:
        raise h.TaskError(f"item {x} is bad")
    released = release.wait(timeout=5)
    if ended is not None:
        ended.append(released)
    return released


def test_a_list_call_raises_a_tasks_error_without_waiting_for_the_other_batches():
    release = threading.Event()
    ended: list[bool] = []  # per blocked task: True if released, False if it timed out
    with pytest.raises(h.TaskError):
        Parallel(n_jobs=2, backend=AmorsizeBackend(executor="thread"))(
            delayed(_wait_for)(release, i, bad=1, ended=ended) for i in range(4))
    assert False not in ended  # raised while the other task was still blocked
    release.set()


def test_batches_carry_one_nested_backend_made_once():
    backend = AmorsizeBackend()
    nested, n_jobs = backend.get_nested_backend()
    assert backend.get_nested_backend()[0] is nested
    assert AmorsizeBackend().get_nested_backend()[0] is nested
    assert nested.nesting_level == 1 and n_jobs is None


def test_io_bound_tasks_get_more_threads_than_cores():
    # what the probe measures for tasks that wait: no CPU, two threads overlap fully
    LEARNED.remember(function_key(h.wait), amorsize.Profile(
        per_item_seconds=0.01, cpu_ratio=0.0, thread_scaling=2.0, n_measured=8))
    backend = AmorsizeBackend()
    out = Parallel(n_jobs=-1, backend=backend)(delayed(h.wait)(i, 0.01) for i in range(100))
    assert out == list(range(100))
    assert backend.plan.executor_type == "thread"
    assert backend.plan.n_jobs > amorsize.system.usable_cpus()


def test_n_jobs_one_is_a_plain_loop():
    parallel = Parallel(n_jobs=1, backend="amorsize")
    assert parallel(delayed(h.square)(i) for i in range(5)) == [0, 1, 4, 9, 16]
    assert type(parallel._backend).__name__ == "SequentialBackend"


def test_inner_max_num_threads_is_accepted():
    with parallel_config(backend="amorsize", inner_max_num_threads=1):
        out = Parallel(n_jobs=2)(delayed(h.square)(i) for i in range(10))
    assert out == [i * i for i in range(10)]


def test_executor_contradicting_sharedmem_is_refused():
    with pytest.raises(amorsize.InvalidArgumentError, match="executor='process'"):
        Parallel(n_jobs=2, backend=process_backend(), require="sharedmem")(
            delayed(h.square)(i) for i in range(3))


def test_worker_crash_raises_worker_crashed_error():
    import os

    with pytest.raises(amorsize.WorkerCrashedError):
        Parallel(n_jobs=2, backend=process_backend())(
            delayed(os._exit)(1) for _ in range(2))
    out = Parallel(n_jobs=2, backend=process_backend())(delayed(h.square)(i) for i in range(4))
    assert out == [0, 1, 4, 9]


def test_verbose_says_what_the_plan_runs_on(capsys):
    with parallel_config(backend="amorsize"):
        Parallel(n_jobs=2, verbose=1)(delayed(h.square)(i) for i in range(50))
    err = capsys.readouterr().err
    assert "amorsize runs it on " in err and "estimated speedup" in err


def test_verbose_prints_no_stray_finished_lines_while_measuring(capsys):
    with parallel_config(backend="amorsize"):
        Parallel(n_jobs=2, verbose=10)(delayed(h.wait)(i, 0.002) for i in range(200))
    err = capsys.readouterr().err
    assert "Done   1 out of   1" not in err and "Done   2 out of   2" not in err
    assert err.count("finished") == 1


@pytest.mark.parametrize("calls", [1, 2])  # measuring, then recalled
def test_a_serial_call_says_once_that_it_is_done(capsys, calls, monkeypatch):
    """Its batches run in the calling thread inside joblib's first dispatch, where joblib takes
    each completion for the end: 20 "finished" lines for 1,000 tasks, 4 on the next call."""
    FakeClock().install(monkeypatch)  # measured as costing nothing: serial, however busy
    with parallel_config(backend="amorsize"):
        for _ in range(calls):
            capsys.readouterr()
            out = Parallel(n_jobs=2, verbose=10)(delayed(h.square)(i) for i in range(1000))
    assert out == [i * i for i in range(1000)]
    err = capsys.readouterr().err
    assert "on the calling thread" in err
    assert err.count("finished") == 1 and "Done 1000 out of 1000" in err


def test_a_call_that_ends_while_measuring_says_once_that_it_is_done(capsys):
    with parallel_config(backend="amorsize"):
        assert Parallel(n_jobs=2, verbose=10)(delayed(h.square)(i) for i in range(3)) == [0, 1, 4]
    err = capsys.readouterr().err
    assert err.count("finished") == 1 and "Done   3 out of   3" in err


def test_the_task_count_of_a_call_over_a_generator_is_remembered(monkeypatch):
    def quadruple(x):
        return 4 * x

    FakeClock().install(monkeypatch)  # measured as costing nothing: a serial plan mid-call
    LEARNED.forget(function_key(quadruple))
    Parallel(n_jobs=2, backend=AmorsizeBackend())(delayed(quadruple)(i) for i in range(3000))
    assert LEARNED.recall(function_key(quadruple)).last_n_items == 3000


def test_slow_single_tasks_still_get_the_overlap_test():
    """Two tasks of 20 ms spend the measuring budget: the test of two at once on two threads
    is still due (without it, C code that releases the GIL was taken for GIL-bound)."""
    measurement = Measurement(None, thread_pair=lambda: None)  # type: ignore[arg-type,return-value]
    for _ in range(2):
        measurement.probe.observe(0.02, 0.02)
    assert measurement.test_size() == 2
    assert not measurement.enough()
    measurement.probe.thread_scaling = 1.9  # the test made, a clear overlap
    measurement.overlap_tests = 1
    assert measurement.test_size() == 0 and measurement.enough()


def test_the_overlap_test_is_made_again_on_later_batches_until_it_is_clear():
    """joblib's first batches hold one task each: a test that showed no clear overlap is made
    again on the next batches (the machine's other work makes overlap look smaller), up to
    the probe's number of tests."""
    measurement = Measurement(None, thread_pair=lambda: None)  # type: ignore[arg-type,return-value]
    for _ in range(2):
        measurement.probe.observe(0.02, 0.02)
    measurement.probe.thread_scaling, measurement.overlap_tests = 1.2, 1
    assert measurement.test_size() == 2
    measurement.overlap_tests = 3
    assert measurement.test_size() == 0 and measurement.enough()


def test_no_overlap_test_without_threads():
    measurement = Measurement(None, thread_pair=None)
    for _ in range(3):
        measurement.probe.observe(0.002, 0.002)
    assert measurement.test_size() == 0 and measurement.batch_size() == 1
    assert measurement.enough()


def test_parallel_inside_an_amorsize_thread_runs_as_a_plain_loop():
    def backend_name(_):
        parallel = Parallel(n_jobs=2, backend="amorsize")
        assert parallel(delayed(h.square)(i) for i in range(4)) == [0, 1, 4, 9]
        return type(parallel._backend).__name__

    names = amorsize.map(backend_name, range(4), executor="thread", n_jobs=2)
    assert set(names) == {"SequentialBackend"}


def test_verbose_is_never_rewritten_during_a_call():
    parallel = Parallel(n_jobs=2, verbose=10, backend="amorsize", require="sharedmem")
    seen = parallel(delayed(lambda _: parallel.verbose)(i) for i in range(40))
    assert set(seen) == {10}


def test_a_task_error_in_the_calling_thread_stops_the_batches_waiting_there(monkeypatch):
    ran: list[int] = []

    def note_or_fail(x):
        ran.append(x)
        if x == 2:
            raise h.TaskError(f"item {x} is bad")
        return x

    FakeClock().install(monkeypatch)  # measured as costing nothing: run in the calling thread
    with pytest.raises(h.TaskError):
        Parallel(n_jobs=2, backend=AmorsizeBackend(), require="sharedmem")(
            delayed(note_or_fail)(i) for i in range(4))
    assert ran == [0, 1, 2]
