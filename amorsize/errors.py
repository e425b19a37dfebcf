"""Exceptions a user can meet, one per thing that can go wrong, each naming the fix."""

from __future__ import annotations

import builtins
import math
import multiprocessing
import sys
from concurrent.futures.process import BrokenProcessPool
from typing import Literal, get_args


class AmorsizeError(Exception):
    """Base class of every error amorsize raises itself (user-function errors pass through as-is)."""


class InvalidArgumentError(AmorsizeError, ValueError):
    """An argument has a value amorsize cannot use; the message names the argument and the fix."""


class InvalidArgumentTypeError(AmorsizeError, TypeError):
    """An argument has a type amorsize cannot use; the message names the argument and the fix."""


class PoolManagerClosedError(AmorsizeError, RuntimeError):
    """A PoolManager was shut down: a pool was requested from it afterwards, or a call was
    still using one of its pools (a call made after ``shutdown_global_pool_manager()`` gets a
    new global manager)."""


class PoolClosedError(AmorsizeError, RuntimeError):
    """A pool was used after it was shut down, or leased after its manager retired it."""


class RunCancelledError(AmorsizeError, RuntimeError):
    """Work was handed to a run after it was cancelled."""


class TimeoutError(AmorsizeError, builtins.TimeoutError):  # noqa: A001 - the builtin's subclass
    """An item ran longer than the ``timeout=`` of its call; ``index`` is its position in the
    input. The run was cancelled: nothing more is dispatched and busy workers were stopped."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class WorkerCrashedError(AmorsizeError, BrokenProcessPool):
    """A worker process died (killed, segfault, os._exit) while running tasks, or could not
    start (its initializer raised: that exception is the ``__cause__``).

    Subclasses BrokenProcessPool so code written for concurrent.futures keeps working. The pool
    that lost the worker is discarded; the next get_pool() returns a fresh one.
    """


class PluginError(AmorsizeError, RuntimeError):
    """A third-party plugin raised inside a hook that decides how a run happens, or returned
    what a run cannot use; names the plugin and hook. What comes through a built-in plugin
    (amorsize's own errors, the user's initializer's) keeps its own type."""

    def __init__(self, plugin_name: str, hook_name: str, error: BaseException) -> None:
        self.plugin_name = plugin_name
        self.hook_name = hook_name
        super().__init__(
            f"amorsize plugin {plugin_name!r} raised {type(error).__name__} in {hook_name}: {error}"
            " (unregister it with amorsize.unregister_plugin(), or set AMORSIZE_DISABLE_PLUGINS=1"
            " to skip plugins installed through entry points)"
        )


class PluginWarning(UserWarning):
    """An observer plugin raised; the run went on and its results were kept."""


def check_positive_int(name: str, value: object, *, allow_none: bool = False) -> None:
    """Validate an int >= 1 argument, naming it in the error."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentTypeError(
            f"{name} must be an int >= 1, got {type(value).__name__} {value!r}"
        )
    if value < 1:
        raise InvalidArgumentError(f"{name} must be an int >= 1, got {value!r}")


def check_min_speedup(name: str, value: object) -> None:
    """Validate a required margin of parallel over serial: a number >= 1, naming it in the error."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentTypeError(
            f"{name} must be a number >= 1 (e.g. 1.2: parallel must be 20% faster), "
            f"got {type(value).__name__} {value!r}")
    if not value >= 1:
        raise InvalidArgumentError(
            f"{name} must be a number >= 1 (e.g. 1.2: parallel must be 20% faster), got {value!r}")


def check_flag(name: str, value: object) -> None:
    """Validate a switch: True or False, so that a string such as "no" cannot turn it on."""
    if not isinstance(value, bool):
        raise InvalidArgumentTypeError(
            f"{name} must be True or False, got {type(value).__name__} {value!r}")


def resolve_n_jobs(name: str, value: object, cpus: int) -> int | None:
    """Validate a worker count and resolve it as joblib does: None stays None, an int >= 1 is
    itself, -1 is all ``cpus``, -2 all but one, and so on, never below 1 (so ``n_jobs=-8`` on a
    4-CPU machine means 1, as in joblib). 0 and non-ints are errors naming the argument."""
    if value is None:
        return None
    allowed = "an int >= 1, or negative as in joblib (-1 = all usable CPUs, -2 = all but one, ...)"
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentTypeError(
            f"{name} must be {allowed}, got {type(value).__name__} {value!r}"
        )
    if value == 0:
        raise InvalidArgumentError(f"{name} must be {allowed}, got 0")
    if value > 0:
        return value
    return max(1, cpus + 1 + value)


