"""Read views: the memtables and tables a read sees, point lookups and ordered merges over them.

A `View` is immutable (the live memtable inside it is the one mutable part, and point reads of a
dict are safe), and the engine swaps its current view with one assignment, so readers never take
the write lock. A `Snapshot` additionally freezes the live memtable, so scans over it are stable.
"""

from __future__ import annotations

import heapq
import time
from bisect import bisect_left
from collections.abc import Iterator
from operator import itemgetter

from .bloom import GlobalFilter, key_hash, probe_mask
from .memtable import FrozenMemtable
from .record import Rec, Version, newer, rec_live, to_version
from .sstable import TableReader


class View:
    __slots__ = (
        "mem",
        "imm",
        "mem_get",
        "imm_get",
        "l0",
        "levels",
        "gfilter",
        "gwords",
        "gmask",
        "all_levels",
    )

    def __init__(
        self,
        mem,  # noqa: ANN001 - Memtable or FrozenMemtable (both expose .data)
        imm,  # noqa: ANN001
        all_levels: list[list[TableReader]],
        gfilter: GlobalFilter,
    ) -> None:
        self.mem = mem
        self.imm = imm
        # Bound lookups of the memtables' dicts (their dict objects never change): the get path.
        self.mem_get = mem.data.get
        self.imm_get = imm.data.get if imm is not None else None
        self.all_levels = all_levels
        self.l0 = tuple(all_levels[0])
        # Only non-empty deeper levels, each as (files in key order, their largest keys).
        self.levels = tuple(
            (tuple(files), [t.largest for t in files]) for files in all_levels[1:] if files
        )
        self.gfilter = gfilter
        self.gwords = gfilter.words
        self.gmask = gfilter.mask

    def lookup(self, key: bytes) -> Rec | None:
        rec = self.mem.data.get(key)
        if rec is not None:
            return rec
        if self.imm is not None:
            rec = self.imm.data.get(key)
            if rec is not None:
                return rec
        return tables_lookup(self.gfilter.words, self.gfilter.mask, self.l0, self.levels, key)

    def sources(self, start: bytes | None, end: bytes | None) -> list[Iterator[tuple[bytes, Rec]]]:
        out = []
        if isinstance(self.mem, FrozenMemtable):
            out.append(self.mem.items(start, end))
        if self.imm is not None:
            out.append(self.imm.items(start, end))
        for t in self.l0:
            if _overlaps(t, start, end):
                out.append(t.items(start, end))
        for files, _ in self.levels:
            chosen = [t for t in files if _overlaps(t, start, end)]
            if chosen:
                out.append(_chain(chosen, start, end))
        return out

    def iter_recs(self, start: bytes | None, end: bytes | None) -> Iterator[tuple[bytes, Rec]]:
        """Newest record per key in [start, end), in key order (tombstones included)."""
        sources = self.sources(start, end)
        if not sources:
            return
        if len(sources) == 1:
            yield from sources[0]
            return
        prev: bytes | None = None
        best: Rec | None = None
        for k, rec in heapq.merge(*sources, key=itemgetter(0)):
            if k == prev:
                if newer(rec, best):  # type: ignore[arg-type]
                    best = rec
                continue
            if prev is not None:
                yield prev, best  # type: ignore[misc]
            prev, best = k, rec
        if prev is not None:
            yield prev, best  # type: ignore[misc]


def _overlaps(t: TableReader, start: bytes | None, end: bytes | None) -> bool:
    if start is not None and t.largest < start:
        return False
    return not (end is not None and t.smallest >= end)


def _chain(files: list[TableReader], start: bytes | None, end: bytes | None) -> Iterator:
    for t in files:
        yield from t.items(start, end)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Snapshot:
    """A consistent read view of the engine at one instant (a context manager)."""

    def __init__(self, view: View) -> None:
        self._view = view

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def get(self, key: bytes) -> bytes | None:
        rec = self._view.lookup(bytes(key))
        if rec is None or not rec_live(rec, now_ms()):
            return None
        return rec[1]

    def get_version(self, key: bytes) -> Version | None:
        rec = self._view.lookup(bytes(key))
        return None if rec is None else to_version(rec)

    def iter_range(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        *,
        include_tombstones: bool = False,
    ) -> Iterator[tuple[bytes, Version]]:
        now = now_ms()
        for k, rec in self._view.iter_recs(start, end):
            if include_tombstones or rec_live(rec, now):  # tombstones and expired values too
                yield k, to_version(rec)

    def scan(
        self, start: bytes | None = None, end: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        if limit is not None and limit <= 0:
            return []
        now = now_ms()
        out = []
        for k, rec in self._view.iter_recs(start, end):
            if rec_live(rec, now):
                out.append((k, rec[1]))
                if limit is not None and len(out) >= limit:
                    break
        return out


def tables_lookup(gwords, gmask: int, l0, levels, key: bytes) -> Rec | None:
    """The version a set of tables (not memtables) resolves `key` to: the engine-wide filter
    (`gwords`, `gmask`), then L0 newest first, then each level's one candidate table."""
    h = key_hash(key)
    mask = probe_mask(h)
    if gwords[h & gmask] & mask != mask:
        return None
    for t in l0:
        if t.fwords[h & t.fmask] & mask == mask and t.smallest <= key <= t.largest:
            rec = t.get(key)
            if rec is not None:
                return rec
    for files, bounds in levels:
        i = bisect_left(bounds, key)
        if i < len(files):
            t = files[i]
            if t.fwords[h & t.fmask] & mask == mask and key >= t.smallest:
                rec = t.get(key)
                if rec is not None:
                    return rec
    return None
