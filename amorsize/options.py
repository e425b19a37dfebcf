"""The keyword options of every entry point, declared once: their types, defaults and names.

``optimize`` takes ``DecideOptions``; ``map``, ``imap``, ``imap_unordered``, ``starmap`` and
``istarmap`` take ``MapOptions`` (``DecideOptions`` and how to run). They are ``TypedDict``s
unpacked into ``**options``, so a type checker and an editor see every keyword with its type,
and the five entry points cannot drift apart.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from typing import Any, TypedDict

from amorsize.errors import ExecutorType, InvalidArgumentTypeError


class DecideOptions(TypedDict, total=False):
    """How to decide (see ``amorsize.optimize``)."""

    n_jobs: int | None
    executor: ExecutorType | None
    chunksize: int | None
    min_speedup: float
    sample_size: int
    resample: bool
    start_method: str | None


class MapOptions(DecideOptions, total=False):
    """How to decide, and how to run (see ``amorsize.map``)."""

    timeout: float | None
    progress: bool
    initializer: Callable[..., Any] | None
    initargs: tuple[Any, ...]
    max_tasks_per_child: int | None


DEFAULTS: MapOptions = {
    "n_jobs": None,
    "executor": None,
    "chunksize": None,
    "min_speedup": 1.2,
    "sample_size": 8,  # enough items to see their spread, few enough to cost little
    "resample": False,
    "start_method": None,
    "timeout": None,
    "progress": False,
    "initializer": None,
    "initargs": (),
    "max_tasks_per_child": None,
}


def complete(entry: str, given: Mapping[str, Any], accepted: type = MapOptions) -> MapOptions:
    """Every option of ``accepted`` with the caller's value or its default; an unknown keyword
    is refused as Python would refuse it, with the nearest option named."""
    names: frozenset[str] = accepted.__optional_keys__  # type: ignore[attr-defined]
    for name in given.keys() - names:
        near = difflib.get_close_matches(name, names, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else f"; its options are {', '.join(sorted(names))}"
        raise InvalidArgumentTypeError(f"{entry}() got an unexpected keyword argument {name!r}{hint}")
    return {**DEFAULTS, **given}  # type: ignore[typeddict-item]
