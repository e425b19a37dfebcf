"""The plugin layer: hook specifications, discovery, and what plugins change or see in a run."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pluggy
import pytest
from plugin_helpers import ForcePlan, Recorder, die_in_worker, double, pid_of, plan_for, thread_of

import amorsize
from amorsize import plugins
from amorsize.plugins import default_optimizer as builtin_optimizer
from amorsize.plugins import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ["amorsize_adjust_plan", "amorsize_get_pool", "amorsize_make_plan",
         "amorsize_pool_event", "amorsize_recall", "amorsize_remember", "amorsize_run_finished",
         "amorsize_run_progress"]


@pytest.fixture
def register():
    """Registers plugins for one test and always unregisters them (the manager is global)."""
    registered: list[object] = []

    def add(plugin: object, name: str | None = None) -> object:
        amorsize.register_plugin(plugin, name=name)
        registered.append(plugin)
        return plugin

    yield add
    for plugin in registered:
        if plugins.pm.is_registered(plugin):
            amorsize.unregister_plugin(plugin)


@pytest.fixture
def fresh_pools():
    """The global pool manager starts empty, so every pool event of the test is seen."""
    amorsize.shutdown_global_pool_manager()
    yield amorsize.get_global_pool_manager()


def _adjuster(tag: str, log: list, **opts):
    class Adjuster:
        @amorsize.hookimpl(**opts)
        def amorsize_adjust_plan(self, plan):
            log.append(tag)
            return plan.replace(reasons=[*plan.reasons, tag])

    return Adjuster()


def _wrapper(tag: str, log: list, old_style: bool = False, tryfirst: bool = False):
    class Wrapper:
        if old_style:
            @amorsize.hookimpl(hookwrapper=True, tryfirst=tryfirst)
            def amorsize_make_plan(self):
                log.append(f"{tag}>")
                yield
                log.append(f"<{tag}")
        else:
            @amorsize.hookimpl(wrapper=True, tryfirst=tryfirst)
            def amorsize_make_plan(self):
                log.append(f"{tag}>")
                result = yield
                log.append(f"<{tag}")
                return result

    return Wrapper()


def _workload(n: int = 10) -> amorsize.Workload:
    return amorsize.Workload(n)


def test_every_hook_is_specified_with_documentation_and_no_defaults():
    specs = {name: getattr(hookspecs, name) for name in dir(hookspecs) if name.startswith("amorsize_")}
    assert sorted(specs) == HOOKS
    for name, spec in specs.items():
        assert len(inspect.getdoc(spec)) > 100, name
        defaults = [p for p in inspect.signature(spec).parameters.values()
                    if p.default is not inspect.Parameter.empty]
        assert defaults == [], f"{name}: pluggy would never pass {defaults}"
    assert amorsize.hookimpl is hookspecs.hookimpl


def test_builtin_optimizer_and_pool_provider_are_ordinary_plugins():
    listed = dict(plugins.plugin_names())
    assert listed["amorsize.plugins.default_optimizer"] == [
        "amorsize_make_plan", "amorsize_recall", "amorsize_remember", "amorsize_run_finished"]
    assert listed["amorsize.plugins.default_pools"] == ["amorsize_get_pool"]


def test_a_registered_plugin_is_listed_first_with_its_hooks(register):
    register(Recorder(), name="recorder")
    assert plugins.plugin_names()[0] == ("recorder", ["amorsize_pool_event",
                                                      "amorsize_run_finished"])


def test_overriding_make_plan_with_processes_runs_in_worker_processes(register):
    force = register(ForcePlan("process", 2), name="force-processes")
    plan = amorsize.optimize(pid_of, range(40))
    assert (plan.executor_type, plan.n_jobs, plan.decided_by) == ("process", 2, "force-processes")
    results = amorsize.run_plan(pid_of, plan)
    computed = {r for i, r in enumerate(results) if i not in plan.sampled_results}
    pool = amorsize.get_global_pool_manager().get_pool(2, "process", create=False)
    assert computed and os.getpid() not in computed
    assert computed <= set(pool.worker_pids())
    from_map = set(amorsize.map(pid_of, range(40))) - {os.getpid()}
    assert from_map and from_map <= set(pool.worker_pids())
    # (counted for this function: a joblib call another test abandoned may still be deciding)
    assert force.funcs.count(pid_of) == 2


def test_overriding_make_plan_with_threads_is_honoured_by_imap(register):
    register(ForcePlan("thread", 2), name="force-threads")
    names = list(amorsize.imap(thread_of, iter(range(30))))
    assert len(names) == 30
    assert any(name.startswith("amorsize") for name in names)


def test_a_plan_the_plugin_returns_every_time_is_not_shared_between_calls(register):
    class Fixed:
        plan = None

        @amorsize.hookimpl(tryfirst=True)
        def amorsize_make_plan(self, workload):
            self.plan = self.plan or plan_for(workload, "serial", 1)
            return self.plan

    fixed = register(Fixed())
    assert amorsize.map(double, [1, 2, 3]) == [2, 4, 6]
    assert amorsize.map(double, [4, 5]) == [8, 10]
    assert fixed.plan.data is None and fixed.plan.sampled_results == {}


def test_adjusting_the_plan_changes_what_map_runs(register):
    register(ForcePlan("thread", 4), name="force-threads")

    class CapAt2:
        @amorsize.hookimpl
        def amorsize_adjust_plan(self, plan):
            return plan.replace(n_jobs=2) if plan.n_jobs > 2 else None

    register(CapAt2(), name="cap")
    recorder = register(Recorder())
    assert amorsize.map(double, range(50)) == [2 * x for x in range(50)]
    plan, report = recorder.runs[-1]
    assert (report.executor_type, report.n_jobs) == ("thread", 2)
    assert plan.reasons[-1] == "adjusted by plugin 'cap': n_jobs 4 -> 2"


def test_adjusting_applies_to_the_optimizers_own_plans(register):
    register(_adjuster("to-serial", []), name="to-serial")

    class Serial:
        @amorsize.hookimpl
        def amorsize_adjust_plan(self, plan):
            return plan.replace(executor_type="serial", n_jobs=1)

    register(Serial(), name="serial-only")
    plan = amorsize.optimize(double, range(100), executor="thread", n_jobs=2)
    assert (plan.executor_type, plan.n_jobs, plan.decided_by) == ("serial", 1, "amorsize.optimizer")
    assert "to-serial" in plan.reasons


def test_adjusters_are_chained_in_pluggys_order_inside_the_wrappers_of_make_plan(register):
    log: list[str] = []
    register(_adjuster("a", log))
    register(_adjuster("first", log, tryfirst=True))
    register(_adjuster("last", log, trylast=True))
    register(_adjuster("b", log))
    register(_wrapper("w", log))
    register(_wrapper("old", log, old_style=True, tryfirst=True))
    workload = _workload()
    plugins.pm.hook.amorsize_adjust_plan(plan=plan_for(workload, "serial", 1), workload=workload)
    pluggy_order, log[:] = list(log), []
    plan = plugins.make_plan(double, amorsize.Profile(0.0), workload)
    assert pluggy_order == ["first", "b", "a", "last"]
    assert log == ["old>", "w>", *pluggy_order, "<w", "<old"]
    assert plan.reasons[-4:] == pluggy_order


def test_a_wrapper_of_make_plan_sees_the_adjusted_plan_and_may_replace_it(register):
    seen = []

    class Finisher:
        @amorsize.hookimpl(wrapper=True)
        def amorsize_make_plan(self):
            final = yield
            seen.append(final.chunksize)
            return final.replace(chunksize=7)

    class Halve:
        @amorsize.hookimpl
        def amorsize_adjust_plan(self, plan):
            return plan.replace(chunksize=plan.chunksize // 2)

    register(ForcePlan("serial", 1, chunksize=20))
    register(Finisher())
    register(Halve())
    plan = amorsize.optimize(double, range(10))
    assert seen == [10]
    assert plan.chunksize == 7


def test_wrappers_of_make_plan_are_adjusters_applied_in_pluggys_order(register):
    class Cap:
        def __init__(self, n_jobs: int) -> None:
            self.n_jobs = n_jobs

        @amorsize.hookimpl(wrapper=True)
        def amorsize_make_plan(self):
            plan = yield
            return plan.replace(n_jobs=min(plan.n_jobs, self.n_jobs),
                                reasons=[*plan.reasons, f"capped at {self.n_jobs}"])

    register(ForcePlan("thread", 8))
    register(Cap(4), name="cap-4")
    register(Cap(2), name="cap-2")  # registered last: the outermost wrapper, applied last
    recorder = register(Recorder())
    assert amorsize.map(double, range(30)) == [2 * x for x in range(30)]
    plan, report = recorder.runs[-1]
    assert plan.reasons[-2:] == ["capped at 4", "capped at 2"]
    assert (report.executor_type, report.n_jobs) == ("thread", 2)


def test_an_old_style_hookwrapper_may_force_the_final_plan(register):
    class Force:
        @amorsize.hookimpl(hookwrapper=True)
        def amorsize_make_plan(self):
            outcome = yield
            outcome.force_result(outcome.get_result().replace(n_jobs=3))

    register(ForcePlan("thread", 2))
    register(Force())
    assert amorsize.optimize(double, range(10)).n_jobs == 3


def test_a_wrapper_of_adjust_plan_is_refused_with_the_hook_to_wrap_instead():
    class Around:
        @amorsize.hookimpl(wrapper=True)
        def amorsize_adjust_plan(self):
            return (yield)

    plugin = Around()
    with pytest.raises(pluggy.PluginValidationError, match="wrap amorsize_make_plan"):
        amorsize.register_plugin(plugin)
    assert not plugins.pm.is_registered(plugin)


def test_wrappers_around_make_plan_and_observers_run_around_them(register):
    log = []

    class Around:
        @amorsize.hookimpl(wrapper=True)
        def amorsize_make_plan(self):
            plan = yield
            log.append(f"planned {plan.executor_type}")
            return plan.replace(chunksize=3)

        @amorsize.hookimpl(wrapper=True)
        def amorsize_run_finished(self):
            log.append("before observers")
            yield
            log.append("after observers")

    class Observer:
        @amorsize.hookimpl
        def amorsize_run_finished(self, report):
            log.append(f"observed chunks of {report.chunksize}")

    register(ForcePlan("serial", 1))
    register(Observer())
    register(Around(), name="around")
    assert amorsize.map(double, range(10)) == [2 * x for x in range(10)]
    assert log == ["planned serial", "before observers", "observed chunks of 3", "after observers"]


def test_run_finished_receives_the_plan_and_the_measured_run(register):
    register(ForcePlan("thread", 2, chunksize=5), name="force-threads")
    recorder = register(Recorder())
    results = amorsize.map(double, range(42))
    assert results == [2 * x for x in range(42)]
    [(plan, report)] = recorder.runs
    computed = 42 - len(plan.sampled_results)
    assert plan.decided_by == "force-threads"
    assert (report.source, report.executor_type, report.n_jobs, report.chunksize) == (
        "map", "thread", 2, 5)
    assert report.n_items == computed
    assert report.n_chunks == -(-computed // 5)
    assert report.wall_seconds and report.compute_seconds  # both measured (never negative)
    assert report.predicted_speedup == plan.estimated_speedup == 1.0
    assert report.actual_speedup == report.compute_seconds / report.wall_seconds


def test_a_plan_maker_sees_the_callers_choices_as_typed_workload_fields(register):
    """What the caller chose reaches a plugin as fields of the Workload, and the pool the run
    leases follows them (the initializer and start method are part of which pool)."""
    from amorsize.optimizer.learned import LEARNED, function_key

    class Spy:
        def __init__(self) -> None:
            self.workloads: list[amorsize.Workload] = []

        @amorsize.hookimpl(hookwrapper=True)
        def amorsize_make_plan(self, workload):
            self.workloads.append(workload)
            yield

    LEARNED.forget(function_key(double))
    spy = register(Spy())
    first = amorsize.map(double, range(40), chunksize=7, start_method="spawn",
                         initializer=os.getpid, max_tasks_per_child=None)
    again = amorsize.map(double, range(40), chunksize=7, start_method="spawn")
    assert first == again == [2 * x for x in range(40)]
    measured, recalled = spy.workloads
    assert measured.key == recalled.key == function_key(double)
    assert (measured.chunksize, measured.start_method, measured.initializer) == (7, "spawn",
                                                                                  os.getpid)
    assert measured.initargs == () and measured.max_tasks_per_child is None
    assert measured.already_done > 0 and not measured.recalled
    assert recalled.already_done == 0 and recalled.recalled and recalled.initializer is None
    assert recalled.previous_runs == measured.previous_runs + 1


def test_observers_see_every_pool_event(register, fresh_pools):
    recorder = register(Recorder())
    force = register(ForcePlan("thread", 2))
    amorsize.map(double, range(20))
    assert recorder.names(("thread", 2)).count("created") == 1
    amorsize.map(double, range(20))
    assert "reused" in recorder.names(("thread", 2))
    assert fresh_pools.release_pool(2, "thread")
    assert recorder.names(("thread", 2))[-1] == "evicted"
    assert recorder.events[-1][2]["reason"] == "released"

    force.executor = "process"
    with pytest.raises(amorsize.WorkerCrashedError):
        amorsize.map(die_in_worker, range(20), resample=True)
    assert amorsize.map(double, range(20)) == [2 * x for x in range(20)]
    assert recorder.names(("process", 2))[-2:] == ["broken", "created"]

    amorsize.shutdown_global_pool_manager()
    assert recorder.names(("process", 2))[-1] == "shutdown"
    created = [stats for event, _, stats in recorder.events if event == "created"]
    assert all(stats["startup_seconds"] > 0 for stats in created)


def test_a_plugin_may_provide_the_pools(register):
    private = amorsize.PoolManager()
    asked = []

    class Provider:
        @amorsize.hookimpl(tryfirst=True)
        def amorsize_get_pool(self, n_jobs, executor_type, create):
            asked.append((n_jobs, executor_type, create))
            return private.get_pool(n_jobs, executor_type, create=create)

    register(Provider())
    register(ForcePlan("thread", 3))
    try:
        assert amorsize.map(double, range(30)) == [2 * x for x in range(30)]
        assert (3, "thread", True) in asked
        assert private.get_stats()["pools"]["thread:3"]["n_jobs"] == 3
    finally:
        private.shutdown()


def test_get_pool_implementations_receive_create_false(register):
    """Regression: ``create`` once had a default in the spec, and pluggy never passed it."""
    asked = []

    class Watch:
        @amorsize.hookimpl(tryfirst=True)
        def amorsize_get_pool(self, n_jobs, executor_type, create):
            asked.append(create)

    register(Watch())
    plugins.get_pool(2, "thread", create=False)
    plugins.get_pool(2, "thread")
    assert asked == [False, True]


def test_the_relay_the_hook_and_the_manager_ask_for_a_pool_by_the_same_first_arguments():
    """``n_jobs`` then ``executor_type``, by the same names, as users call
    ``manager.get_pool(plan.n_jobs, plan.executor_type)``: one order, whoever asks."""

    def first_two(func):
        return [name for name in inspect.signature(func).parameters if name != "self"][:2]

    asked_the_same = {first_two(func) == ["n_jobs", "executor_type"]
                      for func in (plugins.get_pool, plugins.leased_pool,
                                   hookspecs.amorsize_get_pool, amorsize.PoolManager.get_pool)}
    assert asked_the_same == {True}


def test_a_get_pool_implementation_taking_executor_is_refused_at_registration():
    """The hook's argument is ``executor_type``: an implementation asking for ``executor``
    would never be handed it, so pluggy refuses it and says which argument."""

    class OldName:
        @amorsize.hookimpl
        def amorsize_get_pool(self, executor, n_jobs, create):
            return None

    plugin = OldName()
    with pytest.raises(pluggy.PluginValidationError, match="executor"):
        amorsize.register_plugin(plugin)
    assert not plugins.pm.is_registered(plugin)


def test_a_hook_argument_with_a_default_is_refused_at_registration():
    class Defaulted:
        @amorsize.hookimpl
        def amorsize_get_pool(self, n_jobs, executor_type, create=True):
            return None

    plugin = Defaulted()
    with pytest.raises(pluggy.PluginValidationError, match="create a default value"):
        amorsize.register_plugin(plugin)
    assert not plugins.pm.is_registered(plugin)


def test_a_misspelt_hook_is_refused_with_a_suggestion():
    class Misspelt:
        @amorsize.hookimpl
        def amorsize_adjust_plans(self, plan):
            return None

    plugin = Misspelt()
    with pytest.raises(pluggy.PluginValidationError, match="did you mean 'amorsize_adjust_plan'"):
        amorsize.register_plugin(plugin)
    assert not plugins.pm.is_registered(plugin)


def test_unregistering_an_unknown_plugin_says_what_is_registered():
    with pytest.raises(ValueError, match="not registered; registered: .*optimizer"):
        amorsize.unregister_plugin(Recorder())


def test_a_raising_make_plan_fails_the_run_naming_the_plugin(register):
    class Boom:
        @amorsize.hookimpl(tryfirst=True)
        def amorsize_make_plan(self):
            raise ZeroDivisionError("no plan today")

    register(Boom(), name="boom")
    with pytest.raises(amorsize.PluginError, match="'boom' raised ZeroDivisionError in "
                       "amorsize_make_plan: no plan today") as info:
        amorsize.map(double, range(10))
    assert (info.value.plugin_name, info.value.hook_name) == ("boom", "amorsize_make_plan")
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_a_make_plan_returning_no_plan_fails_the_run_naming_the_plugin(register):
    class NotAPlan:
        @amorsize.hookimpl(tryfirst=True)
        def amorsize_make_plan(self):
            return {"executor_type": "thread"}

    register(NotAPlan(), name="dict-plan")
    with pytest.raises(amorsize.PluginError, match="'dict-plan' .* not an amorsize.Plan"):
        amorsize.map(double, range(10))


def test_an_adjusted_plan_with_no_workers_fails_the_run_naming_the_plugin(register):
    class Zero:
        @amorsize.hookimpl
        def amorsize_adjust_plan(self, plan):
            return plan.replace(n_jobs=0)

    register(Zero(), name="zero")
    with pytest.raises(amorsize.PluginError, match="'zero' .*n_jobs=0"):
        amorsize.map(double, range(10))


def test_a_raising_adjuster_is_named_and_wrappers_see_the_error(register):
    seen = []

    class Watch:
        @amorsize.hookimpl(wrapper=True)
        def amorsize_make_plan(self):
            try:
                return (yield)
            except amorsize.PluginError as exc:
                seen.append(exc.plugin_name)
                raise

    class Broken:
        @amorsize.hookimpl
        def amorsize_adjust_plan(self, plan):
            raise KeyError("n_jobs")

    register(Watch())
    register(Broken(), name="broken-adjuster")
    with pytest.raises(amorsize.PluginError, match="'broken-adjuster' raised KeyError") as info:
        amorsize.map(double, range(10))
    assert info.value.hook_name == "amorsize_adjust_plan"
    assert seen == ["broken-adjuster"]


def test_a_raising_wrapper_of_make_plan_is_named(register):
    class Broken:
        @amorsize.hookimpl(wrapper=True)
        def amorsize_make_plan(self):
            plan = yield
            return plan.replace(n_jobs=plan.n_jobs // 0)

    register(Broken(), name="broken-wrapper")
    with pytest.raises(amorsize.PluginError, match="'broken-wrapper' raised ZeroDivisionError"):
        amorsize.optimize(double, range(10))


def test_an_error_of_amorsize_let_through_by_a_wrapper_keeps_its_type(register):
    class PassThrough:
        @amorsize.hookimpl(wrapper=True)
        def amorsize_get_pool(self):
            return (yield)

    register(PassThrough(), name="pass-through")
    with pytest.raises(amorsize.InvalidArgumentTypeError):
        plugins.get_pool(2, "thread", initializer=os.getpid, initargs=([],))


def test_of_two_plugins_of_one_class_the_one_that_raised_is_named(register):
    class Picky:
        def __init__(self, refuses: bool) -> None:
            self.refuses = refuses

        @amorsize.hookimpl(tryfirst=True)
        def amorsize_recall(self, key):
            if self.refuses:
                raise LookupError("no memory here")

    register(Picky(refuses=False), name="accepts")
    register(Picky(refuses=True), name="refuses")
    with pytest.raises(amorsize.PluginError, match="'refuses' raised LookupError"):
        plugins.recall("some key")


def test_a_raising_pool_provider_fails_the_run_naming_the_plugin(register):
    class NoPools:
        @amorsize.hookimpl(tryfirst=True)
        def amorsize_get_pool(self, n_jobs, create):
            if create and n_jobs == 3:
                raise OSError("out of file descriptors")

    register(ForcePlan("thread", 3))
    register(NoPools(), name="no-pools")
    with pytest.raises(amorsize.PluginError, match="'no-pools' raised OSError in amorsize_get_pool"):
        amorsize.map(double, range(10))


def test_a_pool_provider_returning_no_pool_fails_the_run_naming_the_plugin(register):
    class Junk:
        @amorsize.hookimpl(tryfirst=True)
        def amorsize_get_pool(self, create):
            return "a pool" if create else None

    register(ForcePlan("thread", 2))
    register(Junk(), name="junk")
    with pytest.raises(amorsize.PluginError, match="'junk' .*no imap_chunks"):
        amorsize.map(double, range(10))


def test_a_pool_missing_part_of_the_contract_fails_naming_what_is_missing(register):
    from amorsize.pools.contract import POOL_ATTRIBUTES, POOL_METHODS, PoolLike
    from amorsize.pools.threads import ThreadPool

    class HalfPool:
        executor_type = "thread"
        n_jobs = 2

        def imap_chunks(self, func, iterable, chunksize, max_inflight=None):
            return iter(())

        def map(self, func, iterable, chunksize=1):
            return [func(x) for x in iterable]

    class Half:
        @amorsize.hookimpl(tryfirst=True)
        def amorsize_get_pool(self, create):
            return HalfPool() if create else None

    pool = ThreadPool(1)
    try:  # amorsize's own pools satisfy the contract
        assert isinstance(pool, PoolLike)
        assert all(callable(getattr(pool, name)) for name in POOL_METHODS)
        assert all(hasattr(pool, name) for name in POOL_ATTRIBUTES)
    finally:
        pool.shutdown()
    register(ForcePlan("thread", 2))
    register(Half(), name="half")
    with pytest.raises(amorsize.PluginError, match="'half' .*no submit\\(\\), submit_chunk\\(\\)") as info:
        amorsize.map(double, range(10))
    for name in ("lease()", "terminate()", "uses_processes", "board"):
        assert name in str(info.value)
    assert "imap_chunks()" not in str(info.value) and "map()," not in str(info.value)


def test_a_raising_run_observer_is_one_warning_and_the_other_observers_still_run(register):
    recorder = register(Recorder())

    class Broken:
        @amorsize.hookimpl(tryfirst=True)
        def amorsize_run_finished(self, report):
            raise RuntimeError("log server down")

    register(Broken(), name="bad-observer")
    with pytest.warns(amorsize.PluginWarning) as caught:
        assert amorsize.map(double, range(10)) == [2 * x for x in range(10)]
    assert [str(w.message) for w in caught] == [
        "amorsize plugin 'bad-observer' raised RuntimeError in amorsize_run_finished: "
        "log server down; the run's results are kept"]
    assert caught[0].filename == __file__  # at the call site
    assert len(recorder.runs) == 1


def test_a_raising_pool_observer_warns_and_keeps_the_results(register):
    class Broken:
        @amorsize.hookimpl
        def amorsize_pool_event(self, event):
            raise RuntimeError(f"cannot record {event}")

    register(ForcePlan("thread", 2))
    register(Broken(), name="bad-pool-observer")
    with pytest.warns(amorsize.PluginWarning, match="'bad-pool-observer' raised RuntimeError"):
        assert amorsize.map(double, range(10)) == [2 * x for x in range(10)]


def test_without_the_builtin_optimizer_and_no_replacement_the_run_fails_clearly():
    amorsize.unregister_plugin(name="amorsize.plugins.default_optimizer")
    try:
        with pytest.raises(amorsize.PluginError, match="no plugin made a plan"):
            amorsize.map(double, range(10))
    finally:
        amorsize.register_plugin(builtin_optimizer, name="amorsize.plugins.default_optimizer")


@pytest.mark.parametrize(("value", "skipped"), [
    ("", set()), ("0", set()), ("false", set()), ("1", None), ("all", None),
    ("bad, worse", {"bad", "worse"}),
])
def test_disable_variable_names_what_to_skip(monkeypatch, value, skipped):
    monkeypatch.setenv(plugins.DISABLE_ENV, value)
    assert plugins.disabled_entry_points() == skipped


def _installed_plugin(tmp_path: Path, source: str, name: str = "ep_plugin") -> dict[str, str]:
    """A test distribution with an entry point in the group ``amorsize``, importable from
    ``tmp_path``; returns the environment of a process that sees it."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    info = tmp_path / f"{name}_dist-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-dist\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[amorsize]\n{name} = {name}\n")
    env = {k: v for k, v in os.environ.items() if k != plugins.DISABLE_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    return env


_ADJUSTING_PLUGIN = """
    import amorsize

    @amorsize.hookimpl
    def amorsize_adjust_plan(plan):
        return plan.replace(reasons=[*plan.reasons, "seen by ep_plugin"])
"""

_REPORT = """
import json, amorsize
plan = amorsize.optimize(abs, range(10))
print(json.dumps({"plugins": amorsize.plugins.plugin_names(), "last_reason": plan.reasons[-1]}))
"""


def _run_python(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


@pytest.mark.parametrize(("disable", "loaded"), [
    (None, True), ("0", True), ("1", False), ("ep_plugin", False), ("other", True)])
def test_a_plugin_installed_through_an_entry_point_is_discovered(tmp_path, disable, loaded):
    env = _installed_plugin(tmp_path, _ADJUSTING_PLUGIN)
    if disable is not None:
        env[plugins.DISABLE_ENV] = disable
    out = _run_python(env, "-c", _REPORT)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    listed = dict((name, hooks) for name, hooks in report["plugins"])
    assert ("ep_plugin" in listed) is loaded
    assert (report["last_reason"] == "seen by ep_plugin") is loaded
    if loaded:
        assert listed["ep_plugin"] == ["amorsize_adjust_plan"]


def test_the_plugins_command_lists_an_entry_point_plugin_and_its_hooks(tmp_path):
    out = _run_python(_installed_plugin(tmp_path, _ADJUSTING_PLUGIN), "-m", "amorsize", "plugins")
    assert out.returncode == 0, out.stderr
    assert "ep_plugin\n    amorsize_adjust_plan" in out.stdout
    assert "amorsize.plugins.default_optimizer" in out.stdout


def test_an_entry_point_that_fails_to_load_warns_once_and_runs_go_on(tmp_path):
    env = _installed_plugin(tmp_path, "raise ImportError('needs libfoo')", name="bad_plugin")
    script = "import amorsize; print(amorsize.map(abs, [-1, -2]))"
    out = _run_python(env, "-c", script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1, 2]"
    assert "'bad_plugin'" in out.stderr and "needs libfoo" in out.stderr
    env[plugins.DISABLE_ENV] = "bad_plugin"
    out = _run_python(env, "-c", script)
    assert out.returncode == 0 and "bad_plugin" not in out.stderr


def _example(name: str):
    """An example script imported as a module (registered, so ``inspect`` finds its source)."""
    module_name = f"example_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, ROOT / "examples" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def test_cap_workers_example_caps_every_plan(register):
    cap_workers = _example("cap_workers")
    register(cap_workers.WorkerCap(2), name="cap")
    recorder = register(Recorder())
    plan = amorsize.optimize(double, range(40), executor="thread", n_jobs=4)
    assert (plan.executor_type, plan.n_jobs) == ("thread", 2)
    assert amorsize.map(double, range(40), executor="thread", n_jobs=4) == [2 * x for x in range(40)]
    assert recorder.runs[-1][1].n_jobs <= 2


def test_cap_workers_example_with_one_worker_runs_serially(register, monkeypatch):
    cap_workers = _example("cap_workers")
    monkeypatch.setenv("AMORSIZE_MAX_WORKERS", "1")
    register(cap_workers.WorkerCap.from_environment())
    plan = amorsize.optimize(double, range(40), executor="process", n_jobs=2)
    assert (plan.executor_type, plan.n_jobs) == ("serial", 1)


def test_log_speedup_example_logs_predicted_and_actual_speedup(register, caplog):
    log_speedup = _example("log_speedup")
    log = register(log_speedup.SpeedupLog())
    with caplog.at_level("INFO", logger="amorsize.speedup"):
        amorsize.map(log_speedup.square, range(1000))
    [record] = log.records
    assert record["function"] == "square" and record["items"] > 0
    assert "predicted" in caplog.text and "actual" in caplog.text


@pytest.mark.parametrize(("script", "expected"), [
    ("cap_workers.py", "with the cap:    thread x2"),
    ("log_speedup.py", "2 runs logged"),
])
def test_examples_run_as_scripts(script, expected):
    out = _run_python(dict(os.environ), str(ROOT / "examples" / script))
    assert out.returncode == 0, out.stderr
    assert expected in out.stdout


def test_the_documented_examples_are_the_shipped_ones():
    docs = (ROOT / "docs" / "plugins.md").read_text()
    assert inspect.getsource(_example("cap_workers").WorkerCap) in docs
    assert inspect.getsource(_example("log_speedup").SpeedupLog) in docs


class _OwnMemory:
    """Keeps profiles itself, as a plugin replacing amorsize's optimizer would."""

    def __init__(self):
        self.kept = {}

    @amorsize.hookimpl(tryfirst=True)
    def amorsize_recall(self, key):
        return self.kept.get(key)

    @amorsize.hookimpl
    def amorsize_remember(self, key, profile):
        from amorsize.optimizer.learned import Learned

        self.kept[key] = Learned(profile)


def test_a_plugin_can_keep_what_was_measured_and_optimize_recalls_it_from_there():
    own = _OwnMemory()
    amorsize.register_plugin(own)
    try:
        calls = []

        def record(x):
            calls.append(x)
            return x

        amorsize.optimize(record, list(range(300)))
        measured = len(calls)
        assert measured > 0 and len(own.kept) == 1
        amorsize.optimize(record, list(range(300)))
        assert len(calls) == measured
    finally:
        amorsize.unregister_plugin(own)


def test_pluggys_tracing_prints_every_hook_call_of_a_map(register, fresh_pools):
    from amorsize.optimizer.learned import LEARNED, function_key

    register(_adjuster("traced", []), name="adjuster")
    register(ForcePlan("thread", 2))
    LEARNED.forget(function_key(double))
    lines: list[str] = []
    plugins.pm.trace.root.setwriter(lines.append)
    undo = plugins.pm.enable_tracing()
    try:
        amorsize.map(double, range(20), progress=True)
    finally:
        undo()
        plugins.pm.trace.root.setwriter(None)
    called = {line.split()[0] for line in lines if line.lstrip().startswith("amorsize_")}
    assert called == set(HOOKS)


def test_a_plan_the_optimizer_made_is_its_own_though_another_maker_declined(register):
    class Declines:
        @amorsize.hookimpl(tryfirst=True)
        def amorsize_make_plan(self):
            return None

    register(Declines(), name="declines")
    assert amorsize.optimize(double, range(20)).decided_by == "amorsize.optimizer"


def test_a_plan_maker_may_name_itself_in_its_plan(register):
    class Signed:
        @amorsize.hookimpl(tryfirst=True)
        def amorsize_make_plan(self, workload):
            return plan_for(workload, "serial", 1).replace(decided_by="site policy")

    register(Signed(), name="signed")
    assert amorsize.optimize(double, range(20)).decided_by == "site policy"


def test_an_unhashable_plugin_is_refused_at_registration():
    import dataclasses

    @dataclasses.dataclass
    class Unhashable:
        n_jobs: int = 2

        @amorsize.hookimpl
        def amorsize_adjust_plan(self, plan):
            return None

    plugin = Unhashable()
    with pytest.raises(pluggy.PluginValidationError, match="eq=False or frozen=True"):
        amorsize.register_plugin(plugin)
    assert not plugins.pm.is_registered(plugin)


def test_a_plugin_registered_without_a_name_is_named_after_its_class(register):
    class Broken:
        @amorsize.hookimpl(tryfirst=True)
        def amorsize_make_plan(self, sample, workload):
            raise RuntimeError("boom")

    name = amorsize.register_plugin(Broken())
    try:
        assert name.endswith("Broken")
        with pytest.raises(amorsize.PluginError, match=r"plugin '.*Broken' raised RuntimeError"):
            amorsize.optimize(double, range(20))
    finally:
        amorsize.unregister_plugin(name=name)


class _CountsRecalls:
    """Answers no recall itself (the built-in one does), only counts the questions."""

    def __init__(self) -> None:
        self.asked = 0

    @amorsize.hookimpl(tryfirst=True)
    def amorsize_recall(self, key):
        self.asked += 1
        return None


def test_a_call_of_a_known_function_asks_amorsize_recall_once():
    """The plan maker is handed what the call recalled (``Workload.learned``): asking again
    would cost every map call a hook call."""
    amorsize.map(double, range(20))
    counter = _CountsRecalls()
    amorsize.register_plugin(counter)
    try:
        assert amorsize.map(double, range(20)) == [2 * x for x in range(20)]
    finally:
        amorsize.unregister_plugin(counter)
    assert counter.asked == 1
