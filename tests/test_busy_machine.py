"""Decisions that hold on a busy machine: the plan counts the CPU actually left to it now, a kept
plan is decided again when that moves, and a run far slower than predicted corrects the next
plan at once. The load is injected (a task count, the CPU time measured calls got), never made."""

from __future__ import annotations

import collections
import contextlib
import dataclasses

import pytest

from amorsize import system
from amorsize.optimizer import cost_model, decision, overheads, probe
from amorsize.optimizer.learned import LearnedProfiles
from amorsize.optimizer.overheads import Overheads
from amorsize.optimizer.probe import Probe
from amorsize.run.report import RunReport
from amorsize.workload import Profile, Workload

OVH = Overheads(process_latency=400e-6, process_per_chunk=150e-6, measured=("thread", "process"))
CPU_17MS = Profile(per_item_seconds=0.017, cpu_ratio=1.0, thread_scaling=1.0, n_measured=8)
ON_PROCESSES = ("serial", "process")


def work(x: int) -> int:
    return x


class WarmPools:
    """Every pool warm and measured: the decision starts and measures nothing."""

    def is_warm(self, n_jobs, executor_type, start_method):
        return True

    def lease(self, n_jobs, executor_type, start_method):
        return contextlib.nullcontext(None)


@pytest.fixture
def machine(monkeypatch):
    """Two cores; ``machine.busy(n)`` has ``n`` other tasks wanting a CPU from now on."""
    load = {"tasks": 0.0}
    clock = {"now": 0.0}  # stands still: deciding takes no time
    monkeypatch.setattr(decision, "_clock", lambda: clock["now"])
    monkeypatch.setattr(system, "usable_cpus", lambda: 2)
    monkeypatch.setattr(system, "runnable_elsewhere", lambda: load["tasks"])
    monkeypatch.setattr(overheads, "current", lambda start_method: OVH)
    monkeypatch.setattr(decision, "BUSY_SHARE", 0.9)

    class Machine:
        @staticmethod
        def busy(tasks: float) -> None:
            load["tasks"] = tasks

        @staticmethod
        def wait(seconds: float) -> None:
            clock["now"] += seconds

    return Machine


def plan_for(profile: Profile, recalled: bool = True, key: object = "work"):
    workload = Workload(400, "map", ON_PROCESSES, key=key, recalled=recalled, previous_runs=3)
    return decision.decide(work, profile, workload, pools=WarmPools(), learned=None)


# ---------------------------------------------------------------- the model


def test_beside_two_busy_tasks_a_serial_call_computes_at_two_thirds_of_a_core():
    quiet = cost_model.serial_seconds(CPU_17MS, 400, cpus=2, background=0.0)
    busy = cost_model.serial_seconds(CPU_17MS, 400, cpus=2, background=2.0)
    assert quiet == pytest.approx(400 * 0.017)
    assert busy == pytest.approx(quiet * 1.5)


def test_beside_two_busy_tasks_four_workers_get_more_of_two_cores_than_two_do():
    def workers(background: float) -> int:
        candidates = cost_model.best_candidates(CPU_17MS, 400, 2, OVH, ON_PROCESSES,
                                                is_warm=lambda e, j: True, background=background)
        return candidates["process"].n_jobs

    assert workers(0.0) == 2
    assert workers(2.0) == 4


def test_waiting_calls_are_not_slowed_by_the_load_while_they_wait():
    waiting = dataclasses.replace(CPU_17MS, cpu_ratio=0.1)
    quiet = cost_model.serial_seconds(waiting, 100, cpus=2, background=0.0)
    busy = cost_model.serial_seconds(waiting, 100, cpus=2, background=2.0)
    assert quiet < busy < quiet * 1.05


# ---------------------------------------------------------------- measuring


def test_calls_that_got_half_their_wall_time_as_cpu_are_taken_at_half_their_time():
    probe = Probe("sampling")
    for _ in range(8):
        probe.observe(wall=0.034, cpu=0.017, blocked=0)  # pre-empted, never waiting
    profile = probe.profile()
    assert profile.cpu_share == pytest.approx(0.5)
    assert profile.cpu_ratio == 1.0
    assert profile.per_item_seconds == pytest.approx(0.017, rel=0.01)


def test_calls_that_blocked_keep_their_wall_time_and_a_whole_core():
    probe = Probe("sampling")
    for _ in range(8):
        probe.observe(wall=0.034, cpu=0.017, blocked=3)  # half of it waiting for I/O
    profile = probe.profile()
    assert profile.cpu_share == 1.0
    assert profile.cpu_ratio == pytest.approx(0.5)
    assert profile.per_item_seconds == pytest.approx(0.034, rel=0.01)


