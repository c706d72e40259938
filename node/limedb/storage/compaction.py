"""Leveled compaction: choosing what to merge, merging it, and writing the output tables.

L0 holds flushed memtables (overlapping files, newest first); each deeper level holds disjoint
files and may be 10x larger than the one above. The merge works in key-range chunks: every input
block of a chunk is folded into one dict with `dict.update` (conflicting keys resolved
last-writer-wins), so the per-entry work stays in C; the chunk's keys are then sorted (a merge of
already sorted runs) and written. Tombstones and expired values are dropped only when nothing
below the output level can hold an older version, and only after the grace period.
"""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field

from limedb.hlc import millis_of

from .options import EngineOptions
from .record import TOMBSTONE, Rec, newer
from .sstable import TableBuilder, TableMeta, TableReader

CHUNK_BLOCKS = 256  # input blocks merged at a time (~1 MiB): bounds memory per step


@dataclass
class Compaction:
    """Inputs (with their level) merged into `output_level`."""

    output_level: int
    inputs: list[tuple[int, TableReader]]
    bottom: bool  # no level below the output holds keys in the input range
    manual: bool = False
    outputs: list[TableMeta] = field(default_factory=list)
    # Key ranges [start, end) whose entries are left out of the outputs (a range purge).
    purge: list[tuple[bytes, bytes | None]] = field(default_factory=list)

    @property
    def input_bytes(self) -> int:
        return sum(t.size for _, t in self.inputs)


def level_target(level: int, opts: EngineOptions) -> int:
    return opts.level_base_bytes * 10 ** (level - 1)


def _overlapping(files: list[TableReader], lo: bytes, hi: bytes) -> list[TableReader]:
    return [t for t in files if not (t.largest < lo or t.smallest > hi)]


def _is_bottom(levels: list[list[TableReader]], output_level: int, lo: bytes, hi: bytes) -> bool:
    return not any(
        _overlapping(levels[lvl], lo, hi) for lvl in range(output_level + 1, len(levels))
    )


def pick(
    levels: list[list[TableReader]], opts: EngineOptions, pointers: dict[int, bytes]
) -> Compaction | None:
    """The most urgent compaction, or None. `levels[0]` is newest first; deeper levels sorted."""
    l0 = levels[0]
    if len(l0) >= opts.l0_compaction_trigger:
        lo = min(t.smallest for t in l0)
        hi = max(t.largest for t in l0)
        inputs = [(0, t) for t in l0] + [(1, t) for t in _overlapping(levels[1], lo, hi)]
        lo = min(lo, *(t.smallest for _, t in inputs))
        hi = max(hi, *(t.largest for _, t in inputs))
        return Compaction(1, inputs, _is_bottom(levels, 1, lo, hi))
    best, best_score = 0, 1.0
    for lvl in range(1, len(levels) - 1):
        size = sum(t.size for t in levels[lvl])
        score = size / level_target(lvl, opts)
        if score >= best_score:
            best, best_score = lvl, score
    if not best:
        return None
    files = levels[best]
    after = pointers.get(best)
    chosen = files[0]
    if after is not None:
        for t in files:
            if t.largest > after:
                chosen = t
                break
    pointers[best] = chosen.largest
    below = _overlapping(levels[best + 1], chosen.smallest, chosen.largest)
    inputs = [(best, chosen)] + [(best + 1, t) for t in below]
    lo = min(t.smallest for _, t in inputs)
    hi = max(t.largest for _, t in inputs)
    return Compaction(best + 1, inputs, _is_bottom(levels, best + 1, lo, hi))


def full(levels: list[list[TableReader]]) -> Compaction | None:
    """Everything into the deepest non-empty level (at least L1): a manual full compaction."""
    inputs = [(lvl, t) for lvl, files in enumerate(levels) for t in files]
    if not inputs:
        return None
    deepest = max(1, max(lvl for lvl, _ in inputs))
    return Compaction(deepest, inputs, True, manual=True)


