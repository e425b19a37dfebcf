"""Functions the Dask tests run on process pools and clusters: importable by workers."""

from __future__ import annotations

import os
import time


def square(x: int) -> int:
    return x * x


def spin(x: int, seconds: float = 0.002) -> int:
    """Pure-Python CPU work holding the GIL for ``seconds``."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return x


def pid(_: object = None) -> int:
    return os.getpid()


def fail(x: int) -> int:
    raise ValueError(f"bad item {x}")


def die(_: object = None) -> None:
    os._exit(13)


class CustomError(Exception):
    """An exception type the caller must receive unchanged."""


def raise_custom(x: int) -> int:
    raise CustomError(f"custom {x}")
