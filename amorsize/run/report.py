"""What a run actually took, set against what its plan predicted."""

from __future__ import annotations

from dataclasses import dataclass

from amorsize.errors import ExecutorType


@dataclass(frozen=True)
class RunReport:
    """Measured figures of one run, handed to ``amorsize_run_finished`` observers.

    ``compute_seconds`` is time spent inside the user's function, summed over all workers;
    ``actual_speedup`` compares it with the wall time (what a plain loop would have taken
    against what the run took).
    """

    source: str
    executor_type: ExecutorType
    n_jobs: int
    chunksize: int
    n_items: int
    n_chunks: int
    wall_seconds: float
    compute_seconds: float
    predicted_seconds: float | None
    predicted_speedup: float

    @property
    def actual_speedup(self) -> float:
        return self.compute_seconds / self.wall_seconds if self.wall_seconds > 0 else 1.0

    @property
    def per_item_seconds(self) -> float:
        return self.compute_seconds / self.n_items if self.n_items else 0.0
