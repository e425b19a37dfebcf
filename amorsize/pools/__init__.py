"""Warm pools of workers and their keeper.

``worker_pool`` holds ``WorkerPool``, what every pool shares, and the serial pool;
``threads`` and ``processes`` the other two kinds, and ``manager`` the ``PoolManager`` that keeps
them warm and replaces broken ones; ``contract`` is the typed contract a plugin's pool meets;
``worker`` is what runs inside a worker (``payloads``: what crosses to and from a process worker;
``board``: where workers say what they run; ``environment``: a process worker's set-up and memory
rule), ``shipping`` pickles for process workers, ``orphans`` makes workers exit when the user's
process dies (``fork_server``: the fork server's side of it), and ``compat`` holds every use of
private parts of ``concurrent.futures`` and ``multiprocessing``.

``WorkerPool``, the base of every kind, is the one name exported here: the pool a plugin's pool
behaves like (``contract.PoolLike``). ``amorsize.Pool`` is another thing: the
``multiprocessing.Pool`` look-alike users import.
"""

from amorsize.pools.worker_pool import WorkerPool

__all__ = ["WorkerPool"]
