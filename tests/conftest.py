"""Shared fixtures: every test starts with nothing remembered about functions, on a machine
taken as quiet (the shared machine's load would move plans from one run to the next; the tests
of a busy machine inject theirs), and the global pools are shut down when the session ends (so
no worker outlives the test run)."""

from __future__ import annotations

import pytest

import amorsize
from amorsize import system
from amorsize.optimizer import decision
from amorsize.optimizer.decision import _DECISIONS
from amorsize.optimizer.learned import LEARNED


@pytest.fixture(autouse=True)
def _forget_functions():
    LEARNED.forget()
    _DECISIONS.forget()
    yield


@pytest.fixture(autouse=True)
def _quiet_machine(monkeypatch):
    monkeypatch.setattr(system, "runnable_elsewhere", lambda: 0.0)
    monkeypatch.setattr(system, "runnable_apart", lambda tasks: 0.0)
    monkeypatch.setattr(decision, "BUSY_SHARE", 0.0)


@pytest.fixture(scope="session", autouse=True)
def _shutdown_global_pools():
    yield
    amorsize.shutdown_global_pool_manager(force=True)
