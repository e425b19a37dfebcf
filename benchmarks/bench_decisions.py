"""How good are amorsize's decisions? Each workload against the best configuration of a grid search.

Run by hand (the machine is shared and noisy; nothing here is asserted):

    python3 benchmarks/bench_decisions.py [--quick] [--only NAME ...] [--verbose]

For every workload, in the same process:

1. a grid search on warm pools of the global ``PoolManager``: serial (a plain loop), threads
   (1, 2, 4, ... 128 workers) and processes (1, 2, 4 workers) by chunk sizes spread by 4x between
   1 and items per worker, timing ``pool.map(func, items, chunksize=c)``. A cell is the best of
   3 runs when it is a contender (within 1.25x of the best so far), else one run. Cells that
   cannot win are pruned: chunk sizes are tried largest first and a row stops at a cell over 3x
   the best so far, at a cell slower than the one before it and over 1.5x the best, or after two
   smaller chunk sizes that were not 5% faster than the row's best; a worker sweep stops after two
   doublings of the workers that were not 5% faster than its best row (a cell timed once that
   would end a row is timed once more first). Two probe cells (8 threads, 2 processes, about 4
   chunks per worker) run first, so pruning has a good best early;
2. ``amorsize.map(func, items)`` as a user calls it in a loop: memory is cleared, one call
   measures and learns (not timed), then the best of the next 10 calls; the configuration shown
   is the one that call ran (an ``amorsize_run_finished`` observer), and the predicted speedup
   is ``amorsize.optimize(func, items).estimated_speedup`` after those calls;
3. after each of those 10 calls, the grid's best configuration once more, and the serial loop
   too when it is within 1.25x of the best: the row's "grid s" is the better of these two
   configurations' best of 10 runs, taken in the same state of the machine and of memory as
   amorsize's, and the loop's best of 10 is the baseline of the speedups. The search's own
   figure (shown in the details) is the luckiest of many cells' best-of-3 times, which the
   configuration it picked does not achieve again: on 2 noisy cores that winner's curse alone
   put rows 10-40% "over" the grid. Memory matters for the loop: after 100,000 results are
   freed, whether the next 100,000 fit in memory still mapped or fault in fresh pages depends
   on what was allocated meanwhile (0.6 ms of page faults either way on a 4 ms loop). A loop
   far from the best is timed 3 more times after amorsize's calls (once with ``--quick``),
   and its baseline is its best time from before the grid and after;
4. one Markdown table; "amorsize / best" is amorsize's time over the grid's best (1.00: as good
   as the best configuration found), the measured speedup is the serial loop's time over
   amorsize's.

``--quick`` times fewer cells (threads 2, 8, 32, 128; processes 2, 4; chunk sizes 16x apart),
each once, and two amorsize calls after the learning one. ``--verbose`` prints every cell timed.
``--hogs N`` runs everything beside N CPU hogs (``yes > /dev/null``, started before the first
row and killed after the last): the decisions on a busy machine, against the grid's best under
the same load.
"""

from __future__ import annotations

import argparse
import datetime
import difflib
import functools
import hashlib
import json
import math
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import amorsize
from amorsize import demo_workloads as dw
from amorsize.optimizer.learned import LEARNED

try:  # the sorted-cost and mixed workloads of bench_core.py (run from this directory)
    import bench_core
except ImportError:  # pragma: no cover - run from elsewhere
    bench_core = None
else:
    try:  # process workers may not have this directory on their path: send its code along
        import cloudpickle

        cloudpickle.register_pickle_by_value(bench_core)
    except (ImportError, ValueError):
        pass

THREAD_WORKERS = (1, 2, 4, 8, 16, 32, 64, 128)
PROCESS_WORKERS = (1, 2, 4)
QUICK_THREAD_WORKERS = (2, 8, 32, 128)
QUICK_PROCESS_WORKERS = (2, 4)
WITHIN = 0.25  # a prediction within 25% of the measured speedup counts as right
_CONTENDER = 1.25  # a cell within this factor of the best so far is timed best of 3
_NO_GAIN = 0.95  # a cell or row not 5% faster than its predecessors' best gained nothing
ROUNDS = 10  # amorsize's timed calls, each followed by a run of the grid's best


