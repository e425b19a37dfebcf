"""What the backend needs to know that joblib's backend API does not tell it: the one place that
reads joblib's own objects.

joblib (1.6) hands a backend opaque callables (``submit(func, callback)``) and the ``Parallel``
it works for (``configure(parallel=...)``). A backend that measures tasks and sizes chunks from
what it measured needs three things more: which function a batch calls (to recall what was
learned about it), the tasks of a batch (to time them one by one and to split a batch into a
pool's chunks), and how many tasks the call has (to size a serial plan's batches and to show a
total). Each read below says what it relies on; nothing else in ``amorsize_joblib`` touches
joblib's objects beyond the backend API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Task = tuple[Callable, tuple, dict]


def tasks_of(batch: Any) -> list[Task]:
    """A batch's ``(func, args, kwargs)`` tasks, through ``BatchedCalls``' pickling protocol:
    ``__reduce__()`` is ``(BatchedCalls, (tasks, (nested_backend, n_jobs), None,
    pickle_cache))``, stable since joblib 0.12."""
    return batch.__reduce__()[1][0]


def with_tasks(batch: Any, tasks: list[Task]) -> Any:
    """A batch of ``tasks`` that runs as ``batch`` does (same nested backend and settings),
    rebuilt from ``__reduce__()`` as unpickling would."""
    cls, args = batch.__reduce__()
    return cls(tasks, *args[1:])


def split(batch: Any, size: int) -> list:
    """``batch`` as batches of at most ``size`` tasks, in order."""
    if len(batch) <= size:
        return [batch]
    tasks = tasks_of(batch)
    return [with_tasks(batch, tasks[i:i + size]) for i in range(0, len(tasks), size)]


def function_of(batch: Any) -> Callable:
    """The function a batch's first task calls: what the backend learns about."""
    return tasks_of(batch)[0][0]


@dataclass(frozen=True)
class CallSettings:
    """What one ``Parallel`` call was given, read at its start (``start_call``).

    ``n_tasks``: ``Parallel.n_tasks``, set by ``Parallel.__call__`` to ``len(iterable)`` when it
    has one (an undocumented attribute; no hook passes it). ``timeout``, ``verbose`` and
    ``return_as``: the documented ``Parallel`` parameters, which joblib keeps under their own
    names and enforces or prints itself; the backend reads them to keep batches off the calling
    thread when joblib must be able to time them out, to say what the plan runs on, and to hand
    a list's results over as soon as they are all in (None: not known).
    """

    n_tasks: int | None = None
    timeout: float | None = None
    verbose: int = 0
    name: str = "Parallel"
    return_as: str | None = None


def call_settings(parallel: Any) -> CallSettings:
    if parallel is None:
        return CallSettings()
    return CallSettings(getattr(parallel, "n_tasks", None), getattr(parallel, "timeout", None),
                        getattr(parallel, "verbose", 0) or 0, repr(parallel),
                        getattr(parallel, "return_as", None))
