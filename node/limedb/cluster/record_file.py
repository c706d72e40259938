"""One small JSON record per file, replaced atomically and durably (the ring record, the
handed-off ranges, the last verification).

A write goes to a temporary file that is fsynced, renamed over the old one, and the directory
fsynced: a crash leaves either the old record or the new one, never a torn one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

import orjson

T = TypeVar("T")


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new content."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError:
        # E.g. a full disk: the old record stays; the half-written copy gives its room back.
        os.close(fd)
        os.unlink(tmp)
        raise
    else:
        os.close(fd)
    os.replace(tmp, path)
    _sync_dir(path.parent)


def remove_durably(path: Path) -> None:
    """Remove `path` (if there) so that a crash afterwards does not bring it back."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    _sync_dir(path.parent)


def _sync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class RecordFile(Generic[T]):
    """Loads and saves one record of type T as JSON at `path`. A file that does not decode is
    an error (ValueError naming the file), never taken for a missing one."""

    def __init__(
        self,
        path: Path,
        what: str,
        decode: Callable[[Mapping[str, Any]], T],
        encode: Callable[[T], Mapping[str, Any]],
    ) -> None:
        self.path = path
        self._what = what
        self._decode = decode
        self._encode = encode

    def load(self) -> T | None:
        """The persisted record, or None when there is no file."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return self._decode(orjson.loads(data))
        except (orjson.JSONDecodeError, ValueError) as exc:
            raise ValueError(f"{self.path}: unreadable {self._what}: {exc}") from exc

    def save(self, record: T) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, orjson.dumps(self._encode(record)))