# ---------------------------------------------------------------- workloads (module level)

def sha256_hex(block: bytes) -> str:
    """hashlib releases the GIL on large buffers."""
    return hashlib.sha256(block).hexdigest()


def zlib_size(block: bytes) -> int:
    """zlib releases the GIL while compressing."""
    return len(zlib.compress(block, 6))


def json_roundtrip(doc: dict) -> int:
    text = json.dumps(doc)
    return len(text) + len(json.loads(text))


_EMAIL = re.compile(r"\b[\w.]+@\w+\.(?:com|org)\b")


def find_emails(text: str) -> int:
    return len(_EMAIL.findall(text))


def matmul_sum(a) -> float:
    """numpy's BLAS releases the GIL (and may use threads of its own)."""
    return float((a @ a).sum())


def similarity(pair: tuple[str, str]) -> float:
    return difflib.SequenceMatcher(None, pair[0], pair[1]).ratio()


def busy(loops: int) -> int:
    """Pure-Python CPU work whose cost is its argument."""
    return dw.burn(loops, loops)


def _grows(x: int, unit: int = 40) -> int:  # bench_core.grows, if bench_core is not importable
    return dw.burn(x, unit * x)


def _mixed(x: int, loops: int) -> int:  # bench_core.mixed
    time.sleep(0.001)
    return dw.burn(x, loops)


# ---------------------------------------------------------------- their data (seeded)

_WORDS = ("alpha", "beta", "gamma", "delta", "user", "mail", "example", "node", "value", "the",
          "and", "of", "data", "report", "error", "Warning", "id42", "x7")


def _text(rng: random.Random, size: int) -> str:
    out, n = [], 0
    while n < size:
        word = rng.choice(_WORDS)
        if rng.random() < 0.02:
            word = f"{word}.{rng.randint(0, 99)}@{rng.choice(_WORDS)}.{rng.choice(('com', 'org'))}"
        out.append(word)
        n += len(word) + 1
    return " ".join(out)[:size]


def _random_blocks(count: int, size: int = 2**20) -> list[bytes]:
    rng = random.Random(1)
    return [rng.randbytes(size) for _ in range(count)]


def _log_blocks(count: int, size: int = 2**20) -> list[bytes]:
    """Log lines (compressible ~5x): one megabyte of them, each block a different rotation."""
    rng = random.Random(2)
    lines, n = [], 0
    actions = ("login", "logout", "view", "edit", "delete", "search")
    while n < size:
        line = (f"2024-05-{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
                f"{rng.randint(0, 59):02d} {rng.choice(('INFO', 'INFO', 'WARN', 'ERROR'))} "
                f"user={rng.randint(1, 5000)} action={rng.choice(actions)} ms={rng.randint(1, 900)}\n")
        lines.append(line)
        n += len(line)
    base = "".join(lines).encode()[:size]
    step = size // count
    return [base[i * step:] + base[:i * step] for i in range(count)]


def _doc(seed: int, keys: int = 150) -> dict:
    """A nested dict of about 20 KB as JSON."""
    rng = random.Random(seed)
    doc: dict = {}
    for i in range(keys):
        if i % 3 == 0:
            doc[f"k{i}"] = [round(rng.random(), 6) for _ in range(8)]
        else:
            doc[f"k{i}"] = {"name": _text(rng, 20), "n": rng.randint(0, 1000),
                            "tags": [_text(rng, 6) for _ in range(4)], "ok": rng.random() < 0.5}
    return doc


def _text_chunks(count: int, size: int = 50_000) -> list[str]:
    rng = random.Random(3)
    base = _text(rng, 4 * size)
    return [(base[o:] + base[:o])[:size] for o in (rng.randrange(len(base)) for _ in range(count))]


def _matrices(count: int, side: int = 200) -> list:
    import numpy as np

    rng = np.random.default_rng(4)
    return [rng.random((side, side)) for _ in range(count)]


def _pairs(count: int, length: int = 100) -> list[tuple[str, str]]:
    rng = random.Random(5)

    def s() -> str:
        return "".join(rng.choice("abcdefgh ") for _ in range(length))

    return [(s(), s()) for _ in range(count)]


