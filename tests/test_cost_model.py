"""The cost model on made-up numbers: each test is one claim about what wins when."""

from __future__ import annotations

import pytest

from amorsize.optimizer import cost_model
from amorsize.optimizer.overheads import Overheads
from amorsize.workload import Profile

OVH = Overheads(
    thread_start=100e-6, thread_per_chunk=30e-6, process_start=0.05, process_per_chunk=150e-6,
    process_latency=400e-6, process_per_byte=2e-9,
)
ALL = ("serial", "thread", "process")


def best(profile: Profile, n: int, cpus: int = 2, warm: bool = False, **kw) -> cost_model.Candidate:
    candidates = cost_model.best_candidates(
        profile, n, cpus, OVH, kw.pop("executors", ALL), is_warm=lambda e, j: warm, **kw)
    return cost_model.choose(candidates, 1.2)


def test_trivial_calls_stay_serial():
    assert best(Profile(per_item_seconds=1e-7, pickle_seconds=2e-6), 100_000).executor_type == "serial"


def test_cpu_bound_work_goes_to_processes_with_every_core():
    chosen = best(Profile(per_item_seconds=2e-3, cpu_ratio=1.0, thread_scaling=1.0), 400)
    assert (chosen.executor_type, chosen.n_jobs) == ("process", 2)


def test_io_bound_work_gets_more_threads_than_cores():
    chosen = best(Profile(per_item_seconds=2e-3, cpu_ratio=0.02, thread_scaling=2.0), 1000)
    assert chosen.executor_type == "thread"
    assert chosen.n_jobs >= 32


def test_gil_releasing_work_scales_on_threads_only_up_to_cores():
    profile = Profile(per_item_seconds=1e-3, cpu_ratio=1.0, thread_scaling=2.0,
                      arg_bytes=1e6, pickle_seconds=5e-4)
    seconds = {t: cost_model.thread_seconds(profile, 400, t, 10, 2, OVH, True) for t in (2, 8)}
    assert seconds[8] >= seconds[2] * 0.95
    assert best(profile, 400).executor_type == "thread"


def test_large_payload_with_cheap_work_never_goes_to_processes():
    profile = Profile(per_item_seconds=50e-6, arg_bytes=1e6, result_bytes=20, pickle_seconds=5e-4)
    assert best(profile, 200, warm=True).executor_type != "process"


def test_cold_pool_start_up_keeps_short_work_serial_but_a_warm_pool_wins():
    profile = Profile(per_item_seconds=40e-6, thread_scaling=1.0)
    assert best(profile, 500, warm=False).executor_type == "serial"
    assert best(profile, 500, warm=True).executor_type == "process"


def test_start_up_share_amortises_pool_start_over_repeated_calls():
    profile = Profile(per_item_seconds=40e-6)
    full = cost_model.process_seconds(profile, 500, 2, 125, 2, OVH, warm=False)
    shared = cost_model.process_seconds(profile, 500, 2, 125, 2, OVH, warm=False,
                                        startup_share=0.1)
    assert full - shared == pytest.approx(0.9 * 2 * OVH.process_start)


def test_margin_keeps_serial_when_parallel_barely_wins():
    candidates = {
        "serial": cost_model.Candidate("serial", 1, 10, 1.0),
        "process": cost_model.Candidate("process", 2, 5, 0.9),
    }
    assert cost_model.choose(candidates, 1.2).executor_type == "serial"
    assert cost_model.choose(candidates, 1.05).executor_type == "process"


def test_unpicklable_function_is_never_planned_on_processes():
    profile = Profile(per_item_seconds=5e-3, picklable=False)
    candidates = cost_model.best_candidates(profile, 400, 2, OVH, ALL)
    assert "process" not in candidates


def test_calls_that_hold_the_gil_are_not_evaluated_on_threads():
    profile = Profile(per_item_seconds=5e-3, cpu_ratio=1.0, thread_scaling=1.0)
    assert "thread" not in cost_model.best_candidates(profile, 400, 2, OVH, ALL)


