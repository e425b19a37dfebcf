"""Shared fixtures: every test starts with nothing remembered about functions, and the global
pools are shut down when the session ends (so no worker outlives the test run)."""

from __future__ import annotations

import pytest

import amorsize
from amorsize.optimizer.decision import _DECISIONS
from amorsize.optimizer.learned import LEARNED


@pytest.fixture(autouse=True)
def _forget_functions():
    LEARNED.forget()
    _DECISIONS.forget()
    yield


@pytest.fixture(scope="session", autouse=True)
def _shutdown_global_pools():
    yield
    amorsize.shutdown_global_pool_manager(force=True)
