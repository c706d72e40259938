"""The block cache: CLOCK eviction within its byte budget, over real tables."""

from __future__ import annotations

import sys

import pytest
from limedb.storage.block_cache import BlockCache
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
    return [i for i, blk in enumerate(t.blocks) if blk is not None]


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
