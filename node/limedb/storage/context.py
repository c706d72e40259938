"""What the parts of one open engine share: its directory, filesystem, options and block cache,
the one mutex guarding its in-memory state, the events that wake its background threads, and
whether it is closing, has failed or is short of space."""

from __future__ import annotations

import logging
import posixpath
import threading
from collections.abc import Callable

from .block_cache import BlockCache
from .disk_full import DiskFullState
from .errors import EngineClosedError
from .fs import FileSystem, RealFS
from .options import EngineOptions

log = logging.getLogger("limedb.storage")


def _unset() -> None:
    raise RuntimeError("the engine has not wired its read view yet")


class EngineContext:
    def __init__(self, dirpath: str, fs: FileSystem, opts: EngineOptions) -> None:
        self.dir = dirpath
        self.fs = fs
        self.real_fs = isinstance(fs, RealFS)  # worker processes can open its files too
        self.opts = opts
        self.cache = BlockCache(opts.block_cache_bytes)
        # Guards the memtables, the WAL queues, the sequence numbers and the level lists.
        self.mutex = threading.Lock()
        # Signalled (under the mutex) when a memtable is frozen or flushed, L0 shrinks, the disk
        # has room again, or the engine closes or fails.
        self.cv = threading.Condition(self.mutex)
        self.sync_wake = threading.Event()  # the syncer: write out the WAL, retry a full disk
        self.compact_wake = threading.Event()  # the compactor: the file set changed
        self.threaded = False  # background threads run the flushes, compactions and syncs
        self.closing = False
        self.error: BaseException | None = None
        self.space = DiskFullState(dirpath, self.mutex, self.sync_wake)  # refused for lack of room
        # Swaps in a new read view of the memtables, tables and filter (caller holds the mutex).
        self.publish: Callable[[], None] = _unset

    def path(self, name: str) -> str:
        return posixpath.join(self.dir, name)

    def check_open(self) -> None:
        if self.closing:
            raise EngineClosedError("the storage engine is closed")
        if self.error is not None:
            raise EngineClosedError(f"the storage engine failed: {self.error!r}")

    def fail(self, exc: BaseException) -> None:
        """A background job failed for another reason than a full disk: the engine stops."""
        if self.error is None:
            self.error = exc
            log.error("storage engine failed: %r", exc)
        with self.mutex:
            self.cv.notify_all()