def _costs(count: int, low_ms: float = 0.1, high_ms: float = 20.0) -> list[int]:
    """Loop counts of ``busy`` costing low..high ms, most of them cheap (a heavy tail), shuffled."""
    rng = random.Random(6)
    per_ms = dw.loops_for(0.001)
    ratio = high_ms / low_ms
    return [max(1, int(per_ms * low_ms * ratio ** (rng.random() ** 3))) for _ in range(count)]


def workloads() -> list[dw.DemoCase]:
    grows = bench_core.grows if bench_core else _grows
    mixed = bench_core.mixed if bench_core else _mixed
    out = [
        dw.DemoCase("trivial", "x*x on 100k ints", dw.square, lambda: list(range(100_000))),
        dw.DemoCase("io-2ms", "400 sleeps of 2 ms", dw.wait_io, lambda: list(range(400))),
        dw.DemoCase("cpu-2ms", "400 calls of 2 ms pure-Python CPU", dw.cpu_func(0.002),
                 lambda: list(range(400))),
        dw.DemoCase("cpu-17ms", "400 calls of 17 ms pure-Python CPU", dw.cpu_func(0.017),
                 lambda: list(range(400))),
        dw.DemoCase("sorted-cost", "300 items, pure-Python cost rising 0 -> 3 ms", grows,
                 lambda: list(range(300))),
        dw.DemoCase("mixed-io-cpu", "300 calls: 1 ms sleep + 1 ms CPU",
                 functools.partial(mixed, loops=dw.loops_for(0.001)), lambda: list(range(300))),
        dw.DemoCase("sha256", "hashlib.sha256 of 64 blocks of 1 MB", sha256_hex,
                 lambda: _random_blocks(64)),
        dw.DemoCase("zlib", "zlib.compress level 6 of 32 blocks of 1 MB of logs", zlib_size,
                 lambda: _log_blocks(32)),
        dw.DemoCase("json", "json dumps+loads of 500 nested dicts of ~20 KB", json_roundtrip,
                 lambda: [_doc(i) for i in range(500)]),
        dw.DemoCase("regex", "re.findall of e-mails in 200 texts of 50 KB", find_emails,
                 lambda: _text_chunks(200)),
        dw.DemoCase("difflib", "SequenceMatcher.ratio of 300 pairs of 100 chars", similarity,
                 lambda: _pairs(300)),
        dw.DemoCase("hetero", "500 busy loops of 0.1-20 ms (heavy tail)", busy, lambda: _costs(500)),
    ]
    try:
        import numpy  # noqa: F401
    except ImportError:
        return out
    out.insert(1, dw.DemoCase("large-payload", "200 numpy arrays of 1 MB, summed", dw.array_sum,
                           dw.arrays))
    out.insert(8, dw.DemoCase("numpy-matmul", "a @ a of 400 float arrays 200x200", matmul_sum,
                           lambda: _matrices(400)))
    return out


# ---------------------------------------------------------------- measuring

