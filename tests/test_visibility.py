"""Seeing what amorsize decided and why: the ``amorsize`` logger, ``AMORSIZE_LOG``,
``amorsize.last_plan()``, and progress that covers measuring."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from plugin_helpers import double, registered

import amorsize


class Progress:
    """Records every progress event, and the calls of ``traced`` between them."""

    def __init__(self) -> None:
        self.seen: list = []
        self.lock = threading.Lock()

    @amorsize.hookimpl
    def amorsize_run_progress(self, progress):
        with self.lock:
            self.seen.append(progress)

    def traced(self, x: int) -> int:
        with self.lock:
            self.seen.append(("call", x))
        return x


def test_each_run_logs_its_decision_at_info_and_its_reasons_at_debug(caplog):
    with caplog.at_level(logging.DEBUG, logger="amorsize"):
        amorsize.map(double, range(50), executor="thread", n_jobs=2)
    messages = [r.getMessage() for r in caplog.records if r.name == "amorsize"]
    decided = [m for m in messages if m.startswith("map(double) over 50 items: 2 threads")]
    assert len(decided) == 1 and "predicted" in decided[0]
    assert any(m.startswith("Each item takes about") and "  plan: thread, n_jobs=2" in m
               and "why:" in m for m in messages)
    assert any(m.startswith("map(double) over 50 items finished: 50 items") for m in messages)


def test_nothing_is_formatted_when_the_logger_is_off(caplog):
    with caplog.at_level(logging.WARNING, logger="amorsize"):
        amorsize.map(double, range(10), executor="serial")
    assert not [r for r in caplog.records if r.name == "amorsize"]


def test_amorsize_log_debug_prints_the_decision_and_its_reasons_to_stderr(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import amorsize

        def square(x):
            return x * x

        amorsize.map(square, range(100), executor="serial")
    """))
    env = {**os.environ, "AMORSIZE_LOG": "debug"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "amorsize INFO: map(square) over 100 items: serial" in done.stderr
    assert "amorsize DEBUG: Each item takes about" in done.stderr
    assert "  plan: serial, n_jobs=1" in done.stderr
    assert "why:" in done.stderr and "serial: predicted" in done.stderr


def test_a_bad_amorsize_log_is_a_warning_naming_the_variable_and_the_levels(tmp_path):
    env = {**os.environ, "AMORSIZE_LOG": "loud"}
    done = subprocess.run([sys.executable, "-W", "always", "-c", "import amorsize"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "AMORSIZE_LOG='loud'" in done.stderr and "debug, info" in done.stderr


def test_last_plan_is_the_plan_of_the_last_run_without_its_items():
    amorsize.map(double, list(range(30)), executor="thread", n_jobs=2)
    plan = amorsize.last_plan()
    assert plan is not None
    assert (plan.executor_type, plan.n_jobs, plan.workload.source) == ("thread", 2, "map")
    assert plan.data is None and plan.sampled_results == {}
    assert "why:" in plan.explain()


def test_last_plan_shows_a_joblib_users_plan():
    joblib = pytest.importorskip("joblib")
    import amorsize_joblib  # noqa: F401 - registers the backend

    with joblib.parallel_config(backend="amorsize"):
        joblib.Parallel()(joblib.delayed(double)(i) for i in range(20))
    assert amorsize.last_plan().workload.source == "joblib"


def test_last_plan_shows_a_dask_users_plan():
    bag = pytest.importorskip("dask.bag")
    import amorsize_dask  # noqa: F401 - registers the scheduler

    bag.from_sequence(range(20), npartitions=4).map(double).compute(scheduler="amorsize")
    assert amorsize.last_plan().workload.source == "dask"


def test_progress_starts_before_the_items_are_measured_and_is_one_run():
    progress = Progress()
    with registered(progress):
        assert amorsize.map(progress.traced, range(40), progress=True,
                            resample=True) == list(range(40))
    first = progress.seen[0]
    assert (first.state, first.n_total, first.n_done) == ("started", 40, 0)
    events = [e for e in progress.seen if not isinstance(e, tuple)]
    assert {e.run_id for e in events} == {first.run_id}
    assert [e.state for e in events].count("started") == 1
    assert (events[-1].state, events[-1].n_done) == ("finished", 40)


def test_progress_shown_while_planning_is_closed_when_planning_fails():
    progress = Progress()

    def fails(x: int) -> int:
        raise ValueError("no")

    with registered(progress), pytest.raises(ValueError, match="no"):
        amorsize.map(fails, range(10), progress=True)
    states = [e.state for e in progress.seen if not isinstance(e, tuple)]
    assert states == ["started", "cancelled"]
