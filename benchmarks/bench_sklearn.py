"""scikit-learn through joblib (issue 21): ``GridSearchCV`` of a decision tree, 8 candidates,
``cv=3``, ``n_jobs=2``, over one large ``X``: every one of the 24 fits gets ``X`` and ``y`` as
arguments. The joblib backend "amorsize" (``X`` crosses to each process worker once, through
shared memory, and a later search sends nothing again) against joblib's default, loky (which
memory-maps ``X`` to a file on every search).

Each tool runs the search ``--repeat`` times, round robin (a change in the machine's load falls
on both alike); the first search of each is shown apart (amorsize measures, starts its pool and
places ``X``; loky starts its executor). The best scores are checked equal.

Run: ``python benchmarks/bench_sklearn.py [--rows 50000] [--features 40] [--repeat 2]``
(scikit-learn needed: ``pip install amorsize[bench]``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from joblib import parallel_config
from sklearn.model_selection import GridSearchCV
from sklearn.tree import DecisionTreeClassifier

import amorsize
import amorsize_joblib  # noqa: F401 - registers the backend "amorsize"

GRID = {"max_depth": [3, 5, 7, 9], "criterion": ["gini", "entropy"]}


def search(x: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
    grid = GridSearchCV(DecisionTreeClassifier(random_state=0), GRID, cv=3, n_jobs=2)
    grid.fit(x, y)
    return grid.best_score_, grid.best_params_


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--features", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.random((args.rows, args.features))
    y = (x[:, :5].sum(axis=1) + rng.normal(0, 0.3, args.rows) > 2.5).astype(int)
    print(f"X: {args.rows} x {args.features} float64 ({x.nbytes / 2**20:.0f} MB), 8 candidates, "
          f"cv=3, n_jobs=2; load average {os.getloadavg()[0]:.2f} at start\n")

    tools = {"loky (joblib's default)": "loky", "amorsize": "amorsize"}
    firsts: dict[str, float] = {}
    times: dict[str, list[float]] = {name: [] for name in tools}
    outcomes: dict[str, tuple] = {}
    plan = None
    for _ in range(args.repeat + 1):
        for name, backend in tools.items():
            t0 = time.perf_counter()
            with parallel_config(backend=backend):
                outcomes[name] = search(x, y)
            took = time.perf_counter() - t0
            if name in firsts:
                times[name].append(took)
            else:
                firsts[name] = took
            if backend == "amorsize":
                plan = amorsize.last_plan()
    assert len({repr(o) for o in outcomes.values()}) == 1, outcomes
    print("| tool | first s | later median s | later all s |")
    print("|---|---|---|---|")
    for name, laps in times.items():
        print(f"| {name} | {firsts[name]:.2f} | {statistics.median(laps):.2f} | "
              f"{' '.join(f'{t:.2f}' for t in laps)} |")
    print(f"\nbest: {outcomes['amorsize']}; load average {os.getloadavg()[0]:.2f} at end")
    if plan is not None:
        print(f"amorsize's plan: {plan.executor_type}, n_jobs={plan.n_jobs}, chunksize="
              f"{plan.chunksize}; reasons:", *plan.reasons, sep="\n  ")
    amorsize.shutdown_global_pool_manager()


if __name__ == "__main__":
    main()
