"""What a multiprocessing.Pool, mpire or tqdm user reaches for: imap_unordered, starmap,
initializers, by changing the import."""

from __future__ import annotations

import functools
import threading

import pytest
from control_helpers import run_script
from core_helpers import square

import amorsize
from amorsize.optimizer.learned import function_key

STATE: dict = {}


def set_tag(tag: str) -> None:
    STATE["tag"] = tag


def read_tag(x: int) -> tuple:
    return STATE.get("tag"), x


def test_starmap_unpacks_each_item_as_arguments():
    assert amorsize.starmap(pow, [(2, 3), (3, 2), (5, 0)]) == [8, 9, 1]
    assert list(amorsize.istarmap(max, iter([(1, 5), (7, 2)]))) == [5, 7]


def test_starmap_accepts_maps_keyword_arguments():
    assert amorsize.starmap(pow, [(2, 2)] * 20, executor="thread", n_jobs=2) == [4] * 20


def test_starmap_remembers_each_function_apart():
    assert function_key(amorsize.pools.worker.Star(pow)) != function_key(amorsize.pools.worker.Star(max))
    assert function_key(amorsize.pools.worker.Star(square)) == function_key(
        amorsize.pools.worker.Star(square))


def test_imap_unordered_yields_results_as_they_complete():
    two_others_out = threading.Event()

    def first_waits(x: int) -> int:
        if x == 0 and not two_others_out.wait(60):
            raise AssertionError("item 0 waited for results that imap_unordered held back")
        return x

    list(amorsize.imap_unordered(first_waits, range(1, 12), executor="thread", n_jobs=2))
    out = []
    for x in amorsize.imap_unordered(first_waits, range(12), executor="thread", n_jobs=2,
                                     chunksize=1):   # known now: nothing is measured first
        out.append(x)
        if len(out) == 2:
            two_others_out.set()
    assert sorted(out) == list(range(12))
    assert out.index(0) > 1        # item 0 ended only after two others were given out


def test_imap_unordered_with_index_pairs_each_result_with_its_position():
    pairs = list(amorsize.imap_unordered(square, range(50), with_index=True, executor="thread",
                                         n_jobs=2))
    assert sorted(pairs) == [(i, i * i) for i in range(50)]
    serial = list(amorsize.imap_unordered(square, range(50), with_index=True, executor="serial"))
    assert serial == [(i, i * i) for i in range(50)]


def test_imap_unordered_refuses_an_unknown_option():
    with pytest.raises(amorsize.InvalidArgumentTypeError, match="chunk_size"):
        amorsize.imap_unordered(square, range(5), chunk_size=2)


@pytest.mark.parametrize("executor", ["process", "thread", "serial"])
def test_an_initializer_runs_in_every_worker_before_its_items(executor):
    out = amorsize.map(read_tag, range(30), executor=executor, n_jobs=2, initializer=set_tag,
                       initargs=(executor,))
    assert out == [(executor, x) for x in range(30)]


@pytest.mark.timeout(60)
def test_main_functions_and_a_lambda_initializer_work_in_processes():
    """The promise of README and docs/pools.md: ``__main__`` code travels by value."""
    proc = run_script("""
        import amorsize
        conn = None
        def connect(tag):
            global conn
            conn = "connected to " + tag
        def query(x):
            return conn, x
        out = amorsize.map(query, range(10), executor="process", n_jobs=2, initializer=connect,
                           initargs=("db",))
        print(sorted({c for c, _ in out}))
        out = amorsize.map(query, range(10), executor="process", n_jobs=2,
                           initializer=lambda: connect("lambda"))
        print(sorted({c for c, _ in out}))
        def pair(x, y):
            return conn, x + y
        out = amorsize.starmap(pair, [(1, 2)] * 10, executor="process", n_jobs=2,
                               initializer=connect, initargs=("star",))
        print(sorted({c for c, _ in out}))
    """)
    out, err = proc.communicate(timeout=50)
    assert out.splitlines() == ["['connected to db']", "['connected to lambda']",
                                "['connected to star']"], err


def test_a_bad_initializer_is_refused_naming_the_argument():
    with pytest.raises(amorsize.InvalidArgumentTypeError, match="initializer"):
        amorsize.map(square, range(3), initializer=42)
    with pytest.raises(amorsize.InvalidArgumentTypeError, match="initargs"):
        amorsize.map(square, range(3), initializer=set_tag, initargs="abc")


def test_functools_partial_passes_fixed_extra_arguments():
    assert amorsize.map(functools.partial(pow, 2), range(5)) == [1, 2, 4, 8, 16]


def test_a_multiprocessing_pool_user_changes_only_the_import():
    from amorsize import Pool

    with Pool(processes=2, initializer=set_tag, initargs=("pool",), maxtasksperchild=50) as pool:
        assert pool.map(square, range(20)) == [x * x for x in range(20)]
        assert list(pool.imap(square, range(5), chunksize=2)) == [0, 1, 4, 9, 16]
        assert sorted(pool.imap_unordered(square, range(5))) == [0, 1, 4, 9, 16]
        assert pool.starmap(pow, [(2, 3), (3, 2)]) == [8, 9]
        assert {tag for tag, _ in pool.map(read_tag, range(10))} == {"pool"}
        pool.close()
        pool.join()
        with pytest.raises(ValueError, match="not running"):
            pool.map(square, range(3))
