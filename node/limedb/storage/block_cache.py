"""A CLOCK cache of decoded SSTable data blocks, charged by their on-disk size.

A decoded block (a dict key -> record) lives in its table's own slot list
(`TableReader.blocks[i]`, None while not cached) next to a reference byte (`TableReader.refs[i]`),
so a hit is one list index and one byte store: no lock, no call, no hashing of a cache key (the
engine's point read inlines it; an OrderedDict LRU cost a Python call, a dict probe and a
`move_to_end` per hit, each touching cold memory). The cache itself only decides what to evict:
blocks join a ring in the order they were loaded; over budget, the hand takes blocks from the
front of the ring, gives one whose reference byte is set a second chance (byte cleared, back to
the end of the ring) and evicts one whose byte is clear. That is CLOCK, the usual approximation
of LRU (PostgreSQL's buffer pool, RocksDB's HyperClockCache): a block used since the hand last
passed it stays. The ring holds the slot lists, not the tables, so a deleted table's file is not
kept open by its cached blocks (they still count until the hand evicts them, as an LRU's would).

A table whose every block is cached (`TableReader` loads the last sixteenth itself: random reads
leave small blocks unread for long), while there is room for it, also gets two dicts of all its
entries (`TableReader.blocks[-1]`, the slot after the blocks, holds the pair `Whole`): a point
read then costs one dict probe instead of a bisect through the block index and a probe of a
block, which on a warm cache is most of what a read waits for (cache misses on index keys, slot
list, block dict). The first dict maps each key to its record (for readers that want the
version: replicas, `get_version`); the second to what `Engine.get` returns for it: the value
itself for a plain record (no tombstone, no expiry time), else the record, so that a get of a
plain value reads no record tuple (one cache miss less per get, ~10% of a warm random get).
The table then counts as one ring entry, charged with its blocks and both dicts, with its own
reference byte (`refs[-1]`); the hand evicts it all at once. The dicts are never changed once
published, so a reader holding them answers correctly whatever the hand does meanwhile.
"""

from __future__ import annotations

import threading
from collections import deque
from operator import itemgetter
from typing import Any

# One ring entry: (the table's slot list, its reference bytes, block number, charge); the block
# number len(slot list) - 1 stands for the whole table.
_Entry = tuple[list, bytearray, int, int]
# A whole table's two dicts: key -> record, and key -> value (plain records) or record (others).
Whole = tuple[dict, dict]
# Charged per entry of a whole table: its two dicts (a CPython dict's entry and index: 44-58
# bytes each).
WHOLE_ENTRY_BYTES = 96
_value = itemgetter(1)
_flags = itemgetter(2)


class BlockCache:
    __slots__ = ("capacity", "used", "lookups", "misses", "_ring", "_lock")

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.used = 0
        # Block lookups made through `TableReader.block` (scans); the engine counts its point
        # reads' lookups itself (Engine.stats). `misses` counts every load, whoever asked.
        self.lookups = 0
        self.misses = 0
        self._ring: deque[_Entry] = deque()
        self._lock = threading.Lock()

    def put(self, blocks: list, refs: bytearray, i: int, block: Any, charge: int) -> None:
        """Cache `block` as slot `i` of `blocks` (a table's slot list), unless it is there."""
        if charge > self.capacity:
            return
        with self._lock:
            if blocks[i] is not None:
                return
            blocks[i] = block
            refs[i] = 1  # just used by whoever loaded it
            self._ring.append((blocks, refs, i, charge))
            self.used += charge
            if self.used > self.capacity:
                self._evict_locked()
            elif blocks.count(None) == 1 and blocks[-1] is None:
                self._whole_locked(blocks, refs)

    def _whole_locked(self, blocks: list, refs: bytearray) -> None:
        """Every block of a table is cached: add its whole-table dicts, if there is room."""
        recs: dict = {}
        last = len(blocks) - 1
        for i in range(last):
            recs.update(blocks[i])
        extra = WHOLE_ENTRY_BYTES * len(recs)
        if self.used + extra > self.capacity:
            return
        answers = dict(zip(recs, map(_value, recs.values()), strict=True))
        if any(map(_flags, recs.values())):  # tombstones, expiry times: their records
            answers.update([(k, rec) for k, rec in recs.items() if rec[2]])
        kept: deque[_Entry] = deque()
        charge = extra
        for entry in self._ring:
            if entry[0] is blocks:
                charge += entry[3]
            else:
                kept.append(entry)
        kept.append((blocks, refs, last, charge))
        self._ring = kept
        self.used += extra
        refs[last] = 1
        blocks[last] = (recs, answers)

    def _evict_locked(self) -> None:
        ring = self._ring
        # Two passes of the hand clear every reference byte; readers setting them again
        # meanwhile cannot keep it sweeping for ever.
        second_chances = 2 * len(ring)
        while self.used > self.capacity and ring:
            entry = ring.popleft()
            blocks, refs, i, charge = entry
            if refs[i] and second_chances > 0:
                refs[i] = 0
                ring.append(entry)
                second_chances -= 1
                continue
            if i == len(blocks) - 1:  # a whole table: its dicts first, then its blocks
                blocks[i] = None
                blocks[:i] = [None] * i
            else:
                blocks[i] = None
            self.used -= charge

    def has_room(self, charge: int) -> bool:
        return self.used + charge <= self.capacity

    def hit_rate(self, point_lookups: int = 0) -> float:
        """Hits per lookup, with `point_lookups` made outside `TableReader.block` (the engine's)."""
        total = self.lookups + point_lookups
        return max(0.0, 1.0 - self.misses / total) if total else 0.0

    def __len__(self) -> int:
        return len(self._ring)
