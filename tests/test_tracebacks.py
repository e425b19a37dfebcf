"""An error in the user's function shows the user's code -- file, line and source line, from
process workers too -- and names the item that raised and where it ran, in a note."""

from __future__ import annotations

import functools
import linecache
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import cloudpickle
import pytest

import amorsize
from amorsize.optimizer import probe, sampling
from amorsize.options import complete
from amorsize.pools import shipping, worker
from amorsize.pools.manager import PoolManager

ROOT = Path(__file__).resolve().parent.parent
EXECUTORS = ["serial", "thread", "process"]
WHERE = {
    "serial": r"in this process",
    "thread": r"on thread amorsize-\d+",
    "process": r"on process worker \d+ \(pid \d+\)",
}
N = 200
FAILING = 57  # an item no measuring runs (see test_the_failing_item_is_not_one_measured)


def fail_on(failing: int, x: int) -> int:
    if x == failing:
        raise ValueError(f"bad item {x}")
    return x


def fail_on_first(failing: int, x: int, _: int) -> int:
    return fail_on(failing, x)


check = functools.partial(fail_on, FAILING)


def _measured_items(n: int) -> set[int]:
    sample_size = complete("map", {})["sample_size"]
    return (set(sampling.spread_indices(n, sample_size))
            | set(sampling.spread_indices(n, sample_size + probe.PAIR_ITEMS)))


def test_the_failing_item_is_not_one_measured():
    """The notes below name an item run after planning; one measured has its own test."""
    assert FAILING not in _measured_items(N)


CALLS = {
    "map": lambda e: amorsize.map(check, range(N), executor=e, n_jobs=2),
    "map with a time limit": lambda e: amorsize.map(check, range(N), executor=e, n_jobs=2,
                                                    timeout=60),
    "imap": lambda e: list(amorsize.imap(check, range(N), executor=e, n_jobs=2)),
    "imap_unordered": lambda e: list(amorsize.imap_unordered(check, range(N), executor=e,
                                                             n_jobs=2)),
    "imap_unordered with_index": lambda e: list(amorsize.imap_unordered(
        check, range(N), executor=e, n_jobs=2, with_index=True)),
    "starmap": lambda e: amorsize.starmap(functools.partial(fail_on_first, FAILING),
                                          [(x, x) for x in range(N)], executor=e, n_jobs=2),
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_failing_item_is_named_in_a_note_with_where_it_ran(executor, call):
    with pytest.raises(ValueError, match=f"bad item {FAILING}") as info:
        CALLS[call](executor)
    where = "on thread amorsize-\\d+" if call == "map with a time limit" and executor == "serial" \
        else WHERE[executor]  # a serial plan with a time limit runs on a thread
    (note,) = info.value.__notes__
    assert re.fullmatch(f"item {FAILING} of {N}, run {where}", note), note


@pytest.mark.parametrize("executor", EXECUTORS)
def test_an_input_of_unknown_length_names_the_item_without_a_total(executor):
    with pytest.raises(ValueError) as info:
        list(amorsize.imap(check, iter(range(N)), executor=executor, n_jobs=2))
    (note,) = info.value.__notes__
    assert re.fullmatch(f"item {FAILING}, run {WHERE[executor]}", note), note


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_a_measured_item_that_fails_is_named_too(executor):
    """Items measured while planning run in this process, or on a process worker when
    processes are forced."""
    measured = min(sampling.spread_indices(N, complete("map", {})["sample_size"]))
    with pytest.raises(ValueError) as info:
        amorsize.map(functools.partial(fail_on, measured), range(N), executor=executor)
    (note,) = info.value.__notes__
    assert re.fullmatch(f"item {measured}, run {WHERE[executor]}", note), note


@pytest.mark.parametrize("executor", ["thread", "process"])
def test_a_pools_own_map_names_the_failing_item(executor):
    with PoolManager() as manager:
        pool = manager.get_pool(2, executor)
        with pytest.raises(ValueError) as info:
            pool.map(check, range(N), chunksize=5)
    (note,) = info.value.__notes__
    assert re.fullmatch(f"item {FAILING}, run {WHERE[executor]}", note), note


def test_the_note_leaves_no_mark_of_its_making_on_the_exception():
    with pytest.raises(ValueError) as info:
        amorsize.map(check, range(N), executor="process", n_jobs=2)
    assert set(vars(info.value)) == {"__notes__"}


SCRIPT = '''\
import sys

import amorsize


def check(x):
    if x == 57:
        raise ValueError(f"bad item {x}")
    return x


if __name__ == "__main__":
    amorsize.map(check, range(200), executor=sys.argv[1], n_jobs=2)
'''


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_scripts_traceback_shows_its_file_line_source_and_item(tmp_path, executor):
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script), executor], capture_output=True,
                          text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    where_and_what = f'File "{script}", line 8, in check\n' + '    raise ValueError(f"bad item {x}")\n'
    assert where_and_what in done.stderr
    assert "<dynamic-code>" not in done.stderr
    assert re.search(f"ValueError: bad item 57\nitem 57 of 200, run {WHERE[executor]}\n",
                     done.stderr), done.stderr


