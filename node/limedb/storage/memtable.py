"""The memtable: the newest version of each recently written key, in a dict with byte accounting.

A dict makes puts and gets one C operation each; sorted order is produced only when a flush or a
scan needs it, and cached: the keys inserted since the last sort are appended to a side list, and
the next sort merges that run into the previous sorted list (timsort merges two runs linearly).
"""

from __future__ import annotations

import sys
import time
from bisect import bisect_left
from collections.abc import Iterator

from .record import Rec

# Per-entry bytes charged on top of key and value: dict slot, tuple and int objects.
ENTRY_OVERHEAD = 64
# Entries freed between two releases of the GIL by `Memtable.release` (about 0.5 ms).
_RELEASE_CHUNK = 2048


class Memtable:
    __slots__ = (
        "data",
        "size",
        "order",
        "_sorted",
        "_unsorted",
        "snap_seq",
        "snap",
        "_immutable",
        "stage_tried",
    )

    def __init__(self) -> None:
        self.data: dict[bytes, Rec] = {}
        self.size = 0
        # Every key in the order its versions were applied (a key written twice is in it twice):
        # the flusher ships the entries to a flush worker from it while the memtable fills.
        self.order: list[bytes] = []
        self._sorted: list[bytes] = []
        self._unsorted: list[bytes] = []
        # A read-only copy for snapshots, valid while the engine's sequence number is snap_seq.
        self.snap_seq = -1
        self.snap: FrozenMemtable | None = None
        self._immutable: FrozenMemtable | None = None
        # Whether the flusher tried to stage this memtable (flush.py: one try per memtable; a
        # flag on the memtable itself, where an id() could be reused by the next one).
        self.stage_tried = False

    def apply(self, key: bytes, rec: Rec) -> None:
        """Store `rec` as the newest version of `key` (the caller already decided it wins)."""
        old = self.data.get(key)
        self.data[key] = rec
        self.order.append(key)
        if old is None:
            self._unsorted.append(key)
            self.size += len(key) + len(rec[1]) + ENTRY_OVERHEAD
        else:
            self.size += len(rec[1]) - len(old[1])

    def __len__(self) -> int:
        return len(self.data)

    def sorted_keys(self) -> list[bytes]:
        """All keys in order (caller holds the write lock, or the memtable is immutable)."""
        if self._unsorted:
            self._unsorted.sort()
            self._sorted = sorted(self._sorted + self._unsorted) if self._sorted else self._unsorted
            self._unsorted = []
        return self._sorted

    def freeze(self) -> FrozenMemtable:
        """A read-only copy (caller holds the write lock)."""
        return FrozenMemtable(dict(self.data), self.sorted_keys())

    def as_frozen(self) -> FrozenMemtable:
        """This memtable viewed read-only; only for a memtable that no longer takes writes."""
        if self._immutable is None:
            self._immutable = FrozenMemtable(self.data, self.sorted_keys())
        return self._immutable

    def release(self) -> bool:
        """Free a flushed memtable's entries a chunk at a time, letting other threads take the
        GIL in between, if nothing but the caller's one reference holds it (freeing a 16 MiB
        memtable in one go holds the GIL ~20 ms). False, changing nothing, while anything else
        does (a reader's view or a snapshot): it is then freed whenever that lets go of it."""
        frozen = self._immutable
        if frozen is not None:
            # This attribute, the local and getrefcount's argument: no snapshot shares it.
            if sys.getrefcount(frozen) > 3:
                return False
            self._immutable = frozen = None
        # The caller's reference, `self` and getrefcount's argument; the dict: this attribute
        # and the argument (a view's bound `data.get` would be one more).
        if sys.getrefcount(self) > 3 or sys.getrefcount(self.data) > 2:
            return False
        data = self.data
        self.data = {}
        self._sorted = []
        self._unsorted = []
        self.order = []
        self.size = 0
        pop = data.popitem
        while data:
            for _ in range(min(_RELEASE_CHUNK, len(data))):
                pop()
            time.sleep(0)  # releases the GIL
        return True


class FrozenMemtable:
    """An immutable memtable: a dict plus its keys in order."""

    __slots__ = ("data", "keys")

    def __init__(self, data: dict[bytes, Rec], keys: list[bytes]) -> None:
        self.data = data
        self.keys = keys

    def items(self, start: bytes | None, end: bytes | None) -> Iterator[tuple[bytes, Rec]]:
        keys = self.keys
        data = self.data
        i = 0 if start is None else bisect_left(keys, start)
        n = len(keys)
        if end is None:
            while i < n:
                k = keys[i]
                yield k, data[k]
                i += 1
        else:
            while i < n:
                k = keys[i]
                if k >= end:
                    return
                yield k, data[k]
                i += 1
