"""The ``amorsize`` command: ``demo`` shows what amorsize decides and what it wins; ``info``
shows what it detected about this machine; ``plugins`` lists the plugins and their hooks, and
the entry points that failed to load."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from amorsize import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="amorsize", description=__doc__)
    parser.add_argument("--version", action="version", version=f"amorsize {__version__}")
    commands = parser.add_subparsers(dest="command")
    demo = commands.add_parser("demo", help="run built-in workloads: plan, reasons, time vs a loop")
    demo.add_argument("--repeat", type=int, default=20,
                      help="calls in the repeated-call workload (default 20)")
    demo.add_argument("--explain", action="store_true", help="print each plan's full report")
    info = commands.add_parser("info", help="what amorsize detected about this machine")
    info.add_argument("--measure", action="store_true",
                      help="start a 2-worker thread and process pool and measure their overheads")
    commands.add_parser("plugins", help="registered plugins, the hooks each implements, and entry "
                        "points that failed to load")
    args = parser.parse_args(argv)
    if args.command is None:
        # A bare ``amorsize`` asks what the tool can do: the help answers, and is no error.
        parser.print_help()
        return 0
    if args.command == "demo":
        return run_demo(args.repeat, args.explain)
    if args.command == "info":
        return show_info(args.measure)
    return show_plugins()


def run_demo(repeat: int, explain: bool) -> int:
    import amorsize
    from amorsize import demo_workloads

    print("amorsize demo: each workload runs as a plain loop, then through amorsize.map twice:")
    print("the first call measures and may start a pool; the second finds it warm.\n")
    header = (f"{'workload':<14} {'plan':<27} {'loop':>8} {'1st call':>9} {'2nd call':>9} "
              f"{'speedup':>8}  why")
    print(header)
    print("-" * len(header))
    ok = True
    for w in demo_workloads.standard(repeat):
        data = w.make_data()
        loop, expected = _timed(_plain_loop(w.func, data), w.repeat)
        first, got = _timed(_amorsize_map(w.func, data), w.repeat)
        second, again = _timed(_amorsize_map(w.func, data), w.repeat)
        ok = ok and got == expected and again == expected
        # the plan the timed call ran: the one a later call would make may differ (it learned
        # from this run), and would not say why this one took the time it did
        plan = amorsize.last_plan() or amorsize.optimize(w.func, data)
        shape = ("serial (a plain loop)" if plan.executor_type == "serial"
                 else f"{plan.executor_type} x{plan.n_jobs}, chunks of {plan.chunksize}")
        print(f"{w.name:<14} {shape:<27} {loop:>7.3f}s {first:>8.3f}s {second:>8.3f}s "
              f"{loop / second:>7.2f}x  {plan.reasons[-1]}")
        if explain:
            print("    " + plan.explain().replace("\n", "\n    ") + "\n")
    print("\nspeedup: the loop against the 2nd call; every result identical to the loop:",
          "yes" if ok else "NO")
    amorsize.shutdown_global_pool_manager()
    return 0 if ok else 1


def _plain_loop(func: Callable[[Any], Any], data: list) -> Callable[[], list]:
    return lambda: [func(x) for x in data]


def _amorsize_map(func: Callable[[Any], Any], data: list) -> Callable[[], list]:
    import amorsize

    return lambda: amorsize.map(func, data)


def _timed(run: Callable[[], list], repeat: int) -> tuple[float, list]:
    t0 = time.perf_counter()
    for _ in range(repeat):
        result = run()
    return time.perf_counter() - t0, result


_KEY_WIDTH = 22  # the longest key: process_busy_per_chunk


def show_info(measure: bool) -> int:
    from amorsize import plugins, system
    from amorsize.optimizer import overheads

    for key, value in system.describe().items():
        print(f"{key:>{_KEY_WIDTH}}: {value}")
    try:
        import numpy  # noqa: F401 - loads the BLAS library so threadpoolctl can report it
    except ImportError:
        pass
    pools = system.blas_pools()
    print(f"{'blas_pools':>{_KEY_WIDTH}}: {pools or 'none loaded'}")
    method = system.default_start_method()
    if measure:
        overheads.measure_threads(plugins.get_pool(2, "thread"), method)
        # a worker per core: the figure for chunks on busy cores needs every core computing
        workers = max(2, system.usable_cpus())
        overheads.measure_processes(plugins.get_pool(workers, "process", start_method=method),
                                    method)
    ovh = overheads.current(method)
    print(f"{'overheads':>{_KEY_WIDTH}}: " + ("measured" if ovh.measured else "defaults until measured"))
    for key, value in ovh.as_dict().items():
        print(f"{key:>{_KEY_WIDTH}}: {value:.3g}")
    return 0


def show_plugins() -> int:
    from amorsize import plugins
    from amorsize.errors import PluginWarning

    # Each broken entry point is listed below with its error, so its warning would only repeat it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PluginWarning)
        broken = plugins.broken_entry_points()
    for name, value, error in broken:
        print(f"{name} ({value}): BROKEN — {error}\n"
              f"    skipped; fix or uninstall it, or set {plugins.DISABLE_ENV}={name}")
    for name, hooks in plugins.plugin_names():
        print(f"{name}\n    " + ", ".join(hooks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