def _chunk_bounds(tables: list[TableReader]) -> list[bytes]:
    """Upper bounds (inclusive) of merge chunks, from the inputs' block index keys."""
    keys = sorted({k for t in tables for k in t.index_keys})
    step = max(1, CHUNK_BLOCKS // max(1, len(tables)))
    bounds = keys[step - 1 :: step]
    if not bounds or bounds[-1] != keys[-1]:
        bounds.append(keys[-1])
    return bounds


def fold_newest(acc: dict[bytes, Rec], part: dict[bytes, Rec]) -> None:
    """acc |= part, keeping the last-writer-wins winner for keys in both."""
    common = acc.keys() & part.keys()
    if not common:
        acc.update(part)
        return
    part = dict(part)
    for k in common:
        if not newer(part[k], acc[k]):
            part[k] = acc[k]
    acc.update(part)


def _chunk(table: TableReader, lo: bytes | None, hi: bytes) -> dict[bytes, Rec]:
    """Entries of `table` with lo < key <= hi (lo None: from the start)."""
    keys = table.index_keys
    first = 0 if lo is None else bisect_right(keys, lo)
    last = bisect_left(keys, hi)  # the block holding hi (or the first past it)
    out: dict[bytes, Rec] = {}
    for i in range(first, min(last + 1, table.nblocks)):
        blk = table.load_block(i)
        inside_lo = lo is None or (i > 0 and keys[i - 1] >= lo)
        if inside_lo and keys[i] <= hi:
            fold_newest(out, blk) if out else out.update(blk)
        else:
            fold_newest(out, {k: r for k, r in blk.items() if (lo is None or k > lo) and k <= hi})
    return out


def drop_ranges(merged: dict[bytes, Rec], ranges: list[tuple[bytes, bytes | None]]) -> None:
    """Delete from `merged` every key inside one of the sorted, disjoint [start, end) ranges."""
    starts = [s for s, _ in ranges]
    doomed = []
    for k in merged:
        i = bisect_right(starts, k) - 1
        if i >= 0:
            end = ranges[i][1]
            if end is None or k < end:
                doomed.append(k)
    for k in doomed:
        del merged[k]


class RateLimiter:
    """Sleeps so that the bytes reported stay under `rate` per second (0 = unlimited)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._start = time.monotonic()
        self._bytes = 0

    def charge(self, n: int, stop: Callable[[], bool]) -> None:
        if self.rate <= 0:
            return
        self._bytes += n
        ahead = self._bytes / self.rate - (time.monotonic() - self._start)
        while ahead > 0 and not stop():
            time.sleep(min(ahead, 0.05))
            ahead = self._bytes / self.rate - (time.monotonic() - self._start)


class CompactionAborted(Exception):
    """The engine is closing; the partial outputs were abandoned."""


def run(
    c: Compaction,
    make_builder: Callable[[], TableBuilder],
    opts: EngineOptions,
    limiter: RateLimiter,
    stop: Callable[[], bool],
    now_ms: int | None = None,
) -> list[TableMeta]:
    """Merge the inputs and write the output tables (fsynced); returns their metadata."""
    now_ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    horizon = now_ms - int(opts.tombstone_grace_s * 1000)
    tables = [t for _, t in c.inputs]
    outputs: list[TableMeta] = []
    builder: TableBuilder | None = None
    lo: bytes | None = None
    try:
        for hi in _chunk_bounds(tables):
            if stop():
                raise CompactionAborted()
            merged: dict[bytes, Rec] = {}
            for t in tables:
                if lo is not None and t.largest <= lo:
                    continue
                if t.smallest > hi:
                    continue
                part = _chunk(t, lo, hi)
                if part:
                    fold_newest(merged, part) if merged else merged.update(part)
            lo = hi
            if c.purge:
                drop_ranges(merged, c.purge)
            if c.bottom:
                for k in [k for k, r in merged.items() if r[2]]:
                    r = merged[k]
                    if r[2] & TOMBSTONE:
                        if millis_of(r[0]) <= horizon:
                            del merged[k]
                    elif r[3] <= horizon:
                        del merged[k]
            if not merged:
                continue
            keys = sorted(merged)
            if builder is None:
                builder = make_builder()
            before = builder.estimated_size
            builder.add_all(keys, merged)
            limiter.charge(builder.estimated_size - before, stop)
            if builder.estimated_size >= opts.target_file_bytes:
                outputs.append(builder.finish())
                builder = None
        if builder is not None:
            outputs.append(builder.finish())
            builder = None
    except BaseException:
        if builder is not None:
            builder.abandon()
        c.outputs = outputs
        raise
    c.outputs = outputs
    return outputs


def backlog_bytes(levels: list[list[TableReader]], opts: EngineOptions) -> int:
    """Bytes that compaction would still have to rewrite to bring every level under target."""
    total = 0
    l0 = levels[0]
    if len(l0) >= opts.l0_compaction_trigger:
        total += sum(t.size for t in l0)
    for lvl in range(1, len(levels) - 1):
        over = sum(t.size for t in levels[lvl]) - level_target(lvl, opts)
        if over > 0:
            total += over
    return total
