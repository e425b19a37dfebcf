"""Measuring a graph nobody has seen before: run a few of its first tasks, timed, in the caller.

The tasks measured are *root* tasks (they need no other task's result), spread across the
graph, so they can run before the scheduler starts; their results are kept and handed to the
scheduler as data, so no task is ever computed twice and measuring costs nothing extra. When
there are enough of them, a few more run at once on two threads (the probe's overlap test, as
for ``amorsize.map``), which tells work that releases the GIL (numpy, hashing, I/O) from
pure-Python work that does not.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

from amorsize.optimizer.probe import PAIR_ITEMS, Probe, Sample
from amorsize.pools.worker import now, waits
from amorsize_dask.graph import GraphWork, dependency_values, spread
from amorsize_dask.tasks import note_task

MAX_SAMPLES = 4
BUDGET_SHARE = 0.05


def measure(work: GraphWork, cache: dict | None,
            thread_pair: Callable[[], AbstractContextManager[Any]] | None = None) -> Sample | None:
    """Run up to four root tasks and describe them (``amorsize.optimizer.probe``); None when the graph
    has no root task.

    Measuring stops early when it would cost more than 5% of the predicted total: a graph of
    four one-second tasks is measured on one of them, not run serially. ``thread_pair()`` leases
    the two-thread pool of the two-at-once test, when there is one to make (None: no test).
    """
    keys = spread(work.roots, MAX_SAMPLES)
    if not keys:
        return None
    probe = Probe("dask")
    results: dict = {}
    shipped = []
    for key in keys[:2]:
        node = work.graph[key]
        data = dependency_values(work.graph, node, cache)
        w0 = waits()
        t0, c0 = now()
        try:
            value = node(data)
        except Exception as exc:
            note_task(exc, key)
            raise
        t1, c1 = now()
        probe.observe(t1 - t0, c1 - c0, -1 if w0 < 0 else waits() - w0)
        shipped.append(((node, data), value))
        results[key] = value
        if not _worth_more(probe, work.n_tasks):
            break
    # a large buffer both tasks carry crosses to process workers once (``scheduler.Runner``)
    probe.observe_shipping(None, shipped, shared_arguments=True)
    # the test's results are kept: it costs only the overlap it finds missing, so it runs where
    # its tasks are at most a quarter of the graph's rather than within the budget above
    affordable = max(0, min(PAIR_ITEMS, work.n_tasks // 4 - len(results)))
    candidates = [k for k in spread(work.roots, len(results) + affordable) if k not in results]
    results.update(probe.overlap_results(candidates[:affordable],
                                         partial(_run_nodes, work, cache=cache), thread_pair))
    return Sample(probe.profile(), results)


def _run_nodes(work: GraphWork, keys: list, cache: dict | None) -> list:
    results = []
    for key in keys:
        try:
            results.append(work.graph[key](dependency_values(work.graph, work.graph[key], cache)))
        except Exception as exc:
            note_task(exc, key)
            raise
    return results


def _worth_more(probe: Probe, n_tasks: int) -> bool:
    spent = probe.seconds
    mean = spent / len(probe)
    return spent + 2 * mean <= max(BUDGET_SHARE * n_tasks * mean, 2e-3)
