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

Large *results* come back the same way (``ResultFile``): with each call the caller lends an
empty file without a name; a worker whose result has buffers of ``SHARED_MIN_BYTES`` or more
writes them into it (through ``/proc/<pid>/fd/<fd>`` of the caller) and sends the small rest
through the pipe; the caller copies them out into memory of its own (results are ordinary,
writable objects) and empties the file for the next call. The caller holds the file from
before the call to after its result, and the worker closes its descriptor before replying, so
nothing outlives the two. Where ``/dev/shm`` lacks room, or the worker cannot open the file,
the result comes through the pipe, as before.

A worker that cannot open the caller's descriptors (the caller made itself non-dumpable with
``prctl(PR_SET_DUMPABLE, 0)``, ``/proc`` is mounted with ``hidepid``, the worker runs as another
user) raises ``SharedMemoryUnreachable`` instead of running the chunk: the caller sends that
chunk again with the function by value, and stops using shared memory (``turn_off``). A caller
that is not dumpable does not try (``unavailable_reason``).

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
import time
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

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
# in a worker: the processes whose descriptors it could not open, and why
_unreachable: dict[int, str] = {}
# why this process stopped using shared memory (a worker could not open a segment)
_off_because: str | None = None
_PR_GET_DUMPABLE = 3
_prctl: Any = None
_DUMPABLE_SECONDS = 1.0
_dumpable_seen = (-_DUMPABLE_SECONDS - 1.0, True)  # when asked last, and the answer


class SharedMemoryUnreachable(RuntimeError):  # noqa: N818 - says what happened, as OSError's do
    """Raised in a worker that cannot open a segment of the caller's: the caller sends the call
    again with the function by value. ``lasting``: the worker cannot open the caller's
    descriptors at all (else the one segment was gone), so the caller stops using segments."""

    def __init__(self, message: str, lasting: bool = True) -> None:
        super().__init__(message)
        self.lasting = lasting

    def __reduce__(self) -> tuple:
        return type(self), (self.args[0], self.lasting)


def token_of(stat: os.stat_result) -> str:
    """What names a file whatever descriptor holds it: its device and inode (a descriptor
    number reused for another file is told apart)."""
    return f"{stat.st_dev}:{stat.st_ino}"


def laid_out(buffers: list[memoryview]) -> tuple[list[tuple[int, int]], int]:
    """Each buffer's ``(offset, size)`` in one file, aligned to ``_ALIGN``, and the file's size."""
    layout = []
    size = 0
    for view in buffers:
        layout.append((size, view.nbytes))
        size += -(-view.nbytes // _ALIGN) * _ALIGN
    return layout, size


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
        self.token = token_of(os.fstat(fd))
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
    """Whether functions' large buffers can cross through shared memory here (Linux, and
    workers can open this process's descriptors)."""
    return unavailable_reason() is None


def unavailable_reason() -> str | None:
    """Why large buffers do not cross through shared memory here, or None if they do."""
    if not on_linux():
        return "shared memory is used on Linux only"
    if _off_because is not None:
        return _off_because
    if not _dumpable_now():
        return ("this process is not dumpable (prctl(PR_SET_DUMPABLE, 0)): its workers cannot "
                "open its descriptors through /proc")
    return None


def on_linux() -> bool:
    """Whether this system has what segments are made of (Linux's ``O_TMPFILE``)."""
    return sys.platform.startswith("linux") and hasattr(os, "O_TMPFILE")


def _dumpable_now() -> bool:
    """``_dumpable``, asked again at most every ``_DUMPABLE_SECONDS`` (each call lends a file
    for its result: ``lend``)."""
    global _dumpable_seen
    now = time.monotonic()
    if now - _dumpable_seen[0] > _DUMPABLE_SECONDS:
        _dumpable_seen = (now, _dumpable())
    return _dumpable_seen[1]


def _dumpable() -> bool:
    """Whether workers of the same user may open this process's descriptors through
    ``/proc/<pid>/fd``: a non-dumpable process's entries there are root's (``PR_GET_DUMPABLE``;
    2, dumpable for root only, is not enough either). True where it cannot tell: a worker that
    then fails to open them says so (``SharedMemoryUnreachable``)."""
    global _prctl
    try:
        if _prctl is None:
            import ctypes

            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        return bool(_prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0) == 1)
    except (OSError, AttributeError):
        return True


def turned_off() -> bool:
    """Whether this process stopped using shared memory (``turn_off``)."""
    return _off_because is not None


