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
# until a restart (found by the nemesis, seed 3: an fd_limit fault during a flush). Writers
# refused for it hear OutOfDescriptorsError (`refusal`): the disk itself has room.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE})


class DiskFullError(StorageError):
    """The disk has no room: the write was refused (nothing of it was acknowledged) and the
    engine keeps serving reads; writes resume by themselves once space is freed."""

    retry_after_s = 1.0


class OutOfDescriptorsError(DiskFullError):
    """The write was refused because the engine could not open a file it must write: the
    process (EMFILE) or the system (ENFILE) has no file descriptor left. The engine handles it
    as it does a full disk (nothing of the write acknowledged, reads served, writes resume once
    a file opens again), but the disk has room, so clients hear an overload (HTTP 503, RESP
    UNAVAILABLE), not a 507."""


DESCRIPTOR_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})
DESCRIPTORS_PREFIX = "out of file descriptors: "


def _full_errno(exc: BaseException | None) -> int | None:
    """The errno of the first error in `exc`'s chain that says the disk (or the descriptor
    table) is full, or None."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OutOfDescriptorsError):
            return errno.EMFILE
        if isinstance(exc, DiskFullError):
            return errno.ENOSPC
        code = getattr(exc, "errno", None)
        if code in DISK_FULL_ERRNOS:
            return code
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def is_out_of_descriptors(exc: BaseException | None) -> bool:
    """Whether `exc` (or what it was raised from) says no file descriptor was left."""
    return _full_errno(exc) in DESCRIPTOR_ERRNOS


def refusal(message: str, cause: BaseException | None) -> DiskFullError:
    """The error for a write refused because of `cause`: OutOfDescriptorsError (its message
    saying so instead of "disk full") when the cause is EMFILE or ENFILE, else DiskFullError."""
    if is_out_of_descriptors(cause):
        if message.startswith("disk full: "):
            message = message[len("disk full: ") :]
        if not message.startswith(DESCRIPTORS_PREFIX):
            message = DESCRIPTORS_PREFIX + message
        return OutOfDescriptorsError(message)
    return DiskFullError(message)


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc` (or what it was raised from) says the disk, or a quota, is full (or the
    descriptor table, which the engine handles alike)."""
    return _full_errno(exc) is not None
