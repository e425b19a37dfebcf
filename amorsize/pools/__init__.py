"""Warm pools of workers and their keeper.

``pool`` holds what every pool shares and the serial pool, ``threads`` and ``processes`` the
other two kinds, and ``manager`` the ``PoolManager`` that keeps them warm and replaces broken
ones; ``contract`` is the typed contract a plugin's pool
meets; ``worker`` is what runs inside a worker, and ``orphans`` makes workers exit when the
user's process dies.
"""
