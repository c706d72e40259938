"""The ring record on disk: data_dir/ring.json, replaced atomically and durably.

A node that restarts reads its ring (and any running transition) back from here instead of
rebuilding one from the static member list, so a transition survives the restart of every
node. A write goes to a temporary file that is fsynced, renamed over the old one, and the
directory fsynced: a crash leaves either the old record or the new one, never a torn one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import orjson

from limedb.cluster.ring.record import RingRecord

log = logging.getLogger(__name__)

RING_FILE = "ring.json"


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
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class RingStore:
    """Loads and saves one node's copy of the ring record."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / RING_FILE

    def load(self) -> RingRecord | None:
        """The persisted record, or None on a fresh disk.

        A record that does not decode is an error, not a fresh start: starting from the static
        member list instead could take ownership this node no longer has.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            return RingRecord.from_record(orjson.loads(data))
        except (orjson.JSONDecodeError, ValueError) as exc:
            raise ValueError(f"{self.path}: unreadable ring record: {exc}") from exc

    def save(self, state: RingRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, orjson.dumps(state.to_record()))
