"""``initializer=``: it runs once in each worker of the pool that runs the items, never in the
caller unless the plan is serial (then the plan's reasons say so); a different initializer or
different ``initargs`` get workers initialised by them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

import amorsize

SCRIPT = textwrap.dedent('''
    import json, os, sys
    import amorsize

    V = 0

    def init(v):
        global V
        V = v

    def init2():
        global V
        V = 7

    def init3():
        global V
        V = 9

    def get(x):
        return V

    executor = sys.argv[1] if sys.argv[1] != "auto" else None
    seen = []
    for initializer, initargs in ((init, (100,)), (init2, ()), (lambda: init3(), ())):
        results = amorsize.map(get, range(40), executor=executor, initializer=initializer,
                               initargs=initargs)
        seen.append(sorted(set(results)))
    print(json.dumps({"seen": seen, "caller": V}))
''')


def _run_script(tmp_path, executor: str) -> dict:
    script = tmp_path / "initializers.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), executor], capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(200)
def test_each_initializer_sets_up_the_process_workers_that_run_the_items_and_not_the_caller(
        tmp_path):
    out = _run_script(tmp_path, "process")
    assert out["seen"] == [[100], [7], [9]]  # every item, the measured ones too
    assert out["caller"] == 0


@pytest.mark.timeout(200)
def test_a_serial_plan_runs_each_initializer_in_the_caller(tmp_path):
    out = _run_script(tmp_path, "serial")
    assert out["seen"] == [[100], [7], [9]]
    assert out["caller"] == 9


_state = {"inits": 0}


def _count_init() -> None:
    _state["inits"] += 1


def _read(_: int) -> int:
    return _state["inits"]


def test_a_serial_plan_runs_the_initializer_here_once():
    before = _state["inits"]
    results = amorsize.map(_read, range(10), executor="serial", initializer=_count_init,
                           resample=True)
    assert _state["inits"] == before + 1  # once, here
    assert set(results) == {before + 1}


def test_the_reasons_of_a_serial_plan_with_an_initializer_say_where_it_ran():
    from amorsize.optimizer import optimize as optimize_module
    from amorsize.options import complete

    given = complete("map", {"executor": "serial", "initializer": _count_init})
    plan = optimize_module.make(_read, list(range(10)), 10, None, "map", given)
    assert any("initializer runs in this process" in r for r in plan.reasons)


def test_thread_workers_each_run_the_initializer_before_their_first_item():
    import threading

    local = threading.local()

    def init() -> None:
        local.ready = True

    def check(x: int) -> int:
        assert getattr(local, "ready", False), "item ran on a thread the initializer did not set up"
        return x

    assert amorsize.map(check, range(50), executor="thread", n_jobs=2, initializer=init,
                        resample=True) == list(range(50))


STATE_SCRIPT = textwrap.dedent('''
    import json
    import amorsize

    RESOURCE = {}
    SCALE = 1

    def open_resource(name):
        RESOURCE["name"] = name          # filled in place, not rebound
        RESOURCE["scale_at_start"] = SCALE

    def use(x):
        return [RESOURCE.get("name"), x * SCALE]

    first = amorsize.map(use, range(4), executor="process", n_jobs=2,
                         initializer=open_resource, initargs=("db",))
    SCALE = 10                           # read by the initializer, changed here between calls
    second = amorsize.map(use, range(4), executor="process", n_jobs=2,
                          initializer=open_resource, initargs=("db",))
    print(json.dumps({"first": first, "second": second, "caller": RESOURCE}))
''')


@pytest.mark.timeout(200)
def test_what_an_initializer_fills_in_place_is_what_the_calls_read(tmp_path):
    """A global dict the initializer filled stays filled in the worker: the parent's (empty)
    one, which every later call brings by value, does not replace it; a global it only read
    still follows the parent, as the calls' own globals do."""
    script = tmp_path / "state.py"
    script.write_text(STATE_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["first"] == [["db", x] for x in range(4)]
    assert out["second"] == [["db", x * 10] for x in range(4)]
    assert out["caller"] == {}


def test_when_every_item_ran_while_measuring_the_initializer_does_not_run_here():
    """Four items, all measured on a process worker: the plan has nothing left to run, so
    nothing of it runs here, the initializer included."""
    before = _state["inits"]
    assert amorsize.map(_read, range(4), executor="process", n_jobs=2, initializer=_count_init,
                        resample=True) == [1, 1, 1, 1]   # the worker's own count
    assert _state["inits"] == before
    assert "nothing is left to run" in amorsize.last_plan().reasons[-1]
