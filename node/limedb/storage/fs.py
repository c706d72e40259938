"""The one filesystem interface the engine uses, a real implementation and a crashable one.

Every byte the engine reads or writes goes through a `FileSystem`, so tests can run the real
engine over `CrashableMemFS` and simulate a power loss: `crash()` keeps only what was fsynced
(plus a random prefix of each unsynced tail, as a torn write would) and forgets creates, renames
and removes whose directory was never fsynced.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
import posixpath
import random
import threading
from collections.abc import Callable
from typing import Protocol


class WritableFile(Protocol):
    def write(self, data: bytes) -> None: ...

    def sync(self) -> None:
        """Make every byte written so far durable (fdatasync)."""
        ...

    def truncate(self, size: int) -> None:
        """Cut the file back to `size` bytes and make the new length durable (a torn frame
        left by a failed write must never have later frames appended after it)."""
        ...

    def close(self) -> None: ...


class ReadableFile(Protocol):
    size: int
    # bytes-like view of the whole file (an mmap on the real filesystem): slicing it is a pread
    # without a system call.
    data: bytes | mmap.mmap

    def close(self) -> None: ...


class FileSystem(Protocol):
    def create(self, path: str) -> WritableFile:
        """Create (or truncate) a file for appending."""
        ...

    def open_read(self, path: str) -> ReadableFile: ...

    def read_file(self, path: str) -> bytes: ...

    def exists(self, path: str) -> bool: ...

    def listdir(self, path: str) -> list[str]: ...

    def makedirs(self, path: str) -> None: ...

    def rename(self, src: str, dst: str) -> None: ...

    def remove(self, path: str) -> None: ...

    def link(self, src: str, dst: str) -> None:
        """Give the file `src` a second name `dst` (a hard link; `dst` must not exist). Raises
        OSError (EXDEV, EPERM, ...) where the filesystem cannot: the caller copies instead."""
        ...

    def fsync_dir(self, path: str) -> None:
        """Make creates, renames and removes inside `path` durable."""
        ...

    def lock(self, path: str) -> Callable[[], None]:
        """Take an exclusive lock on `path` (created if needed); returns its release function.

        Raises `BlockingIOError` when another holder has it.
        """
        ...


class _RealWritable:
    __slots__ = ("_fd", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        # fsync, not fdatasync: the new length is the point.
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _RealReadable:
    __slots__ = ("data", "size")

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            self.size = os.fstat(fd).st_size
            # an mmap keeps the inode alive after the file is unlinked by compaction, so readers
            # holding an old view never see a vanished file.
            self.data = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if self.size else b""
        finally:
            os.close(fd)

    def close(self) -> None:
        # Deliberately left to the garbage collector: a concurrent reader may still slice it.
        pass


class RealFS:
    """The operating system's filesystem, with fdatasync and directory fsync."""

    def create(self, path: str) -> WritableFile:
        return _RealWritable(path)

    def open_read(self, path: str) -> ReadableFile:
        return _RealReadable(path)

    def read_file(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def remove(self, path: str) -> None:
        os.remove(path)

    def link(self, src: str, dst: str) -> None:
        os.link(src, dst)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def lock(self, path: str) -> Callable[[], None]:
        # flock is per open file description: it also stops a second open in this process, and
        # the kernel releases it when the process dies.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise BlockingIOError(f"{path} is locked by another open engine") from None

        def release() -> None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

        return release


class _Inode:
    __slots__ = ("data", "lost", "synced")

    def __init__(self, data: bytes = b"", synced: int = 0) -> None:
        self.data = bytearray(data)
        self.synced = synced
        # Bytes a failed fsync dropped from the page cache: a later fsync reports success, but
        # after a crash they read back as zeros (PostgreSQL's "fsyncgate").
        self.lost: list[tuple[int, int]] = []


class _MemWritable:
    __slots__ = ("_fs", "_inode")

    def __init__(self, fs: CrashableMemFS, inode: _Inode) -> None:
        self._fs = fs
        self._inode = inode

    def write(self, data: bytes) -> None:
        with self._fs._lock:
            if not self._fs._dead:
                room = self._fs._room()
                if room < len(data):
                    # A full disk takes what fits, then refuses: a torn write.
                    self._inode.data += data[:room]
                    raise OSError(errno.ENOSPC, "No space left on device (CrashableMemFS)")
                self._inode.data += data

    def sync(self) -> None:
        with self._fs._lock:
            if not self._fs._dead:
                self._fs.syncs += 1
                inode = self._inode
                if self._fs.failing_syncs > 0:
                    self._fs.failing_syncs -= 1
                    inode.lost.append((inode.synced, len(inode.data)))
                    raise OSError(errno.ENOSPC, "No space left on device (CrashableMemFS fsync)")
                inode.synced = len(inode.data)

    def truncate(self, size: int) -> None:
        with self._fs._lock:
            if not self._fs._dead:
                inode = self._inode
                del inode.data[size:]
                inode.synced = min(inode.synced, size)
                inode.lost = [(a, min(b, size)) for a, b in inode.lost if a < size]

    def close(self) -> None:
        pass


class _MemReadable:
    __slots__ = ("data", "size")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def close(self) -> None:
        pass


def _norm(path: str) -> str:
    return posixpath.normpath(os.fspath(path))


class CrashableMemFS:
    """An in-memory filesystem that can lose whatever was not made durable.

    Files are inodes (bytes + how many of them were fsynced); each directory has a current and a
    durable name table, the durable one updated by `fsync_dir`. `crash()` returns the filesystem
    as it would be found after a power loss; the old object is frozen (writes and namespace
    changes by a still-running engine are ignored) so an abandoned engine cannot touch it.
    """

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.RLock()
        self._files: dict[str, _Inode] = {}
        self._durable: dict[str, _Inode] = {}
        self._dirs: set[str] = {"/"}
        self._rng = random.Random(seed)
        self._dead = False
        self._locks: set[str] = set()
        self.syncs = 0
        # Disk-full injection: `capacity` bytes in all (None: unlimited), and how many of the
        # next file fsyncs fail with ENOSPC (as delayed allocation makes them on ext4 or XFS).
        self.capacity: int | None = None
        self.failing_syncs = 0

    def used(self) -> int:
        with self._lock:
            return sum(len(inode.data) for inode in self._files.values())

    def _room(self) -> int:
        if self.capacity is None:
            return 1 << 62
        return max(0, self.capacity - self.used())

    def fill(self, leave_bytes: int = 0) -> None:
        """Make the disk full but for `leave_bytes`."""
        with self._lock:
            self.capacity = self.used() + leave_bytes

    def free(self) -> None:
        """Room again: writes succeed as before."""
        with self._lock:
            self.capacity = None

    def create(self, path: str) -> WritableFile:
        path = _norm(path)
        with self._lock:
            inode = _Inode()
            if not self._dead:
                self._require_dir(posixpath.dirname(path))
                self._files[path] = inode
            return _MemWritable(self, inode)

    def open_read(self, path: str) -> ReadableFile:
        return _MemReadable(self.read_file(path))

    def read_file(self, path: str) -> bytes:
        path = _norm(path)
        with self._lock:
            inode = self._files.get(path)
            if inode is None:
                raise FileNotFoundError(path)
            return bytes(inode.data)

    def exists(self, path: str) -> bool:
        path = _norm(path)
        with self._lock:
            return path in self._files or path in self._dirs

    def listdir(self, path: str) -> list[str]:
        path = _norm(path)
        with self._lock:
            if path not in self._dirs:
                raise FileNotFoundError(path)
            return sorted(
                posixpath.basename(p) for p in self._files if posixpath.dirname(p) == path
            )

    def makedirs(self, path: str) -> None:
        path = _norm(path)
        with self._lock:
            while path not in self._dirs:
                self._dirs.add(path)
                path = posixpath.dirname(path)

    def rename(self, src: str, dst: str) -> None:
        src, dst = _norm(src), _norm(dst)
        with self._lock:
            if self._dead:
                return
            if src not in self._files:
                raise FileNotFoundError(src)
            self._files[dst] = self._files.pop(src)

    def remove(self, path: str) -> None:
        path = _norm(path)
        with self._lock:
            if self._dead:
                return
            if path not in self._files:
                raise FileNotFoundError(path)
            del self._files[path]

    def link(self, src: str, dst: str) -> None:
        src, dst = _norm(src), _norm(dst)
        with self._lock:
            if self._dead:
                return
            if src not in self._files:
                raise FileNotFoundError(src)
            if dst in self._files:
                raise FileExistsError(dst)
            self._require_dir(posixpath.dirname(dst))
            self._files[dst] = self._files[src]  # one inode, two names

    def fsync_dir(self, path: str) -> None:
        path = _norm(path)
        with self._lock:
            if self._dead:
                return
            self.syncs += 1
            for p in [p for p in self._durable if posixpath.dirname(p) == path]:
                if self._files.get(p) is not self._durable[p]:
                    del self._durable[p]
            for p, inode in self._files.items():
                if posixpath.dirname(p) == path:
                    self._durable[p] = inode

    def lock(self, path: str) -> Callable[[], None]:
        path = _norm(path)
        with self._lock:
            if path in self._locks:
                raise BlockingIOError(f"{path} is locked by another open engine")
            self._locks.add(path)

        def release() -> None:
            with self._lock:
                self._locks.discard(path)

        return release

    def _require_dir(self, path: str) -> None:
        if path not in self._dirs:
            raise FileNotFoundError(path)

    def crash(self, *, tear: bool = True) -> CrashableMemFS:
        """The filesystem after a power loss at this instant.

        Only names made durable by `fsync_dir` survive; each surviving file keeps its fsynced
        bytes plus, when `tear`, a random prefix of its unsynced tail.
        """
        with self._lock:
            after = CrashableMemFS(self._rng.randrange(1 << 30))
            after._dirs = set(self._dirs)
            for path, inode in self._durable.items():
                keep = inode.synced
                if tear and len(inode.data) > keep:
                    keep = self._rng.randint(keep, len(inode.data))
                survivor = _Inode(bytes(inode.data[:keep]), keep)
                for start, end in inode.lost:
                    end = min(end, keep)
                    if start < end:
                        survivor.data[start:end] = bytes(end - start)
                after._files[path] = survivor
                after._durable[path] = survivor
            self._dead = True
            return after

    def corrupt(self, path: str, offset: int, xor: int = 0xFF) -> None:
        """Flip bits of one byte (a test helper for corruption tests)."""
        path = _norm(path)
        with self._lock:
            self._files[path].data[offset] ^= xor

    def truncate(self, path: str, size: int) -> None:
        path = _norm(path)
        with self._lock:
            inode = self._files[path]
            del inode.data[size:]
            inode.synced = min(inode.synced, size)
