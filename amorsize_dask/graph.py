"""What a compute asks for, read from whatever Dask hands a scheduler.

``dask.compute`` in Dask 2026.8 hands an expression (``FinalizeCompute``); older code and
Dask's conformance tests hand a dict of legacy tuples or a ``HighLevelGraph``. All of them
become one ``{key: GraphNode}`` dict here, and the scheduler reads from it the tasks a compute
will run and the graph's *shape*: the key under which what was learnt about this kind of graph
is remembered, so a second compute of the same kind of graph is planned from measurements.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dask.core import convert_legacy_graph, flatten  # dask.core re-exports it (dask 2026.8)
from dask.task_spec import Alias, DataNode, GraphNode, Task
from dask.utils import key_split

_SHAPE_SAMPLE = 64


@dataclass(frozen=True)
class GraphWork:
    """The tasks one compute runs: the graph, the keys of needed tasks (in graph order), and
    the needed tasks that depend on no other task (they can run before anything else)."""

    graph: dict
    tasks: list
    roots: list

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)


def as_graph(dsk: Any) -> dict:
    """A ``{key: GraphNode}`` dict from an expression, a HighLevelGraph or a legacy dict."""
    if not isinstance(dsk, Mapping):
        dsk = dsk.__dask_graph__()
    return convert_legacy_graph(dsk)


def needed_work(graph: dict, keys: Any, cache: Mapping | None = None) -> GraphWork:
    """The tasks reachable from ``keys``: only these run, so only these are sampled or counted
    (a legacy dict may hold tasks nobody asked for, and they must not run)."""
    cache = cache or {}
    seen: set = set()
    stack = [k for k in iter_keys(keys) if _hashable(k)]
    while stack:
        key = stack.pop()
        if key in seen or key in cache:
            continue
        seen.add(key)
        node = graph.get(key)
        if node is not None:
            stack.extend(node.dependencies)
    tasks = []
    roots = []
    for key, node in graph.items():
        if key not in seen or isinstance(node, DataNode) or key in cache:
            continue
        tasks.append(key)
        if isinstance(node, Task) and not isinstance(node, Alias) and all(
            isinstance(graph.get(d), DataNode) or d in cache for d in node.dependencies
        ):
            roots.append(key)
    return GraphWork(graph, tasks, roots)


def shape_key(work: GraphWork) -> Hashable:
    """What identifies "the same kind of graph": the names of its tasks (Dask key prefixes,
    which name the function or operation) and its size to within a factor of two.

    Computed from a spread sample of keys so a 100k-task graph costs no more than a small one;
    tokens and UUIDs in keys are dropped by ``key_split``, so re-building the same collection
    gives the same shape.
    """
    tasks = work.tasks
    step = max(1, len(tasks) // _SHAPE_SAMPLE)
    names = frozenset(key_split(k) for k in tasks[::step])
    size = 0 if not tasks else round(math.log2(len(tasks)))
    return ("amorsize_dask.graph", names, size)


def spread(items: list, count: int) -> list:
    """``count`` items spread evenly over ``items`` (first and last included): sorted or
    grouped data lies when only its head is measured."""
    if count >= len(items):
        return list(items)
    if count == 1:
        return [items[len(items) // 2]]
    last = len(items) - 1
    return [items[round(i * last / (count - 1))] for i in range(count)]


def dependency_values(graph: dict, node: GraphNode, cache: Mapping | None = None) -> dict:
    """The values a root task needs (its data-node dependencies), to run it outside Dask."""
    cache = cache or {}
    return {d: cache[d] if d in cache else graph[d]() for d in node.dependencies}


def _hashable(key: Any) -> bool:
    try:
        hash(key)
    except TypeError:
        return False
    return True


def iter_keys(keys: Any) -> Iterable:
    """Every key in a possibly nested list of keys."""
    return flatten(keys) if isinstance(keys, list) else [keys]
