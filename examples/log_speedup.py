"""An amorsize plugin that logs, for every run, the speedup amorsize predicted and the one it got.

Runs of ``amorsize.map``/``imap``, joblib and Dask all report to ``amorsize_run_finished``; this
plugin writes one line per run to the ``amorsize.speedup`` logger and keeps the last runs in
``records``, so a service can watch whether amorsize's predictions hold on its real workloads.

Run it: ``python examples/log_speedup.py``.
"""

from __future__ import annotations

import collections
import logging
import time

import amorsize

logger = logging.getLogger("amorsize.speedup")


class SpeedupLog:
    """Logs predicted against actual speedup of every finished run; keeps the last ``keep``."""

    def __init__(self, keep: int = 100) -> None:
        self.records: collections.deque[dict] = collections.deque(maxlen=keep)

    @amorsize.hookimpl
    def amorsize_run_finished(self, plan: amorsize.Plan, report: amorsize.RunReport) -> None:
        record = {
            "function": getattr(plan.workload.key, "co_name", "?"),
            "source": report.source,
            "executor": f"{report.executor_type} x{report.n_jobs}",
            "items": report.n_items,
            "wall_seconds": report.wall_seconds,
            "predicted_speedup": report.predicted_speedup,
            "actual_speedup": report.actual_speedup,
        }
        self.records.append(record)
        logger.info(
            "%(function)s via %(source)s on %(executor)s: %(items)d items in %(wall_seconds).3fs, "
            "predicted %(predicted_speedup).2fx, actual %(actual_speedup).2fx", record)


def wait_for_io(x: int) -> int:
    """Stands in for a network call: two milliseconds of waiting."""
    time.sleep(0.002)
    return x


def square(x: int) -> int:
    return x * x


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    log = SpeedupLog()
    amorsize.register_plugin(log, name="log-speedup")
    try:
        amorsize.map(square, range(10_000))
        amorsize.map(wait_for_io, range(200))
    finally:
        amorsize.unregister_plugin(log)
    print(f"{len(log.records)} runs logged")


if __name__ == "__main__":
    main()
