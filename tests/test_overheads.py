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
