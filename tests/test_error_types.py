"""Errors keep their types: amorsize's own errors and the user's exceptions reach the caller as
they were raised, whichever built-in plugin they came through; only a third-party plugin's
failure is a ``PluginError``."""

from __future__ import annotations

import pool_helpers
import pytest
from plugin_helpers import ForcePlan, double, registered

import amorsize
from amorsize.pools.manager import PoolManager

EXECUTORS = ["serial", "thread", "process"]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_unhashable_initargs_are_refused_up_front_naming_initargs(executor):
    with pytest.raises(amorsize.InvalidArgumentTypeError) as info:
        amorsize.map(double, range(10), executor=executor, initializer=pool_helpers.set_marker,
                     initargs=([1, 2],))
    assert type(info.value) is amorsize.InvalidArgumentTypeError
    assert "initargs must be hashable" in str(info.value)


@pytest.mark.parametrize("executor", EXECUTORS)
def test_initargs_that_are_not_a_tuple_are_refused_naming_initargs(executor):
    with pytest.raises(amorsize.InvalidArgumentTypeError, match="initargs must be a tuple") as info:
        amorsize.map(double, range(10), executor=executor, initializer=pool_helpers.set_marker,
                     initargs=5)
    assert type(info.value) is amorsize.InvalidArgumentTypeError


def test_an_unhashable_initargs_asked_of_the_pool_hook_is_not_a_plugin_error():
    """The built-in pool plugin refuses it (as ``PoolManager.get_pool`` does), with amorsize's
    own error: nothing the user registered failed."""
    from amorsize import plugins

    with pytest.raises(amorsize.InvalidArgumentTypeError, match="initargs") as info:
        plugins.get_pool(2, "thread", initializer=pool_helpers.set_marker, initargs=([1],))
    assert type(info.value) is amorsize.InvalidArgumentTypeError
    assert not hasattr(info.value, "amorsize_plugin")


@pytest.mark.parametrize("executor", ["serial", "thread"])
def test_an_initializer_that_raises_in_this_process_raises_its_own_exception(executor):
    with pytest.raises(RuntimeError, match="initializer failed on purpose") as info:
        amorsize.map(double, range(10), executor=executor, n_jobs=2,
                     initializer=pool_helpers.failing_initializer)
    assert type(info.value) is RuntimeError


def test_an_initializer_that_raises_in_a_process_worker_is_a_worker_crash_caused_by_it():
    """The pool cannot start: ``WorkerCrashedError`` (a ``BrokenProcessPool``, as
    ``concurrent.futures`` says), whose cause is the initializer's exception, sent back from the
    worker with its traceback there."""
    with pytest.raises(amorsize.WorkerCrashedError,
                       match="the initializer raised RuntimeError: initializer failed") as info:
        amorsize.map(double, range(10), executor="process", n_jobs=2,
                     initializer=pool_helpers.failing_initializer)
    assert type(info.value) is amorsize.WorkerCrashedError
    cause = info.value.__cause__
    assert type(cause) is RuntimeError and str(cause) == "initializer failed on purpose"
    assert "in failing_initializer" in str(cause.__cause__)  # the worker's traceback


@pytest.mark.parametrize("executor", EXECUTORS)
def test_an_error_in_the_function_keeps_its_type(executor):
    with pytest.raises(ValueError, match="bad item 3") as info:
        amorsize.map(pool_helpers.fail_with_value_error, [3], executor=executor)
    assert type(info.value) is ValueError


def test_a_call_after_the_global_manager_was_shut_down_gets_a_new_one():
    """As docs/pools.md says: the next ``get_global_pool_manager()`` makes a new manager."""
    before = amorsize.get_global_pool_manager()
    amorsize.shutdown_global_pool_manager()
    assert amorsize.map(double, range(20), executor="thread", n_jobs=2) == [2 * x for x in range(20)]
    assert amorsize.get_global_pool_manager() is not before


def test_a_run_whose_pool_the_manager_shutdown_closed_raises_pool_manager_closed():
    results = amorsize.imap(double, range(200), executor="thread", n_jobs=2, chunksize=1)
    assert next(results) == 0
    amorsize.shutdown_global_pool_manager()
    with pytest.raises(amorsize.PoolManagerClosedError, match="shutdown") as info:
        list(results)
    assert type(info.value) is amorsize.PoolManagerClosedError


def test_a_pool_asked_of_a_shut_down_manager_raises_pool_manager_closed():
    manager = PoolManager()
    manager.shutdown()
    with pytest.raises(amorsize.PoolManagerClosedError, match="shut down") as info:
        manager.get_pool(2, "thread")
    assert type(info.value) is amorsize.PoolManagerClosedError


def test_a_third_party_pool_plugin_that_fails_is_a_plugin_error_naming_it():
    """Even when what it raised is amorsize's own error: the plugin is what to fix."""
    closed = PoolManager()
    closed.shutdown()

    class ClosedPools:
        @amorsize.hookimpl(tryfirst=True)
        def amorsize_get_pool(self, n_jobs, executor_type, create):
            return closed.get_pool(n_jobs, executor_type) if create else None

    with registered(ForcePlan("thread", 2)), registered(ClosedPools(), name="closed-pools"):
        with pytest.raises(amorsize.PluginError, match="'closed-pools' raised "
                           "PoolManagerClosedError in amorsize_get_pool") as info:
            amorsize.map(double, range(10))
    assert info.value.plugin_name == "closed-pools"
    assert type(info.value.__cause__) is amorsize.PoolManagerClosedError


def test_a_third_party_plan_plugin_that_fails_is_a_plugin_error_naming_it():
    class BadPlans:
        @amorsize.hookimpl(tryfirst=True)
        def amorsize_make_plan(self):
            raise amorsize.InvalidArgumentError("n_jobs must be 3")

    with registered(BadPlans(), name="bad-plans"):
        with pytest.raises(amorsize.PluginError, match="'bad-plans' raised InvalidArgumentError "
                           "in amorsize_make_plan") as info:
            amorsize.map(double, range(10))
    assert type(info.value.__cause__) is amorsize.InvalidArgumentError


def test_a_third_party_adjuster_that_fails_is_a_plugin_error_naming_it():
    class Adjuster:
        @amorsize.hookimpl
        def amorsize_adjust_plan(self, plan):
            raise KeyError("chunksize")

    with registered(Adjuster(), name="adjuster"):
        with pytest.raises(amorsize.PluginError, match="'adjuster' raised KeyError") as info:
            amorsize.map(double, range(10))
    assert type(info.value.__cause__) is KeyError