def test_function_using_every_core_itself_gains_nothing_from_processes():
    busy = Profile(per_item_seconds=2e-3, cpu_ratio=2.0, thread_scaling=1.0)
    assert best(busy, 400, warm=True).executor_type == "serial"


def test_chunks_grow_with_per_chunk_overhead():
    tiny = best(Profile(per_item_seconds=20e-6), 50_000, warm=True, executors=("process",))
    big = best(Profile(per_item_seconds=20e-3), 100, warm=True, executors=("process",))
    assert tiny.chunksize >= 1000
    assert big.chunksize <= 50


def test_max_workers_caps_every_executor():
    profile = Profile(per_item_seconds=2e-3, cpu_ratio=0.01, thread_scaling=2.0)
    candidates = cost_model.best_candidates(profile, 1000, 8, OVH, ALL, max_workers=3)
    assert all(c.n_jobs <= 3 for c in candidates.values())


def test_forced_chunksize_is_used():
    profile = Profile(per_item_seconds=2e-3)
    candidates = cost_model.best_candidates(profile, 400, 2, OVH, ALL, chunksize=7)
    assert {c.chunksize for k, c in candidates.items() if k != "serial"} == {7}


def test_corrections_from_past_runs_scale_predictions():
    profile = Profile(per_item_seconds=2e-3, thread_scaling=1.0)
    plain = cost_model.best_candidates(profile, 400, 2, OVH, ALL)
    slower = cost_model.best_candidates(profile, 400, 2, OVH, ALL, corrections={"process": 3.0})
    assert slower["process"].seconds == pytest.approx(3 * plain["process"].seconds)


def test_chunk_candidates_cover_single_items_and_one_chunk_per_worker():
    sizes = cost_model.chunk_candidates(1000, 2)
    assert 1 in sizes and 500 in sizes


def test_parallel_fraction_from_two_thread_measurement():
    assert cost_model.thread_parallel_fraction(Profile(1e-3, thread_scaling=2.0)) == 1.0
    assert cost_model.thread_parallel_fraction(Profile(1e-3, thread_scaling=1.0)) == 0.0
    assert cost_model.thread_parallel_fraction(Profile(1e-3, cpu_ratio=0.25)) == 0.75


def test_the_items_spread_averages_out_over_a_chunk():
    """The last chunk's tail is the spread of its items' sum: sqrt(c) times one item's, not c
    times (chunks of 5 numpy sums, chosen for a tail that large, ran 30% slower than 2 chunks)."""
    profile = Profile(per_item_seconds=50e-6, per_item_spread=0.47, cpu_ratio=1.0,
                      thread_scaling=2.0, arg_bytes=2**20)
    assert cost_model.tail_seconds(profile, 1) == pytest.approx(0.47 * 50e-6)
    assert cost_model.tail_seconds(profile, 100) == pytest.approx(4.7 * 50e-6)
    assert cost_model.tail_seconds(Profile(1e-3, per_item_spread=3.0), 4) == pytest.approx(4e-3)
    chosen = best(profile, 200, warm=True)
    assert (chosen.executor_type, chosen.n_jobs) == ("thread", 2)
    assert chosen.chunksize >= 25   # at most four chunks per thread


def test_one_chunks_shipping_is_not_overlapped():
    """No process worker starts before its first chunk is pickled and sent, and the last
    chunk's results travel after it ends: one chunk per worker is not free of shipping even
    when items cost the same (4 chunks of 119 JSON documents ran 15% slower than 32 of 16)."""
    profile = Profile(per_item_seconds=1e-3, cpu_ratio=1.0, thread_scaling=1.0, arg_bytes=20e3,
                      pickle_seconds=200e-6)
    one_each = cost_model.predicted_seconds("process", 2, 200, profile, 400, 2, OVH, lambda e, j: True)
    smaller = cost_model.predicted_seconds("process", 2, 25, profile, 400, 2, OVH, lambda e, j: True)
    assert one_each - smaller > 150 * (200e-6 + 20e3 * OVH.process_per_byte)
    assert best(profile, 400, warm=True, executors=("process",)).chunksize < 200


