"""Warm pools of workers and their keeper.

``pool`` holds what every pool shares and the serial pool, ``threads`` and ``processes`` the
other two kinds, and ``manager`` the ``PoolManager`` that keeps them warm and replaces broken
ones; ``contract`` is the typed contract a plugin's pool
meets; ``worker`` is what runs inside a worker (``payloads``: what crosses to and from a
process worker; ``board``: where workers say what they run; ``environment``: a process worker's
set-up and memory rule), ``shipping`` pickles for process workers, ``orphans`` makes workers
exit when the user's process dies (``fork_server``: the fork server's side of it), and
``compat`` holds every use of private parts of ``concurrent.futures`` and ``multiprocessing``.
"""
