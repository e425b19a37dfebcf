"""The large buffers a function carries cross to process workers once, through shared memory,
not with every chunk.

A ``functools.partial`` or closure over a big array (or a callable object holding a model) is
pickled with protocol 5: buffers of ``SHARED_MIN_BYTES`` or more (numpy arrays, ``bytearray``,
anything pickled as a ``PickleBuffer``) go out of band into one segment, and what crosses with
each chunk is the small rest of the pickle and the segment's address. A worker maps the segment
once, read-only, and unpickles with views into it: numpy arrays come back as read-only views,
without a copy, and the worker keeps the function (``payloads``) until the segment is released.

Nothing is left behind, whatever ends the processes (Ctrl-C, a killed worker, the caller killed
by SIGKILL): a segment is a file without a name (``O_TMPFILE``) in ``/dev/shm``, which a worker
opens through ``/proc/<pid>/fd/<fd>`` of the process that made it; the kernel frees it once the
last process holding it has closed it or died. Where ``/dev/shm`` has too little room (64 MB in
a container by default) the file is made in the temporary folder instead, still without a name
(``placed_where`` says which, and the plan says so). Elsewhere than Linux the function travels
by value with each chunk, as before (``available``).

The caller keeps its segments by the buffers' sizes and CRC-32: a later call over the same data
(a new partial over the same array too) sends nothing again, and a buffer changed in place gets
a new segment. A segment is released once no prepared function holds it (a run still going) and
it is no longer kept: not among the last ``KEPT_SEGMENTS`` used, or its array was collected or
changed in place (so a loop updating a big array holds one copy of it, not several).

Imported by every process worker: kept light.
"""

from __future__ import annotations

import errno
import functools
import mmap
import os
import sys
import threading
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pickle

# a buffer this big or bigger crosses through shared memory, once per worker
SHARED_MIN_BYTES = 1 << 20
KEPT_SEGMENTS = 4
SHM_DIR = "/dev/shm"  # noqa: S108 - where POSIX shared memory lives on Linux
_ALIGN = 64

# re-entrant: a collected array's callback (``_forget``) may run while this thread holds it
_lock = threading.RLock()
_kept: OrderedDict[tuple, Segment] = OrderedDict()
# the objects whose buffers are in kept segments, by id: a weak reference, and the checksum
# their buffer had when last placed
_owners: dict[int, tuple[weakref.ref, tuple[int, int]]] = {}
_alive: weakref.WeakValueDictionary[str, Segment] = weakref.WeakValueDictionary()
_used = False
# bumped whenever a segment is made or released: workers apply the newest list of live ones
_generation = 0
# in a worker: the segments mapped, by token, and where their makers hold them
_mapped: dict[str, mmap.mmap] = {}
_held_at: dict[str, str] = {}


class SegmentRef:
    """Where a segment is, as it crosses to workers: the making process and its descriptor, a
    token naming the file (device and inode: a reused descriptor number is told apart) and
    the buffers' ``(offset, size)``."""

    __slots__ = ("fd", "layout", "pid", "token")

    def __init__(self, pid: int, fd: int, token: str, layout: tuple[tuple[int, int], ...]) -> None:
        self.pid, self.fd, self.token, self.layout = pid, fd, token, layout

    def __getstate__(self) -> tuple:
        return self.pid, self.fd, self.token, self.layout

    def __setstate__(self, state: tuple) -> None:
        self.pid, self.fd, self.token, self.layout = state

    @property
    def nbytes(self) -> int:
        return sum(size for _, size in self.layout)


class Segment:
    """A segment the caller made and holds: its descriptor is closed, and the memory freed once
    every worker let go of it too, when this object is collected (no longer among the kept
    ones nor held by a prepared function)."""

    def __init__(self, fd: int, size: int, directory: str) -> None:
        self.directory = directory
        self.size = size
        stat = os.fstat(fd)
        self.token = f"{stat.st_dev}:{stat.st_ino}"
        self.fd = fd
        self.map = mmap.mmap(fd, max(size, 1), flags=mmap.MAP_SHARED
                             | getattr(mmap, "MAP_POPULATE", 0))
        self.ref: SegmentRef | None = None
        weakref.finalize(self, _close, self.map, fd)


def _close(mapped: mmap.mmap, fd: int) -> None:
    global _generation
    _generation += 1
    try:
        mapped.close()
    finally:
        os.close(fd)


def available() -> bool:
    """Whether functions' large buffers can cross through shared memory here (Linux)."""
    return sys.platform.startswith("linux") and hasattr(os, "O_TMPFILE")


def in_band(buffer: pickle.PickleBuffer) -> bool:
    """Whether a buffer stays in the pickle (else it goes to shared memory): the small ones."""
    return memoryview(buffer).nbytes < SHARED_MIN_BYTES


