"""Export of key ranges as one SSTable: the newest version of every key of the ranges
(tombstones and expiring values included), cut out of a consistent view of the engine: the
tables of that instant (pinned until the cut is written, so no compaction deletes them) and the
memtables' entries in the ranges. The table is what `Engine.ingest` takes on another node.

Big cuts run in an offload worker process at a low priority (storage/offload.py,
BACKGROUND_NICE): the serving process only sends the memtables' entries and the table numbers;
the worker merges the ranges out of the tables (last-writer-wins, as a snapshot's scan does)
and writes the table. The merge goes as a compaction's does, by chunks of blocks: the blocks
of a chunk decoded into dicts and folded (the newest version per key kept, compared only for
keys in more than one table), so no Python code runs per key but for a range's boundary
blocks and keys held twice. Whole table files are not
handed over as they are, even where one lies inside a range: a node's table spans every token
range it holds, so with virtual nodes that hardly ever happens.
"""

from __future__ import annotations

import posixpath
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice

from crc32c import crc32c

from .block_cache import BlockCache
from .compaction import CHUNK_BLOCKS, fold_newest
from .fs import FileSystem, RealFS
from .memtable import FrozenMemtable
from .options import EngineOptions
from .record import Rec
from .sstable import TableBuilder, TableReader, table_name

Range = tuple[bytes, bytes | None]  # [start, end), end None: to the last key
# Memtable entries per pickled chunk sent to a worker (as a flush does).
CHUNK = 2048


@dataclass(frozen=True)
class Exported:
    """The table an export wrote (no file when the ranges hold nothing)."""

    path: str
    entries: int
    size: int
    crc32c: int


def mem_entries(mems: list[FrozenMemtable], ranges: list[Range]) -> dict[bytes, Rec]:
    """The memtables' entries in the ranges; `mems` oldest first (a later one wins)."""
    out: dict[bytes, Rec] = {}
    for mem in mems:
        for start, end in ranges:
            out.update(mem.items(start, end))
    return out


def cut(
    fs: FileSystem,
    dirpath: str,
    tables: list[tuple[int, int]],
    ranges: list[Range],
    out_path: str,
    opts: EngineOptions,
    chunks: Iterable[list[tuple[bytes, Rec]]],
) -> Exported:
    """Write the newest version of every key of `ranges` (sorted, disjoint) found in the
    tables (level, file number) of `dirpath` or in `chunks` (memtable entries, newer than any
    table's) into one table at `out_path`, fsynced."""
    data = dict(chain.from_iterable(chunks))
    mem = FrozenMemtable(data, sorted(data))
    cache = BlockCache(0)
    readers = [
        TableReader(fs, posixpath.join(dirpath, table_name(no)), no, cache) for _, no in tables
    ]
    builder = TableBuilder(fs, out_path, 0, opts.block_bytes, opts.bloom_bits_per_key)
    try:
        for start, end in ranges:
            for merged in _merged_chunks(readers, mem, start, end):
                builder.add_all(sorted(merged), merged)
        if not builder.entries:
            builder.abandon()
            return Exported(out_path, 0, 0, 0)
        meta = builder.finish()
    except BaseException:
        builder.abandon()
        raise
    return Exported(out_path, meta.entries, meta.size, file_crc32c(fs, out_path))


def _merged_chunks(
    tables: list[TableReader], mem: FrozenMemtable, start: bytes, end: bytes | None
) -> Iterator[dict[bytes, Rec]]:
    """The newest version of every key in [start, end) held by `tables` or `mem`, as dicts
    of consecutive keys (unordered within), about CHUNK_BLOCKS blocks of input each."""
    inside = [t for t in tables if t.largest >= start and (end is None or t.smallest < end)]
    marks: list[bytes] = []
    for t in inside:
        keys = t.index_keys
        marks.extend(
            keys[bisect_left(keys, start) : len(keys) if end is None else bisect_left(keys, end)]
        )
    marks.sort()
    bounds = marks[CHUNK_BLOCKS - 1 :: CHUNK_BLOCKS]
    for lo, hi in zip([start, *bounds], [*bounds, end], strict=True):
        merged = dict(mem.items(lo, hi))
        for t in inside:
            part = _table_part(t, lo, hi)
            if part:
                fold_newest(merged, part) if merged else merged.update(part)
        if merged:
            yield merged


def _table_part(table: TableReader, lo: bytes, hi: bytes | None) -> dict[bytes, Rec]:
    """The entries of `table` with lo <= key < hi (hi None: to the end). Block i holds the
    keys after index_keys[i - 1] up to index_keys[i]."""
    keys = table.index_keys
    out: dict[bytes, Rec] = {}
    for i in range(bisect_left(keys, lo), table.nblocks):
        first_inside = keys[i - 1] >= lo if i else table.smallest >= lo
        if hi is not None and (keys[i - 1] >= hi if i else table.smallest >= hi):
            break
        blk = table.load_block(i)
        if first_inside and (hi is None or keys[i] < hi):
            out.update(blk)
        else:
            out.update((k, r) for k, r in blk.items() if lo <= k and (hi is None or k < hi))
    return out


def file_crc32c(fs: FileSystem, path: str) -> int:
    data = fs.open_read(path).data
    crc = 0
    for off in range(0, len(data), 1 << 20):
        crc = crc32c(data[off : off + (1 << 20)], crc)
    return crc


def cut_in_worker(
    dirpath: str,
    tables: list[tuple[int, int]],
    ranges: list[Range],
    out_path: str,
    opts: EngineOptions,
    chunks: Iterable[list[tuple[bytes, Rec]]],
) -> Exported:
    """`cut` as an offload job (the worker's side)."""
    return cut(RealFS(), dirpath, tables, ranges, out_path, opts, chunks)


def chunked(entries: dict[bytes, Rec]) -> Iterable[list[tuple[bytes, Rec]]]:
    it = iter(entries.items())
    return iter(lambda: list(islice(it, CHUNK)), [])
