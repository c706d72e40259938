"""Errors the storage engine raises, each naming the file (and offset) it is about."""

from __future__ import annotations


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
