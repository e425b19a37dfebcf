"""One run of a plan, whoever asked for it: ``amorsize.map``/``imap``, the joblib backend, the
Dask scheduler.

A ``Run`` holds what a plan's execution needs and nothing else: the lease on its pool, the
chunks in flight, the item counts that progress and the report are made of, and ``cancel()``.
Front ends feed it work and results; they keep no bookkeeping of their own.

Cancelling is the one way a run stops early, whatever the cause -- Ctrl-C in the caller, an
error in the user's function, a time limit, an ``imap`` closed or dropped, a joblib abort, a
failed Dask compute, an ``amorsize.Pool`` terminated (its ``RunGroup``): nothing more is
dispatched, queued chunks are cancelled, and if any of the run's chunks is still running, its
pool is terminated (process workers killed, thread work abandoned) and the manager replaces it.
A pool holding none of the run's work is left alone: pools are shared. Another run's chunks lost
with such a pool (killed, or dropped from its queue) are sent again on a fresh pool, up to three
times: one run's cancel does not fail another run, but an item that was killed mid-way runs
again from the start.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError, Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from amorsize import errors, plugins
from amorsize.plan import Plan
from amorsize.pools import worker
from amorsize.pools.watch import WATCH_SECONDS, find_overrun, next_token
from amorsize.pools.worker_pool import FollowingFuture
from amorsize.run import log
from amorsize.run.report import RunReport

PROGRESS_CHUNK_SECONDS = 0.5
_RESENDS = 3

_run_ids = itertools.count(1)


class RunGroup:
    """The runs started inside ``with group.entered():`` (by that thread, whichever front end
    starts them), so that another thread can cancel them all at once: ``amorsize.Pool.terminate``
    stopping the calls running for its ``map_async``/``apply_async``. A run started in a group
    already cancelled is cancelled as it starts."""

    def __init__(self) -> None:
        self.cancelled = False
        self._runs: set[Run] = set()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        token = _group.set(self)
        try:
            yield
        finally:
            _group.reset(token)

    def cancel(self) -> None:
        """Cancel every run of the group, now and to come (see ``Run.cancel``)."""
        with self._lock:
            self.cancelled = True
            runs = list(self._runs)
        for run in runs:
            run.cancel()

    def _join(self, run: Run) -> bool:
        with self._lock:
            if not self.cancelled:
                self._runs.add(run)
            return not self.cancelled

    def _leave(self, run: Run) -> None:
        with self._lock:
            self._runs.discard(run)


_group: contextvars.ContextVar[RunGroup | None] = contextvars.ContextVar("amorsize_run_group",
                                                                           default=None)


@dataclass(frozen=True)
class RunProgress:
    """How far a run is, as ``amorsize_run_progress`` observers see it (see the hook)."""

    run_id: int
    source: str
    description: str
    state: str
    n_done: int
    n_total: int | None


class Run:
    """The execution of one plan; a context manager that cancels the run if its block fails.

    ``timeout`` (seconds) limits each item: an item running longer cancels the run and raises
    ``amorsize.TimeoutError`` naming the item. A serial plan with a time limit runs on one
    thread, since the calling thread cannot be given up on. ``progress`` reports to the
    ``amorsize_run_progress`` hook; ``total`` is the item count to show (None: open count) and
    ``done`` the items already computed (while measuring); ``run_id`` is the one
    ``announce_planning`` gave, when progress was shown from before the plan was made.
    """

    def __init__(
        self,
        plan: Plan,
        *,
        timeout: float | None = None,
        progress: bool = False,
        description: str = "",
        total: int | None = None,
        done: int = 0,
        run_id: int | None = None,
    ) -> None:
        errors.check_timeout(timeout)
        self.plan = plan
        self._shown = run_id is not None
        self.id = next(_run_ids) if run_id is None else run_id
        self.timeout = timeout
        self.progress = progress
        self.description = description
        self.total = total
        self.n_done = done
        self.n_items = 0
        self.n_chunks = 0
        self.compute_seconds = 0.0
        self.cancelled = False
        self._closed = False
        self.pool: Any = None
        self.executor_type = plan.executor_type
        if self.executor_type == "serial" and timeout is not None and plan.n_items != 0:
            self.executor_type = "thread"
        workload = plan.workload
        self._start_method = (workload.start_method if plan.machine is None
                              else plan.machine.start_method)
        self._initializer = (workload.initializer, workload.initargs)
        self._max_tasks = workload.max_tasks_per_child
        self._stack = contextlib.ExitStack()
        self._inflight: dict[Future, tuple[float, Sequence[int] | None]] = {}
        # a chunk's pool, what to send again (func, items, token) and how often it was sent again
        self._resendable: dict[Future, tuple[Any, tuple[Any, list, float], int]] = {}
        # items sent before each chunk, to name a failing item (``_note_item``); the front end
        # may set ``position_of`` to turn the n-th item sent into its position in the input
        self._sent = 0
        self._first: dict[Future, int] = {}
        self.position_of: Callable[[int], int] = _same
        self._lock = threading.Lock()
        self._started = time.perf_counter()
        self._group = _group.get()

    def _leased_pool(self, n_jobs: int) -> contextlib.AbstractContextManager[Any]:
        """A lease on the run's kind of pool with ``n_jobs`` workers (the first pool or a fresh one)."""
        initializer, initargs = self._initializer
        return plugins.leased_pool(n_jobs, self.executor_type, start_method=self._start_method,
                                   initializer=initializer, initargs=initargs,
                                   max_tasks_per_child=self._max_tasks)

    def __enter__(self) -> Run:
        if self.executor_type != "serial":
            n_jobs = 1 if self.plan.executor_type == "serial" else self.plan.n_jobs
            self.pool = self._stack.enter_context(self._leased_pool(n_jobs))
        elif self._initializer[0] is not None and self._items_left():
            # the items run here: so does the initializer, once (the serial pool is kept)
            initializer, initargs = self._initializer
            plugins.get_pool(1, "serial", initializer=initializer, initargs=initargs)
        log.started(self.plan, self.description)
        self._announce("advanced" if self._shown else "started")
        if self._group is not None and not self._group._join(self):
            self.cancel()
        return self

    def _items_left(self) -> bool:
        """False when every item ran while the plan was made (measured): none runs here."""
        n = self.plan.n_items
        return n is None or n > self.plan.workload.already_done

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is not None:
                self.cancel()
        finally:
            with self._lock:
                self._closed = True
            if self._group is not None:
                self._group._leave(self)
            self._stack.close()

    def submit(self, fn: Callable, *args: Any) -> Future:
        """Run ``fn(*args)`` on the run's pool as part of this run (an adapter's batch)."""
        self._check_not_cancelled()
        future = _RunFuture(self, lambda pool: pool.submit(fn, *args))
        self._track(future, 0.0, None)
        return future

    def submit_chunk(self, func: Any, items: list, indices: Sequence[int] | None = None) -> Future:
        """Run ``func`` (as the pool prepared it) on ``items``; ``indices`` are their positions
        in the input, which a time limit needs to name the item that overran."""
        if self.cancelled:
            self._check_not_cancelled()
        # positive: items watched for the time limit; negative: only stoppable between items
        if self.timeout is not None:
            token = next_token()
        elif self.executor_type == "thread":
            token = -next_token()
        else:
            token = 0.0
        # the pool's own future, collected by ``result``: no relaying future and no callbacks
        # per chunk (the caller collects every chunk itself, and resends one there if needed)
        chunk = (func, items, token)
        pool = self.pool
        future: Future
        try:
            future = pool.submit_chunk(*chunk)
        except errors.PoolClosedError:
            pool, future = self._on_pool(_chunk_call(chunk))
        with self._lock:
            self._inflight[future] = (token, indices)
            self._resendable[future] = (pool, chunk, 0)
            self._first[future] = self._sent
            self._sent += len(items)
        return future

    def result(self, future: Future) -> Any:
        """The outcome of a chunk from ``submit_chunk``, watching this run's items for the time
        limit meanwhile; a chunk another run's cancel killed or dropped is sent again on a fresh
        pool (up to ``_RESENDS`` times)."""
        try:
            return future.result() if self.timeout is None else self._wait(future)
        except (BrokenProcessPool, CancelledError):
            again = self._resend(future)
            if again is None:
                raise
            return self.result(again)
        except Exception as exc:
            self._note_item(exc, future)
            raise
        finally:
            with self._lock:
                self._inflight.pop(future, None)
                self._resendable.pop(future, None)
                self._first.pop(future, None)

    def _note_item(self, exc: Exception, future: Future) -> None:
        """Name the item of the chunk ``future`` whose call raised ``exc`` (its position in
        the input, and the worker it ran on) in a note on ``exc``."""
        with self._lock:
            indices = self._inflight.get(future, (0.0, None))[1]
            first = self._first.get(future)

        def position(k: int) -> int | None:
            if indices is not None:
                return indices[k] if k < len(indices) else None
            return None if first is None else self.position_of(first + k)

        worker.item_note(exc, position, self.plan.n_items)

    def _resend(self, future: Future) -> Future | None:
        with self._lock:
            entry = self._resendable.get(future)
            where = self._inflight.get(future)
        if entry is None or where is None:
            return None
        pool, chunk, resends = entry
        sent = self.send_again(pool, _chunk_call(chunk), resends)
        if sent is None:
            return None
        new_pool, again = sent
        with self._lock:
            self._inflight[again] = where
            self._resendable[again] = (new_pool, chunk, resends + 1)
            if future in self._first:
                self._first[again] = self._first[future]
        return again

    def _wait(self, future: Future) -> Any:
        """A chunk's outcome, watching the time limit while it runs."""
        while True:
            try:
                return future.result(timeout=WATCH_SECONDS)
            except TimeoutError:
                if future.done():
                    raise
                self.check_time_limit()

    def record(self, n_items: int, compute_seconds: float) -> None:
        """Count a chunk of ``n_items`` that took ``compute_seconds`` inside the function."""
        with self._lock:
            self.n_items += n_items
            self.n_done += n_items
            self.n_chunks += 1
            self.compute_seconds += compute_seconds
        if self.progress and not self.cancelled:
            self._announce("advanced")

    def cancel(self) -> None:
        """Stop the run: see the module's docstring. Safe to call from any thread, and again."""
        with self._lock:
            if self.cancelled:
                return
            self.cancelled = True
            pending = dict(self._inflight)
        running = [f for f in pending if f.running()]
        if self.executor_type == "thread":  # a process is killed; a thread stops between items
            worker.stop([pending[f][0] for f in running if pending[f][0]])
        # Terminating fails the queued chunks too; cancelling them first would trip Python
        # 3.11's executor, which then stops failing the other runs' futures.
        if self.pool is not None and (running or not all(f.cancel() or f.done() for f in pending)):
            self.pool.terminate(by=self.id)
        self._announce("cancelled")

    def finish(self, **measured: Any) -> RunReport:
        """Report the completed run to ``amorsize_run_finished`` observers; ``measured``
        overrides the report's fields that a front end knows better."""
        plan = self.plan
        fields: dict[str, Any] = {
            "source": plan.workload.source,
            "executor_type": plan.executor_type,
            "n_jobs": plan.n_jobs,
            "chunksize": plan.chunksize,
            "n_items": self.n_items,
            "n_chunks": self.n_chunks,
            "wall_seconds": time.perf_counter() - self._started,
            "compute_seconds": self.compute_seconds,
            "predicted_seconds": plan.predicted_seconds,
            "predicted_speedup": plan.estimated_speedup,
        }
        fields.update(measured)
        report = RunReport(**fields)
        self.total = self.n_done
        self._announce("finished")
        log.finished(plan, self.description, report, self.n_done)
        plugins.run_finished(plan, report)
        return report

    def send_again(self, pool: Any, call: Callable[[Any], Future],
                   resends: int) -> tuple[Any, Future] | None:
        """The one way work is sent again: ``call`` on a fresh pool, as ``(pool, future)``, if
        another run's cancel lost it with ``pool`` and it was sent again fewer than
        ``_RESENDS`` times; else None (its failure is its outcome)."""
        if not self.lost_to_another_run(pool) or resends >= _RESENDS:
            return None
        self._replace_pool(pool)
        return self._on_pool(call)

    def _on_pool(self, call: Callable[[Any], Future]) -> tuple[Any, Future]:
        """``call(pool)`` on the run's pool, moving to a fresh pool if another run's cancel
        closed this one."""
        for _ in range(_RESENDS):
            pool = self.pool
            try:
                return pool, call(pool)
            except errors.PoolClosedError:
                if not self.lost_to_another_run(pool):
                    raise
                self._replace_pool(pool)
        pool = self.pool
        return pool, call(pool)

    def lost_to_another_run(self, pool: Any) -> bool:
        """True if ``pool`` was terminated by another run's cancel, not by this run's."""
        by = getattr(pool, "terminated_by", None)
        return by is not None and by != self.id and not self.cancelled

    def _replace_pool(self, old: Any) -> None:
        """Move the run to a fresh pool (leased like the first) if it is still on ``old``; the
        lease is taken outside the lock, since starting a pool can take a while."""
        with self._lock:
            if self.pool is not old:
                return
            self._check_still_running()
        lease = self._leased_pool(old.n_jobs)
        fresh = lease.__enter__()
        with self._lock:
            if self._closed or self.cancelled or self.pool is not old:
                keep = False
            else:
                self._stack.push(lease.__exit__)
                self.pool, keep = fresh, True
        if not keep:
            lease.__exit__(None, None, None)
            self._check_still_running()

    def _track(self, future: Future, token: float, indices: Sequence[int] | None) -> None:
        with self._lock:
            self._inflight[future] = (token, indices)
        future.add_done_callback(self._untrack)

    def _untrack(self, future: Future) -> None:
        with self._lock:
            token = self._inflight.pop(future, (0.0, None))[0]
        if token and self.cancelled:
            worker.unstop(token)  # a chunk that ended before its thread saw the stop

    def _check_still_running(self) -> None:
        if self.cancelled or self._closed:
            raise errors.RunCancelledError(
                "this run has ended (cancelled, or its caller left); start a new call")

    def _check_not_cancelled(self) -> None:
        if self.cancelled:
            raise errors.RunCancelledError(
                "this run was cancelled (an error, a time limit, Ctrl-C or its caller gave up); "
                "start a new call")

    def check_time_limit(self) -> None:
        """Cancel the run and raise ``amorsize.TimeoutError`` if one of its items has run past
        the time limit."""
        with self._lock:
            watched = {token: indices for token, indices in self._inflight.values() if token > 0}
        overrun = find_overrun(self.pool, watched, self.timeout)
        if overrun is not None:
            self.cancel()
            raise overrun

    def _announce(self, state: str) -> None:
        if self.progress:
            plugins.run_progress(RunProgress(
                self.id, self.plan.workload.source, self.description, state, self.n_done,
                self.total))


