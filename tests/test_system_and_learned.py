"""Machine detection and per-function memory."""

from __future__ import annotations

import functools
import tracemalloc

import pytest

from amorsize import system
from amorsize.optimizer import learned
from amorsize.optimizer.learned import LearnedProfiles, function_key
from amorsize.workload import Profile


def test_cgroup_v2_quota_is_read(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert system.cgroup_cpu_quota(tmp_path) == 1.5


def test_cgroup_v2_unlimited_is_none(tmp_path):
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert system.cgroup_cpu_quota(tmp_path) is None


def test_cgroup_v1_quota_is_read(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert system.cgroup_cpu_quota(tmp_path) == 2.0


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert system.cgroup_cpu_quota(tmp_path) is None


def test_usable_cpus_respects_affinity():
    import os

    assert 1 <= system.usable_cpus() <= len(os.sched_getaffinity(0))


def test_start_method_defaults_to_forkserver_and_env_overrides(monkeypatch):
    monkeypatch.delenv(system.START_METHOD_ENV, raising=False)
    assert system.default_start_method() == "forkserver"
    monkeypatch.setenv(system.START_METHOD_ENV, "spawn")
    assert system.default_start_method() == "spawn"
    monkeypatch.setenv(system.START_METHOD_ENV, "teleport")
    with pytest.raises(ValueError, match=system.START_METHOD_ENV):
        system.default_start_method()


def _f(x):
    return x


def test_function_key_is_stable_for_closures_partials_and_methods():
    makers = [lambda: (lambda x: x) for _ in range(2)]
    assert function_key(makers[0]()) == function_key(makers[1]())
    assert function_key(functools.partial(_f)) == function_key(functools.partial(_f))

    class A:
        def m(self, x):
            return x

    assert function_key(A().m) == function_key(A().m)
    assert function_key(_f) != function_key(A().m)


def _burn(x, loops=1, data=None):
    return x


def test_partials_that_differ_in_a_small_setting_are_learned_apart():
    """partial(burn, loops=100) and partial(burn, loops=5000) cost apart: one's profile must not
    plan the other's calls."""
    assert function_key(functools.partial(_burn, loops=100)) != function_key(
        functools.partial(_burn, loops=5000))
    assert function_key(functools.partial(_burn, loops=100)) == function_key(
        functools.partial(_burn, loops=100))
    assert function_key(functools.partial(_burn, 1)) != function_key(functools.partial(_burn, 1.0))
    assert function_key(functools.partial(_burn, "a" * 100)) == function_key(
        functools.partial(_burn, "b" * 100))
    nan = float("nan")
    assert function_key(functools.partial(_burn, loops=nan)) == function_key(
        functools.partial(_burn, loops=nan))


def test_a_partial_remade_with_a_new_setting_each_call_keeps_what_was_learned(monkeypatch):
    """partial(f, seed=i) in a loop: past a few settings they are left out of the key, so the
    calls are one function again, not a stranger measured anew each time."""
    monkeypatch.setattr(learned, "_SETTINGS_SEEN", {})
    keys = [function_key(functools.partial(_burn, loops=i)) for i in range(20)]
    per_setting = learned._SETTINGS_PER_FUNCTION
    assert len(set(keys[:per_setting])) == per_setting
    assert len(set(keys[per_setting:])) == 1
    assert keys[0] == function_key(functools.partial(_burn, loops=0))  # still told apart


def test_a_partial_over_new_large_data_is_the_same_function():
    """A partial re-made each call over a new array (or list) keeps what was learned."""
    assert function_key(functools.partial(_burn, data=[1, 2])) == function_key(
        functools.partial(_burn, data=[3]))
    assert function_key(functools.partial(_burn, data=bytearray(10))) == function_key(
        functools.partial(_burn, data=bytearray(20)))


def test_record_run_moves_per_item_time_towards_what_was_measured():
    mem = LearnedProfiles()
    mem.remember("k", Profile(per_item_seconds=1.0, n_measured=10))
    mem.record_run("k", "process", n_items=10, compute_seconds=2.0, wall_seconds=4.0,
                   predicted_seconds=2.0)
    entry = mem.recall("k")
    assert entry.runs == 1
    assert entry.profile.per_item_seconds == pytest.approx(0.6)
    # the prediction used 1.0 s per item; with 0.6 it would have been 0.6 x 2.0 s: the model's
    # own error is 4.0 / 1.2, far off, so all of it is taken at once
    assert entry.corrections["process"] == pytest.approx(4.0 / 1.2)


def test_an_error_the_per_item_time_explains_does_not_also_correct_the_model():
    """Costs the sample underestimated make the run slower than predicted; once the per-item
    time is corrected, charging the executor for it too would make it look twice as slow (and
    flip a good process plan to serial on the next call)."""
    mem = LearnedProfiles()
    mem.remember("k", Profile(per_item_seconds=1.0, n_measured=10))
    mem.record_run("k", "process", n_items=10, compute_seconds=30.0, wall_seconds=4.0,
                   predicted_seconds=2.0)
    entry = mem.recall("k")
    assert entry.profile.per_item_seconds == pytest.approx(2.0)
    assert entry.corrections["process"] == pytest.approx(1.0)


def test_each_estimate_weighs_as_many_items_as_it_stands_for():
    """Eight sampled items against a run of 100,000: the run all but replaces the sample, so a
    learned plan settles after one call instead of creeping towards it call by call. A small
    run moves what a large one measured at most a tenth of the way (its data may be heavier),
    and equal runs are averaged."""
    mem = LearnedProfiles()
    mem.remember("k", Profile(per_item_seconds=200e-9, n_measured=8))
    mem.record_run("k", "serial", 100_000, compute_seconds=0.005, wall_seconds=0.005,
                   predicted_seconds=None)
    assert mem.recall("k").profile.per_item_seconds == pytest.approx(50e-9, rel=1e-3)
    mem.record_run("k", "serial", 10, compute_seconds=10 * 500e-9, wall_seconds=1e-5,
                   predicted_seconds=None)
    assert mem.recall("k").profile.per_item_seconds == pytest.approx(50e-9 + 450e-9 / 11, rel=0.01)
    for _ in range(2):
        mem.record_run("k", "serial", 100_000, compute_seconds=100_000 * 80e-9,
                       wall_seconds=0.008, predicted_seconds=None)
    assert mem.recall("k").profile.per_item_seconds == pytest.approx(80e-9, rel=0.01)
    for _ in range(6):  # heavier data in smaller calls: followed within a few calls
        mem.record_run("k", "serial", 1000, compute_seconds=1000 * 800e-9, wall_seconds=1e-3,
                       predicted_seconds=None)
    # more than halfway from 80 ns toward 800 ns (made-up figures, no clock is read)
    assert mem.recall("k").profile.per_item_seconds == pytest.approx(800e-9, rel=0.5)


def test_process_workers_sharing_cores_do_not_make_calls_look_dearer():
    """Four workers computing on two cores take twice as long per item as a call costs; the
    time waiting is not stretched."""
    mem = LearnedProfiles()
    mem.remember("cpu", Profile(per_item_seconds=1e-3, cpu_ratio=1.0, n_measured=1))
    mem.remember("io", Profile(per_item_seconds=1e-3, cpu_ratio=0.0, n_measured=1))
    mem.remember("half", Profile(per_item_seconds=1e-3, cpu_ratio=0.5, n_measured=1))
    for key in ("cpu", "io", "half"):
        mem.record_run(key, "process", 100_000, compute_seconds=200.0, wall_seconds=100.0,
                       predicted_seconds=None, workers_per_core=2.0)
    assert mem.recall("cpu").profile.per_item_seconds == pytest.approx(1e-3, rel=1e-3)
    assert mem.recall("io").profile.per_item_seconds == pytest.approx(2e-3, rel=1e-3)
    # four workers computing half the time need two cores: they had them
    assert mem.recall("half").profile.per_item_seconds == pytest.approx(2e-3, rel=1e-3)


def test_a_correction_settles_on_the_models_error_not_its_square_root():
    """The run's prediction already carried the correction learned so far; the next
    correction multiplies it. A model 2.5x too pessimistic is corrected to 0.4, not 0.63."""
    mem = LearnedProfiles()
    mem.remember("k", Profile(per_item_seconds=1.0, n_measured=10))
    model, actual = 10.0, 4.0
    for _ in range(30):
        correction = mem.recall("k").corrections.get("thread", 1.0)
        mem.record_run("k", "thread", 10, compute_seconds=40.0, wall_seconds=actual,
                       predicted_seconds=model * correction)
    assert mem.recall("k").corrections["thread"] == pytest.approx(0.4, rel=1e-3)


def test_recording_a_run_leaves_no_new_object_behind():
    """A run's figures are folded in when next read, not when the run ends: objects made right
    after a run of 100,000 results, and kept, pinned those results' memory so that every call
    in a loop mapped (and paid page faults for) a fresh megabyte."""
    mem = LearnedProfiles()
    mem.remember("k", Profile(per_item_seconds=1e-6, n_measured=8))
    mem.record_run("k", "serial", 1000, 1e-3, 1.1e-3, 1e-3)  # the entry's first run, read
    assert mem.recall("k").runs == 1
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        mem.record_run("k", "serial", 100_000, compute_seconds=0.08, wall_seconds=0.09,
                       predicted_seconds=0.2, n_input=100_008)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    this_module = tracemalloc.Filter(True, learned.__file__)
    kept = [s for s in after.filter_traces([this_module]).compare_to(
        before.filter_traces([this_module]), "lineno") if s.count_diff > 0]
    assert kept == []
    entry = mem.recall("k")  # read: folded now
    assert (entry.runs, entry.last_n_items) == (2, 100_008)
    assert entry.profile.per_item_seconds == pytest.approx(8e-7, rel=0.05)
    assert entry.corrections["serial"] < 1


def test_memory_is_bounded():
    mem = LearnedProfiles(max_entries=3)
    for k in range(5):
        mem.remember(k, Profile(1.0))
    assert mem.recall(0) is None and mem.recall(4) is not None


def test_global_memory_can_forget_everything():
    learned.LEARNED.remember("x", Profile(1.0))
    learned.LEARNED.forget()
    assert learned.LEARNED.recall("x") is None


def test_thread_runs_correct_the_model_but_not_the_per_item_time():
    mem = LearnedProfiles()
    mem.remember("k", Profile(per_item_seconds=1.0))
    mem.record_run("k", "thread", n_items=10, compute_seconds=50.0, wall_seconds=1.2,
                   predicted_seconds=1.0)
    entry = mem.recall("k")
    assert entry.profile.per_item_seconds == 1.0
    assert entry.corrections["thread"] == pytest.approx(1.1)
    assert entry.last_n_items == 10


def test_a_profile_copy_changes_only_what_it_is_given_and_stays_frozen():
    import dataclasses

    profile = Profile(per_item_seconds=1e-3, cpu_ratio=0.5, cost_trend=0.3)
    copy = profile.replace(per_item_seconds=2e-3, measured_by="runs")
    assert copy == dataclasses.replace(profile, per_item_seconds=2e-3, measured_by="runs")
    assert profile.per_item_seconds == 1e-3 and copy.cpu_ratio == 0.5 and copy.io_bound is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        copy.cpu_ratio = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError, match="no field per_item"):
        profile.replace(per_item=1.0)
