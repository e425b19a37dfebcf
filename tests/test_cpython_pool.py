"""CPython's own tests of ``multiprocessing.Pool``, run against ``amorsize.Pool``.

Ported from CPython 3.11's ``Lib/test/_test_multiprocessing.py`` (classes ``_TestPool``,
``_TestPoolWorkerErrors`` and ``_TestPoolWorkerLifetime``, the "processes" flavour), under the
Python Software Foundation License; the helpers (``sqr``, ``mul``, ``raise_large_valuerror``,
``identity``, ``CountedObject``, ``SayWhenError``, ``exception_throwing_generator``,
``raising``, ``unpickleable_result``) are theirs. Each test keeps its name, intent and
assertions, written for pytest; where amorsize differs by design, the test says how and asserts
amorsize's behaviour instead:

- ``test_map_unplicklable``: amorsize runs items it cannot pickle on threads or in the caller,
  so ``map`` over them succeeds; ``apply_async``, which must send them to a process, raises the
  pickling error through ``get`` (without hanging, which is the test's intent).
- ``test_imap_handle_iterable_exception`` and the ``imap_unordered`` one: amorsize reads the
  first items of an iterator when ``imap`` is called (to measure them), and reads ahead of its
  consumer, so the iterable's error may come from the ``imap()`` call itself and results
  computed before it may be dropped; the error still reaches the caller with its type, and every
  result delivered is right.
- ``test_async_timeout``, ``test_terminate``: calls are held by a long wait or an event, and
  ``get(timeout)`` / ``terminate()`` must not wait for them; the elapsed-time assertions
  (``assertTimingAlmostEqual``) are dropped (no timing thresholds here).
- ``test_traceback``: the worker's traceback is amorsize's ``RemoteTraceback`` (the cause), whose
  text holds the line that raised, instead of ``multiprocessing.pool.RemoteTraceback``'s ``tb``.
- ``test_unpickleable_result``: amorsize returns results with cloudpickle, so a lambda comes
  back and works; a result nothing can pickle (a lock) raises the pickling error (a
  ``TypeError``) where multiprocessing raises ``MaybeEncodingError``, through ``get`` and the
  error callback alike, and the pool keeps working.
- ``test_map_no_failfast``: only its point is kept (``close``/``join`` after a failed ``map``
  return), not the check that it took at least 0.9 s.

Set aside:
- ``test_make_pool``'s ``len(p._pool)``, ``test_pool_worker_lifetime`` (worker pids before and
  after ``_repopulate_pool``) and ``test_resource_warning`` (``_state``, a ``ResourceWarning``
  in ``__del__``): they read ``multiprocessing.Pool``'s internals. An ``amorsize.Pool`` owns no
  workers (they are shared and kept warm), so an unclosed one holds nothing to warn about.
  ``test_pool_worker_lifetime``'s results part is kept as ``test_pool_worker_lifetime_results``.
- ``test_async``'s timing of ``get`` (its result is still checked).
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import sys
import threading
import time
import weakref

import pytest
from control_helpers import run_script

from amorsize import Pool
from amorsize.pools.worker import RemoteTraceback

TIMEOUT1 = 0.1
LONG = 60.0


def sqr(x, wait=0.0, event=None):
    if event is None:
        time.sleep(wait)
    else:
        event.wait(wait)
    return x * x


def mul(x, y):
    return x * y


def raise_large_valuerror(wait):
    time.sleep(wait)
    raise ValueError("x" * 1024**2)


def identity(x):
    return x


class CountedObject:
    n_instances = 0

    def __new__(cls):
        cls.n_instances += 1
        return object.__new__(cls)

    def __del__(self):
        type(self).n_instances -= 1


class SayWhenError(ValueError):
    pass


def exception_throwing_generator(total, when):
    if when == -1:
        raise SayWhenError("Somebody said when")
    for i in range(total):
        if i == when:
            raise SayWhenError("Somebody said when")
        yield i


def raising():
    raise KeyError("key")


def unpickleable_result():
    return lambda: 42


def unpicklable_for_anyone():
    return threading.Lock()


def _test_traceback():
    raise RuntimeError(123)  # some comment


def _test_wrapped_exception():
    raise RuntimeError("foo")


@pytest.fixture(scope="module")
def pool():
    pool = Pool(4)
    yield pool
    pool.terminate()
    pool.join()


def test_apply(pool):
    papply = pool.apply
    assert papply(sqr, (5,)) == sqr(5)
    assert papply(sqr, (), {"x": 3}) == sqr(x=3)


def test_map(pool):
    pmap = pool.map
    assert pmap(sqr, list(range(10))) == list(map(sqr, list(range(10))))
    assert pmap(sqr, list(range(100)), chunksize=20) == list(map(sqr, list(range(100))))


def test_starmap(pool):
    psmap = pool.starmap
    tuples = list(zip(range(10), range(9, -1, -1)))
    assert psmap(mul, tuples) == list(itertools.starmap(mul, tuples))
    tuples = list(zip(range(100), range(99, -1, -1)))
    assert psmap(mul, tuples, chunksize=20) == list(itertools.starmap(mul, tuples))


def test_starmap_async(pool):
    tuples = list(zip(range(100), range(99, -1, -1)))
    assert pool.starmap_async(mul, tuples).get() == list(itertools.starmap(mul, tuples))


def test_map_async(pool):
    assert pool.map_async(sqr, list(range(10))).get() == list(map(sqr, list(range(10))))


def test_map_async_callbacks(pool):
    call_args = []
    pool.map_async(int, ["1"], callback=call_args.append, error_callback=call_args.append).wait()
    assert len(call_args) == 1
    assert call_args[0] == [1]
    pool.map_async(int, ["a"], callback=call_args.append, error_callback=call_args.append).wait()
    assert len(call_args) == 2
    assert isinstance(call_args[1], ValueError)


class A:
    def __reduce__(self):
        raise RuntimeError("cannot pickle")


def test_map_unplicklable(pool):
    # Issue #19425 -- failure to pickle should not cause a hang
    assert len(pool.map(identity, [A()] * 10)) == 10  # amorsize runs them unpickled
    with pytest.raises(RuntimeError):
        pool.apply_async(identity, (A(),)).get(timeout=60)


def test_map_chunksize(pool):
    try:
        pool.map_async(sqr, [], chunksize=1).get(timeout=30)
    except multiprocessing.TimeoutError:
        pytest.fail("pool.map_async with chunksize stalled on null list")


def test_map_handle_iterable_exception(pool):
    # SayWhenError seen at the very first of the iterable
    with pytest.raises(SayWhenError):
        pool.map(sqr, exception_throwing_generator(1, -1), 1)
    # again, make sure it's reentrant
    with pytest.raises(SayWhenError):
        pool.map(sqr, exception_throwing_generator(1, -1), 1)

    with pytest.raises(SayWhenError):
        pool.map(sqr, exception_throwing_generator(10, 3), 1)

    class SpecialIterable:
        def __iter__(self):
            return self

        def __next__(self):
            raise SayWhenError

        def __len__(self):
            return 1

    with pytest.raises(SayWhenError):
        pool.map(sqr, SpecialIterable(), 1)
    with pytest.raises(SayWhenError):
        pool.map(sqr, SpecialIterable(), 1)


def test_async(pool):
    res = pool.apply_async(sqr, (7, TIMEOUT1))
    assert res.get() == 49


def test_async_timeout():
    p = Pool(3)
    try:
        res = p.apply_async(sqr, (6, LONG))
        with pytest.raises(multiprocessing.TimeoutError):
            res.get(timeout=0.2)
    finally:
        p.terminate()
        p.join()


def test_imap(pool):
    it = pool.imap(sqr, list(range(10)))
    assert list(it) == list(map(sqr, list(range(10))))

    it = pool.imap(sqr, list(range(10)))
    for i in range(10):
        assert next(it) == i * i
    with pytest.raises(StopIteration):
        next(it)

    it = pool.imap(sqr, list(range(1000)), chunksize=100)
    for i in range(1000):
        assert next(it) == i * i
    with pytest.raises(StopIteration):
        next(it)


def results_until(error, start, expected):
    """The results of ``start()`` (an iterator) until ``error``, which must come, whether from
    ``start()`` or while iterating; each result must be one of ``expected`` (used up as seen)."""
    got = []
    with pytest.raises(error):
        for value in start():
            assert value in expected
            expected.remove(value)
            got.append(value)
    return got


def test_imap_handle_iterable_exception(pool):
    # SayWhenError seen at the very first of the iterable
    results_until(SayWhenError, lambda: pool.imap(sqr, exception_throwing_generator(1, -1), 1), [])
    # again, make sure it's reentrant
    results_until(SayWhenError, lambda: pool.imap(sqr, exception_throwing_generator(1, -1), 1), [])

    for total, when, chunksize in [(10, 3, 1), (20, 7, 2), (20, 7, 4)]:
        got = results_until(
            SayWhenError,
            lambda total=total, when=when, chunksize=chunksize: pool.imap(
                sqr, exception_throwing_generator(total, when), chunksize),
            [sqr(i) for i in range(when)])
        assert got == [sqr(i) for i in range(len(got))]  # in order, from the first


def test_imap_unordered(pool):
    it = pool.imap_unordered(sqr, list(range(10)))
    assert sorted(it) == list(map(sqr, list(range(10))))

    it = pool.imap_unordered(sqr, list(range(1000)), chunksize=100)
    assert sorted(it) == list(map(sqr, list(range(1000))))


def test_imap_unordered_handle_iterable_exception(pool):
    # SayWhenError seen at the very first of the iterable
    results_until(SayWhenError,
                  lambda: pool.imap_unordered(sqr, exception_throwing_generator(1, -1), 1), [])
    # again, make sure it's reentrant
    results_until(SayWhenError,
                  lambda: pool.imap_unordered(sqr, exception_throwing_generator(1, -1), 1), [])

    results_until(SayWhenError,
                  lambda: pool.imap_unordered(sqr, exception_throwing_generator(10, 3), 1),
                  list(map(sqr, list(range(10)))))
    results_until(SayWhenError,
                  lambda: pool.imap_unordered(sqr, exception_throwing_generator(20, 7), 2),
                  list(map(sqr, list(range(20)))))


def test_make_pool():
    with pytest.raises(ValueError):
        Pool(-1)
    with pytest.raises(ValueError):
        Pool(0)

    p = Pool(3)
    p.close()
    p.join()


def test_terminate():
    # Simulate slow tasks which take "forever" to complete
    release = threading.Event()
    p = Pool(3)
    args = [LONG for i in range(10_000)]
    result = p.map_async(release.wait, args, chunksize=1)
    p.terminate()
    p.join()
    assert result.ready() and not result.successful()
    release.set()


def test_empty_iterable():
    # See Issue 12157
    p = Pool(1)

    assert p.map(sqr, []) == []
    assert list(p.imap(sqr, [])) == []
    assert list(p.imap_unordered(sqr, [])) == []
    assert p.map_async(sqr, []).get() == []

    p.close()
    p.join()


def test_context():
    L = list(range(10))
    expected = [sqr(i) for i in L]
    with Pool(2) as p:
        r = p.map_async(sqr, L)
        assert r.get() == expected
    p.join()
    with pytest.raises(ValueError):
        p.map_async(sqr, L)


def test_traceback(capsys):
    # We want ensure that the traceback from the child process is
    # contained in the traceback raised in the main process.
    with Pool(1) as p:
        try:
            p.apply(_test_traceback)
        except Exception as e:
            exc = e
        else:
            pytest.fail("expected RuntimeError")
    p.join()
    assert type(exc) is RuntimeError
    assert exc.args == (123,)
    cause = exc.__cause__
    assert type(cause) is RemoteTraceback
    assert "raise RuntimeError(123)  # some comment" in str(cause)

    capsys.readouterr()
    try:
        raise exc
    except RuntimeError:
        sys.excepthook(*sys.exc_info())
    assert "raise RuntimeError(123)  # some comment" in capsys.readouterr().err
    # _helper_reraises_exception should not make the error
    # a remote exception
    with Pool(1) as p:
        try:
            p.map(sqr, exception_throwing_generator(1, -1), 1)
        except Exception as e:
            exc = e
        else:
            pytest.fail("expected SayWhenError")
        assert type(exc) is SayWhenError
        assert exc.__cause__ is None
    p.join()


def test_wrapped_exception():
    # Issue #20980: Should not wrap exception when using thread pool
    with Pool(1) as p, pytest.raises(RuntimeError):
        p.apply(_test_wrapped_exception)
    p.join()


def test_map_no_failfast():
    # Issue #23992: the fail-fast behaviour when an exception is raised
    # during map() would make Pool.join() deadlock
    with pytest.raises(ValueError), Pool(2) as p:
        try:
            p.map(raise_large_valuerror, [0, 0.1])
        finally:
            p.close()
            p.join()


def test_release_task_refs(pool):
    # Issue #29861: task arguments and results should not be kept
    # alive after we are done with them.
    objs = [CountedObject() for i in range(10)]
    refs = [weakref.ref(o) for o in objs]
    pool.map(identity, objs)

    del objs
    gc.collect()  # For PyPy or other GCs.
    assert {wr() for wr in refs} == {None}
    # With a process pool, copies of the objects are returned, check
    # they were released too.
    assert CountedObject.n_instances == 0


def test_enter():
    pool = Pool(1)
    with pool:
        pass
        # call pool.terminate()
    # pool is no longer running

    with pytest.raises(ValueError), pool:
        # bpo-35477: pool.__enter__() fails if the pool is not running
        pass
    pool.join()


def test_async_error_callback():
    p = Pool(2)

    scratchpad = [None]

    def errback(exc):
        scratchpad[0] = exc

    res = p.apply_async(raising, error_callback=errback)
    with pytest.raises(KeyError):
        res.get()
    assert scratchpad[0]
    assert isinstance(scratchpad[0], KeyError)

    p.close()
    p.join()


def test_unpickleable_result():
    p = Pool(2)
    assert p.apply_async(unpickleable_result).get()() == 42  # cloudpickle carries it

    # Make sure we don't lose pool processes because of encoding errors.
    for _iteration in range(20):
        scratchpad = [None]

        def errback(exc, scratchpad=scratchpad):
            scratchpad[0] = exc

        res = p.apply_async(unpicklable_for_anyone, error_callback=errback)
        with pytest.raises(TypeError, match="pickle"):
            res.get()
        wrapped = scratchpad[0]
        assert wrapped
        assert isinstance(scratchpad[0], TypeError)

    p.close()
    p.join()


def test_pool_worker_lifetime_results():
    p = Pool(3, maxtasksperchild=10)
    results = []
    for i in range(100):
        results.append(p.apply_async(sqr, (i,)))
    # Fetch the results and verify we got the right answers,
    # also ensuring all the tasks have completed.
    for j, res in enumerate(results):
        assert res.get() == sqr(j)
    p.close()
    p.join()


def test_pool_worker_lifetime_early_close():
    # Issue #10332: closing a pool whose workers have limited lifetimes
    # before all the tasks completed would make join() hang.
    p = Pool(3, maxtasksperchild=1)
    results = []
    for i in range(6):
        results.append(p.apply_async(sqr, (i, 0.3)))
    p.close()
    p.join()
    # check the results
    for j, res in enumerate(results):
        assert res.get() == sqr(j)


def test_pool_maxtasksperchild_invalid():
    for value in [0, -1, 0.5, "12"]:
        with pytest.raises(ValueError):
            Pool(3, maxtasksperchild=value)


def test_worker_finalization_via_atexit_handler_of_multiprocessing():
    # tests cases against bpo-38744 and bpo-39360
    cmd = """if 1:
        from amorsize import Pool
        problem = None
        class A:
            def __init__(self):
                self.pool = Pool(processes=1)
        def test():
            global problem
            problem = A()
            problem.pool.map(float, tuple(range(10)))
        if __name__ == "__main__":
            test()
    """
    proc = run_script(cmd)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
