"""Speedup charts from a benchmark's own timings, so the picture and the table come from one run.

Each benchmark that can draw takes ``--chart PATH`` (an ``.svg`` or ``.png``): after printing its
table it calls ``speedup_chart`` with the same seconds. A chart has one group of bars per
workload: every tool's speedup over the plain loop (higher is better), amorsize in a colour of
its own (lighter for its first call, which measures and may start a pool), the best tool of each
workload marked (first calls aside). Needs matplotlib (`pip install -e ".[bench]"`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

AMORSIZE_COLOUR = "#d62728"
OTHER_COLOURS = ("#1f77b4", "#7f7f7f", "#9467bd", "#8c564b", "#2ca02c", "#17becf", "#bcbd22",
                 "#e377c2", "#ff7f0e")


def speedup_chart(title: str, seconds: Mapping[str, Mapping[str, float]], baseline: str,
                  path: str | Path, note: str = "") -> Path:
    """Draw ``seconds[workload][tool]`` as speedups over ``seconds[workload][baseline]``.

    Bars are on a log scale, since speedups and slowdowns of 100x sit beside 1.5x; a dashed
    line marks 1x (as fast as the loop). Tools named ``amorsize...`` are drawn in reds. Returns
    the path written."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    workloads = list(seconds)
    named = [t for t in dict.fromkeys(t for w in workloads for t in seconds[w]) if t != baseline]
    # amorsize's bars on top: its warm call first (the name alone), then its first call
    tools = sorted(named, key=lambda t: (not t.startswith("amorsize"), t != "amorsize"))
    others = iter(OTHER_COLOURS)
    ours = iter((AMORSIZE_COLOUR, "#f4a6a6", "#8b1a1a"))
    colours = {t: next(ours, AMORSIZE_COLOUR) if t.startswith("amorsize")
               else next(others, "#333333") for t in tools}
    height = 0.8 / max(1, len(tools))
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(workloads) * max(3, len(tools)) / 2 + 1.5))
    for k, tool in enumerate(tools):
        ys, xs = [], []
        for i, w in enumerate(workloads):
            if tool in seconds[w] and seconds[w][tool] > 0 and baseline in seconds[w]:
                ys.append(i + (k - (len(tools) - 1) / 2) * height)
                xs.append(seconds[w][baseline] / seconds[w][tool])
        ax.barh(ys, xs, height=height, color=colours[tool], label=tool,
                edgecolor="black" if tool.startswith("amorsize") else "none", linewidth=0.6)
    for i, w in enumerate(workloads):
        # a first call (measuring, starting pools) is shown, but the best is among the rest
        times = {t: s for t, s in seconds[w].items() if s > 0 and not t.endswith("1st")}
        best = min(times, key=times.__getitem__)
        if best != baseline:
            k = tools.index(best)
            speedup = seconds[w][baseline] / times[best]
            ax.annotate("best", (speedup, i + (k - (len(tools) - 1) / 2) * height),
                        xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(workloads)), workloads)
    ax.invert_yaxis()
    low = min((seconds[w][baseline] / s for w in workloads for t, s in seconds[w].items()
               if s > 0 and baseline in seconds[w]), default=0.1)
    ax.set_xlim(left=min(0.5, 10 ** math.floor(math.log10(low))))
    ax.set_xlabel(f"speedup over {baseline} (log scale; right of the dashed line is faster)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    if note:
        fig.text(0.01, 0.005, note, fontsize=7, color="#555555")
    fig.tight_layout(rect=(0, 0.03 if note else 0, 1, 1))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
