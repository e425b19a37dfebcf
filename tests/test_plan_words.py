"""``Plan.explain()`` starts with one sentence a newcomer reads; ``repr(plan)`` is one short line.
Plans are built from given figures here: what the words say must follow the figures."""

from __future__ import annotations

from amorsize.plan import Machine, Plan
from amorsize.workload import Profile, Workload


def _plan(executor, n_jobs, chunksize, predictions, *, n=400, done=0, cpu=1.0, seconds=2e-3):
    serial = predictions.get("serial")
    mine = predictions.get(executor)
    speedup = serial / mine if serial and mine else 1.0
    return Plan(executor, n_jobs, chunksize, speedup, ["a reason"],
                Profile(seconds, per_item_spread=0.1, cpu_ratio=cpu, n_measured=8),
                Workload(n, already_done=done), predictions=predictions,
                overheads={"process_start": 0.4, "process_per_byte": 5e-9},
                machine=Machine(2, "forkserver"))


def test_a_parallel_plan_says_what_an_item_costs_and_what_the_workers_buy():
    plan = _plan("process", 2, 25, {"serial": 0.8, "process": 0.42}, done=8)
    first = plan.explain().splitlines()[0]
    assert first == ("Each item takes about 2.00 ms of computing; 2 processes should finish the "
                     "392 items left after measuring (25 items at a time) in about 420.00 ms "
                     "instead of 800.00 ms one after another (1.90x as fast).")


def test_waiting_work_on_threads_says_it_mostly_waits():
    plan = _plan("thread", 32, 4, {"serial": 2.0, "thread": 0.2}, cpu=0.05)
    first = plan.explain().splitlines()[0]
    assert first.startswith("Each item takes about 2.00 ms, mostly waiting (5% of it computing);"
                            " 32 threads should finish the 400 items")


def test_a_serial_plan_says_the_items_run_here_and_what_workers_would_have_cost():
    plan = _plan("serial", 1, 400, {"serial": 0.01, "process": 0.5}, seconds=25e-6)
    assert plan.explain().splitlines()[0] == (
        "Each item takes about 25.0 µs of computing; the 400 items run here, one after another, "
        "in about 10.00 ms: handing them to process workers would take 500.00 ms.")


def test_a_plan_with_nothing_left_and_an_empty_input_say_so():
    assert "nothing is left to run" in _plan("serial", 1, 1, {}, n=8, done=8).summary()
    assert _plan("serial", 1, 1, {}, n=0).summary() == (
        "The input is empty: there is nothing to run.")


def test_the_figures_after_the_sentence_carry_their_units_and_names():
    text = _plan("process", 2, 25, {"serial": 0.8, "process": 0.42}).explain()
    assert "  plan: process, n_jobs=2, chunksize=25" in text
    assert "item times vary by 10% (standard deviation over the mean)" in text
    assert "pool costs: process pool start 400.00 ms, process per byte sent 5.00 ns/B" in text
    assert "machine: 2 usable CPUs, start method forkserver" in text


def test_the_repr_is_one_short_line():
    plan = _plan("process", 2, 25, {"serial": 0.8, "process": 0.42})
    assert repr(plan) == "Plan(process, n_jobs=2, chunksize=25, speedup 1.90x, 400 items)"


def test_a_cluster_plan_says_the_cluster_runs_the_batches():
    from amorsize.plan import Cluster

    plan = _plan("serial", 2, 125, {"serial": 0.5}, n=1000)
    plan.cluster = Cluster("tcp://127.0.0.1:8786", {"a": 1, "b": 1}, 1e-3, 2e-3)
    plan.estimated_speedup = 4.0
    assert plan.summary() == (
        "Each item takes about 2.00 ms of computing; the cluster's 2 workers × 1 thread should "
        "finish the 1,000 items (batches of up to 125) in about 500.00 ms instead of 2.00 s one "
        "after another (4.00x as fast).")
    assert "  plan: dask.distributed, 2 threads, batches of up to 125" in plan.explain()