def test_code_shipped_by_value_keeps_its_file_name_inner_code_included():
    namespace = {"__name__": "__main__"}
    exec(compile("def outer(x):\n    return [lambda: x for _ in range(1)]\n", "/src/job.py",
                 "exec"), namespace)
    loaded = cloudpickle.loads(shipping.dumps(namespace["outer"]))
    inner = loaded(1)[0]
    assert (loaded.__code__.co_filename, inner.__code__.co_filename) == ("/src/job.py",) * 2


def test_the_payload_of_a_function_is_the_same_each_time():
    """Workers cache unpickled functions by the payload's digest."""
    namespace = {"__name__": "__main__"}
    exec("def f(x):\n    return x + 1\n", namespace)
    assert worker.PickledFunction(namespace["f"]).digest == \
        worker.PickledFunction(namespace["f"]).digest


def test_a_source_only_linecache_holds_travels_with_the_code(monkeypatch):
    """A notebook cell is no file: its lines come along, so the worker's traceback shows them."""
    name = "<ipython-input-3-0d1e>"
    source = textwrap.dedent("""\
        def cell(x):
            if x == 5:
                raise KeyError("cell item")
            return x
        """)
    monkeypatch.setitem(linecache.cache, name, (len(source), None, source.splitlines(True), name))
    namespace = {"__name__": "__main__"}
    exec(compile(source, name, "exec"), namespace)
    with pytest.raises(KeyError) as info:
        amorsize.map(namespace["cell"], range(N), executor="process", n_jobs=2)
    remote = str(info.value.__cause__)
    assert f'File "{name}", line 3, in cell\n    raise KeyError("cell item")\n' in remote


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_failing_dask_task_is_named_by_its_key_and_where_it_ran(executor):
    bag = pytest.importorskip("dask.bag")
    import amorsize_dask  # noqa: F401 - registers the scheduler

    work = bag.from_sequence(range(40), npartitions=4).map(functools.partial(fail_on, 17))
    with pytest.raises(ValueError) as caught:
        work.compute(scheduler="amorsize", executor=executor)
    note = caught.value.__notes__[-1]
    assert note.startswith("dask task (") and ", 1), run " in note  # item 17: partition 1
    assert ("process worker" in note) == (executor == "process")


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_failing_joblib_task_says_where_it_ran(executor):
    joblib = pytest.importorskip("joblib")
    import amorsize_joblib  # noqa: F401 - registers the backend

    with pytest.raises(ValueError) as caught, \
            joblib.parallel_config(backend="amorsize", executor=executor):
        joblib.Parallel()(joblib.delayed(fail_on)(17, i) for i in range(40))
    note = caught.value.__notes__[-1]
    assert note.startswith("a task of a joblib batch of ")
    assert ("process worker" in note) == (executor == "process")
