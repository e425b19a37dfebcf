"""Every entry point gives the builtin ``map``'s answer, on every executor and input shape.

A wrong result is the worst bug amorsize can have, so the answer of each front end (the core
functions, ``amorsize.Pool``, the joblib backend, the Dask scheduler) is compared with
``builtins.map`` over the same items: equal, order included, for ordered APIs; equal as a
multiset for unordered ones; and ``(index, result)`` pairs equal to ``enumerate`` of the
builtin map. Each combination is called twice, so the second call runs on the plan recalled
from the first, and, for the core, a third time with ``resample=True``.

The function mapped, ``7x² + x``, gives no two ints the same result, and the inputs are neither
sorted nor in the order a set iterates them: a result paired with the wrong item cannot pass.
A combination found wrong is marked ``xfail(strict=True, reason="bug: ...")`` until fixed,
never skipped.
"""

from __future__ import annotations

import array
import builtins
import collections
import functools
import itertools
import operator
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import numpy as np
import pytest
from differential_helpers import (
    FIFTY,
    MANY,
    Point,
    Scaled,
    add_injective,
    affine,
    injective,
    input_cases,
    key_and_size,
    kind,
    mixed_values,
    mod_seven,
    plus_offset,
    repr_of_kind,
    set_offset,
    shapes,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import amorsize
from amorsize.errors import INTERPRETERS_AVAILABLE

joblib = pytest.importorskip("joblib")
dask = pytest.importorskip("dask")
dask_bag = pytest.importorskip("dask.bag")
dask_array = pytest.importorskip("dask.array")
import amorsize_dask  # noqa: E402,F401 - registers scheduler="amorsize"
import amorsize_joblib  # noqa: E402,F401 - registers backend="amorsize"

EXECUTORS = [None, "serial", "thread", "process"]
CASES = input_cases()
STAR_CASES = input_cases(star=True)

Comparison = Literal["ordered", "multiset", "indexed"]


def _map(f: Callable, data: Iterable, **options: Any) -> list:
    return amorsize.map(f, data, **options)


def _imap(f: Callable, data: Iterable, **options: Any) -> list:
    return list(amorsize.imap(f, data, **options))


def _imap_unordered(f: Callable, data: Iterable, **options: Any) -> list:
    return list(amorsize.imap_unordered(f, data, **options))


def _imap_unordered_indexed(f: Callable, data: Iterable, **options: Any) -> list:
    return list(amorsize.imap_unordered(f, data, with_index=True, **options))


def _starmap(f: Callable, data: Iterable, **options: Any) -> list:
    return amorsize.starmap(f, data, **options)


def _istarmap(f: Callable, data: Iterable, **options: Any) -> list:
    return list(amorsize.istarmap(f, data, **options))


def _optimize_then_run_plan(f: Callable, data: Iterable, **options: Any) -> list:
    how_to_run = {name: options.pop(name) for name in ("timeout", "progress") if name in options}
    return amorsize.run_plan(f, amorsize.optimize(f, data, **options), **how_to_run)


# name: (call, takes argument tuples, how its answer compares with the builtin map's)
CORE: dict[str, tuple[Callable[..., list], bool, Comparison]] = {
    "map": (_map, False, "ordered"),
    "imap": (_imap, False, "ordered"),
    "imap_unordered": (_imap_unordered, False, "multiset"),
    "imap_unordered-with_index": (_imap_unordered_indexed, False, "indexed"),
    "starmap": (_starmap, True, "ordered"),
    "istarmap": (_istarmap, True, "ordered"),
    "optimize-run_plan": (_optimize_then_run_plan, False, "ordered"),
}


def _expected(f: Callable, data: Iterable, star: bool) -> list:
    return list(itertools.starmap(f, data) if star else builtins.map(f, data))


def assert_same_answer(got: list, expected: list, comparison: Comparison) -> None:
    """``got`` is the builtin map's ``expected`` answer, as ``comparison`` says to compare."""
    if comparison == "ordered":
        assert len(got) == len(expected)
        assert got == expected
    elif comparison == "multiset":
        assert _sorted_by_repr(got) == _sorted_by_repr(expected)
    else:
        assert sorted(got, key=lambda pair: pair[0]) == list(enumerate(expected))


def _sorted_by_repr(values: list) -> list:
    """Values of any type in one order, equal ones next to each other (their reprs are equal:
    the ints of ``uneven_values`` are longer than repr allows by default)."""
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        return sorted(values, key=repr)
    finally:
        sys.set_int_max_str_digits(limit)


def check_core(entry: str, make: Callable[[], Iterable], f: Callable | None = None,
               **options: Any) -> None:
    call, star, comparison = CORE[entry]
    f = f if f is not None else (affine if star else injective)
    assert_same_answer(call(f, make(), **options), _expected(f, make(), star), comparison)


def _cases_for(entry: str) -> dict[str, Callable[[], Iterable]]:
    return STAR_CASES if CORE[entry][1] else CASES


def _entry_and_case() -> list:
    return [pytest.param(entry, name, id=f"{entry}-{name}")
            for entry in CORE for name in _cases_for(entry)]


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
@pytest.mark.parametrize(("entry", "case"), _entry_and_case())
def test_core_entry_points_give_the_builtin_maps_answer_first_later_and_resampled(
        entry, case, executor):
    make = _cases_for(entry)[case]
    check_core(entry, make, executor=executor)  # measured
    check_core(entry, make, executor=executor)  # recalled
    check_core(entry, make, executor=executor, resample=True)


@pytest.mark.skipif(not INTERPRETERS_AVAILABLE, reason="sub-interpreters need Python 3.14+")
@pytest.mark.parametrize(("entry", "case"), [
    p for p in _entry_and_case() if p.values[1] != "numpy"])  # numpy refuses sub-interpreters
def test_core_entry_points_on_interpreters_give_the_builtin_maps_answer(entry, case):
    make = _cases_for(entry)[case]
    check_core(entry, make, executor="interpreter")  # measured
    check_core(entry, make, executor="interpreter")  # recalled


@pytest.mark.skipif(not INTERPRETERS_AVAILABLE, reason="sub-interpreters need Python 3.14+")
@pytest.mark.parametrize("entry", CORE)
def test_lambdas_and_closures_on_interpreters_give_the_builtin_maps_answer(entry):
    offset = 5

    def closure(*args):
        return affine(*args) + offset if len(args) == 2 else injective(args[0]) + offset

    make = _cases_for(entry)["list"]
    check_core(entry, make, closure, executor="interpreter")
    check_core(entry, make, Scaled(3), executor="interpreter")
    lam = (lambda a, b: a - 2 * b) if CORE[entry][1] else (lambda x: x - 2)
    check_core(entry, make, lam, executor="interpreter")


def test_imap_unordered_with_index_pairs_each_result_with_its_items_index_on_serial_plans():
    """Regression: serial plans lost one index per block, so from the second block on each
    result came with a later item's index."""
    values = [3 * i + 1 for i in range(MANY)]  # values unlike their indices
    for data in (values, iter(values)):
        pairs = list(amorsize.imap_unordered(injective, data, with_index=True, executor="serial"))
        assert sorted(index for index, _ in pairs) == list(range(MANY))
        assert all(result == injective(values[index]) for index, result in pairs)


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
@pytest.mark.parametrize("entry", CORE)
def test_lambdas_closures_and_callable_objects_give_the_builtin_maps_answer(entry, executor):
    offset = 5

    def closure(*args):
        return affine(*args) + offset if len(args) == 2 else injective(args[0]) + offset

    make = _cases_for(entry)["list"]
    check_core(entry, make, closure, executor=executor)
    check_core(entry, make, Scaled(3), executor=executor)
    if CORE[entry][1]:
        check_core(entry, make, lambda a, b: a - 2 * b, executor=executor)
        check_core(entry, make, functools.partial(Scaled(2), 4), executor=executor)
    else:
        check_core(entry, make, lambda x: x - 2, executor=executor)
        check_core(entry, make, functools.partial(affine, b=4), executor=executor)


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
@pytest.mark.parametrize("entry", [e for e in CORE if not CORE[e][1]])
def test_items_of_every_type_come_back_whole_and_in_place(entry, executor):
    values = mixed_values()
    for make in (lambda: list(values), lambda: iter(values)):
        check_core(entry, make, kind, executor=executor)
        check_core(entry, make, kind, executor=executor)
    returned = CORE[entry][0](kind, [Point(1, 2)], executor=executor)[0]
    _, (_, point) = returned if CORE[entry][2] == "indexed" else (0, returned)
    assert type(point) is Point


def _iterables() -> dict[str, Callable[[], Iterable]]:
    """Iterables whose items are not what indexing them gives, or that have no order of their
    own: the builtin map iterates them, so amorsize must take the same items in the same order."""
    made: dict[str, Callable[[], Iterable]] = {
        "str": lambda: "amorsize" * 7,
        "bytes": lambda: bytes(range(60)),
        "bytearray": lambda: bytearray(range(60)),
        "memoryview": lambda: memoryview(bytes(range(60))),
        "array.array": lambda: array.array("q", FIFTY),
        "frozenset": lambda: frozenset(FIFTY),
        "dict-values": lambda: {x: x * 3 for x in FIFTY}.values(),
        "dict-items": lambda: {x: x * 3 for x in FIFTY}.items(),
        "UserList": lambda: collections.UserList(FIFTY),
        "map-object": lambda: builtins.map(abs, FIFTY),
        "numpy-rows": lambda: np.arange(120).reshape(60, 2),
        "numpy-strings": lambda: np.array(["a", "bb", "ccc"] * 20),
        "numpy-floats": lambda: np.linspace(-1, 1, 60),
    }
    try:
        import pandas as pd
    except ImportError:
        return made
    made["pandas-series-index-not-positions"] = lambda: pd.Series(FIFTY, index=range(49, -1, -1))
    made["pandas-series-labels"] = lambda: pd.Series(FIFTY, index=[f"k{x}" for x in FIFTY])
    return made


ITERABLES = _iterables()


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
@pytest.mark.parametrize("iterable", list(ITERABLES))
@pytest.mark.parametrize("entry", ["map", "imap"])  # reading all at once, and lazily
def test_every_kind_of_iterable_gives_the_builtin_maps_answer(entry, iterable, executor):
    call, _, comparison = CORE[entry]
    for _ in range(2):  # measured, then recalled
        got = call(repr_of_kind, ITERABLES[iterable](), executor=executor)
        assert_same_answer(got, _expected(repr_of_kind, ITERABLES[iterable](), False),
                           comparison)


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
@pytest.mark.parametrize("entry", ["map", "imap", "imap_unordered"])
def test_groupby_whose_groups_reading_ahead_would_empty_is_refused_with_the_fix(entry, executor):
    """Items are read ahead of the calls, and reading the next group empties the one before:
    instead of a wrong answer, an error that says what to pass."""
    groups = itertools.groupby(sorted(x % 5 for x in range(100)))
    with pytest.raises(amorsize.InvalidArgumentTypeError, match=r"list\(group\)"):
        CORE[entry][0](key_and_size, groups, executor=executor)


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
@pytest.mark.parametrize("sample_size", [1, 49, 50, 51, 500])
@pytest.mark.parametrize("entry", CORE)
def test_every_sample_size_gives_the_builtin_maps_answer(entry, sample_size, executor):
    """Items measured while planning keep their results, which go back in their places:
    however many there are, up to all of the input (50 items here) and beyond."""
    cases = _cases_for(entry)
    for case in ("list", "generator", "set"):
        check_core(entry, cases[case], executor=executor, sample_size=sample_size,
                   resample=True)


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
def test_lazy_calls_consumed_in_turns_each_get_their_own_answer(executor):
    """Runs share the warm pools: two iterators read in turns, and a map between their reads,
    must not see each other's results."""
    first = amorsize.imap(injective, (x for x in range(3_000)), executor=executor, chunksize=7)
    second = amorsize.imap_unordered(kind, (-x for x in range(2_000)), with_index=True,
                                     executor=executor, chunksize=5)
    got_first: list = []
    got_second: list = []
    for step in itertools.count():
        taken_first = list(itertools.islice(first, 97))
        taken_second = list(itertools.islice(second, 89))
        got_first += taken_first
        got_second += taken_second
        if step % 5 == 0:
            assert amorsize.map(plus_offset, range(300), executor=executor) == [
                plus_offset(x) for x in range(300)]
        if not taken_first and not taken_second:
            break
    assert got_first == [injective(x) for x in range(3_000)]
    assert sorted(got_second) == [(x, kind(-x)) for x in range(2_000)]


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
def test_maps_from_several_threads_at_once_each_get_their_own_answer(executor):
    from concurrent.futures import ThreadPoolExecutor

    def call(k: int) -> bool:
        data = range(k * 1_000, k * 1_000 + 500 + k)
        ordered = amorsize.map(injective, data, executor=executor)
        indexed = amorsize.imap_unordered(injective, iter(data), with_index=True,
                                          executor=executor)
        expected = [injective(x) for x in data]
        return ordered == expected and sorted(indexed) == list(enumerate(expected))

    with ThreadPoolExecutor(6) as callers:
        assert all(callers.map(call, range(12)))


@pytest.mark.parametrize("entry", ["map", "imap_unordered-with_index", "istarmap"])
def test_recycled_process_workers_give_the_builtin_maps_answer(entry):
    cases = _cases_for(entry)
    for case in ("list", "uneven-cost"):
        check_core(entry, cases[case], executor="process", chunksize=13, max_tasks_per_child=4)


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
@pytest.mark.parametrize("entry", [e for e in CORE if not CORE[e][1] and e != "optimize-run_plan"])
def test_an_initializer_runs_before_every_item_it_prepares(entry, executor):
    call, _, comparison = CORE[entry]
    for data in (list(range(200)), range(MANY)):
        got = call(plus_offset, data, executor=executor, initializer=set_offset,
                   initargs=(1_000,))
        assert_same_answer(got, [x + 1_000 for x in data], comparison)


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
@pytest.mark.parametrize("chunksize", [1, 7, MANY + 1])
@pytest.mark.parametrize("entry", CORE)
def test_a_forced_chunksize_gives_the_builtin_maps_answer(entry, chunksize, executor):
    cases = _cases_for(entry)
    for case in ("list", "generator", "one-item", "empty-list", "uneven-cost"):
        check_core(entry, cases[case], executor=executor, chunksize=chunksize)
    if chunksize > MANY:  # smaller chunks of many items: the drawn inputs below cover them
        check_core(entry, cases["many-generator"], executor=executor, chunksize=chunksize)


@pytest.mark.parametrize("executor", [None, "thread", "process"], ids=lambda e: f"executor={e}")
@pytest.mark.parametrize("n_jobs", [1, 2, -1])
@pytest.mark.parametrize("entry", CORE)
def test_every_n_jobs_gives_the_builtin_maps_answer(entry, n_jobs, executor):
    cases = _cases_for(entry)
    for case in ("list", "many-generator", "uneven-cost"):
        check_core(entry, cases[case], executor=executor, n_jobs=n_jobs)


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
@pytest.mark.parametrize("entry", CORE)
def test_a_time_limit_watches_chunks_and_gives_the_builtin_maps_answer(entry, executor):
    cases = _cases_for(entry)
    for case in ("list", "empty-list", "one-item", "many-generator", "uneven-cost"):
        check_core(entry, cases[case], executor=executor, timeout=60)
        check_core(entry, cases[case], executor=executor, timeout=60)


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
@pytest.mark.parametrize("entry", CORE)
def test_a_progress_bar_gives_the_builtin_maps_answer(entry, executor):
    cases = _cases_for(entry)
    for case in ("list", "empty-list", "many-generator", "uneven-cost"):
        check_core(entry, cases[case], executor=executor, progress=True)


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
@pytest.mark.parametrize("entry", ["imap", "imap_unordered", "imap_unordered-with_index",
                                   "istarmap"])
@pytest.mark.parametrize("case", ["list", "many-generator", "uneven-cost"])
def test_an_iterator_closed_part_way_gave_only_right_results_and_closes_quietly(
        entry, case, executor):
    star = CORE[entry][1]
    f = affine if star else injective
    make = _cases_for(entry)[case]
    expected = _expected(f, make(), star)
    lazy = {
        "imap": amorsize.imap, "istarmap": amorsize.istarmap,
        "imap_unordered": amorsize.imap_unordered,
        "imap_unordered-with_index": lambda *a, **k: amorsize.imap_unordered(
            *a, with_index=True, **k),
    }[entry]
    for _ in range(2):  # measured, then recalled
        results: Iterator = lazy(f, make(), executor=executor)
        taken = list(itertools.islice(results, 5))
        results.close()
        assert list(results) == []
        if CORE[entry][2] == "ordered":
            assert taken == expected[:5]
        elif CORE[entry][2] == "indexed":
            assert len({index for index, _ in taken}) == 5
            assert all(result == expected[index] for index, result in taken)
        else:
            assert len(taken) == 5
            assert not collections.Counter(taken) - collections.Counter(expected)


_RESULT_SIZES = st.sampled_from([0, 1, 2, 7, 8, 9, 4095, 4096, 4097, 8192, 8193, MANY])


@st.composite
def _values(draw: st.DrawFn) -> list:
    """Lists of ints: arbitrary short ones, and long ones of lengths around block boundaries."""
    if draw(st.booleans()):
        return draw(st.lists(st.integers(), max_size=40))
    n, seed = draw(_RESULT_SIZES), draw(st.integers(1, 10**6))
    return [(i * seed) % 2003 - 1001 for i in range(n)]


def _check_drawn(data: st.DataObject, executors: list, **options: Any) -> None:
    values = data.draw(_values(), label="values")
    entry = data.draw(st.sampled_from(list(CORE)), label="entry")
    if CORE[entry][1]:
        values = values[:500]  # argument tuples: enough for boundaries of chunks, not blocks
    made = shapes(values, star=CORE[entry][1])
    container = data.draw(st.sampled_from(sorted(made)), label="container")
    executor = data.draw(st.sampled_from(executors), label="executor")
    check_core(entry, made[container], executor=executor, **options)
    check_core(entry, made[container], executor=executor, **options)


_HYPOTHESIS = settings(max_examples=25, deadline=None, database=None,
                       suppress_health_check=[HealthCheck.function_scoped_fixture,
                                              HealthCheck.too_slow])


@_HYPOTHESIS
@given(data=st.data())
def test_drawn_inputs_give_the_builtin_maps_answer_on_every_entry_point(data):
    _check_drawn(data, EXECUTORS)


@settings(_HYPOTHESIS, max_examples=12)
@given(data=st.data(), chunksize=st.integers(1, 20))
def test_drawn_inputs_around_chunk_boundaries_give_the_builtin_maps_answer(data, chunksize):
    _check_drawn(data, ["thread", "process"], chunksize=chunksize)


# amorsize.Pool: the methods multiprocessing.Pool offers, as many as exist here
def _pool_calls() -> dict[str, tuple[Callable[..., list], bool, Comparison]]:
    calls: dict[str, tuple[Callable[..., list], bool, Comparison]] = {
        "map": (lambda pool, f, d, **k: pool.map(f, d, **k), False, "ordered"),
        "imap": (lambda pool, f, d, **k: list(pool.imap(f, d, **k)), False, "ordered"),
        "imap_unordered": (lambda pool, f, d, **k: list(pool.imap_unordered(f, d, **k)),
                           False, "multiset"),
        "starmap": (lambda pool, f, d, **k: pool.starmap(f, d, **k), True, "ordered"),
        "map_async": (lambda pool, f, d, **k: pool.map_async(f, d, **k).get(timeout=60),
                      False, "ordered"),
        "starmap_async": (lambda pool, f, d, **k: pool.starmap_async(f, d, **k).get(timeout=60),
                          True, "ordered"),
        "apply": (lambda pool, f, d, **k: [pool.apply(f, (x,)) for x in d], False, "ordered"),
        "apply_async": (lambda pool, f, d, **k: [r.get(timeout=60) for r in
                                                 [pool.apply_async(f, (x,)) for x in d]],
                        False, "ordered"),
    }
    return {name: call for name, call in calls.items() if hasattr(amorsize.Pool, name)}


POOL_CALLS = _pool_calls()
_PER_ITEM_METHODS = {"apply", "apply_async"}
# the Pool hands its input to the core functions, which every shape above already goes through
_POOL_CASES = ("list", "generator", "numpy", "empty-list", "one-item", "many-generator",
               "uneven-cost")


def _pool_method_and_case() -> list:
    params = []
    for method in POOL_CALLS:
        for name in _POOL_CASES:
            if method in _PER_ITEM_METHODS and name.startswith("many"):
                continue  # a call per item: many items say nothing more than fifty
            params.append(pytest.param(method, name, id=f"{method}-{name}"))
    return params


@pytest.mark.parametrize("processes", [None, 2], ids=lambda p: f"processes={p}")
@pytest.mark.parametrize(("method", "case"), _pool_method_and_case())
def test_pool_methods_give_the_builtin_maps_answer(method, case, processes):
    call, star, comparison = POOL_CALLS[method]
    make = (STAR_CASES if star else CASES)[case]
    f = affine if star else injective
    with amorsize.Pool(processes) as pool:
        for _ in range(2):  # measured, then recalled
            assert_same_answer(call(pool, f, make()), _expected(f, make(), star), comparison)


@pytest.mark.parametrize("chunksize", [1, 7, MANY + 1])
@pytest.mark.parametrize("method", [m for m in POOL_CALLS if m not in _PER_ITEM_METHODS])
def test_pool_methods_with_a_chunksize_give_the_builtin_maps_answer(method, chunksize):
    call, star, comparison = POOL_CALLS[method]
    cases = STAR_CASES if star else CASES
    f = affine if star else injective
    with amorsize.Pool(2) as pool:
        for case in ("list", "generator", "many-generator", "uneven-cost"):
            got = call(pool, f, cases[case](), chunksize=chunksize)
            assert_same_answer(got, _expected(f, cases[case](), star), comparison)


# joblib: Parallel under parallel_config(backend="amorsize", executor=...). joblib sees a
# generator of delayed calls whatever holds the items, so containers matter less than sizes:
# "many" is past the backend's first serial batch of 4,096 tasks.
RETURN_AS = {"list": "ordered", "generator": "ordered", "generator_unordered": "multiset"}
JOBLIB_MANY = 4_500
JOBLIB_CASES = {
    "list": CASES["list"], "numpy": CASES["numpy"], "empty": CASES["empty-list"],
    "one-item": CASES["one-item"], "many": lambda: iter(range(JOBLIB_MANY)),
    "uneven-cost": CASES["uneven-cost"],
}


def _joblib(f: Callable, data: Iterable, executor: str | None, return_as: str,
            n_jobs: int | None = -1) -> list:
    config = {} if executor is None else {"executor": executor}
    with joblib.parallel_config(backend="amorsize", **config):
        out = joblib.Parallel(n_jobs=n_jobs, return_as=return_as)(
            joblib.delayed(f)(x) for x in data)
        return list(out)


def check_joblib(make: Callable[[], Iterable], executor: str | None, return_as: str,
                 n_jobs: int | None = -1) -> None:
    assert_same_answer(_joblib(injective, make(), executor, return_as, n_jobs),
                       _expected(injective, make(), False), RETURN_AS[return_as])


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
@pytest.mark.parametrize("case", [case for case in JOBLIB_CASES if case != "many"])
@pytest.mark.parametrize("return_as", list(RETURN_AS))
def test_joblib_parallel_gives_the_builtin_maps_answer(return_as, case, executor):
    check_joblib(JOBLIB_CASES[case], executor, return_as)  # measured
    check_joblib(JOBLIB_CASES[case], executor, return_as)  # recalled


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
def test_joblib_parallel_over_many_tasks_gives_the_builtin_maps_answer(executor):
    """Measured in one mode, recalled in each: a forced pool's first call runs one task per
    chunk, and thousands of those are slow enough to pay for once."""
    check_joblib(JOBLIB_CASES["many"], executor, "list")
    for return_as in RETURN_AS:
        check_joblib(JOBLIB_CASES["many"], executor, return_as)


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
@pytest.mark.parametrize("n_jobs", [1, 2, -1, None])
def test_joblib_parallel_with_every_n_jobs_gives_the_builtin_maps_answer(n_jobs, executor):
    for return_as in RETURN_AS:
        for case in ("list", "uneven-cost"):
            check_joblib(JOBLIB_CASES[case], executor, return_as, n_jobs)


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
def test_joblib_parallel_with_more_tasks_than_the_last_call_gives_the_builtin_maps_answer(
        executor):
    """The plan recalled expects as many tasks as the last call had (joblib's generator has no
    length): the tasks past that count must still all run, once each, in order."""
    check_joblib(JOBLIB_CASES["list"], executor, "list")
    for return_as in RETURN_AS:
        check_joblib(JOBLIB_CASES["many"], executor, return_as)


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
@pytest.mark.parametrize("return_as", ["generator", "generator_unordered"])
def test_a_joblib_generator_closed_part_way_gave_only_right_results(return_as, executor):
    expected = _expected(injective, range(JOBLIB_MANY), False)
    config = {} if executor is None else {"executor": executor}
    for _ in range(2):  # measured, then recalled
        with joblib.parallel_config(backend="amorsize", **config), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # joblib: "tasks ... not used"
            results = joblib.Parallel(n_jobs=-1, return_as=return_as)(
                joblib.delayed(injective)(x) for x in range(JOBLIB_MANY))
            taken = list(itertools.islice(results, 5))
            results.close()
        if return_as == "generator":
            assert taken == expected[:5]
        else:
            assert len(set(taken)) == 5
            assert set(taken) <= set(expected)
    check_joblib(JOBLIB_CASES["list"], executor, return_as)  # the next call is unharmed


def test_joblib_parallel_runs_lambdas_and_closures_on_processes():
    offset = 5
    for f in (lambda x: x - 2, lambda x: injective(x) + offset):
        for return_as, comparison in RETURN_AS.items():
            assert_same_answer(_joblib(f, range(50), "process", return_as),
                               [f(x) for x in range(50)], comparison)


# Dask: bag, delayed and array computed with scheduler="amorsize"
def _dask_options(executor: str | None) -> dict:
    return {"scheduler": "amorsize"} | ({} if executor is None else {"executor": executor})


DASK_VALUES = {
    "empty": [], "one-item": [7], "fifty": list(range(50)), "many": list(range(MANY)),
    "uneven-cost": None,
}


def _dask_values(name: str) -> list:
    from differential_helpers import uneven_values

    values = DASK_VALUES[name]
    return uneven_values() if values is None else values


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
@pytest.mark.parametrize("npartitions", [1, 7, 64])
@pytest.mark.parametrize("values", list(DASK_VALUES))
def test_dask_bag_map_gives_the_builtin_maps_answer(values, npartitions, executor):
    items = _dask_values(values)
    for _ in range(2):  # measured, then recalled
        bag = dask_bag.from_sequence(items, npartitions=max(1, min(npartitions, len(items))))
        assert bag.map(injective).compute(**_dask_options(executor)) == _expected(
            injective, items, False)


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
@pytest.mark.parametrize("values", [v for v in DASK_VALUES if v != "many"])
def test_dask_delayed_gives_the_builtin_maps_answer(values, executor):
    items = _dask_values(values)
    for _ in range(2):  # measured, then recalled
        tasks = [dask.delayed(injective)(x) for x in items]
        got = list(dask.compute(*tasks, **_dask_options(executor)))
        assert got == _expected(injective, items, False)


# thousands of one- or seven-item blocks would measure Dask's cost per task, nothing more
_ARRAY_CASES = [pytest.param(values, chunks, id=f"{values}-chunks={chunks}")
                for values in DASK_VALUES if values != "uneven-cost"
                for chunks in (1, 7, 1000, MANY + 1) if values != "many" or chunks >= 1000]


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
@pytest.mark.parametrize(("values", "chunks"), _ARRAY_CASES)
def test_dask_array_map_blocks_gives_the_builtin_maps_answer(values, chunks, executor):
    items = np.array(_dask_values(values), dtype=np.int64)
    expected = np.array([injective(x) for x in items], dtype=np.int64)
    for _ in range(2):  # measured, then recalled
        array = dask_array.from_array(items, chunks=chunks).map_blocks(injective)
        got = array.compute(**_dask_options(executor))
        assert got.dtype == expected.dtype
        assert got.tolist() == expected.tolist()


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
@pytest.mark.parametrize("chunksize", [None, 1, 3, 50])
@pytest.mark.parametrize("num_workers", [None, 1, 2])
def test_dask_with_forced_batches_and_workers_gives_the_builtin_maps_answer(
        num_workers, chunksize, executor):
    options = _dask_options(executor) | {"num_workers": num_workers, "chunksize": chunksize}
    items = list(FIFTY)
    bag = dask_bag.from_sequence(items, npartitions=17).map(injective)
    assert bag.compute(**options) == _expected(injective, items, False)
    tasks = [dask.delayed(injective)(x) for x in items[:20]]
    assert list(dask.compute(*tasks, **options)) == _expected(injective, items[:20], False)


def _tree_sum(leaves: list) -> Any:
    while len(leaves) > 1:
        pairs = itertools.zip_longest(leaves[::2], leaves[1::2])
        leaves = [left if right is None else dask.delayed(operator.add)(left, right)
                  for left, right in pairs]
    return leaves[0]


@pytest.mark.parametrize("executor", EXECUTORS, ids=lambda e: f"executor={e}")
def test_dask_graphs_whose_tasks_depend_on_others_give_the_plain_answer(executor):
    """Not only maps: results of tasks feed later tasks (trees, shuffles, reductions,
    a matrix product), and every one must reach the right task."""
    options = _dask_options(executor)
    items = list(range(-150, 150, 7))
    for _ in range(2):  # measured, then recalled
        tree = _tree_sum([dask.delayed(injective)(x) for x in items])
        assert dask.compute(tree, **options)[0] == sum(builtins.map(injective, items))
        bag = dask_bag.from_sequence(items, npartitions=7)
        grouped = bag.foldby(mod_seven, add_injective, 0, operator.add, 0)
        expected: dict = {}
        for x in items:
            expected[x % 7] = expected.get(x % 7, 0) + injective(x)
        assert dict(grouped.compute(**options)) == expected
        matrix = np.arange(-64, 80, dtype=np.int64).reshape(12, 12)
        chunked = dask_array.from_array(matrix, chunks=5)
        product, total = dask.compute((chunked + chunked.T) @ chunked,
                                      injective(chunked).sum(axis=0), **options)
        assert product.tolist() == ((matrix + matrix.T) @ matrix).tolist()
        assert total.tolist() == injective(matrix).sum(axis=0).tolist()


def test_dask_runs_lambdas_and_closures_on_processes():
    offset = 5
    for f in (lambda x: x - 2, lambda x: injective(x) + offset):
        bag = dask_bag.from_sequence(range(50), npartitions=5).map(f)
        assert bag.compute(**_dask_options("process")) == [f(x) for x in range(50)]
        tasks = [dask.delayed(f)(x) for x in range(20)]
        assert list(dask.compute(*tasks, **_dask_options("process"))) == [f(x) for x in range(20)]