def test_costs_that_follow_the_input_do_not_average_out_over_a_chunk():
    """Costs rising along the input put the dearest items in the last chunks: the tail grows
    with the chunk (rank correlation 1), not with its square root (independent costs)."""
    independent = Profile(per_item_seconds=1e-3, per_item_spread=0.5)
    sorted_costs = Profile(per_item_seconds=1e-3, per_item_spread=0.5, cost_trend=0.98)
    assert cost_model.tail_seconds(independent, 64) == pytest.approx(8 * 0.5e-3)
    assert cost_model.tail_seconds(sorted_costs, 64) > 3 * cost_model.tail_seconds(independent, 64)
    # falling costs put the dearest chunks first, where later chunks of other workers absorb them
    falling = Profile(per_item_seconds=1e-3, per_item_spread=0.5, cost_trend=-1.0)
    assert cost_model.tail_seconds(falling, 64) == cost_model.tail_seconds(independent, 64)
    rising = Profile(per_item_seconds=1e-3, per_item_spread=0.5, cost_trend=1.0)
    assert cost_model.tail_seconds(rising, 64) == pytest.approx(32e-3)
    chance = Profile(per_item_seconds=1e-3, per_item_spread=0.5, cost_trend=-0.88)
    assert cost_model.tail_seconds(chance, 64) == cost_model.tail_seconds(independent, 64)


def test_more_workers_must_be_clearly_faster_than_fewer():
    """On 2 cores, 4 processes of pure-Python work are predicted as fast as 2 (a smaller tail
    makes them 0.1% faster on paper) and ran 10% slower: near-ties go to fewer workers."""
    profile = Profile(per_item_seconds=2.2e-3, per_item_spread=0.03, cpu_ratio=1.0,
                      thread_scaling=1.0, pickle_seconds=10.8e-6, arg_bytes=5, result_bytes=17)
    ovh = Overheads(thread_start=120e-6, thread_per_chunk=40e-6, process_start=0.09,
                    process_per_chunk=139e-6, process_busy_per_chunk=139e-6,
                    process_latency=506e-6, process_per_byte=5e-9)
    chosen = cost_model.best_candidates(profile, 386, 2, ovh, ALL, is_warm=lambda e, j: True)["process"]
    assert chosen.n_jobs == 2
    four = min(cost_model.predicted_seconds("process", 4, c, profile, 386, 2, ovh,
                                            lambda e, j: True)
               for c in cost_model.chunk_candidates(386, 4))
    assert four < chosen.seconds * cost_model.FEWER_WORKERS_WITHIN  # a near-tie
    waiting = Profile(per_item_seconds=2e-3, cpu_ratio=0.5, thread_scaling=1.0)
    assert best(waiting, 300, warm=True, executors=("process",)).n_jobs == 4


def test_chunks_cost_busy_cores_more_than_idle_workers():
    """Two workers computing on 2 cores ran a heavy-tailed workload (0.1-20 ms) 5-10% slower
    in chunks of 4 than of 8-16; priced at what a chunk costs idle workers, chunks of 4 looked
    best. Priced at what it costs when every core computes, they do not."""
    profile = Profile(per_item_seconds=1.53e-3, per_item_spread=1.35, cpu_ratio=1.0,
                      thread_scaling=0.98, pickle_seconds=7.6e-6, arg_bytes=15, result_bytes=16)

    def chosen(busy: float) -> cost_model.Candidate:
        ovh = Overheads(process_per_chunk=97e-6, process_busy_per_chunk=busy,
                        process_latency=421e-6, process_per_byte=4.28e-9, process_start=0.067)
        return cost_model.best_candidates(profile, 500, 2, ovh, ALL,
                                          is_warm=lambda e, j: True)["process"]

    assert chosen(97e-6).chunksize <= 4
    assert chosen(288e-6).chunksize >= 8
    # fewer workers than cores leave a core for the chunks' handling: no busy price
    one = Overheads(process_busy_per_chunk=1.0)
    assert cost_model.predicted_seconds("process", 1, 1, profile, 100, 2, one, lambda e, j: True) < 1.0
