"""Errors the storage engine raises, each naming the file (and offset) it is about."""

from __future__ import annotations

import errno


class StorageError(Exception):
    """Base of every error raised by `limedb.storage`."""


class CorruptionError(StorageError):
    """A file failed a checksum or format check somewhere other than a recoverable torn tail.

    The engine refuses to open on corruption unless `Engine.open(..., repair=True)` is used;
    `path` and `offset` say where to look.
    """

    def __init__(self, path: str, offset: int | None, reason: str) -> None:
        where = f"{path}" if offset is None else f"{path} at offset {offset}"
        super().__init__(f"corruption in {where}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class EngineClosedError(StorageError):
    """The engine was closed (or failed) and accepts no more operations."""


# ENOSPC, and EDQUOT (a quota is as full as a full disk, to a writer). EMFILE and ENFILE too:
# out of file descriptors, the engine cannot open the log or table it must write, and like a
# full disk that passes when descriptors are closed; treated as fatal, it left the engine dead
# until a restart (found by the nemesis, seed 3: an fd_limit fault during a flush).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE})


class DiskFullError(StorageError):
    """The disk has no room: the write was refused (nothing of it was acknowledged) and the
    engine keeps serving reads; writes resume by themselves once space is freed."""

    retry_after_s = 1.0


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) says the disk, or a quota, is full."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, DiskFullError):
            return True
        if getattr(exc, "errno", None) in DISK_FULL_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False
