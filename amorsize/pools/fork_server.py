"""Imported by multiprocessing's fork server alone (its preload list, set by ``processes``):
makes the server exit once the user's process is gone (``orphans.arm_server``).

Nothing else imports this module, so importing it is how the server knows it is the server;
the user's process names itself in ``orphans.FORKSERVER_PARENT_ENV``, which must name the
importer's parent (in any other process importing it, it does not, and nothing happens).
Workers the server forks inherit the armed handler, and drop it (``orphans.watch_parent``).
"""

from __future__ import annotations

import os

from amorsize.pools import orphans

if (_parent := os.environ.get(orphans.FORKSERVER_PARENT_ENV)) == str(os.getppid()):
    orphans.arm_server(int(_parent))