# ---------------------------------------------------------------- deciding


def test_a_plan_counts_the_tasks_elsewhere_that_want_a_cpu(machine):
    machine.busy(2)
    plan = plan_for(CPU_17MS)
    assert (plan.executor_type, plan.n_jobs) == ("process", 4)
    assert plan.machine.background == 2
    assert any(r.startswith("a busy machine: 2.0 other tasks") for r in plan.reasons)


def test_calls_measured_for_the_plan_that_got_part_of_a_core_tell_a_busy_machine(machine):
    measured = dataclasses.replace(CPU_17MS, cpu_share=0.5)  # the reading saw nothing
    plan = plan_for(measured, recalled=False)
    assert plan.machine.background == pytest.approx(3.0)  # 2 cores / (1 + 3) = half of one
    assert plan.n_jobs == 4


def test_a_recalled_profile_tells_nothing_of_the_load_now(machine):
    measured_busy = dataclasses.replace(CPU_17MS, cpu_share=0.5)
    plan = plan_for(measured_busy, recalled=True)
    assert plan.machine.background == 0
    assert plan.n_jobs == 2


def test_a_kept_plan_is_decided_again_when_the_load_moves(machine):
    assert plan_for(CPU_17MS).n_jobs == 2
    machine.busy(2)
    assert plan_for(CPU_17MS).n_jobs == 4
    machine.busy(0)
    assert plan_for(CPU_17MS).n_jobs == 2  # not kept through the change, as through noise


def test_deciding_again_for_a_moved_load_takes_at_most_a_fiftieth_of_the_time(
        machine, monkeypatch):
    """Where other people's work starts and ends all the time, the load moves between most
    calls of a function called in a loop: deciding each time would cost more than the calls."""
    real = decision._decide

    def deciding_takes_10ms(*args, **kwargs):
        machine.wait(0.01)
        return real(*args, **kwargs)

    monkeypatch.setattr(decision, "_decide", deciding_takes_10ms)
    assert plan_for(CPU_17MS).n_jobs == 2
    machine.busy(2)
    kept = plan_for(CPU_17MS)
    assert kept.n_jobs == 2 and kept.machine.background == 0  # judged at the load it was made at
    machine.wait(50 * 0.01)
    assert plan_for(CPU_17MS).n_jobs == 4


def test_a_kept_plan_stays_while_the_load_moves_less_than_half_a_task(machine, monkeypatch):
    first = plan_for(CPU_17MS)
    machine.busy(0.3)
    model = []
    real = cost_model.best_candidates
    monkeypatch.setattr(cost_model, "best_candidates",
                        lambda *a, **k: model.append(1) or real(*a, **k))
    again = plan_for(CPU_17MS)
    assert not model
    assert again.reasons == first.reasons
    assert again.machine.background == 0.3  # what the run is judged against


def test_a_quiet_machine_says_nothing_of_load_in_the_reasons(machine):
    plan = plan_for(CPU_17MS)
    assert not any("busy machine" in r for r in plan.reasons)
    assert "other tasks" not in plan.explain()


# ---------------------------------------------------------------- learning from runs


def _report(executor: str, n_jobs: int, wall: float, predicted: float, compute: float,
            n_items: int = 400) -> RunReport:
    return RunReport("map", executor, n_jobs, 50, n_items, 8, wall, compute, predicted, 1.0)  # type: ignore[arg-type]


def test_a_run_twice_as_slow_as_predicted_corrects_the_next_plan_at_once():
    memory = LearnedProfiles()
    memory.remember("k", CPU_17MS)
    memory.record_run("k", "process", 400, compute_seconds=400 * 0.017, wall_seconds=6.8,
                      predicted_seconds=3.4)
    assert memory.recall("k").corrections["process"] == pytest.approx(2.0)


def test_a_short_run_twice_as_slow_as_predicted_corrects_it_halfway():
    """20 ms of work that took 40 ms may have waited once for a core taken by other work."""
    memory = LearnedProfiles()
    memory.remember("k", CPU_17MS)
    memory.record_run("k", "serial", 1, compute_seconds=0.017, wall_seconds=0.04,
                      predicted_seconds=0.02)
    assert memory.recall("k").corrections["serial"] == pytest.approx(1.5)


