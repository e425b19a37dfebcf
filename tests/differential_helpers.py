"""Functions and inputs for the differential tests: module-level, so process workers import them.

Each input is made fresh for every call (a generator is used up by one call), by a factory
from the values it holds.
"""

from __future__ import annotations

import collections
import collections.abc
from collections.abc import Callable, Iterable
from typing import Any

# larger than the serial block (4096 items) and than several chunks on any pool
MANY = 10_000
# neither sorted nor in the order a set of them iterates in, negative ones included
FIFTY = [(i * 37) % 101 - 50 for i in range(50)]

_OFFSET = 0


def set_offset(offset: int) -> None:
    """An initializer: what it sets is read by ``plus_offset`` in the same worker."""
    global _OFFSET
    _OFFSET = offset


def plus_offset(x: int) -> int:
    return x + _OFFSET


def injective(x: Any) -> Any:
    """``7x² + x``: no two ints give the same result (unlike ``x * x`` for ``x`` and ``-x``),
    so a result paired with the wrong item shows. Elementwise on numpy arrays."""
    return 7 * x * x + x


def affine(a: Any, b: Any) -> Any:
    """Two arguments, for ``starmap``: not symmetric, so swapped arguments show."""
    return a * 3 + b


def kind(x: Any) -> tuple[str, Any]:
    """Keeps the item whole, so a result changed on its way to a worker and back shows."""
    return type(x).__name__, x


class Scaled:
    """A callable object: its state travels with it to the workers."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __call__(self, *args: Any) -> Any:
        return sum(args) * self.factor + len(args)


def key_and_size(group: tuple[Any, Iterable]) -> tuple[Any, int]:
    """For ``itertools.groupby``: a group's items can be read only before the next group."""
    key, items = group
    return key, sum(1 for _ in items)


def mod_seven(x: int) -> int:
    return x % 7


def add_injective(total: int, x: int) -> int:
    return total + injective(x)


def repr_of_kind(x: Any) -> str:
    """``kind`` as text: equal for equal numpy rows, which ``==`` compares elementwise."""
    return repr(kind(x))


class Point:
    """A user-defined class: its instances travel to process workers by reference to it."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))

    def __repr__(self) -> str:
        return f"Point({self.x}, {self.y})"


def mixed_values() -> list:
    """Items of many types, including unhashable and equal-but-distinct ones."""
    return [None, "text", "", 1.5, -3, 0, True, 10**30, 2 + 3j, (1, 2), b"bytes", frozenset({1}),
            {"key": [1, 2]}, [1, [2]], Point(1, 2), Point(1, 2), (), 1, 1.0]


def uneven_values() -> list[int]:
    """Ints whose results differ in cost by orders of magnitude (and in pickled size): a few
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
        "deque": lambda: collections.deque(items),
    }
    if all(isinstance(item, collections.abc.Hashable) for item in items):
        made["set"] = lambda: set(items)  # iterated in its own order, the same for both maps
        made["dict"] = lambda: dict.fromkeys(items)  # its keys
    if all(type(v) is int and abs(v) < 2**31 for v in values):
        made["numpy"] = lambda: _int64_array(items)
    return made


def input_cases(star: bool = False) -> dict[str, Callable[[], Iterable]]:
    """Every input shape the entry points take, by name: containers, sizes, costs."""
    cases: dict[str, Callable[[], Iterable]] = {}
    for name, make in shapes(FIFTY, star).items():
        cases[name] = make
    if star:
        cases["zip"] = lambda: zip(range(50), range(50))
    else:
        cases["range"] = lambda: range(50)
    cases["range-stepped" if not star else "zip-stepped"] = (
        (lambda: zip(range(100, 0, -3), range(34))) if star else (lambda: range(100, 0, -3)))
    cases["empty-list"] = lambda: []
    cases["empty-generator"] = lambda: iter(())
    cases["one-item"] = shapes([7], star)["list"]
    cases["many-list"] = shapes(list(range(MANY)), star)["list"]
    cases["many-generator"] = shapes(list(range(MANY)), star)["generator"]
    cases["uneven-cost"] = shapes(uneven_values(), star)["list"]
    return cases


def _int64_array(items: list) -> Any:
    """numpy is imported here, not with the module: sub-interpreters (Python 3.14+) import
    this module for its functions, and numpy refuses to load in one."""
    import numpy as np

    return np.array(items, dtype=np.int64)
