"""What pools cost, measured on real pools: the figures the cost model prices plans with."""

from __future__ import annotations

import time

import pytest

from amorsize import system
from amorsize.optimizer import overheads
from amorsize.pools import worker
from amorsize.pools.processes import ProcessPool
from amorsize.system import default_start_method


@pytest.fixture(scope="module")
def two_workers():
    pool = ProcessPool(2, default_start_method())
    yield pool
    pool.shutdown(force=True)


def test_spin_computes_for_cpu_time_not_wall_time():
    before = time.process_time()
    worker.spin(0.02)
    assert time.process_time() - before >= 0.02


def test_a_chunk_on_busy_cores_is_measured_on_a_pool_with_a_worker_per_core(two_workers,
                                                                              monkeypatch):
    monkeypatch.setattr(system, "usable_cpus", lambda: 2)
    figures = overheads._process_figures(two_workers)
    idle = figures["process_per_chunk"]
    assert idle > 0
    # kept between the idle figure and ten times it, whatever a loaded machine measures
    assert idle <= figures["process_busy_per_chunk"] <= 10 * idle


def test_a_pool_too_small_to_load_every_core_keeps_the_default_busy_figure(two_workers,
                                                                            monkeypatch):
    """1 worker on 2 cores measured 40 µs a chunk, below what a chunk costs idle workers."""
    monkeypatch.setattr(system, "usable_cpus", lambda: 4)
    assert overheads._busy_per_chunk(two_workers, 100e-6) is None
    assert "process_busy_per_chunk" not in overheads._process_figures(two_workers)


def test_unmeasured_figures_are_made_once_per_start_method():
    """Every decision and every reused plan asks for them: building them each time cost a tenth
    of optimize() on a function it has seen."""
    overheads.forget()
    defaults = overheads.current("spawn")
    assert overheads.current("spawn") is defaults
    assert defaults.measured == () and defaults.process_start == 0.12
    assert overheads.current("fork").process_start == 0.008


class _Pool:
    """A process pool's figures as measuring reads them, and the pools it starts."""

    started: list = []

    def __init__(self, n_jobs: int, start_method: str, startup_seconds: float = 0.04,
                 started_server: bool = False) -> None:
        self.n_jobs, self.start_method = n_jobs, start_method
        self.startup_seconds, self.started_server = startup_seconds, started_server
        _Pool.started.append(self)

    def shutdown(self) -> None:
        self.closed = True


@pytest.mark.parametrize("started_server", [True, False])
def test_the_process_start_figure_is_what_the_next_pool_costs_a_worker(monkeypatch,
                                                                        started_server):
    """The first forkserver pool of a process pays for starting the fork server, which
    importing what workers need makes many times a worker's start; no later pool does."""
    monkeypatch.setattr(overheads, "_round_trips", lambda pool: {
        "latency": 1e-4, "per_chunk": 1e-4, "per_byte": 1e-9})
    monkeypatch.setattr(overheads, "_busy_per_chunk", lambda pool, idle: None)
    _Pool.started = []
    first = _Pool(2, "forkserver", startup_seconds=1.0, started_server=started_server)
    start = overheads._process_figures(first)["process_start"]
    if started_server:
        assert start == pytest.approx(0.04)  # a one-worker pool, started to measure
        assert [p.closed for p in _Pool.started[1:]] == [True]
    else:
        assert start == pytest.approx(0.5)
        assert _Pool.started == [first]


def test_only_the_first_forkserver_pool_of_a_process_starts_the_server():
    first = ProcessPool(1, "forkserver")
    second = ProcessPool(1, "forkserver")
    try:
        assert not second.started_server
    finally:
        first.shutdown(force=True)
        second.shutdown(force=True)
