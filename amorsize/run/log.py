"""What amorsize decided and why, told to the standard ``logging`` logger ``"amorsize"``, and
the last plan run, for callers who never hold a plan (the joblib backend, the Dask scheduler).

INFO: one line per run as it starts (what runs, on what, and the predicted speedup) and one as
it finishes (what it took); DEBUG adds the plan's ``explain()``. The logger has no handler of
its own, as a library's should not: configure ``logging`` as usual, or set ``AMORSIZE_LOG`` to
``debug`` or ``info`` (``warning``, ``error``) to have amorsize print to stderr at that level.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from typing import TYPE_CHECKING

from amorsize.plan import Plan, format_seconds

if TYPE_CHECKING:
    from amorsize.run.report import RunReport

LEVEL_ENV = "AMORSIZE_LOG"
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}

logger = logging.getLogger("amorsize")
_last: Plan | None = None


def last_plan() -> Plan | None:
    """The plan of the run that started last in this process, from any front end (``map``,
    ``imap``, ``Pool``, the joblib backend, the Dask scheduler), or None before any.

    It is the plan as it ran, with its reasons (``explain()``), without the items it ran over,
    which it does not keep alive. With runs in several threads at once, it is whichever started
    last."""
    return _last


def started(plan: Plan, description: str) -> None:
    """Keep ``plan`` as the last one and log it."""
    global _last
    if plan.data is None and not plan.sampled_results:
        _last = plan
    else:  # a copy that does not hold the caller's items
        kept = object.__new__(Plan)
        kept.__dict__.update(plan.__dict__)
        kept.data, kept.sampled_results, kept.sampled_seconds = None, {}, {}
        _last = kept
    if logger.isEnabledFor(logging.INFO):
        logger.info("%s: %s", _call(plan, description), summary(plan))
        logger.debug("%s", plan.explain())


def finished(plan: Plan, description: str, report: RunReport, n_done: int) -> None:
    """Log what a completed run took, against what was predicted; ``n_done`` counts the items
    measured while planning too."""
    if not logger.isEnabledFor(logging.INFO):
        return
    predicted = report.predicted_seconds
    measured = n_done - report.n_items
    logger.info("%s finished: %s items%s, the run took %s%s", _call(plan, description),
                f"{n_done:,}", f" ({measured:,} computed while measuring)" if measured else "",
                format_seconds(report.wall_seconds),
                "" if predicted is None else f" (predicted {format_seconds(predicted)})")


def summary(plan: Plan) -> str:
    """The decision in a line: what runs the items, in what chunks, and the speedup expected."""
    if plan.executor_type == "serial":
        how = "serial, in this thread"
    else:
        plural = "processes" if plan.executor_type == "process" else f"{plan.executor_type}s"
        how = f"{plan.n_jobs} {plural if plan.n_jobs != 1 else plan.executor_type}"
        how += f", chunks of {plan.chunksize:,}"
    return (f"{how}; predicted {plan.estimated_speedup:.2f}x a plain loop "
            f"(decided by {plan.decided_by}; amorsize.last_plan().explain() says why)")


def _call(plan: Plan, description: str) -> str:
    n = plan.n_items
    over = "" if n is None else f" over {n:,} items"
    return f"{plan.workload.source}({description}){over}"


def configure_from_environment() -> None:
    """Print the ``amorsize`` logger's records to stderr at ``AMORSIZE_LOG``'s level, if set."""
    value = os.environ.get(LEVEL_ENV, "").strip().lower()
    if not value:
        return
    level = _LEVELS.get(value)
    if level is None:
        warnings.warn(f"{LEVEL_ENV}={value!r} is not a level amorsize knows: use one of "
                      f"{', '.join(_LEVELS)}; amorsize logs nothing to stderr", RuntimeWarning,
                      stacklevel=2)
        return
    if not any(getattr(h, "amorsize_env", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("amorsize %(levelname)s: %(message)s"))
        handler.amorsize_env = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False  # asked for here: printed once, not again by the root logger
    logger.setLevel(level)


configure_from_environment()
