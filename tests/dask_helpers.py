"""Functions the Dask tests run on process pools and clusters: importable by workers."""

from __future__ import annotations

import os
import threading
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


def where(_: object = None) -> str:
    """The address of the cluster worker running the call."""
    import distributed

    return distributed.get_worker().address


def nap(x: int, seconds: float = 0.002) -> int:
    time.sleep(seconds)
    return x


def fail_at(x: int, bad: int = 50, seconds: float = 0.0) -> int:
    time.sleep(seconds)
    if x == bad:
        raise CustomError(f"custom {x}")
    return x


def size_of(data: bytes) -> int:
    return len(data)


def injected_cluster(client, task_seconds: float = 1e-4, round_trip_seconds: float = 1e-3,
                     scatter_seconds: float = 1e-3, byte_seconds: float = 1e-9):
    """Have ``amorsize_dask`` plan for ``client`` from these made-up task and transfer costs,
    not measured ones (which depend on the machine's load)."""
    from amorsize.plan import Cluster
    from amorsize_dask import cluster_measure

    facts = Cluster(address=client.scheduler.address, threads=dict(client.nthreads()),
                    task_seconds=task_seconds, round_trip_seconds=round_trip_seconds)
    cluster_measure._known[client] = facts
    cluster_measure._burst[client] = task_seconds
    cluster_measure._transfer[client] = (scatter_seconds, byte_seconds)
    return facts


GATE = threading.Event()
GATE.set()
"""What ``held_after`` waits on: the tests' cluster runs its workers in the test's process."""


_unpickled = [0]


class Payload:
    """A large object that counts, per process, how often it was unpickled there: how many
    times it crossed to that worker."""

    def __init__(self, nbytes: int) -> None:
        self.data = bytes(nbytes)

    def __setstate__(self, state: dict) -> None:
        _unpickled[0] += 1
        self.__dict__.update(state)


def with_payload(x: int, payload: Payload) -> int:
    return x + len(payload.data)


def payload_unpickled() -> int:
    """How many times a ``Payload`` was unpickled in this process."""
    return _unpickled[0]


def recorded(monkeypatch, client, method: str, what) -> list:
    """What ``what(args, kwargs)`` says of each call of ``client.<method>`` from now on (the
    call itself goes through)."""
    seen: list = []
    original = getattr(client, method)

    def recording(*args, **kwargs):
        seen.append(what(args, kwargs))
        return original(*args, **kwargs)

    monkeypatch.setattr(client, method, recording)
    return seen
