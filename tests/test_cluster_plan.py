"""The sizing rules of the cluster path, checked with made-up figures."""

from __future__ import annotations

import pytest

from amorsize_dask.cluster_plan import (
    BATCH_BYTES,
    MAX_BATCH_BYTES,
    OVERHEAD_SHARE,
    WAVES,
    RunSizes,
    batch_count,
    batch_sizes,
    batches_in_flight,
    predicted_seconds,
    sent_seconds,
    streaming_batch,
)

CASES = [  # (items, per item, threads, task cost)
    (20_000, 50e-6, 2, 1e-3),
    (400, 2e-3, 2, 1e-3),
    (100, 50e-3, 2, 1e-3),
    (100_000, 1e-6, 8, 2e-4),
    (1_000, 0.1, 64, 5e-3),
    (10, 1.0, 4, 1e-3),
]


@pytest.mark.parametrize(("n", "per_item", "threads", "task"), CASES)
def test_batches_cover_every_item_once(n, per_item, threads, task):
    assert sum(batch_sizes(n, per_item, threads, task)) == n


@pytest.mark.parametrize(("n", "per_item", "threads", "task"), CASES)
def test_batches_never_grow_along_the_run(n, per_item, threads, task):
    sizes = batch_sizes(n, per_item, threads, task)
    assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize(("n", "per_item", "threads", "task"), CASES)
def test_the_tasks_cost_at_most_the_overhead_share_of_the_work_once_every_thread_has_one(
        n, per_item, threads, task):
    sizes = batch_sizes(n, per_item, threads, task)
    if len(sizes) > threads:
        assert len(sizes) * task <= OVERHEAD_SHARE * n * per_item + 1e-12


def test_the_thread_count_changes_the_batches():
    assert len(batch_sizes(20_000, 50e-6, 8, 1e-4)) > len(batch_sizes(20_000, 50e-6, 2, 1e-4))


def test_tiny_items_on_two_threads_still_go_in_at_least_two_batches():
    assert len(batch_sizes(20_000, 50e-6, 2, 1e-3)) >= 2


def test_work_with_room_gets_several_waves_and_a_halved_last_wave():
    sizes = batch_sizes(400, 2e-3, 2, 1e-4)
    assert len(sizes) == (WAVES - 1) * 2 + 2 * 2
    assert sizes[-1] * 2 == pytest.approx(sizes[0], abs=1)


def test_work_too_small_for_every_thread_goes_in_fewer_batches():
    assert batch_count(100, 1e-6, 8, 1e-3) == 1


def test_no_batch_carries_more_than_its_byte_limit():
    sizes = batch_sizes(100, 1e-6, 2, 1e-3, arg_bytes=2**20)
    assert max(sizes) * 2**20 <= BATCH_BYTES


def test_an_input_of_unknown_length_goes_in_batches_that_pay_for_their_task():
    size = streaming_batch(50e-6, 2, 1e-3)
    assert 2 * 1e-3 <= OVERHEAD_SHARE * size * 50e-6 * 1.01


def test_the_prediction_counts_the_slowest_thread_and_every_task():
    assert predicted_seconds(4, 1.0, 2, 0.1, 0.5, [2, 1, 1]) == pytest.approx(0.5 + 2.0 + 0.3)


def test_batches_queue_behind_each_thread_to_cover_a_round_trip():
    assert batches_in_flight(2, batch_seconds=0.1, round_trip_seconds=0.001) == 2 * 2
    assert batches_in_flight(2, batch_seconds=0.01, round_trip_seconds=0.03) == 2 * 4


def test_the_input_is_read_a_bounded_way_ahead_however_short_the_batches():
    assert batches_in_flight(2, batch_seconds=1e-6, round_trip_seconds=1.0) == 2 * 8


def test_a_run_resized_for_new_threads_plans_the_items_not_yet_sent_for_them():
    sizes = RunSizes(batch_sizes(1000, 2e-3, 1, 1e-4), 0, 1000, 2e-3, 1e-4)
    sent = next(sizes) + next(sizes)
    sizes.resize(4)
    rest = batch_sizes(1000 - sent, 2e-3, 4, 1e-4)
    assert [next(sizes) for _ in rest] == rest


def test_a_forced_batch_size_stays_when_the_threads_change():
    sizes = RunSizes([], 7, None, 1e-3, 1e-4, forced=True)
    sizes.resize(16)
    assert next(sizes) == 7


def test_a_streamed_run_resized_for_more_threads_sends_larger_batches():
    sizes = RunSizes([], streaming_batch(1e-3, 1, 1e-4), None, 1e-3, 1e-4)
    sizes.resize(2)
    assert next(sizes) == streaming_batch(1e-3, 2, 1e-4) > streaming_batch(1e-3, 1, 1e-4)


MIB = 2**20


def test_large_items_quick_to_run_go_in_one_batch_per_thread():
    # 100 items of 1 MiB, 0.1 ms each to run; a task costs 10 ms, a byte 2 ns, a scatter 3 ms
    assert batch_sizes(100, 1e-4, 2, 10e-3, MIB, byte_seconds=2e-9,
                       scatter_seconds=3e-3) == [50, 50]


def test_without_a_transfer_rate_large_items_stay_within_a_tasks_byte_limit():
    sizes = batch_sizes(100, 1e-4, 2, 10e-3, MIB)
    assert max(sizes) * MIB <= BATCH_BYTES


def test_a_scatter_dearer_than_the_tasks_it_saves_keeps_large_items_inside_their_tasks():
    sizes = batch_sizes(100, 1e-4, 2, 1e-4, MIB, byte_seconds=2e-9, scatter_seconds=0.05)
    assert max(sizes) * MIB <= BATCH_BYTES


def test_no_scattered_batch_passes_its_byte_limit():
    sizes = batch_sizes(10_000, 1e-3, 8, 10e-3, MIB, byte_seconds=2e-9, scatter_seconds=3e-3)
    assert sum(sizes) == 10_000
    assert max(sizes) * MIB <= MAX_BATCH_BYTES


def test_large_items_slow_to_run_go_in_more_batches_than_threads():
    # the items sent first run while the next ones cross
    assert len(batch_sizes(100, 0.1, 2, 1e-3, MIB, byte_seconds=2e-9,
                           scatter_seconds=3e-3)) > 2


def test_a_run_of_large_items_ends_no_sooner_than_its_bytes_arrive():
    assert sent_seconds([50, 50], 0.0, 2, 0.0, MIB, 2e-9, 0.0) >= 100 * MIB * 2e-9


def test_batches_arrived_run_while_the_next_ones_cross():
    send, work = 100 * MIB * 2e-9, 100 * 1e-3
    assert sent_seconds([25] * 4, 1e-3, 2, 0.0, MIB, 2e-9, 0.0) < send + work / 2