def test_a_run_a_little_off_its_prediction_corrects_it_halfway():
    memory = LearnedProfiles()
    memory.remember("k", CPU_17MS)
    memory.record_run("k", "process", 400, compute_seconds=400 * 0.017, wall_seconds=3.74,
                      predicted_seconds=3.4)
    assert memory.recall("k").corrections["process"] == pytest.approx(1.05)


def test_a_serial_run_beside_busy_tasks_teaches_what_a_call_costs_on_a_core_of_its_own(
        monkeypatch):
    memory = LearnedProfiles()
    monkeypatch.setattr(decision, "LEARNED", memory)
    monkeypatch.setattr(system, "usable_cpus", lambda: 2)
    memory.remember("k", dataclasses.replace(CPU_17MS, n_measured=1))
    # two busy tasks on 2 cores: each item took 1.5x its 17 ms, as the plan predicted
    decision.learn("k", _report("serial", 1, 400 * 0.0255, 400 * 0.0255, 400 * 0.0255),
                   background=2.0)
    learned = memory.recall("k")
    assert learned.profile.per_item_seconds == pytest.approx(0.017, rel=0.01)
    assert learned.corrections["serial"] == pytest.approx(1.0, rel=0.01)


# ---------------------------------------------------------------- reading the load


@pytest.fixture
def loadavg(tmp_path, monkeypatch):
    """``/proc/loadavg`` with the running counts given, one per read, the last one repeated,
    read at the moments given (``loadavg.at``)."""
    monkeypatch.undo()  # this module's readings are the real function's
    monkeypatch.setattr(system, "_load_counts_ours", lambda: True)
    monkeypatch.setattr(system, "_readings", collections.deque(maxlen=15))
    counts: list[int] = []
    moments: list[float] = []

    def read():
        running = counts.pop(0) if len(counts) > 1 else counts[0]
        return f"0.50 0.40 0.30 {running}/300 4242\n".encode()

    monkeypatch.setattr(system, "_read_loadavg", read)
    monkeypatch.setattr(system, "_clock",
                        lambda: moments.pop(0) if len(moments) > 1 else moments[0])

    class Readings:
        def __init__(self) -> None:
            self.counts, self.at = counts, moments

    return Readings()


def test_two_busy_programs_read_as_two_tasks_besides_the_reader(loadavg):
    loadavg.counts.append(3)
    loadavg.at.append(100.0)
    assert system.runnable_elsewhere() == 2.0


def test_a_task_that_only_passes_through_is_not_counted(loadavg):
    loadavg.counts.extend([1, 1, 3])
    loadavg.at.extend([100.0, 100.3, 100.6])
    answers = [system.runnable_elsewhere() for _ in range(3)]
    assert answers[-1] == 0.0


def test_a_load_that_lasts_is_counted_within_a_second(loadavg):
    loadavg.counts.extend([1, 3, 3, 3])
    loadavg.at.extend([100.0, 100.4, 100.8, 101.2])
    answers = [system.runnable_elsewhere() for _ in range(4)]
    assert answers[0] == 0.0
    assert answers[-1] == 2.0


def test_beside_busy_tasks_workers_get_more_chunks_each_than_on_a_quiet_machine():
    """The machine's other work falls on one core more than another: a worker with one long
    chunk then ends long after the others."""
    def chunks_per_worker(background: float) -> float:
        best = cost_model.best_candidates(CPU_17MS, 400, 2, OVH, ON_PROCESSES,
                                          is_warm=lambda e, j: True,
                                          background=background)["process"]
        return 400 / best.chunksize / best.n_jobs

    assert chunks_per_worker(0.0) >= 4
    assert chunks_per_worker(2.0) > 2 * chunks_per_worker(0.0)


def test_a_correction_learned_beside_busy_tasks_is_set_aside_on_a_quiet_machine(machine):
    memory = LearnedProfiles()
    memory.remember("work", CPU_17MS)
    # beside two busy tasks, processes ran 3x slower than predicted
    memory.record_run("work", "process", 400, 6.8, wall_seconds=9.0, predicted_seconds=3.0,
                      background=2.0)
    learned = memory.recall("work")
    assert learned.corrections_at(2.0) == {"process": pytest.approx(3.0)}
    assert learned.corrections_at(0.0) == {}
    workload = Workload(400, "map", ON_PROCESSES, key="work", recalled=True)

    def corrected(background: float) -> bool:
        machine.busy(background)
        plan = decision.decide(work, CPU_17MS, workload, pools=WarmPools(), learned=learned)
        return "corrected x3.00" in " ".join(plan.reasons)

    assert corrected(2.0)
    assert not corrected(0.0)


