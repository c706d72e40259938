"""The storage engine benchmark's anchors: rocksdict and plyvel opened with LimeDB's budgets.

An anchor run with its library's small defaults measures those defaults, not our engine. Each
anchor here gets, read from `EngineOptions()` so it follows any change of LimeDB's defaults: the
same memtable (write buffer) size, an LRU cache of data blocks of the same size, a bloom filter
with the same bits per key, the same data block size and table file size, no compression (LimeDB
does not compress), raw bytes keys and values, the same level shape (L1 budget, fan-out 10,
L0 triggers) and the same durability: WAL on, written to the OS, never fsynced in the
`durability="none"` rounds; fsync per write (batch) where LimeDB syncs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from limedb.storage import EngineOptions

MiB = 1024 * 1024


@dataclass
class Store:
    """One opened store: its calls and a one-line statement of its configuration."""

    name: str
    config: str
    put: Callable[[bytes, bytes], object]
    get: Callable[[bytes], bytes | None]
    drain: Callable[[], None] | None
    close: Callable[[], None]


def mib(n: int) -> str:
    return f"{n / MiB:g} MiB"


def limedb_config(o: EngineOptions) -> str:
    return (
        f"durability {o.durability} (WAL buffered up to {mib(o.wal_buffer_bytes)} in the process "
        f"before write(): a process crash can lose that much, unlike RocksDB and LevelDB, which "
        f"write every batch to the OS), memtable {mib(o.memtable_bytes)}, block cache "
        f"{mib(o.block_cache_bytes)}, bloom {o.bloom_bits_per_key} bits/key (+ engine-wide filter), "
        f"blocks {o.block_bytes} B, tables {mib(o.target_file_bytes)}, L1 "
        f"{mib(o.level_base_bytes)} x10/level, L0 trigger {o.l0_compaction_trigger} / stop "
        f"{o.l0_stop_writes_trigger}, no compression, compaction <= "
        f"{mib(o.compaction_rate_bytes_per_s)}/s, {o.offload_workers} worker processes"
    )


def open_rocksdict(path: str, o: EngineOptions, *, sync: bool = False) -> Store:
    """rocksdict with LimeDB's budgets; `sync` fsyncs the WAL on every write call."""
    import rocksdict as rd

    table = rd.BlockBasedOptions()
    table.set_bloom_filter(o.bloom_bits_per_key, False)  # full (not block-based) filter
    table.set_block_cache(rd.Cache(o.block_cache_bytes))
    table.set_block_size(o.block_bytes)
    opts = rd.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_block_based_table_factory(table)
    opts.set_write_buffer_size(o.memtable_bytes)
    opts.set_max_write_buffer_number(2)  # one memtable being written, one being flushed
    opts.set_compression_type(rd.DBCompressionType.none())
    opts.set_target_file_size_base(o.target_file_bytes)
    opts.set_max_bytes_for_level_base(o.level_base_bytes)
    opts.set_max_bytes_for_level_multiplier(10.0)
    opts.set_num_levels(o.max_levels)
    opts.set_level_zero_file_num_compaction_trigger(o.l0_compaction_trigger)
    opts.set_level_zero_slowdown_writes_trigger(o.l0_stop_writes_trigger)
    opts.set_level_zero_stop_writes_trigger(o.l0_stop_writes_trigger)
    opts.set_max_background_jobs(o.offload_workers + 1)  # LimeDB: flush thread + workers
    db = rd.Rdict(path, opts)
    wo = rd.WriteOptions()
    wo.sync = sync
    db.set_write_options(wo)
    config = (
        f"Options(raw_mode=True), WAL on (each write handed to the OS; rocksdict does not "
        f"expose manual_wal_flush), sync={sync}, write buffer {mib(o.memtable_bytes)} x2, "
        f"block cache LRU {mib(o.block_cache_bytes)}, full bloom filter "
        f"{o.bloom_bits_per_key} bits/key, blocks {o.block_bytes} B, target file "
        f"{mib(o.target_file_bytes)}, L1 {mib(o.level_base_bytes)} x10/level, "
        f"{o.max_levels} levels, L0 trigger {o.l0_compaction_trigger} / slowdown=stop "
        f"{o.l0_stop_writes_trigger}, no compression, no rate limiter (RocksDB's would also "
        f"throttle flushes), {o.offload_workers + 1} background jobs"
    )
    return Store("rocksdict", config, db.put, db.get, lambda: rocksdb_drain(db), db.close)


def open_rocksdict_defaults(path: str) -> Store:
    """rocksdict as `Rdict(path)` opens it: the extra, labelled line, not the anchor."""
    import rocksdict as rd

    db = rd.Rdict(path)
    config = (
        "Rdict(path) defaults: pickled keys and values, no bloom filter, RocksDB's default "
        "block cache, compression on, 64 MiB write buffer"
    )
    return Store(
        "rocksdict-defaults", config, db.__setitem__, db.get, lambda: rocksdb_drain(db), db.close
    )


def rocksdb_drain(db) -> None:  # noqa: ANN001
    """Flush the memtable and wait until RocksDB has no flush or compaction left to run."""
    db.flush(True)
    props = (
        "rocksdb.mem-table-flush-pending",
        "rocksdb.num-running-flushes",
        "rocksdb.compaction-pending",
        "rocksdb.num-running-compactions",
    )
    while any(db.property_int_value(p) for p in props):
        time.sleep(0.05)


def open_plyvel(path: str, o: EngineOptions) -> Store:
    """plyvel (LevelDB) with LimeDB's budgets; LevelDB's level shape is fixed by its build."""
    import plyvel

    db = plyvel.DB(
        path,
        create_if_missing=True,
        write_buffer_size=o.memtable_bytes,
        lru_cache_size=o.block_cache_bytes,
        bloom_filter_bits=o.bloom_bits_per_key,
        block_size=o.block_bytes,
        max_file_size=o.target_file_bytes,
        compression=None,
    )
    config = (
        f"WAL on, sync=False, write buffer {mib(o.memtable_bytes)}, block cache LRU "
        f"{mib(o.block_cache_bytes)}, bloom filter {o.bloom_bits_per_key} bits/key, blocks "
        f"{o.block_bytes} B, max file {mib(o.target_file_bytes)}, no compression (LevelDB's "
        "L1 10 MiB x10, L0 trigger 4 / stop 12 and one compaction thread are compiled in; "
        "no drain: LevelDB offers no way to wait for its compactions)"
    )
    return Store("plyvel", config, db.put, db.get, None, db.close)
