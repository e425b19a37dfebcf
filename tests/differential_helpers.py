"""Functions and inputs for the differential tests: module-level, so process workers import them.

Each input is made fresh for every call (a generator is used up by one call), by a factory
from the values it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

# larger than the serial block (4096 items) and than several chunks on any pool
MANY = 10_000


def square(x: Any) -> Any:
    return x * x


def affine(a: Any, b: Any) -> Any:
    """Two arguments, for ``starmap``: not symmetric, so swapped arguments show."""
    return a * 3 + b


def square_and_offset(block: np.ndarray) -> np.ndarray:
    """A ``map_blocks`` function: elementwise, so it equals the builtin map over the items."""
    return block * block + 1


def uneven_values() -> list[int]:
    """Ints whose squares differ in cost by orders of magnitude (and in pickled size): a few
    huge ones spread among small ones, the first item among them. Under the 4,300 digits
    Python converts to text, which Dask's tokenize does."""
    return [10 ** (4_000 if i % 40 == 0 else 1) + i for i in range(200)]


def shapes(values: list, star: bool = False) -> dict[str, Callable[[], Iterable]]:
    """The containers one list of values can arrive in, each as a factory of a fresh input.

    With ``star``, the items are ``(value, position)`` pairs, for ``starmap``."""
    items: list = [(v, i) for i, v in enumerate(values)] if star else list(values)
    made: dict[str, Callable[[], Iterable]] = {
        "list": lambda: list(items),
        "tuple": lambda: tuple(items),
        "generator": lambda: (x for x in items),
    }
    if all(type(v) is int and abs(v) < 2**31 for v in values):
        made["numpy"] = lambda: np.array(items, dtype=np.int64)
    return made


def input_cases(star: bool = False) -> dict[str, Callable[[], Iterable]]:
    """Every input shape the entry points take, by name: containers, sizes, costs."""
    cases: dict[str, Callable[[], Iterable]] = {}
    for name, make in shapes(list(range(50)), star).items():
        cases[name] = make
    if star:
        cases["zip"] = lambda: zip(range(50), range(50))
    else:
        cases["range"] = lambda: range(50)
    cases["empty-list"] = lambda: []
    cases["empty-generator"] = lambda: iter(())
    cases["one-item"] = shapes([7], star)["list"]
    cases["many-list"] = shapes(list(range(MANY)), star)["list"]
    cases["many-generator"] = shapes(list(range(MANY)), star)["generator"]
    cases["many-numpy"] = shapes(list(range(MANY)), star)["numpy"]
    cases["uneven-cost"] = shapes(uneven_values(), star)["list"]
    return cases
