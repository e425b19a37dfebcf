"""Which ``dask.distributed`` Client a call runs on: the one given, one connected to an address,
the active one, or a ``LocalCluster`` started once (loopback only, no dashboard)."""

from __future__ import annotations

import ast
import atexit
import contextlib
import multiprocessing
import sys
import threading
from collections.abc import Iterator
from typing import Any

from amorsize.errors import InvalidArgumentError, InvalidArgumentTypeError

CONNECT_SECONDS = 10.0

_CLIENT_FORMS = ("a distributed.Client, its scheduler's address (such as "
                 "'tcp://127.0.0.1:8786'), or None for the active Client")

_local: dict[str, Any] = {}
_local_lock = threading.Lock()


class ClusterUnreachableError(InvalidArgumentError):
    """No scheduler answered at the address given as ``client=``."""


def check_client(client: object) -> None:
    """Refuse what cannot name a cluster, before any work: the message names ``client`` and
    what it may be."""
    if client is None:
        return
    if isinstance(client, str):
        if not client.strip():
            raise InvalidArgumentError(f"client must be {_CLIENT_FORMS}, got an empty address")
        return
    wrong = InvalidArgumentTypeError(
        f"client must be {_CLIENT_FORMS}, got {type(client).__name__} {client!r}")
    try:
        from distributed import Client
    except ImportError:  # then nothing but an address can name a cluster
        raise wrong from None
    if not isinstance(client, Client):
        raise wrong


@contextlib.contextmanager
def connected(client: Any) -> Iterator[Any]:
    """The Client a call runs on: ``client`` itself; for an address, a Client connected to it
    for the call and closed after it (not made the default, so it redirects no ``.compute()``
    meanwhile); for None, ``default_client()``."""
    if isinstance(client, str):
        import distributed

        try:
            own = distributed.Client(client, set_as_default=False, timeout=CONNECT_SECONDS)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ClusterUnreachableError(
                f"client={client!r}: no dask scheduler answered there within "
                f"{CONNECT_SECONDS:.0f} s ({type(exc).__name__}: {exc}); pass the address the "
                "scheduler printed (such as 'tcp://127.0.0.1:8786') or a Client") from None
        with own:
            yield own
    else:
        yield default_client() if client is None else client


def current_client() -> Any:
    """The active ``dask.distributed`` Client (``distributed.get_client``: the default one, or
    the worker's inside a task), or None."""
    try:
        from distributed import get_client
    except ImportError:
        return None
    try:
        return get_client()
    except ValueError:
        return None


def default_client() -> Any:
    """The active Client, or one on a ``LocalCluster`` started once and kept until exit.

    The local one is not made the default (``set_as_default=False``), so starting it does not
    redirect the user's ``.compute()`` calls to it; its scheduler listens on 127.0.0.1 only, it
    starts no dashboard, and its small HTTP server (``/health``) takes a free loopback port. Its
    workers are started processes: a script that calls this outside ``if __name__ ==
    "__main__":`` would start them again in each of them, so it is refused first
    (``check_main_guard``).
    """
    client = current_client()
    if client is not None:
        return client
    with _local_lock:
        client = _local.get("client")
        if client is None or client.status in ("closed", "closing"):
            import distributed

            check_main_guard()
            # Loopback only and no dashboard: nothing reachable from other machines. Without a
            # dashboard the scheduler still serves /health on an HTTP port, 8787 by default.
            cluster = distributed.LocalCluster(
                host="127.0.0.1", dashboard_address=None,
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
            client = distributed.Client(cluster, set_as_default=False)
            _local.update(client=client, cluster=cluster)
            atexit.register(close_local_cluster)
        return client


def close_local_cluster() -> None:
    """Close the LocalCluster ``map`` started, if any."""
    with _local_lock:
        client, cluster = _local.pop("client", None), _local.pop("cluster", None)
    if client is not None:
        client.close()
    if cluster is not None:
        cluster.close()


class MainGuardError(RuntimeError):
    """A script starts a LocalCluster from code that every worker process would run again."""


def check_main_guard() -> None:
    """Raise ``MainGuardError`` when this call comes from the top level of a script, outside
    ``if __name__ == "__main__":``: the LocalCluster's worker processes start by importing the
    script, which would start the cluster again (dask then fails with "Nanny failed to start")."""
    if multiprocessing.parent_process() is not None:
        return  # already in a worker: the parent process checked
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None:
        return  # an interactive session or ``python -c``: nothing is imported again
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals is not vars(main):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None or frame.f_code.co_name != "<module>":
        return
    if not _guarded(path, frame.f_lineno):
        raise MainGuardError(
            f"{path}, line {frame.f_lineno}: amorsize_dask starts a LocalCluster, whose worker "
            "processes import this script again; put the code that runs it under "
            "`if __name__ == \"__main__\":`, or pass client= (a Client or a scheduler's address)")


def _guarded(path: str, line: int) -> bool:
    """Whether ``line`` of the script lies in an ``if`` that tests ``__name__``."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return True  # cannot tell: let dask report what happens
    for node in tree.body:
        end = getattr(node, "end_lineno", node.lineno)
        if node.lineno <= line <= end:
            return isinstance(node, ast.If) and any(
                isinstance(n, ast.Name) and n.id == "__name__" for n in ast.walk(node.test))
    return True
