"""A backup's tables read back as one stream: the newest version of every key.

A backup of an RF=3 cluster holds every key up to three times (and a node's tables may hold
older versions too). Every table is sorted by storage key, so a heap merge of all of them
yields each key's versions together; `limedb.storage.record.newer` (last-writer-wins, the one
comparison of versions) keeps one. The stream is in storage-key order, so the last key sent is
a cursor a restore resumes after. Entries are encoded as range streaming sends them
(limedb.cluster.streaming, STREAM_APPLY), original timestamps, expiry and tombstones included.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from limedb.cluster.streaming import ENTRY, iter_entries
from limedb.hlc import HLC
from limedb.storage.batch import WriteBatch
from limedb.storage.block_cache import BlockCache
from limedb.storage.fs import RealFS
from limedb.storage.record import EXPIRES, TOMBSTONE, Rec, newer
from limedb.storage.sstable import TableReader

# Who owns a storage key in the target cluster: its replica set (node ids).
Owners = Callable[[bytes], tuple[str, ...]]


def newest_versions(paths: list[str], after: bytes | None) -> Iterator[tuple[bytes, Rec]]:
    """(storage key, newest record) for every key in the tables, keys after `after` only."""
    fs = RealFS()
    start = None if after is None else after + b"\x00"
    streams = [
        TableReader(fs, path, i, BlockCache(0)).items(start, cache=False)
        for i, path in enumerate(paths)
    ]
    current: bytes | None = None
    best: Rec | None = None
    for key, rec in heapq.merge(*streams, key=lambda item: item[0]):
        if key != current:
            if current is not None and best is not None:
                yield current, best
            current, best = key, rec
        elif best is None or newer(rec, best):
            best = rec
    if current is not None and best is not None:
        yield current, best


def encode_entry(skey: bytes, rec: Rec) -> bytes:
    ts, value, flags, expires = rec
    tomb = bool(flags & TOMBSTONE)
    value = b"" if tomb else value
    return (
        ENTRY.pack(len(skey), len(value), ts, expires if flags & EXPIRES else 0, tomb)
        + skey
        + value
    )


@dataclass
class Chunk:
    """The next keys of the stream, grouped by the node that must receive them."""

    by_owner: dict[str, list[bytes]] = field(default_factory=dict)
    keys: int = 0
    nbytes: int = 0
    last_key: bytes | None = None
    done: bool = False


def next_chunk(stream: Iterator[tuple[bytes, Rec]], owners: Owners, max_keys: int) -> Chunk:
    chunk = Chunk()
    for skey, rec in stream:
        entry = encode_entry(skey, rec)
        for node in owners(skey):
            chunk.by_owner.setdefault(node, []).append(entry)
            chunk.nbytes += len(entry)
        chunk.keys += 1
        chunk.last_key = skey
        if chunk.keys >= max_keys:
            return chunk
    chunk.done = True
    return chunk


def batches(entries: list[bytes], max_bytes: int) -> Iterator[bytes]:
    """Entries joined into STREAM_APPLY bodies of about `max_bytes`."""
    part: list[bytes] = []
    size = 0
    for entry in entries:
        part.append(entry)
        size += len(entry)
        if size >= max_bytes:
            yield b"".join(part)
            part, size = [], 0
    if part:
        yield b"".join(part)


def write_batch_of(entries: bytes, hlc: HLC) -> WriteBatch:
    """A lone node's apply: the entries as one versioned write batch (what STREAM_APPLY
    does on a cluster node); its clock observes the newest timestamp, so the writes it stamps
    later order after every restored version."""
    batch = WriteBatch()
    newest = 0
    for skey, value, ts, expires, tomb in iter_entries(entries):
        if tomb:
            batch.delete(skey, ts)
        else:
            batch.put(skey, value, ts, expires)
        newest = max(newest, ts)
    if newest:
        hlc.observe(newest)
    return batch