def same(a: object, b: object) -> bool:
    """Equal, floats up to rounding (BLAS threads in a worker may sum in another order)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def config(executor: str, n_jobs: int, chunksize: int) -> str:
    return "serial" if executor == "serial" else f"{executor} x{n_jobs} c{chunksize}"


def chunk_sizes(n: int, workers: int, factor: int) -> list[int]:
    """1, factor, factor², ... below the items per worker, and that; largest first."""
    top = max(1, math.ceil(n / workers))
    sizes, c = [], 1
    while c < top:
        sizes.append(c)
        c *= factor
    return [top, *reversed(sizes)]


@dataclass
class Grid:
    func: Callable
    items: list
    expected: list
    repeats: int
    factor: int
    verbose: bool
    cells: dict[tuple[str, int, int], float] = field(default_factory=dict)
    runs: dict[tuple[str, int, int], int] = field(default_factory=dict)
    best: float = math.inf
    best_key: tuple[str, int, int] = ("serial", 1, 1)
    warmed: set = field(default_factory=set)

    def _pool(self, executor: str, n_jobs: int):
        pool = amorsize.get_global_pool_manager().get_pool(n_jobs, executor)
        if (executor, n_jobs) not in self.warmed:
            if executor == "process":  # start every worker, and import what func needs there
                pool.map(self.func, self.items[:n_jobs], chunksize=1)
            else:  # every thread started
                pool.map(time.sleep, [0.002] * n_jobs, chunksize=1)
            self.warmed.add((executor, n_jobs))
        return pool

    def _runner(self, executor: str, n_jobs: int, chunksize: int) -> Callable[[], list]:
        func, items = self.func, self.items
        if executor == "serial":
            return lambda: [func(x) for x in items]
        pool = self._pool(executor, n_jobs)
        return lambda: pool.map(func, items, chunksize=chunksize)

    def cell(self, executor: str, n_jobs: int, chunksize: int) -> float:
        """Time one configuration: once, or best of ``repeats`` if it is a contender."""
        key = (executor, n_jobs, chunksize)
        if key in self.cells:
            return self.cells[key]
        run = self._runner(*key)
        took = _timed(run, self.expected)
        runs = 1
        while runs < self.repeats and took <= _CONTENDER * self.best:
            took = min(took, _timed(run))
            runs += 1
        return self._record(key, took, runs)

    def settle(self, key: tuple[str, int, int]) -> float:
        """A cell timed once is about to prune the rest of its row or sweep: time it once more,
        so that one run disturbed by the machine's other work does not decide."""
        if self.repeats > 1 and self.runs.get(key) == 1:
            return self.once_more(key)
        return self.cells[key]

    def once_more(self, key: tuple[str, int, int]) -> float:
        """Time a cell once more (its results checked, as its first run's), keeping its best."""
        return self._record(key, _timed(self._runner(*key), self.expected), 1)

    def _record(self, key: tuple[str, int, int], took: float, runs: int) -> float:
        took = min(took, self.cells.get(key, math.inf))
        self.cells[key] = took
        self.runs[key] = self.runs.get(key, 0) + runs
        if took < self.best:
            self.best, self.best_key = took, key
        if self.verbose:
            n = self.runs[key]
            print(f"    {config(*key):>22}: {took:.4f} s (best of {n} run{'s' * (n > 1)})",
                  file=sys.stderr, flush=True)
        return took

    def probe(self, executor: str, n_jobs: int) -> None:
        """One cell near a common good choice (4 chunks per worker), for an early best."""
        want = len(self.items) / (4 * n_jobs)
        sizes = chunk_sizes(len(self.items), n_jobs, self.factor)
        self.cell(executor, n_jobs, min(sizes, key=lambda c: abs(math.log(c / max(want, 1)))))

    def sweep(self, executor: str, workers: tuple[int, ...]) -> None:
        """Rows of growing worker counts; in a row, chunk sizes from the largest down."""
        sweep_best, stale_rows = math.inf, 0
        for n_jobs in workers:
            row_best, previous, stale_cells = math.inf, None, 0
            for chunksize in chunk_sizes(len(self.items), n_jobs, self.factor):
                key = (executor, n_jobs, chunksize)
                took = self.cell(*key)
                stale = 0 if took < _NO_GAIN * row_best else stale_cells + 1
                if self._row_ends(took, previous, stale):
                    took = self.settle(key)
                    stale = 0 if took < _NO_GAIN * row_best else stale_cells + 1
                row_best, stale_cells = min(row_best, took), stale
                if self._row_ends(took, previous, stale):
                    break
                previous = took
            stale_rows = stale_rows + 1 if row_best > _NO_GAIN * sweep_best else 0
            if stale_rows >= 2:  # two doublings of the workers gained nothing
                break
            sweep_best = min(sweep_best, row_best)

    def _row_ends(self, took: float, previous: float | None, stale_cells: int) -> bool:
        """Whether the smaller chunk sizes left in a row can be skipped after a cell of ``took``
        (``stale_cells``: how many cells in a row, this one included, gained nothing)."""
        if took > 3 * self.best:  # hopeless, and smaller chunks only add overhead
            return True
        if previous is not None and took > previous and took > 1.5 * self.best:
            return True  # past this row's minimum, and not a contender
        return stale_cells >= 2  # two smaller chunk sizes were not 5% faster than the row's best


