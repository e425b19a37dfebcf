"""What the shared-memory tests look at: large arrays, the segments this process holds, which
processes still hold a segment, what is named in /dev/shm, and what each chunk carries."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from amorsize.pools import shared
from amorsize.run.control import Run

MB = 1 << 20
ROOT = str(Path(__file__).resolve().parents[1])


def big_array(mb: float = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(int(mb * MB / 8))


def held() -> set[str]:
    """The tokens of the segments this process still holds."""
    live = shared.live_tokens()
    return set() if live is None else set(live[1])


def holding(token: str, pids: list[int]) -> list[int]:
    """The processes among ``pids`` that map or hold open the file ``token`` names."""
    inode = token.split(":")[1]
    found = []
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text()
            fds = os.listdir(f"/proc/{pid}/fd")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        links = []
        for fd in fds:
            try:
                links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:  # closed meanwhile (the listing's own descriptor)
                continue
        if any(line.split()[4] == inode for line in maps.splitlines() if len(line.split()) > 4) \
                or any(f"#{inode} " in link for link in links):
            found.append(pid)
    return found


def left_in_shm() -> list[str]:
    """What amorsize left named in /dev/shm (its segments have no name: nothing, ever)."""
    return [name for name in os.listdir(shared.SHM_DIR) if name.startswith("amz-")]


def count_sent(monkeypatch) -> list[int]:
    """The pickled size of what each chunk or batch sent to a worker carries (but the
    function), recorded from now on."""
    sizes: list[int] = []
    submit = Run.submit

    def counting(self, fn, *args):
        sizes.append(len(pickle.dumps(args, protocol=5)))
        return submit(self, fn, *args)

    monkeypatch.setattr(Run, "submit", counting)
    return sizes


def kill_all(pids: list[int], child: subprocess.Popen) -> None:
    """A subprocess test's end, whatever happened: no process of it is left."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    child.kill()
    child.communicate()


def start_program(program: str, *args: str) -> tuple[subprocess.Popen, list[str]]:
    """A Python program run in a child process that can import amorsize, and the words of the
    first line it printed (with its errors, if it ended without printing one)."""
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    child = subprocess.Popen([sys.executable, "-c", program, *args], text=True,
                             env={**os.environ, "PYTHONPATH": path},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None
    line = child.stdout.readline().split()
    if not line and child.poll() is not None:
        raise AssertionError(f"the program ended: {child.stderr.read() if child.stderr else ''}")
    return child, line
