"""An external table sorted out against the versions the engine holds of the keys in its span
(storage/ingest.py says why and how each is decided): which entries are left out, which go
through the write path, and the hashes of all its keys as a filter contribution.

Only the blocks that may hold one of the engine's keys are decoded whole; every other block
gives only its keys (checksum verified, records not decoded) to the hashes. It reads the
external table and nothing of the engine, so an ingest runs it in a low-priority worker
process (storage/offload.py) and the serving process never decodes the table's blocks.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from dataclasses import dataclass, field

from .block_cache import BlockCache
from .bloom import add_hashes, key_hash
from .fs import FileSystem, RealFS
from .record import Rec, newer
from .sstable import TableReader


@dataclass
class Sorted:
    """The external table sorted out: its key hashes as filter words (`nwords` u64 words,
    little-endian bytes; left-out keys included, a table holds them), the keys left out, the
    versions to write through the write path, and how many versions lost to a stored one."""

    words: bytes
    dropped: list[bytes] = field(default_factory=list)
    to_write: list[tuple[bytes, Rec]] = field(default_factory=list)
    superseded: int = 0


def decide(ext: Rec, in_memtable: Rec | None, in_tables: Rec | None) -> tuple[bool, bool]:
    """(keep the entry in the ingested table, write it through the write path) for an external
    version, given the newest version a memtable holds and the newest a table holds."""
    stored = in_memtable if in_memtable is not None else in_tables
    write = stored is not None and newer(ext, stored)
    return in_tables is None, write


def sort_out(
    fs: FileSystem,
    path: str,
    nwords: int,
    in_mem: dict[bytes, Rec],
    in_tables: dict[bytes, Rec],
) -> Sorted:
    """Sort out the table at `path` (every block's checksum verified) against the engine's
    newest versions of the keys it holds in the table's span (`in_mem`: in a memtable,
    `in_tables`: in a table)."""
    reader = TableReader(fs, path, 0, BlockCache(0))
    words = array("Q", bytes(8 * nwords))
    out = Sorted(b"")
    candidates = sorted(in_mem.keys() | in_tables.keys())
    last_keys = reader.index_keys
    j = 0
    for i in range(reader.nblocks):
        # Block i holds the keys after last_keys[i - 1] up to last_keys[i].
        k = bisect_right(candidates, last_keys[i], j)
        if k == j:
            add_hashes(words, map(key_hash, reader.block_keys(i)))
            continue
        blk = reader.load_block(i)
        add_hashes(words, map(key_hash, blk))
        for key in candidates[j:k]:
            rec = blk.get(key)
            if rec is None:
                continue
            keep, write = decide(rec, in_mem.get(key), in_tables.get(key))
            if not keep:
                out.dropped.append(key)
            if write:
                out.to_write.append((key, rec))
            else:
                out.superseded += 1
        j = k
    out.words = words.tobytes()
    return out


def sort_out_in_worker(
    path: str, nwords: int, in_mem: dict[bytes, Rec], in_tables: dict[bytes, Rec]
) -> Sorted:
    """`sort_out` as an offload job (the worker's side)."""
    return sort_out(RealFS(), path, nwords, in_mem, in_tables)