def _timed(run: Callable[[], list], expected: list | None = None) -> float:
    start = time.perf_counter()
    out = run()
    took = time.perf_counter() - start
    if expected is not None and not same(out, expected):
        raise AssertionError("a configuration returned different results from the loop")
    return took


class RunObserver:
    """Records what each ``amorsize.map`` call actually ran: its configuration, not its report
    (the report's floats, made after the results and kept, would keep their memory mapped)."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, int, int]] = []

    @amorsize.hookimpl
    def amorsize_run_finished(self, plan, report) -> None:
        self.reports.append((report.executor_type, report.n_jobs, report.chunksize))


@dataclass
class Row:
    name: str
    n: int
    serial: float
    best: float
    best_config: str
    searched: float
    amorsize: float
    amorsize_config: str
    predicted: float
    plan_config: str
    configs_run: set[str]
    first_call: float
    first_config: str
    cells: int
    seconds: float

    @property
    def ratio(self) -> float:
        return self.amorsize / self.best

    @property
    def measured(self) -> float:
        return self.serial / self.amorsize

    @property
    def within(self) -> bool:
        return abs(self.predicted - self.measured) <= WITHIN * self.measured


def _ran(observer: RunObserver) -> str:
    if not observer.reports:
        return "?"
    return config(*observer.reports[-1])


def bench(w: dw.DemoCase, args: argparse.Namespace, observer: RunObserver) -> Row:
    start = time.perf_counter()
    items = w.make_data()
    expected = [w.func(x) for x in items]
    repeats = 1 if args.quick else 3

    grid = Grid(w.func, items, expected, repeats, 16 if args.quick else 4, args.verbose)
    grid.cell("serial", 1, 1)
    grid.probe("thread", 8)
    grid.probe("process", 2)
    grid.sweep("thread", QUICK_THREAD_WORKERS if args.quick else THREAD_WORKERS)
    grid.sweep("process", QUICK_PROCESS_WORKERS if args.quick else PROCESS_WORKERS)

    LEARNED.forget()
    observer.reports.clear()
    t0 = time.perf_counter()
    first = amorsize.map(w.func, items)  # measures the function and learns: not timed
    first_call = time.perf_counter() - t0
    first_config = _ran(observer)
    if not same(first, expected):
        raise AssertionError(f"{w.name}: amorsize.map returned different results")
    best, best_config, configs_run = math.inf, "?", set()
    loop, searched = ("serial", 1, 1), grid.best
    # The grid's best configuration is timed again, once after each amorsize call: the search
    # kept the luckiest of its cells' best-of-3 times, which no single configuration achieves
    # (the winner's curse). The loop too, where it may be the best.
    again = [grid.best_key]
    if loop != grid.best_key and grid.cells[loop] <= _CONTENDER * grid.best:
        again.append(loop)
    retimed = dict.fromkeys(again, math.inf)
    rounds = 2 if args.quick else ROUNDS
    for _ in range(rounds):
        observer.reports.clear()
        took = _timed(lambda: amorsize.map(w.func, items), expected)
        configs_run.add(_ran(observer))
        if took < best:
            best, best_config = took, _ran(observer)
        for key in again:
            retimed[key] = min(retimed[key], _timed(grid._runner(*key), expected))
    for _ in range(0 if loop in again else repeats):
        grid.once_more(loop)
    plan = amorsize.optimize(w.func, items)
    # the loop's re-times where it had them (the same state as amorsize's), else its best
    serial = retimed.get(loop, grid.cells[loop])
    best_key = min(retimed, key=retimed.__getitem__)
    return Row(w.name, len(grid.items), serial, retimed[best_key], config(*best_key), searched, best,
               best_config, plan.estimated_speedup,
               config(plan.executor_type, plan.n_jobs, plan.chunksize), configs_run, first_call,
               first_config, len(grid.cells), time.perf_counter() - start)


def machine() -> list[str]:
    from amorsize import system

    lines = [
        f"date {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; "
        f"{platform.platform()}; Python {platform.python_version()} ({sys.implementation.name})",
        f"os.cpu_count() {os.cpu_count()}, usable CPUs {system.usable_cpus()}, "
        f"process start method {system.default_start_method()}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
    ]
    try:
        here = os.path.dirname(os.path.abspath(amorsize.__file__))
        commit = subprocess.run(["git", "-C", here, "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    lines.append(f"amorsize {amorsize.__version__} from {os.path.dirname(here)}"
                 + (f", git {commit}" if commit else ""))
    try:
        import numpy

        blas = ", ".join(f"{p['internal_api']} {p['version']} x{p['num_threads']}"
                         for p in system.blas_pools()) or "none loaded"
        lines.append(f"numpy {numpy.__version__}; BLAS pools in this process: {blas}")
    except ImportError:
        lines.append("numpy not installed: its workloads are left out")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer grid cells, 1 repeat")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="workload names to run")
    parser.add_argument("--verbose", action="store_true", help="print every grid cell (stderr)")
    parser.add_argument("--hogs", type=int, default=0, metavar="N",
                        help="run beside N CPU hogs (yes > /dev/null), killed at the end")
    args = parser.parse_args()

    known = workloads()
    unknown = set(args.only or ()) - {w.name for w in known}
    if unknown:
        parser.error(f"no workload named {sorted(unknown)}; known: {[w.name for w in known]}")
    chosen = [w for w in known if not args.only or w.name in args.only]
    hogs = start_hogs(args.hogs)
    try:
        run_rows(args, chosen)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def start_hogs(count: int) -> list[subprocess.Popen]:
    """``count`` programs that compute without end, one task each (what a busy server runs
    beside you)."""
    command = [shutil.which("yes") or "yes"]
    if shutil.which("yes") is None:
        command = [sys.executable, "-c", "while True: pass"]
    return [subprocess.Popen(command, stdout=subprocess.DEVNULL) for _ in range(count)]


def run_rows(args: argparse.Namespace, chosen: list[dw.DemoCase]) -> None:
    for line in machine():
        print(f"# {line}")
    if args.hogs:
        print(f"# beside {args.hogs} CPU hogs (yes > /dev/null)")
    print()

    observer = RunObserver()
    amorsize.register_plugin(observer, name="bench_decisions_observer")
    header = ["workload", "n items", "grid best", "grid s", "amorsize", "amorsize s",
              "amorsize / best", "predicted speedup", "measured speedup", "within 25%"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    rows: list[Row] = []
    started = time.perf_counter()
    try:
        for w in chosen:
            if args.verbose:
                print(f"  {w.name}: {w.description}", file=sys.stderr, flush=True)
            r = bench(w, args, observer)
            rows.append(r)
            print(f"| {r.name} | {r.n:,} | {r.best_config} | {r.best:.4f} | {r.amorsize_config} | "
                  f"{r.amorsize:.4f} | {r.ratio:.2f} | {r.predicted:.2f}x | {r.measured:.2f}x | "
                  f"{'yes' if r.within else 'no'} |", flush=True)
    finally:
        amorsize.unregister_plugin(observer)

    if rows:
        geomean = math.exp(sum(math.log(r.ratio) for r in rows) / len(rows))
        worst = max(rows, key=lambda r: r.ratio)
        right = sum(r.within for r in rows)
        print(f"\nSummary: geometric mean of amorsize / grid best {geomean:.2f}; worst row "
              f"{worst.name} ({worst.ratio:.2f}); predicted speedup within 25% of measured on "
              f"{right} of {len(rows)} rows.")
    print("\nDetails (workload: serial loop s; the grid's best as the search timed it; first "
          "amorsize call s and what it ran; plan of optimize() after the timed calls; grid cells "
          "timed; wall time of the row):")
    for r in rows:
        note = "" if r.configs_run == {r.plan_config} else \
            f" (the timed calls ran {', '.join(sorted(r.configs_run))})"
        print(f"- {r.name}: serial {r.serial:.4f} s; grid best {r.searched:.4f} s in the search; "
              f"first call {r.first_call:.4f} s ({r.first_config}); plan {r.plan_config}{note}; "
              f"{r.cells} cells; {r.seconds:.1f} s")
    print(f"\nTotal {time.perf_counter() - started:.0f} s; load average at the end "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}.")
    amorsize.shutdown_global_pool_manager()


if __name__ == "__main__":
    main()
