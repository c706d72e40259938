"""The engine-wide filter's upkeep: which `GlobalFilter` readers see, grown by every flushed
table before the table becomes visible, and rebuilt from every table's keys after an open or
once it grew too dense (flushes that land during a rebuild add their keys to it afterwards).
A compaction or purge needs no change: its output keys are a subset of its input keys.

A rebuild for density waits until no table was ingested for QUIET_S: a node ingesting a stream
of tables (ranges streamed to it as tables, about one a second) doubles its keys again and
again, and a rebuild at every doubling hashed every key about twice over; a filter too dense
only lets more look-ups on to the per-table filters meanwhile (and a joining node serves no
reads until its ranges are in).
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable

from .bloom import GlobalFilter
from .context import EngineContext
from .sstable import TableReader
from .version_set import VersionSet

# Builds the words of a filter of `nwords` words over the keys of `tables`.
BuildWords = Callable[[list[TableReader], int], array]
QUIET_S = 5.0


class EngineFilter:
    def __init__(self, ctx: EngineContext, versions: VersionSet) -> None:
        self._ctx = ctx
        self._versions = versions
        has_tables = any(versions.levels)
        # Until built, a pass-through lets every key on to the per-table filters.
        self.current = (
            GlobalFilter.passthrough()
            if has_tables
            else GlobalFilter.from_hashes([], 0, GlobalFilter.size_for(0))
        )
        self.wanted = has_tables  # a rebuild is due
        self._pending: list[tuple[array, int]] | None = None  # added during a rebuild
        self._ingested_at = -QUIET_S  # monotonic time of the last ingested table

    def words_for_table(self, new_keys: int) -> int:
        """The size (in words) to build a new table's contribution at."""
        g = self.current
        if g.ready:
            return g.mask + 1
        total = sum(t.entries for files in self._versions.levels for t in files) + new_keys
        return GlobalFilter.size_for(total)

    def add_table(self, contrib: array, keys: int, *, ingested: bool = False) -> None:
        """Add a new table's key hashes (caller holds the version set's install lock, and the
        table is not visible yet: the filter must vouch for its keys first)."""
        if ingested:
            self._ingested_at = time.monotonic()
        g = self.current.with_words(contrib, keys)
        if self._pending is not None:
            self._pending.append((contrib, keys))
        if g.too_dense():
            self.wanted = True
        self.current = g

    def due(self) -> bool:
        """A rebuild is wanted, and no table was ingested for QUIET_S."""
        return self.wanted and time.monotonic() - self._ingested_at >= QUIET_S

    def rebuild(self, build: BuildWords) -> None:
        """Build the filter from every table's key hashes, then publish it. The caller holds
        off compactions, so no table disappears meanwhile."""
        versions = self._versions
        with versions.install_lock:
            tables = [t for files in versions.levels for t in files]
            total = sum(t.entries for t in tables)
            self._pending = []
            self.wanted = False
        try:
            words = build(tables, GlobalFilter.size_for(total))
        except BaseException:
            with versions.install_lock:
                self._pending = None
            raise
        with versions.install_lock:
            g = GlobalFilter(words, total, True)
            for contrib, keys in self._pending or []:
                g = g.with_words(contrib, keys)
            self._pending = None
            with self._ctx.mutex:
                self.current = g
                self._ctx.publish()