# The kinds of executor a plan can run on: the one place they are spelled out. "interpreter"
# (sub-interpreters, ``concurrent.futures.InterpreterPoolExecutor``) exists from Python 3.14 on.
ExecutorType = Literal["serial", "thread", "process", "interpreter"]
INTERPRETERS_AVAILABLE = sys.version_info >= (3, 14)
EXECUTOR_TYPES: tuple[ExecutorType, ...] = tuple(
    kind for kind in get_args(ExecutorType) if kind != "interpreter" or INTERPRETERS_AVAILABLE)


def check_executor_type(name: str, value: object) -> None:
    """Validate an executor type string, naming it in the error; "interpreter" below Python
    3.14 is refused with the version it needs."""
    if not isinstance(value, str):
        raise InvalidArgumentTypeError(
            f"{name} must be one of {', '.join(map(repr, EXECUTOR_TYPES))}, "
            f"got {type(value).__name__} {value!r}"
        )
    if value == "interpreter" and not INTERPRETERS_AVAILABLE:
        raise InvalidArgumentError(
            f"{name}='interpreter' needs Python 3.14 or later "
            "(concurrent.futures.InterpreterPoolExecutor); this is Python "
            f"{sys.version_info.major}.{sys.version_info.minor}: use 'process' for CPU-bound "
            "work here")
    if value not in EXECUTOR_TYPES:
        raise InvalidArgumentError(
            f"{name} must be one of {', '.join(map(repr, EXECUTOR_TYPES))}, got {value!r}"
        )


START_METHODS = ("fork", "forkserver", "spawn")


def check_start_method(name: str, value: object, *, allow_none: bool = False) -> None:
    """Validate a multiprocessing start method, naming it (an argument or an environment
    variable) in the error with the methods available on this platform."""
    if value is None and allow_none:
        return
    available = [m for m in START_METHODS if m in multiprocessing.get_all_start_methods()]
    if not isinstance(value, str) or value not in available:
        raise InvalidArgumentError(
            f"{name} must be one of {', '.join(map(repr, available))} here, got {value!r}"
        )


def check_max_tasks_per_child(value: object, start_method: str | None) -> None:
    """An int >= 1 or None; refused with the "fork" start method, where a retired worker's
    replacement would be forked from a process that has threads (``ProcessPoolExecutor``
    refuses it too)."""
    check_positive_int("max_tasks_per_child", value, allow_none=True)
    if value is not None and start_method == "fork":
        raise InvalidArgumentError(
            f"max_tasks_per_child={value!r} cannot be used with start_method='fork' (its "
            "replacement workers would be forked from a process that has threads); pass "
            "start_method='forkserver' or 'spawn' (or unset AMORSIZE_START_METHOD=fork), or "
            "leave max_tasks_per_child=None")


def check_initializer(initializer: object, initargs: object) -> None:
    """An initializer is a callable or None; its arguments a tuple (part of the pool's key)."""
    if initializer is not None and not callable(initializer):
        raise InvalidArgumentTypeError(
            f"initializer must be callable or None, got {type(initializer).__name__}")
    if not isinstance(initargs, tuple | list):
        raise InvalidArgumentTypeError(
            f"initargs must be a tuple of arguments for the initializer, got "
            f"{type(initargs).__name__}")
    try:
        hash(tuple(initargs))
    except TypeError:
        raise InvalidArgumentTypeError(
            "initargs must be hashable (a tuple of numbers, strings, tuples...) because it is "
            f"part of the pool's key; got {initargs!r}") from None


def check_timeout(timeout: object) -> None:
    """A time limit is seconds > 0, or None for none."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise InvalidArgumentTypeError(
            f"timeout must be a number of seconds > 0 (or None for no limit), "
            f"got {type(timeout).__name__} {timeout!r}")
    if not timeout > 0 or math.isinf(timeout):
        raise InvalidArgumentError(
            f"timeout must be a number of seconds > 0 (or None for no limit), got {timeout!r}")
