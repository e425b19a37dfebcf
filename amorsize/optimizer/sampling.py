"""Which items of a sequence to measure, and where: ``map``/``imap``/``optimize``'s side of the
probe.

Items are picked spread across the data (sorted data makes the first few lie) and timed in a
shuffled order, so that what drifts with time (warm-up, a CPU's clock) is not taken for costs
rising along the input, and a budget spent early leaves no part of the input unmeasured. Each is
run once, and its result is kept so that running the plan afterwards never calls the function on
that item again: measuring costs nothing beyond the lost parallelism of a few calls. What the
calls took becomes a profile in ``amorsize.optimizer.probe``, as it does for every front end.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from typing import Any

from amorsize.optimizer.probe import Probe, Sample
from amorsize.pools import worker

BUDGET_SECONDS = 0.05


def spread_indices(n: int, k: int) -> list[int]:
    """``k`` indices in ``range(n)``, one in the middle of each of ``k`` equal strata."""
    k = min(n, k)
    return sorted({min(n - 1, int((i + 0.5) * n / k)) for i in range(k)})


def shuffled(indices: list[int]) -> list[int]:
    """``indices`` in an order that does not follow the input's, the same on every call."""
    order = list(indices)
    random.Random(len(order)).shuffle(order)
    return order


def measure(
    func: Callable,
    items: Sequence,
    indices: list[int],
    thread_pair: Callable[[], Any] | None = None,
    pair_indices: list[int] = (),  # type: ignore[assignment]
    run_timed: Callable[[Callable, list, list[int], float], tuple] | None = None,
) -> Sample:
    """Run ``func`` on ``items[i]`` for ``i`` in ``indices`` (one at a time, stopping early once
    the time budget is spent), then ``pair_indices`` split over two threads of the pool that
    ``thread_pair()`` leases (a context manager) to learn whether calls overlap on threads.

    ``run_timed(func, items, indices, budget)`` runs the measured items where the caller wants
    them (``worker.run_timed``'s contract; default: here, in the calling thread) -- on a
    process worker when the caller forced processes, so a crash there never kills the caller.
    Errors in ``func`` propagate."""
    order = shuffled(indices)
    chosen = [items[i] for i in order]
    try:
        if run_timed is None:
            outs, walls, cpus, blocked = worker.run_timed(func, chosen, BUDGET_SECONDS)
        else:
            outs, walls, cpus, blocked = run_timed(func, chosen, order, BUDGET_SECONDS)
    except Exception as exc:
        worker.item_note(exc, lambda k: order[k] if k < len(order) else None)  # which item
        raise
    results: dict[int, Any] = dict(zip(order, outs))
    probe = Probe("sampling")
    for wall, cpu, times, position in zip(walls, cpus, blocked, order):
        probe.observe(wall, cpu, times, position)
    probe.observe_shipping(func, [(items[i], results[i]) for i in list(results)[:3]])
    results.update(probe.overlap_results([i for i in pair_indices if i not in results],
                                         functools.partial(_run, func, items), thread_pair))
    return Sample(probe.profile(), results, dict(zip(order, walls)))


def _run(func: Callable, items: Sequence, indices: list[int]) -> list:
    return [func(items[i]) for i in indices]
