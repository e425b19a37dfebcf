"""Making ``scheduler="amorsize"`` mean amorsize's scheduler, in Dask's table of named ones."""

from __future__ import annotations

SCHEDULER_NAME = "amorsize"


def register() -> None:
    """Add ``"amorsize"`` to ``dask.base.named_schedulers``; calling it again changes nothing.

    Done on ``import amorsize_dask``; call it yourself only if something removed the entry.
    """
    from dask import base

    from amorsize_dask.scheduler import get

    base.named_schedulers[SCHEDULER_NAME] = get


def unregister() -> None:
    """Remove ``"amorsize"`` from Dask's named schedulers (for tests and clean teardown)."""
    from dask import base

    base.named_schedulers.pop(SCHEDULER_NAME, None)