def turn_off(reason: str) -> bool:
    """Stop making segments in this process (a worker could not open one: ``reason``); the
    functions prepared from now on travel by value. True the first time."""
    global _off_because
    with _lock:
        if _off_because is not None:
            return False
        _off_because = reason
    import logging

    logging.getLogger("amorsize").debug(
        "amorsize: shared memory turned off in this process; large buffers travel with each "
        "chunk from now on: %s", reason)
    return True


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
    layout, offset = laid_out(views)
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
        fd = opened(ref.pid, ref.fd, ref.token, os.O_RDONLY)
        try:
            mapped = mmap.mmap(fd, max(os.fstat(fd).st_size, 1), access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        _mapped[ref.token] = mapped
        _held_at[ref.token] = f"/proc/{ref.pid}/fd/{ref.fd}"
    whole = memoryview(mapped)
    return [whole[at:at + size] for at, size in ref.layout]


def opened(pid: int, fd: int, token: str, flags: int) -> int:
    """In a worker: a descriptor of the file process ``pid`` holds as ``fd``, which must be the
    one ``token`` names; ``SharedMemoryUnreachable`` if it cannot be opened."""
    known = _unreachable.get(pid)
    if known is not None:
        raise SharedMemoryUnreachable(known)
    try:
        mine = _open_held(pid, fd, flags)
    except OSError as exc:
        # Only a refusal lasts (permissions, hidepid, gone process); out of descriptors or
        # memory passes, and ENOENT with the process there is that one descriptor closed
        lasting = exc.errno in (errno.EACCES, errno.EPERM) or not os.path.exists(f"/proc/{pid}")
        message = (f"process worker {os.getpid()} cannot open the shared memory of process "
                   f"{pid} (/proc/{pid}/fd/{fd}: {exc.strerror or exc})")
        if lasting:
            _unreachable[pid] = message
        raise SharedMemoryUnreachable(message, lasting) from None
    if token_of(os.fstat(mine)) != token:
        os.close(mine)
        raise SharedMemoryUnreachable(
            f"the shared memory of process {pid} (descriptor {fd}) was released before "
            f"process worker {os.getpid()} read it", lasting=False)
    return mine


def _open_held(pid: int, fd: int, flags: int) -> int:
    return os.open(f"/proc/{pid}/fd/{fd}", flags)


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
        if token_of(stat) != token:
            gone.append(token)
    return gone


def mapped_tokens() -> set[str]:
    """In a worker: the tokens of the segments it has mapped."""
    return set(_mapped)


class ResultFile:
    """An empty file without a name in ``SHM_DIR``, lent to one call at a time for its
    result's large buffers (``lend``); ``ref`` is what crosses: ``(pid, fd, token)``."""

    __slots__ = ("__weakref__", "close", "fd", "ref")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.ref = (os.getpid(), fd, token_of(os.fstat(fd)))
        self.close = weakref.finalize(self, os.close, fd)


# the files not lent now, and how many are lent: at most ``LENT_RESULT_FILES`` at once (a
# descriptor each; a call beyond them has its result come through the pipe)
LENT_RESULT_FILES = 64
_idle_files: list[ResultFile] = []
_lent = 0


def lend() -> ResultFile | None:
    """A file for a call's large result, or None (shared memory unused here, or too many lent
    now): give it back with ``give_back``."""
    global _lent
    with _lock:
        if _lent >= LENT_RESULT_FILES or not available():
            return None
        _lent += 1
        if _idle_files:
            return _idle_files.pop()
    try:
        return ResultFile(_unnamed_file(SHM_DIR, 0))
    except OSError:
        with _lock:
            _lent -= 1
        return None


def give_back(file: ResultFile, reusable: bool) -> None:
    """``file``'s call is over: ``reusable`` once its result was read (the worker let go of it
    then), else closed (a worker may still write into it: it must not be emptied under it)."""
    global _lent
    with _lock:
        _lent = max(0, _lent - 1)  # a forked child gives back what its parent lent
        keep = reusable and len(_idle_files) < LENT_RESULT_FILES and file.ref[0] == os.getpid()
        if keep:
            _idle_files.append(file)
    if not keep:
        file.close()


def fill(ref: tuple[int, int, str], buffers: list[memoryview]) -> tuple[tuple[int, int], ...] | None:
    """In a worker: write ``buffers`` into the caller's result file ``ref``; their layout, or
    None if they cannot go there (no room in ``SHM_DIR``, the file cannot be opened): then
    they go through the pipe."""
    layout, size = laid_out(buffers)
    if free_bytes(SHM_DIR) < 2 * size:  # a result may not fill /dev/shm for everyone else
        return None
    pid, fd, token = ref
    try:
        mine = opened(pid, fd, token, os.O_RDWR)
    except SharedMemoryUnreachable:
        return None
    try:
        os.posix_fallocate(mine, 0, size)  # out of room: an error now, not SIGBUS on writing
        with mmap.mmap(mine, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)) as m:
            for (at, nbytes), view in zip(layout, buffers, strict=True):
                m[at:at + nbytes] = view
    except OSError:
        os.ftruncate(mine, 0)
        return None
    finally:
        os.close(mine)
    return tuple(layout)


def read_result(fd: int, token: str, layout: tuple[tuple[int, int], ...],
                as_bytes: tuple[bool, ...] = ()) -> list[bytes | bytearray]:
    """In the caller: copies of the buffers a worker wrote into its result file ``fd`` (as
    ``bytes`` those ``as_bytes`` says were, else writable), which is emptied for the next
    call."""
    if token_of(os.fstat(fd)) != token:
        raise RuntimeError(f"the result file (descriptor {fd}) was closed before its result "
                           "was read")
    end = layout[-1][0] + layout[-1][1]
    try:
        with mmap.mmap(fd, end, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0),
                       prot=mmap.PROT_READ) as m, memoryview(m) as whole:
            kinds = as_bytes or (False,) * len(layout)
            return [(bytes if frozen else bytearray)(whole[at:at + nbytes])
                    for (at, nbytes), frozen in zip(layout, kinds, strict=True)]
    finally:
        os.ftruncate(fd, 0)


def _forget_in_child() -> None:
    """A forked child holds copies of its parent's descriptors: it lets them go, and makes its
    own segments if it needs any."""
    global _lock, _used, _lent
    _lock = threading.RLock()
    _idle_files.clear()
    _lent = 0
    _owners.clear()
    _kept.clear()
    _alive.clear()
    _used = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