def test_a_run_at_another_load_corrects_from_scratch_not_from_the_set_aside_correction():
    memory = LearnedProfiles()
    memory.remember("k", CPU_17MS)
    memory.record_run("k", "process", 400, 6.8, wall_seconds=9.0, predicted_seconds=3.0,
                      background=2.0)
    # quiet again: the prediction carried no correction, and came out right
    memory.record_run("k", "process", 400, 6.8, wall_seconds=3.4, predicted_seconds=3.4,
                      background=0.0)
    learned = memory.recall("k")
    assert learned.corrections["process"] == pytest.approx(1.0)
    assert learned.corrected_at["process"] == 0.0


# ---------------------------------------------------------------- other sessions


def test_more_workers_than_cores_take_nothing_more_from_other_sessions():
    """With autogroup, each session is one group to the kernel: two hogs started elsewhere
    share the cores with this process as a whole, however many workers it runs."""
    def cores(workers: int, apart: float) -> float:
        return workers * cost_model.pace(workers, 1.0, 2, 2.0, apart)

    assert cores(4, apart=0.0) > 1.3 * cores(2, apart=0.0)
    assert cores(4, apart=2.0) == pytest.approx(cores(2, apart=2.0))


def test_beside_other_sessions_on_every_core_workers_are_taken_to_gain_nothing():
    def cores(workers: int, apart: float) -> float:
        return workers * cost_model.pace(workers, 1.0, 2, apart, apart)

    assert cores(2, apart=2.0) == pytest.approx(cores(1, apart=2.0))
    assert cores(2, apart=1.0) > 1.3 * cores(1, apart=1.0)  # a core is free half the time


def test_beside_busy_tasks_of_other_sessions_on_every_core_the_plan_stays_serial(
        machine, monkeypatch):
    machine.busy(2)
    monkeypatch.setattr(system, "runnable_apart", lambda tasks: tasks)
    plan = plan_for(CPU_17MS)
    assert plan.executor_type == "serial"
    assert plan.machine.apart == 2
    assert any("2.0 of them in other sessions" in r for r in plan.reasons)


def _stat(root, pid: int, state: str, session: int) -> None:
    (root / str(pid)).mkdir()
    (root / str(pid) / "stat").write_text(
        f"{pid} (a (b) c) {state} 1 {pid} {session} 0 -1 4194560 100 0 0 0\n")


def test_running_processes_of_other_sessions_are_counted_apart(tmp_path):
    import os

    mine = os.getsid(0)
    _stat(tmp_path, 1001, "R", mine)       # a hog started from this session
    _stat(tmp_path, 1002, "R", mine + 1)   # two from another terminal
    _stat(tmp_path, 1003, "R", mine + 1)
    _stat(tmp_path, 1004, "S", mine + 1)   # asleep: wants no CPU
    (tmp_path / "loadavg").write_text("")  # not a process
    assert system._share_apart(str(tmp_path)) == pytest.approx(2 / 3)


def test_beside_busy_tasks_more_threads_get_more_of_the_cores_for_work_that_releases_the_gil():
    hashing = Profile(per_item_seconds=0.002, cpu_ratio=1.0, thread_scaling=2.0)

    def threads(background: float) -> int:
        return cost_model.best_candidates(hashing, 400, 2, OVH, ("serial", "thread"),
                                          is_warm=lambda e, j: True,
                                          background=background)["thread"].n_jobs

    assert threads(0.0) == 2
    assert threads(2.0) > 2


def test_on_a_busy_machine_a_wobble_of_one_task_keeps_the_plan(machine):
    machine.busy(4)
    first = plan_for(CPU_17MS)
    machine.busy(4.5)
    assert plan_for(CPU_17MS).reasons == first.reasons
    machine.busy(6)
    assert plan_for(CPU_17MS).machine.background == 6
    assert plan_for(CPU_17MS).reasons != first.reasons


def test_beside_busy_tasks_the_overlap_test_runs_ten_times_longer(monkeypatch):
    """A thread woken beside busy tasks may wait a scheduler tick for a core: in a test of one
    2 ms call per thread that hid most of the overlap of calls that only wait."""
    assert probe.overlap_tests(list(range(30)), 2e-3)[0] == [0, 1]
    monkeypatch.setattr(system, "runnable_elsewhere", lambda: 2.0)
    assert probe.overlap_tests(list(range(30)), 2e-3)[0] == list(range(10))