def announce_planning(source: str, description: str, total: int | None) -> int:
    """Tell progress observers that a call has started, before its plan is made (measuring is
    part of the call's time); the returned id is the run's (``Run(run_id=...)``)."""
    run_id = next(_run_ids)
    plugins.run_progress(RunProgress(run_id, source, description, "started", 0, total))
    return run_id


def announce_cancelled(run_id: int, source: str, description: str) -> None:
    """Close the progress of a call whose planning failed."""
    plugins.run_progress(RunProgress(run_id, source, description, "cancelled", 0, None))


class _RunFuture(FollowingFuture):
    """A run's chunk or batch: the future of a pool's, sent again on a fresh pool if another
    run's cancel killed or dropped it (see ``Run.lost_to_another_run``); cancelling it cancels
    the pool's future."""

    def __init__(self, run: Run, call: Callable[[Any], Future]) -> None:
        super().__init__()
        self._run = run
        self._call = call
        self._resends = 0
        self._attach(*run._on_pool(call))

    def _attach(self, pool: Any, inner: Future) -> None:
        self._pool = pool
        self._follow(inner)

    def _copy(self, inner: Future) -> None:
        lost = inner.cancelled() or isinstance(inner.exception(), BrokenProcessPool)
        if lost and self._run.lost_to_another_run(self._pool) and self._resends < _RESENDS:
            # Not from this thread: it may be the dead pool's own, which its shutdown joins.
            threading.Thread(target=self._resend, args=(inner,), daemon=True).start()
        else:
            super()._copy(inner)

    def _resend(self, inner: Future) -> None:
        try:
            sent = self._run.send_again(self._pool, self._call, self._resends)
        except BaseException as exc:  # noqa: BLE001 - delivered through the future
            self.set_exception(exc)
            return
        if sent is None:  # the run was cancelled meanwhile: the loss is the outcome
            super()._copy(inner)
            return
        self._resends += 1
        self._attach(*sent)


def _same(n: int) -> int:
    return n


def _chunk_call(chunk: tuple[Any, list, float]) -> Callable[[Any], Future]:
    """A call that submits ``chunk`` (func, items, token) to the pool it is given."""
    def call(pool: Any) -> Future:
        submitted: Future = pool.submit_chunk(*chunk)
        return submitted

    return call
