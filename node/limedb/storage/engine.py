"""The storage engine: a durable LSM tree (WAL + memtable + leveled SSTables) behind one object.

`Engine` wires the parts (LevelDB's `db_impl`) and offers the public API. Writers go through
the write path (write_path.py: stamp, queue the WAL frame, apply to the memtable under one
short mutex) and then wait for durability per the mode (group_commit.py: whoever fsyncs first
covers every writer that arrived meanwhile). Readers never lock: they read the current `View`,
swapped atomically whenever a memtable is frozen, a flush lands, a compaction or purge is
installed (version_set.py: the one "log the edit, then install" operation) or the engine-wide
filter is rebuilt. Background threads: the flusher (flush.py), the compactor (compactor.py) and
the syncer; big flushes and compactions run in worker processes (offload.py). An open recovers
the database first (recovery.py); a full disk is survived without a restart (disk_full.py).

A write is visible to readers as soon as it is applied, which can be before its fsync returns:
a crash can lose a write that someone read but that was never acknowledged, never one that was.
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

from limedb.hlc import HLC

from . import compaction as compaction_mod
from . import offload, recovery
from .batch import WriteBatch
from .bloom import MASK_TABLE, key_hash, probe_mask
from .checkpoint import Checkpoint, Checkpointer
from .compactor import Compactor
from .context import EngineContext
from .engine_filter import EngineFilter
from .errors import DiskFullError, EngineClosedError, StorageError, is_disk_full
from .export import Exported, chunked, cut, mem_entries
from .flush import Flusher
from .fs import FileSystem, RealFS
from .group_commit import LogSyncer
from .ingest import Ingester, IngestResult, as_batch_ops
from .options import EngineOptions
from .purge import Purger, normalize
from .record import TOMBSTONE, Rec, Version, to_version
from .snapshot import Snapshot, View
from .version_set import VersionSet
from .write_path import WritePath, as_key

_time_ns = time.time_ns


class Engine:
    """A single-directory LSM key-value store. Create with `Engine.open`."""

    def __init__(self) -> None:  # use Engine.open
        raise TypeError("use Engine.open(path, options)")

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        options: EngineOptions | None = None,
        *,
        fs: FileSystem | None = None,
        repair: bool = False,
        hlc: HLC | None = None,
    ) -> Engine:
        """Open (creating if needed) the database in `path` and recover it.

        Raises `CorruptionError` naming the file and offset when a WAL frame before the tail,
        a MANIFEST record or an SSTable is damaged; `repair=True` instead drops what cannot be
        read and opens with the rest.
        """
        self = object.__new__(cls)
        self._init(os.fspath(path), options or EngineOptions(), fs or RealFS(), repair, hlc)
        return self

    def _init(
        self, path: str, opts: EngineOptions, fs: FileSystem, repair: bool, hlc: HLC | None
    ) -> None:
        self._dir = path
        self._opts = opts
        self._fs = fs
        self.hlc = hlc or HLC()
        self._ctx = ctx = EngineContext(path, fs, opts)
        self._durability = opts.durability
        self._sync_mode = opts.durability == "sync"
        self._wal_buffer_bytes = opts.wal_buffer_bytes
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._stat_bloom_checks = 0
        self._stat_bloom_fp = 0
        fs.makedirs(path)
        try:
            self._unlock = fs.lock(ctx.path("LOCK"))
        except BlockingIOError as exc:
            raise StorageError(f"{path} is already open (LOCK held): {exc}") from None
        try:
            self._assemble(repair)
        except BaseException:
            self._unlock()
            raise
        if opts.background_threads:
            ctx.threaded = True
            names = ["flush", "compact", "sync"]
            loops = [self._flusher.loop, self._compactor.loop, self._syncer.loop]
            if self._flusher.staging:
                names.append("stage")
                loops.append(self._flusher.stage_loop)
            for name, target in zip(names, loops, strict=True):
                t = threading.Thread(target=target, name=f"limedb-storage-{name}", daemon=True)
                t.start()
                self._threads.append(t)
        elif self._filter.wanted:
            with self._compactor.lock:
                self._compactor.rebuild_filter()
        ctx.compact_wake.set()

    def _assemble(self, repair: bool) -> None:
        """Recover what is on disk, build the parts around it, and finish the open."""
        ctx = self._ctx
        found = recovery.recover(ctx, repair)
        if found.max_ts:
            self.hlc.resume_after(found.max_ts)
        self._versions = VersionSet(ctx, found.state, found.levels, found.manifest)
        self._filter = EngineFilter(ctx, self._versions)
        self._space = ctx.space
        opts = self._opts
        offloading = opts.offload_workers > 0 and opts.background_threads and ctx.real_fs
        self._workers = offload.Offloader(offloading, opts.offload_workers)
        ctx.publish = self._publish_locked
        self._writer = WritePath(
            ctx, self._versions, self.hlc, found.mem, found.seq, self._current_rec
        )
        self._syncer = LogSyncer(ctx, self._writer, self._finish_open)
        self._flusher = Flusher(ctx, self._versions, self._writer, self._filter, self._workers)
        self._compactor = Compactor(ctx, self._versions, self._filter, self._workers)
        self._purger = Purger(ctx, self._versions, self._syncer, self._flusher, self._compactor)
        self._checkpointer = Checkpointer(ctx, self._versions, self._flusher, self.hlc.now)
        self._ingester = Ingester(
            ctx,
            self._versions,
            self._writer,
            self._flusher,
            self._filter,
            lambda: self._view,
            lambda items: self.write(WriteBatch(as_batch_ops(items))),
            self._compactor.lock,
            self._workers,
        )
        with ctx.mutex:
            self._publish_locked()
        self._repair_flush = found.needs_flush
        self._repair_compact = found.needs_compaction
        try:
            self._finish_open()
        except (OSError, DiskFullError) as exc:
            if not is_disk_full(exc):
                raise
            # Read-only until there is room: what is on disk is served, writes get DiskFullError.
            with ctx.mutex:
                self._space.opened_full = True
                self._space.enter_locked(f"opened on a full disk ({exc})", exc)

    def _finish_open(self) -> None:
        """Write what an open needs before it accepts writes: a fresh MANIFEST (a snapshot), a
        fresh WAL holding the frames not yet durable, and a repair's flush. Each step is
        skipped once done, so that a full disk can interrupt it and a retry carry on."""
        self._versions.open_manifest()
        if self._writer.wal.file is None:
            self._syncer.open_wal(self._versions.new_file_no())
        if self._repair_flush:
            self._flusher.flush_now()
            self._repair_flush = False
        if self._repair_compact:
            self._compactor.full()
            self._repair_compact = False

    # ------------------------------------------------------------------ reads

    def _publish_locked(self) -> None:
        w = self._writer
        self._view = View(w.mem, w.imm, self._versions.levels, self._filter.current)

    def get(self, key: bytes) -> bytes | None:
        """The live value of `key`, or None if absent, deleted or expired."""
        # The hot read: one Python call. The memtables (bound dict.get of each), the engine-wide
        # filter, then the tables newest first, with `_lookup_tables`'s walk inlined; a table
        # cached whole answers from its dict of values (block_cache.py), which holds a plain
        # record's value itself: a plain value found there is returned without reading a record.
        v = self._view
        rec = v.mem_get(key)
        if rec is None:
            imm_get = v.imm_get
            if imm_get is None or (rec := imm_get(key)) is None:
                # Inlined probe of the engine-wide filter: most missing keys stop here
                # (bloom.probe_mask; h < 2**64, so g >> 24 needs no mask). The first of the
                # mask's three parts alone turns away ~96% of them at 32 bits per key, and
                # skips two thirds of the 64-bit int arithmetic (~20% of a miss's cost).
                h = key_hash(key)
                g = h >> 28
                t = MASK_TABLE
                w = v.gwords[h & v.gmask]
                mask = t[g & 4095]
                if w & mask != mask:
                    return None
                mask |= t[(g >> 12) & 4095] | t[g >> 24]
                if w & mask != mask:
                    return None
                for t in v.l0:
                    if t.fwords[h & t.fmask] & mask == mask and t.smallest <= key <= t.largest:
                        self._stat_bloom_checks += 1
                        whole = t.blocks[-1]
                        if whole is not None:
                            t.refs[-1] = 1
                            rec = whole[1].get(key)
                            if rec is not None:
                                if type(rec) is bytes:
                                    return rec
                                break
                        else:
                            rec = t.block_get(key)
                            if rec is not None:
                                break
                        self._stat_bloom_fp += 1
                else:
                    for files, bounds in v.levels:
                        i = bisect_left(bounds, key)
                        if i < len(files):
                            t = files[i]
                            if t.fwords[h & t.fmask] & mask == mask and key >= t.smallest:
                                self._stat_bloom_checks += 1
                                whole = t.blocks[-1]
                                if whole is not None:
                                    t.refs[-1] = 1
                                    rec = whole[1].get(key)
                                    if rec is not None:
                                        if type(rec) is bytes:
                                            return rec
                                        break
                                else:
                                    rec = t.block_get(key)
                                    if rec is not None:
                                        break
                                self._stat_bloom_fp += 1
                    else:
                        return None
        if not rec[2]:
            return rec[1]
        if rec[2] & TOMBSTONE or rec[3] <= _time_ns() // 1_000_000:
            return None
        return rec[1]

    def _lookup_tables(self, v: View, key: bytes, h: int, mask: int) -> Rec | None:
        """The newest record of `key` in the tables of `v` (the same walk as `get`'s, which
        inlines it), for the readers that want the version (`get_record`, `get_version`)."""
        for t in v.l0:
            if t.fwords[h & t.fmask] & mask == mask and t.smallest <= key <= t.largest:
                self._stat_bloom_checks += 1
                whole = t.blocks[-1]  # every entry of the table, when all of it is cached
                if whole is not None:
                    t.refs[-1] = 1
                    rec = whole[0].get(key)
                else:
                    rec = t.block_get(key)
                if rec is not None:
                    return rec
                self._stat_bloom_fp += 1
        for files, bounds in v.levels:
            i = bisect_left(bounds, key)
            if i < len(files):
                t = files[i]
                if t.fwords[h & t.fmask] & mask == mask and key >= t.smallest:
                    self._stat_bloom_checks += 1
                    whole = t.blocks[-1]
                    if whole is not None:
                        t.refs[-1] = 1
                        rec = whole[0].get(key)
                    else:
                        rec = t.block_get(key)
                    if rec is not None:
                        return rec
                    self._stat_bloom_fp += 1
        return None

    def _current_rec(self, key: bytes) -> Rec | None:
        v = self._view
        rec = v.mem.data.get(key)
        if rec is None and v.imm is not None:
            rec = v.imm.data.get(key)
        if rec is None:
            h = key_hash(key)
            mask = probe_mask(h)
            if v.gwords[h & v.gmask] & mask == mask:
                rec = self._lookup_tables(v, key, h, mask)
        return rec

    def get_record(self, key: bytes) -> Rec | None:
        """`get_version` as the engine's internal tuple (ts, value, flags, expires_at_ms or 0;
        limedb.storage.record), without building a Version: for a caller on the hot path
        that re-encodes it at once (a replica answering a read)."""
        return self._current_rec(as_key(key))

    def get_version(self, key: bytes) -> Version | None:
        """The newest version of `key`, tombstones and expired values included."""
        rec = self._current_rec(as_key(key))
        return None if rec is None else to_version(rec)

    def snapshot(self) -> Snapshot:
        """A consistent read view (context manager) with get, get_version, scan, iter_range."""
        self._ctx.check_open()
        with self._ctx.mutex:
            frozen = self._writer.frozen_mem_locked()
            imm = self._writer.imm
            levels = [list(files) for files in self._versions.levels]
            gfilter = self._filter.current
        return Snapshot(View(frozen, self._writer.frozen_imm(imm), levels, gfilter))

    def scan(
        self, start: bytes | None = None, end: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        """Live (key, value) pairs with start <= key < end, in key order, at most `limit`."""
        return self.snapshot().scan(start, end, limit)

    def iter_range(
        self,
        start: bytes | None = None,
        end: bytes | None = None,
        *,
        include_tombstones: bool = False,
    ) -> Iterator[tuple[bytes, Version]]:
        """(key, newest Version) in key order over a snapshot taken now."""
        return self.snapshot().iter_range(start, end, include_tombstones=include_tombstones)

    # ------------------------------------------------------------------ writes

    def put(
        self, key: bytes, value: bytes, *, ts: int | None = None, expires_at_ms: int | None = None
    ) -> bool:
        """Store a value; False when an explicit `ts` loses to the stored version."""
        if ts is not None:
            return self.write(WriteBatch().put(key, value, ts, expires_at_ms))[0]
        if self._space.degraded and not self._ctx.threaded:
            self._syncer.retry_space()
        seq = self._writer.put_stamped(key, value, expires_at_ms)
        # `LogSyncer.settle`, inlined: this is the hot path.
        if self._sync_mode:
            if self._syncer.synced_seq < seq:
                self._syncer.wait_durable(seq)
        elif self._writer.wal.pending_bytes >= self._wal_buffer_bytes:
            self._syncer.write_out()
        return True

    def delete(self, key: bytes, *, ts: int | None = None) -> bool:
        """Write a tombstone; False when an explicit `ts` loses to the stored version."""
        return self.write(WriteBatch().delete(key, ts))[0]

    def write(self, batch: WriteBatch) -> list[bool]:
        """Apply a batch atomically (one WAL record); per op, whether it was applied."""
        results, seq = self._apply_batch(batch)
        self._syncer.settle(seq)
        return results

    def _apply_batch(self, batch: WriteBatch) -> tuple[list[bool], int]:
        if self._space.degraded and not self._ctx.threaded:
            self._syncer.retry_space()
        return self._writer.apply_batch(batch)

    async def write_async(self, batch: WriteBatch) -> list[bool]:
        """`write` for the event loop: returns once durable, never blocking the loop on fsync."""
        results, seq = self._apply_batch(batch)
        await self._syncer.durable_async(seq)
        return results

    def write_then(
        self,
        batch: WriteBatch,
        done: Callable[[list[bool], BaseException | None], None],
    ) -> None:
        """`write_async` without a coroutine: the batch is applied now, and `done(results, None)`
        is called once it is durable (at once when there is nothing to wait for), or
        `done(results, error)` when it could not be made durable. Raises at once what
        `write_async` would (engine closed, disk full); `done` is not called then."""
        results, seq = self._apply_batch(batch)
        if not self._syncer.durable_then(seq, partial(done, results)):
            done(results, None)

    async def put_async(
        self, key: bytes, value: bytes, *, ts: int | None = None, expires_at_ms: int | None = None
    ) -> bool:
        if ts is not None:
            return (await self.write_async(WriteBatch().put(key, value, ts, expires_at_ms)))[0]
        if self._space.degraded and not self._ctx.threaded:
            self._syncer.retry_space()
        await self._syncer.durable_async(self._writer.put_stamped(key, value, expires_at_ms))
        return True

    async def delete_async(self, key: bytes, *, ts: int | None = None) -> bool:
        return (await self.write_async(WriteBatch().delete(key, ts)))[0]

    # ------------------------------------------------------------------ durability, tables

    def sync(self) -> None:
        """Write out and fsync the WAL now: every write made so far becomes durable."""
        self._ctx.check_open()
        self._syncer.sync()

    def flush(self) -> None:
        """Persist the memtable as an L0 table and wait until it is installed."""
        self._ctx.check_open()
        self._syncer.write_out()
        self._flusher.flush_now()

    def compact(self) -> None:
        """Flush, then merge every table into the deepest level; returns when installed.

        Tombstones and expired values older than the grace period are dropped.
        """
        self.flush()
        self._compactor.full()

    def _compact_pending(self, *, rate: int | None = None) -> int:
        """Run leveled compactions until none is due (tests without background threads)."""
        return self._compactor.pending(rate=rate)

    def purge_range(self, start: bytes, end: bytes | None) -> int:
        """Physically remove every version (values and tombstones) with start <= key < end
        (end None: no upper bound) that was written before this call, whatever its timestamp;
        later writes are kept. Durable when it returns; returns the tables rewritten."""
        return self.purge_ranges([(as_key(start), None if end is None else as_key(end))])

    def purge_ranges(self, ranges: list[tuple[bytes, bytes | None]]) -> int:
        """`purge_range` for many ranges at once: one cut and one rewrite of each table."""
        self._ctx.check_open()
        return self._purger.purge(ranges)

    @property
    def purged_bytes(self) -> int:
        """Bytes of tables the purges rewrote since the engine opened (their pace's measure)."""
        return self._purger.purged_bytes

    def checkpoint(self, dest: str | os.PathLike, *, link: bool = True) -> Checkpoint:
        """A consistent point-in-time copy of the database in `dest` (new or empty), taken
        without stopping writes: every write acknowledged before the call is in it. Tables are
        hard-linked where the filesystem allows (`link=False`: always copied); `dest` is a
        valid data directory (`Engine.open` it) with a `CHECKPOINT.json` listing every table
        with its size and SHA-256 (storage/checkpoint.py, docs/formats.md)."""
        self._ctx.check_open()
        return self._checkpointer.take(os.fspath(dest), link=link)

    def ingest(self, paths: list[str | os.PathLike]) -> IngestResult:
        """Make the SSTables at `paths` (written elsewhere, e.g. a range streamed from a peer;
        their key ranges must not overlap) part of the database, with one MANIFEST edit.

        Every block's checksum is verified first. Last-writer-wins holds as for writes: a
        version older than (or equal to) the stored one is left out, a newer one wins
        (storage/ingest.py says how). The files are hard-linked into the data directory where
        possible (else copied); the caller may delete them afterwards. Durable on return."""
        self._ctx.check_open()
        return self._ingester.ingest([os.fspath(p) for p in paths])

    def export_ranges(
        self, ranges: list[tuple[bytes, bytes | None]], path: str | os.PathLike
    ) -> Exported:
        """Write the newest version of every key in the [start, end) `ranges` (tombstones and
        expiring values included), as of this call, into one new SSTable at `path` (fsynced;
        no file when the ranges hold nothing), with its CRC32C: what `ingest` takes on another
        node. The cut runs in a low-priority worker process when the tables are big
        (storage/export.py)."""
        ctx, writer, versions = self._ctx, self._writer, self._versions
        ctx.check_open()
        ranges = normalize([(as_key(s), None if e is None else as_key(e)) for s, e in ranges])
        with ctx.mutex:
            frozen = writer.frozen_mem_locked()
            imm = writer.imm
            levels = [list(files) for files in versions.levels]
            pinned = versions.pin_locked(levels)
        try:
            mems = [m for m in (writer.frozen_imm(imm), frozen) if m is not None]
            entries = mem_entries(mems, ranges)
            tables = [(lvl, t.file_no) for lvl, files in enumerate(levels) for t in files]
            out = os.fspath(path)
            big = sum(t.size for files in levels for t in files) >= offload.OFFLOAD_MIN_BYTES
            pool = self._workers.get(background=True) if big else None
            if pool is not None:
                try:
                    job = ("export_ranges", ctx.dir, tables, ranges, out, self._opts)
                    return pool.call(*job, stream=chunked(entries))
                except (offload.WorkerError, OSError) as exc:
                    if ctx.closing:
                        raise EngineClosedError("export abandoned: the engine is closing") from exc
                    self._workers.failed("export", exc)
            return cut(ctx.fs, ctx.dir, tables, ranges, out, self._opts, [list(entries.items())])
        finally:
            versions.unpin(pinned)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Write out and fsync the WAL, stop the background threads. Idempotent."""
        if self._closed:
            return
        ctx = self._ctx
        with ctx.mutex:
            ctx.closing = True
            ctx.cv.notify_all()
        ctx.compact_wake.set()
        ctx.sync_wake.set()
        self._workers.close()
        for t in self._threads:
            t.join()
        self._threads = []
        ctx.threaded = False
        try:
            with self._syncer.lock:
                if ctx.error is None:
                    self._syncer.sync_locked(fsync=self._durability != "none")
        except StorageError:
            pass
        finally:
            self._closed = True
            self._syncer.close(EngineClosedError("closed"))
            self._versions.close()
            self._unlock()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ stats

    @property
    def _pool(self) -> offload.WorkerPool | None:
        """The worker pool, once started (tests and benchmarks look at its processes)."""
        return self._workers.pool

    @property
    def _offload(self) -> bool:
        return self._workers.enabled

    def approx_key_count(self) -> int:
        v = self._view
        n = len(v.mem.data) + (len(v.imm.data) if v.imm is not None else 0)
        return n + sum(t.entries for files in v.all_levels for t in files)

    def disk_status(self) -> dict[str, Any]:
        """Whether writes are refused for lack of space, since when and why (for health)."""
        return self._space.status()

    def stats(self) -> dict[str, Any]:
        """JSON-able counters: levels, memtable, bloom filter, block cache, compaction."""
        v = self._view
        levels = [
            {
                "level": i,
                "files": len(files),
                "bytes": sum(t.size for t in files),
                "entries": sum(t.entries for t in files),
            }
            for i, files in enumerate(v.all_levels)
        ]
        checks = self._stat_bloom_checks
        cache = self._ctx.cache
        return {
            "levels": levels,
            "memtable_bytes": v.mem.size,
            "memtable_entries": len(v.mem.data),
            "immutable_memtable_bytes": v.imm.size if v.imm is not None else 0,
            "bloom_false_positive_rate": self._stat_bloom_fp / checks if checks else 0.0,
            "bloom_checks": checks,
            "global_filter_ready": v.gfilter.ready,
            "global_filter_bytes": len(v.gfilter.words) * 8,
            "block_cache_hit_rate": cache.hit_rate(checks),
            "block_cache_bytes": cache.used,
            "compaction_backlog_bytes": compaction_mod.backlog_bytes(v.all_levels, self._opts),
            "compactions": self._compactor.compactions,
            "compacted_bytes": self._compactor.compacted_bytes,
            "purged_bytes": self._purger.purged_bytes,
            "flushes": self._flusher.flushes,
            "staged_flushes": self._flusher.staged_flushes,
            "keys_approx": self.approx_key_count(),
            "last_seq": self._writer.seq,
            "synced_seq": self._syncer.synced_seq,
            "durability": self._durability,
            **self.disk_status(),
        }

    @property
    def path(self) -> str:
        return self._dir
