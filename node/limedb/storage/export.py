"""Export of key ranges as one SSTable: the newest version of every key of the ranges
(tombstones and expiring values included), cut out of a consistent view of the engine: the
tables of that instant (pinned until the cut is written, so no compaction deletes them) and the
memtables' entries in the ranges. The table is what `Engine.ingest` takes on another node.

Big cuts run in an offload worker process at a low priority (storage/offload.py,
BACKGROUND_NICE): the serving process only sends the memtables' entries and the table numbers;
the worker merges the ranges out of the tables (last-writer-wins, as a snapshot's scan does)
and writes the table. Whole table files are not
handed over as they are, even where one lies inside a range: a node's table spans every token
range it holds, so with virtual nodes that hardly ever happens.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import chain, islice

from crc32c import crc32c

from .block_cache import BlockCache
from .bloom import GlobalFilter
from .fs import FileSystem, RealFS
from .memtable import FrozenMemtable
from .options import EngineOptions
from .record import Rec
from .snapshot import View
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
    levels: list[list[TableReader]] = [[] for _ in range(opts.max_levels)]
    for lvl, no in tables:
        levels[lvl].append(TableReader(fs, posixpath.join(dirpath, table_name(no)), no, cache))
    for lvl in range(1, len(levels)):
        levels[lvl].sort(key=lambda t: t.smallest)
    view = View(mem, None, levels, GlobalFilter.passthrough())
    builder = TableBuilder(fs, out_path, 0, opts.block_bytes, opts.bloom_bits_per_key)
    try:
        for start, end in ranges:
            items = view.iter_recs(start, end)
            while batch := list(islice(items, 4096)):
                keys = [k for k, _ in batch]
                builder.add_all(keys, dict(batch))
        if not builder.entries:
            builder.abandon()
            return Exported(out_path, 0, 0, 0)
        meta = builder.finish()
    except BaseException:
        builder.abandon()
        raise
    return Exported(out_path, meta.entries, meta.size, file_crc32c(fs, out_path))


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
