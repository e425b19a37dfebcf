"""Running a plan.

``mapping`` holds the front-end functions (``map``, ``imap``, ``imap_unordered``, ``starmap``,
``istarmap``, ``run_plan``); ``control`` the ``Run`` every front end drives (the pool lease, the
chunks in flight, progress, time limits, cancel); ``report`` what a run measured;
``multiprocessing_pool`` the ``multiprocessing.Pool``-shaped front end.
"""
