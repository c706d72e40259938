"""Every tunable of the storage engine, with its default and why it was chosen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

MiB = 1024 * 1024

Durability = Literal["sync", "periodic", "none"]


@dataclass
class EngineOptions:
    """Options for `Engine.open`.

    durability: "sync" acknowledges a write only after fdatasync of the WAL (concurrent writers
        share one fsync: group commit); "periodic" fsyncs every `periodic_ms` so a crash loses at
        most the writes of the last window; "none" never fsyncs (benchmarks only).
    memtable_bytes: approximate bytes (keys + values + per-entry overhead) before the memtable is
        frozen and flushed to an L0 SSTable by the background flush thread.
    block_cache_bytes: budget of the (CLOCK) cache of decoded data blocks, charged by the on-disk
        block size (a decoded block, a dict of Python objects, takes about 2-3x that in memory);
        the default keeps a 1M-key / 100-byte-value dataset fully cached.
    block_bytes: target size of one SSTable data block.
    bloom_bits_per_key: bloom filter budget; the filter is rounded up to a power of two words.
    target_file_bytes: compaction output files are cut at this size.
    l0_compaction_trigger: number of L0 files that starts an L0 -> L1 compaction.
    l0_stop_writes_trigger: number of L0 files at which writers wait for compaction.
    level_base_bytes: size limit of L1; each deeper level may be 10x larger.
    max_levels: number of levels, L0 included.
    compaction_rate_bytes_per_s: cap on compaction output bandwidth (0 = unlimited) so the
        background thread leaves disk and, in Python, the GIL to foreground requests.
    tombstone_grace_s: tombstones and expired values are dropped (at the bottom level only) once
        they are older than this. It must exceed the longest time a replica can miss a delete and
        still be repaired (hinted handoff window + anti-entropy period); 3 hours by default.
    wal_buffer_bytes: in "none"/"periodic" mode the WAL buffer is written to the OS once it
        holds this much.
    offload_workers: worker processes (started at the first flush) that build flushed tables
        from the frozen memtable's entries and run compactions, so that work runs on another
        core instead of taking the GIL from requests; 0 keeps everything in background threads
        of this process. Only used with the real filesystem.
    background_threads: False runs no flush, compaction or syncer thread (deterministic tests);
        `flush()`, `compact()` and `sync()` then do the work when called.
    """

    durability: Durability = "sync"
    periodic_ms: int = 100
    memtable_bytes: int = 16 * MiB
    block_cache_bytes: int = 256 * MiB
    block_bytes: int = 4096
    bloom_bits_per_key: int = 10
    target_file_bytes: int = 8 * MiB
    l0_compaction_trigger: int = 4
    l0_stop_writes_trigger: int = 36
    level_base_bytes: int = 32 * MiB
    max_levels: int = 7
    compaction_rate_bytes_per_s: int = 32 * MiB
    tombstone_grace_s: float = 3 * 3600.0
    wal_buffer_bytes: int = 1 * MiB
    offload_workers: int = 2
    background_threads: bool = True

    def __post_init__(self) -> None:
        if self.durability not in ("sync", "periodic", "none"):
            raise ValueError(f"durability must be sync, periodic or none, not {self.durability!r}")
        if self.periodic_ms <= 0:
            raise ValueError("periodic_ms must be positive")
        if self.memtable_bytes < 1024:
            raise ValueError("memtable_bytes must be at least 1024")
        if self.max_levels < 2:
            raise ValueError("max_levels must be at least 2")
        if self.l0_compaction_trigger < 1:
            raise ValueError("l0_compaction_trigger must be at least 1")
        if self.l0_stop_writes_trigger <= self.l0_compaction_trigger:
            raise ValueError("l0_stop_writes_trigger must exceed l0_compaction_trigger")