def place(buffers: list[pickle.PickleBuffer]) -> Segment:
    """A segment holding ``buffers``: one made before for the same contents, or a new one."""
    global _used, _generation
    import zlib

    views = [b.raw() for b in buffers]
    key = tuple((v.nbytes, zlib.crc32(v)) for v in views)
    with _lock:
        found = _kept.get(key)
        if found is not None:
            _kept.move_to_end(key)
            _let_go_with(views, key)
            return found
    layout = []
    offset = 0
    for v in views:
        layout.append((offset, v.nbytes))
        offset += -(-v.nbytes // _ALIGN) * _ALIGN
    fd, directory = _create(offset)
    try:
        segment = Segment(fd, offset, directory)
    except BaseException:
        os.close(fd)
        raise
    for (at, size), v in zip(layout, views, strict=True):
        segment.map[at:at + size] = v
    segment.ref = SegmentRef(os.getpid(), fd, segment.token, tuple(layout))
    with _lock:
        _used = True
        _generation += 1
        _kept[key] = segment
        _alive[segment.token] = segment
        while len(_kept) > KEPT_SEGMENTS:
            _kept.popitem(last=False)
        _let_go_with(views, key)
    return segment


def keep(segment: Segment) -> bool:
    """Count ``segment`` as just used, as ``place`` finding it would, without the checksum: a
    call that knows it holds the same buffer (``payloads.Placed``) keeps it among the last
    used while other segments come and go. False if it is no longer kept."""
    with _lock:
        for key, kept in _kept.items():
            if kept is segment:
                _kept.move_to_end(key)
                return True
        return False


def _let_go_with(views: list[memoryview], key: tuple) -> None:
    """Stop keeping the segments that hold an object's buffer (the caller's array) once no
    later call can ask for them: when the object is collected, or changed in place (its
    checksum differs from the last call's)."""
    for view, content in zip(views, key, strict=True):
        owner = view.obj
        known = _owners.get(id(owner))
        if known is not None:
            if known[1] != content:
                _owners[id(owner)] = (known[0], content)
                _drop_holding(known[1])
            continue
        try:
            ref = weakref.ref(owner, functools.partial(_forget, id(owner)))
        except TypeError:  # bytearray and the like: kept among the last used only
            continue
        _owners[id(owner)] = (ref, content)


def _drop_holding(content: tuple[int, int]) -> None:
    for key in [k for k in _kept if content in k]:
        del _kept[key]


def _forget(owner: int, _: object) -> None:
    with _lock:
        known = _owners.pop(owner, None)
        if known is not None:
            _drop_holding(known[1])


def placed_where(nbytes: float) -> str:
    """Where a segment of ``nbytes`` goes: ``SHM_DIR``, or the temporary folder when there
    is not room enough in ``SHM_DIR``."""
    return SHM_DIR if free_bytes(SHM_DIR) >= nbytes else _temporary_folder()


def free_bytes(directory: str) -> int:
    """The bytes free for this user in ``directory``'s file system (0 if it cannot tell)."""
    try:
        stat = os.statvfs(directory)
    except OSError:
        return 0
    return stat.f_bavail * stat.f_frsize


def _temporary_folder() -> str:
    import tempfile

    return tempfile.gettempdir()


def _create(size: int) -> tuple[int, str]:
    """A file without a name of ``size`` bytes, all allocated (a shared-memory file system out
    of room would otherwise kill the process writing it with SIGBUS): in ``SHM_DIR`` if it has
    room, else in the temporary folder."""
    first = placed_where(size)
    tried = [first] if first != SHM_DIR else [SHM_DIR, _temporary_folder()]
    for directory in tried:
        try:
            return _unnamed_file(directory, size), directory
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or directory == tried[-1]:
                raise
    raise AssertionError("unreachable")


def _unnamed_file(directory: str, size: int) -> int:
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
        import tempfile

        # a file system without O_TMPFILE: named for a moment, unlinked at once
        fd, path = tempfile.mkstemp(prefix="amz-", dir=directory)
        os.unlink(path)
    try:
        if size:
            os.posix_fallocate(fd, 0, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


def live_tokens() -> tuple[int, tuple[str, ...]] | None:
    """The tokens of the segments this process still holds, after how many changes; None if
    it never made one (then nothing about segments crosses with a function)."""
    if not _used:
        return None
    with _lock:
        return _generation, tuple(_alive.keys())


def views(ref: SegmentRef) -> list[memoryview]:
    """In a worker: read-only views of the buffers in ``ref``'s segment, mapped once."""
    mapped = _mapped.get(ref.token)
    if mapped is None:
        fd = os.open(f"/proc/{ref.pid}/fd/{ref.fd}", os.O_RDONLY)
        try:
            stat = os.fstat(fd)
            if f"{stat.st_dev}:{stat.st_ino}" != ref.token:
                raise RuntimeError(
                    f"the shared memory of a function (process {ref.pid}, descriptor {ref.fd}) "
                    "was released before this worker read it")
            mapped = mmap.mmap(fd, max(stat.st_size, 1), access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        _mapped[ref.token] = mapped
        _held_at[ref.token] = f"/proc/{ref.pid}/fd/{ref.fd}"
    whole = memoryview(mapped)
    return [whole[at:at + size] for at, size in ref.layout]


def unmap(token: str) -> None:
    """In a worker: forget a segment; its memory goes once the views into it are gone."""
    _mapped.pop(token, None)
    _held_at.pop(token, None)


def released() -> list[str]:
    """In a worker: the tokens of the mapped segments their maker no longer holds (closed, or
    its descriptor's number now names another file)."""
    gone = []
    for token, path in list(_held_at.items()):
        try:
            stat = os.stat(path)
        except OSError:
            gone.append(token)
            continue
        if f"{stat.st_dev}:{stat.st_ino}" != token:
            gone.append(token)
    return gone


def mapped_tokens() -> set[str]:
    """In a worker: the tokens of the segments it has mapped."""
    return set(_mapped)


def _forget_in_child() -> None:
    """A forked child holds copies of its parent's descriptors: it lets them go, and makes its
    own segments if it needs any."""
    global _lock, _used
    _lock = threading.RLock()
    _owners.clear()
    _kept.clear()
    _alive.clear()
    _used = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
