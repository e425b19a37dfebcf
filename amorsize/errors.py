"""Exceptions a user can meet, one per thing that can go wrong, each naming the fix."""

from __future__ import annotations

from concurrent.futures.process import BrokenProcessPool


class AmorsizeError(Exception):
    """Base class of every error amorsize raises itself (user-function errors pass through as-is)."""


class InvalidArgumentError(AmorsizeError, ValueError):
    """An argument has a value amorsize cannot use; the message names the argument and the fix."""


class InvalidArgumentTypeError(AmorsizeError, TypeError):
    """An argument has a type amorsize cannot use; the message names the argument and the fix."""


class PoolManagerClosedError(AmorsizeError, RuntimeError):
    """A pool was requested from a PoolManager after its shutdown()."""


class WorkerCrashedError(AmorsizeError, BrokenProcessPool):
    """A worker process died (killed, segfault, os._exit) while running tasks.

    Subclasses BrokenProcessPool so code written for concurrent.futures keeps working. The pool
    that lost the worker is discarded; the next get_pool() returns a fresh one.
    """


class PluginError(AmorsizeError, RuntimeError):
    """A plugin raised inside a hook that decides how a run happens; names the plugin and hook."""

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


EXECUTOR_TYPES = ("serial", "thread", "process")


def check_executor_type(name: str, value: object) -> None:
    """Validate an executor type string, naming it in the error."""
    if not isinstance(value, str):
        raise InvalidArgumentTypeError(
            f"{name} must be one of {', '.join(map(repr, EXECUTOR_TYPES))}, "
            f"got {type(value).__name__} {value!r}"
        )
    if value not in EXECUTOR_TYPES:
        raise InvalidArgumentError(
            f"{name} must be one of {', '.join(map(repr, EXECUTOR_TYPES))}, got {value!r}"
        )
