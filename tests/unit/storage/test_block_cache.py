"""The block cache: CLOCK eviction within its byte budget, over real tables."""

from __future__ import annotations

import sys

import pytest
from limedb.storage.block_cache import WHOLE_ENTRY_BYTES, BlockCache
from limedb.storage.fs import CrashableMemFS
from limedb.storage.sstable import TableBuilder, TableReader


def table(fs: CrashableMemFS, no: int, cache: BlockCache, blocks: int = 8) -> TableReader:
    """A table of `blocks` data blocks of one entry each (64-byte blocks, 100-byte values)."""
    path = f"/db/{no:06d}.sst"
    b = TableBuilder(fs, path, no, block_bytes=64)
    for i in range(blocks):
        b.add(b"k%03d" % i, (i + 1, b"v" * 100, 0, 0))
    b.finish()
    return TableReader(fs, path, no, cache)


def fs() -> CrashableMemFS:
    f = CrashableMemFS(0)
    f.makedirs("/db")
    return f


def cached(t: TableReader) -> list[int]:
    """The cached blocks of `t` (its last slot is the whole-table dict)."""
    return [i for i, blk in enumerate(t.blocks[:-1]) if blk is not None]


def test_the_cache_stays_within_its_budget_and_keeps_what_fits():
    t = table(fs(), 1, BlockCache(0))
    charge = t.sizes[0]
    cache = BlockCache(3 * charge)
    t = table(fs(), 1, cache)
    for i in range(8):
        assert t.block(i)[b"k%03d" % i][0] == i + 1
        assert cache.used <= cache.capacity
    assert len(cached(t)) == 3
    assert cache.used == 3 * charge
    assert len(cache) == 3


def test_a_block_used_since_the_hand_passed_survives_an_unused_one():
    cache = BlockCache(1 << 20)
    t = table(fs(), 1, cache)
    cache.capacity = 3 * t.sizes[0]
    for i in range(3):
        t.block(i)
    # The hand clears every reference byte (second chances), then evicts block 0, the oldest.
    t.block(3)
    assert cached(t) == [1, 2, 3]
    t.block(1)  # referenced again: block 2 is now the one the hand evicts
    t.block(4)
    assert cached(t) == [1, 3, 4]


def test_hits_are_counted_and_a_miss_loads_and_caches_the_block():
    cache = BlockCache(1 << 20)
    t = table(fs(), 1, cache)
    t.block(0)
    t.block(0)
    t.block(1)
    assert (cache.lookups, cache.misses) == (3, 2)
    assert cache.hit_rate() == pytest.approx(1 / 3)
    assert cache.hit_rate(point_lookups=1) == 0.5


def test_a_block_larger_than_the_whole_cache_is_not_cached():
    cache = BlockCache(10)
    t = table(fs(), 1, cache)
    assert t.block(0)[b"k000"][1] == b"v" * 100
    assert cached(t) == [] and cache.used == 0


def test_cached_blocks_do_not_keep_a_dropped_table_alive():
    """The ring holds slot lists, not tables: a compacted-away table's file mapping is freed."""
    cache = BlockCache(1 << 20)
    t = table(fs(), 1, cache)
    before = sys.getrefcount(t)
    t.block(0)
    assert sys.getrefcount(t) == before  # nothing but this test holds the table
    assert len(cache) == 1  # its block still counts until the hand evicts it


def test_a_table_cached_whole_is_read_through_one_dict_and_evicted_all_at_once():
    cache = BlockCache(1 << 20)
    t = table(fs(), 1, cache, blocks=4)
    u = table(fs(), 2, cache, blocks=4)
    blocks_charge = sum(t.sizes)
    for i in range(3):
        t.block(i)
    assert t.blocks[-1] is None and len(cache) == 3
    t.block(3)  # the last one: the table is cached whole
    whole, answers = t.blocks[-1]
    assert whole == {b"k%03d" % i: (i + 1, b"v" * 100, 0, 0) for i in range(4)}
    assert answers == {b"k%03d" % i: b"v" * 100 for i in range(4)}  # plain records: values
    assert len(cache) == 1
    assert cache.used == blocks_charge + 4 * WHOLE_ENTRY_BYTES
    assert t.get(b"k002")[0] == 3 and t.get(b"k0025") is None
    # Room for the whole table and one block: the next block evicts the table, all of it.
    cache.capacity = cache.used + u.sizes[0]
    t.refs[-1] = 0
    u.block(0)
    u.block(1)
    assert t.blocks == [None] * 5
    assert cached(u) == [0, 1] and cache.used == u.sizes[0] + u.sizes[1]
    assert whole[b"k001"][0] == 2  # a reader still holding the dict reads on, unchanged
    assert t.get(b"k001")[0] == 2  # and the table reads through its blocks again


def test_a_whole_table_answers_a_deleted_or_expiring_key_with_its_record():
    """The dict of values holds a plain record's value, and the record of any other, so that a
    get still sees a tombstone or an expiry time there (and an empty value is a value)."""
    f = fs()
    cache = BlockCache(1 << 20)
    b = TableBuilder(f, "/db/000001.sst", 1, block_bytes=64)
    recs = [(1, b"", 0, 0), (2, b"", 1, 0), (3, b"v", 2, 123), (4, b"", 3, 456), (5, b"w", 0, 0)]
    for i, rec in enumerate(recs):
        b.add(b"k%03d" % i, rec)
    b.finish()
    t = TableReader(f, "/db/000001.sst", 1, cache)
    for i in range(t.nblocks):
        t.block(i)
    whole, answers = t.blocks[-1]
    assert answers == {
        b"k000": b"",
        b"k001": recs[1],
        b"k002": recs[2],
        b"k003": recs[3],
        b"k004": b"w",
    }
    assert whole == {b"k%03d" % i: rec for i, rec in enumerate(recs)}


def test_no_whole_table_dict_without_room_for_it():
    cache = BlockCache(1 << 20)
    t = table(fs(), 1, cache, blocks=4)
    cache.capacity = sum(t.sizes) + 4 * WHOLE_ENTRY_BYTES - 1
    for i in range(4):
        t.block(i)
    assert t.blocks[-1] is None
    assert cached(t) == [0, 1, 2, 3] and len(cache) == 4


def test_a_table_missing_only_a_sixteenth_of_its_blocks_loads_them_and_is_cached_whole():
    """Random reads rarely reach every block; the last few are loaded to cache the table whole."""
    cache = BlockCache(1 << 20)
    t = table(fs(), 1, cache, blocks=32)
    for i in range(29):
        t.block(i)
    assert t.blocks[-1] is None  # 3 of 32 missing: more than 1/16
    t.block(29)
    assert t.blocks[-1] is not None and len(t.blocks[-1][0]) == 32
    assert cached(t) == list(range(32)) and len(cache) == 1
