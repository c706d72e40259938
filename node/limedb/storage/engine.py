"""The storage engine: a durable LSM tree (WAL + memtable + leveled SSTables) behind one object.

Writers append a framed batch to the WAL buffer and apply it to the memtable under one short
lock; durability is then awaited per the mode (group commit: whoever fsyncs first covers every
writer that arrived meanwhile). Readers never lock: they read the current `View`, swapped
atomically whenever a memtable is frozen, a flush lands or a compaction is installed.
Background threads: the flusher (memtable -> L0), the compactor, and the syncer (periodic
fsync and the asyncio group commit); big flushes and compactions run in worker processes.

A write is visible to readers as soon as it is applied, which can be before its fsync returns:
a crash can lose a write that someone read but that was never acknowledged, never one that was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import posixpath
import threading
import time
from array import array
from bisect import bisect_left
from collections.abc import Iterator
from itertools import islice
from typing import Any

from limedb.hlc import HLC

from . import compaction as compaction_mod
from . import offload
from . import purge as purge_mod
from .batch import WriteBatch
from .block_cache import BlockCache
from .bloom import MASK_TABLE, GlobalFilter, key_hash, probe_mask
from .errors import CorruptionError, DiskFullError, EngineClosedError, StorageError, is_disk_full
from .fs import FileSystem, RealFS
from .manifest import ManifestState, VersionEdit, load, read_current
from .memtable import Memtable
from .options import EngineOptions
from .record import EXPIRES, TOMBSTONE, Rec, Version, make_rec, newer, to_version
from .snapshot import Snapshot, View
from .sstable import MAX_KEY_BYTES, TableBuilder, TableMeta, TableReader, table_name
from .version_set import VersionSet
from .wal import WalWriter, encode_batch, encode_items, replay

log = logging.getLogger("limedb.storage")

_STAMP_BLOCK = 64
_OFFLOAD_MIN_BYTES = offload.OFFLOAD_MIN_BYTES
_OFFLOAD_MIN_KEYS = 50_000
# Memtable entries per pickled chunk sent to a flush worker: about 1 ms of GIL each.
_FLUSH_CHUNK = 2048
_time_ns = time.time_ns
# While the disk is full: how often the syncer tries to write the WAL again, and the longest
# pause between attempts of a flush or compaction that found no room.
_SPACE_RETRY_S = 0.1
_MAX_BACKOFF_S = 2.0


def _log_name(file_no: int) -> str:
    return f"{file_no:06d}.log"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _as_key(key: Any) -> bytes:
    if type(key) is not bytes:
        if isinstance(key, str):
            raise TypeError("keys are bytes, not str")
        key = bytes(key)
    if len(key) > MAX_KEY_BYTES:
        raise ValueError(f"key of {len(key)} bytes exceeds the {MAX_KEY_BYTES}-byte limit")
    return key


def _as_value(value: Any) -> bytes:
    if type(value) is not bytes:
        if isinstance(value, str):
            raise TypeError("values are bytes, not str")
        value = bytes(value)
    return value


def _resolve(futures: list[asyncio.Future], exc: BaseException | None) -> None:
    for fut in futures:
        if not fut.done():
            if exc is None:
                fut.set_result(None)
            else:
                fut.set_exception(exc)


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
        self._durability = opts.durability
        self._sync_mode = opts.durability == "sync"
        self._wal_buffer_bytes = opts.wal_buffer_bytes
        self._stamp_ms = -1
        self._stamp_next = 0
        self._stamp_end = 0
        self._mem_limit = opts.memtable_bytes
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._sync_lock = threading.Lock()  # taken before _lock, never after
        self._imm_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._compaction_lock = threading.Lock()
        self._compact_event = threading.Event()
        self._sync_wake = threading.Event()
        self._closing = False
        self._closed = False
        self._error: BaseException | None = None
        self._async_waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._retired: list[WalWriter] = []
        self._pointers: dict[int, bytes] = {}
        self._cache = BlockCache(opts.block_cache_bytes)
        self._stat_bloom_checks = 0
        self._stat_bloom_fp = 0
        self._stat_flushes = 0
        self._stat_compactions = 0
        self._stat_compacted_bytes = 0
        self._threads: list[threading.Thread] = []
        self._pool: offload.WorkerPool | None = None
        # Disk full (docs/operations.md "Disk full"): while `_full` is set, writes are refused
        # and the syncer retries: cut the `_broken` WAL files back to their last good frame,
        # finish an interrupted open, write `_redo` (the frames not yet durable) to a fresh WAL.
        self._full: DiskFullError | None = None
        self._full_since = 0.0
        self._redo: list[bytes] = []
        self._broken: list[WalWriter] = []
        self._flush_blocked: BaseException | None = None
        self._compaction_blocked: BaseException | None = None
        self._degraded = False  # any of the three above: the write path looks closer
        self._opened_full = False
        self._repair_flush = False
        self._repair_compact = False
        self._next_space_check = 0.0
        self._stat_disk_full_events = 0
        self._stat_disk_full_refusals = 0
        self._offload = (
            opts.offload_workers > 0 and isinstance(fs, RealFS) and opts.background_threads
        )
        self._recover(repair)
        if opts.background_threads:
            for name, target in (
                ("flush", self._flush_loop),
                ("compact", self._compact_loop),
                ("sync", self._sync_loop),
            ):
                t = threading.Thread(target=target, name=f"limedb-storage-{name}", daemon=True)
                t.start()
                self._threads.append(t)
        elif self._gfilter_wanted:
            with self._compaction_lock:
                self._rebuild_global()
        self._compact_event.set()

    def _path(self, name: str) -> str:
        return posixpath.join(self._dir, name)

    def _recover(self, repair: bool) -> None:
        fs = self._fs
        fs.makedirs(self._dir)
        try:
            self._unlock = fs.lock(self._path("LOCK"))
        except BlockingIOError as exc:
            raise StorageError(f"{self._dir} is already open (LOCK held): {exc}") from None
        try:
            self._recover_locked(repair)
        except BaseException:
            self._unlock()
            raise

    def _recover_locked(self, repair: bool) -> None:
        fs, opts = self._fs, self._opts
        names = fs.listdir(self._dir)
        current = read_current(fs, self._dir)
        state: ManifestState | None = None
        rebuilt = False
        if current is not None:
            try:
                # Strict even when repairing: a damaged MANIFEST is rebuilt from the tables
                # rather than trusted up to the damage (which could forget live tables).
                state = load(fs, self._dir, current, opts.max_levels, repair=False)
            except CorruptionError:
                if not repair:
                    raise
                log.warning("MANIFEST unreadable; rebuilding the file set from the tables")
        elif not repair and any(n.endswith(".sst") or n.startswith("MANIFEST-") for n in names):
            raise CorruptionError(self._path("CURRENT"), None, "missing, but tables exist")
        if state is None:
            state = ManifestState(opts.max_levels)
            if any(n.endswith(".sst") for n in names):
                rebuilt = True
                self._rebuild_state(state, names)

        levels: list[list[TableReader]] = [[] for _ in range(opts.max_levels)]
        dropped: list[tuple[int, int]] = []
        for lvl, files in enumerate(state.levels):
            for no in sorted(files):
                p = self._path(table_name(no))
                try:
                    if not fs.exists(p):
                        raise CorruptionError(p, None, "table listed in the MANIFEST is missing")
                    levels[lvl].append(TableReader(fs, p, no, self._cache))
                except CorruptionError:
                    if not repair:
                        raise
                    log.warning("dropping unreadable table %s", p)
                    dropped.append((lvl, no))
        for lvl, no in dropped:
            state.levels[lvl].pop(no, None)
        levels[0].sort(key=lambda t: t.file_no, reverse=True)
        for lvl in range(1, len(levels)):
            levels[lvl].sort(key=lambda t: t.smallest)
        max_ts = max((t.max_ts for files in levels for t in files), default=0)

        max_no = state.next_file
        for n in names:
            stem = n.split(".")[0].removeprefix("MANIFEST-")
            if stem.isdigit():
                max_no = max(max_no, int(stem) + 1)
        state.next_file = max_no

        # Replay every WAL the MANIFEST still needs, oldest first.
        mem = Memtable()
        seq = state.last_seq
        logs = sorted(int(n[:-4]) for n in names if n.endswith(".log") and n[:-4].isdigit())
        live_logs = [no for no in logs if no >= state.log_number]
        torn_in: str | None = None
        wal_damaged = False
        for no in live_logs:
            p = self._path(_log_name(no))
            batches, scan = replay(fs.read_file(p), p, repair=repair)
            if batches and torn_in is not None:
                if not repair:
                    raise CorruptionError(
                        torn_in, None, "log ends early but a later log has records"
                    )
                wal_damaged = True
            for bseq, ops in batches:
                seq = max(seq, bseq)
                for key, rec in ops:
                    old = mem.data.get(key)
                    if old is None or newer(rec, old):
                        mem.apply(key, rec)
                    if rec[0] > max_ts:
                        max_ts = rec[0]
            if scan.torn:
                torn_in = p
                # Flushed below, so the torn log is never replayed again ahead of newer logs.
                wal_damaged = True
        self._seq = seq
        self._synced_seq = seq
        if max_ts:
            self.hlc.resume_after(max_ts)

        state.last_seq = seq
        self._vset = VersionSet(
            fs, self._dir, opts, self._cache, self._lock, state, levels, current
        )
        self._mem = mem
        self._imm: Memtable | None = None
        self._imm_cutoff = 0
        self._imm_seq = 0
        # Built from the tables' keys by the compaction thread (or below, without threads);
        # until then it lets every key through to the per-table filters.
        has_tables = any(levels)
        self._gfilter = (
            GlobalFilter.passthrough()
            if has_tables
            else GlobalFilter.from_hashes([], 0, GlobalFilter.size_for(0))
        )
        self._gfilter_wanted = has_tables
        self._gfilter_pending: list[tuple[array, int]] | None = None
        self._publish_locked()

        # Garbage goes first: on a full disk its room is what the new MANIFEST and WAL need.
        keep = {table_name(no) for files in state.levels for no in files}
        keep.update(_log_name(no) for no in live_logs)
        if current is not None:
            keep.add(current)
        for n in names:
            if n in ("CURRENT", "LOCK") or n in keep:
                continue
            if n.endswith((".sst", ".log", ".tmp")) or n.startswith("MANIFEST-"):
                try:
                    fs.remove(self._path(n))
                except FileNotFoundError:
                    pass
        # Make a repaired state self-contained: persist the memtable, and settle the order of
        # rebuilt tables by merging them (last-writer-wins on timestamps).
        self._repair_flush = bool(rebuilt or wal_damaged or dropped)
        self._repair_compact = rebuilt
        self._wal = WalWriter(None, 0)
        try:
            self._finish_open()
        except (OSError, DiskFullError) as exc:
            if not is_disk_full(exc):
                raise
            # Read-only until there is room: what is on disk is served, writes get DiskFullError.
            self._opened_full = True
            with self._lock:
                self._enter_full_locked(f"opened on a full disk ({exc})")

    def _finish_open(self) -> None:
        """Write what an open needs before it accepts writes: a fresh MANIFEST (a snapshot), a
        fresh WAL holding the frames of `_redo`, and a repair's flush. Each step is skipped
        once done, so that a full disk can interrupt it and a retry carry on."""
        fs = self._fs
        self._vset.open_manifest()
        if self._wal.file is None:
            no = self._vset.new_file_no()
            path = self._path(_log_name(no))
            f = fs.create(path)
            data = b"".join(self._redo)
            try:
                if data:
                    f.write(data)
                    if self._durability != "none":
                        f.sync()
                fs.fsync_dir(self._dir)
            except BaseException:
                f.close()
                try:
                    fs.remove(path)
                except OSError:
                    pass
                raise
            with self._lock:
                self._wal = WalWriter(f, no, len(data))
                self._redo = []
        if self._repair_flush:
            self._flush_now()
            self._repair_flush = False
        if self._repair_compact:
            self._compact_full()
            self._repair_compact = False

    def _rebuild_state(self, state: ManifestState, names: list[str]) -> None:
        """Repair: every readable table in the directory becomes an L0 file."""
        for n in names:
            if not n.endswith(".sst") or not n[:-4].isdigit():
                continue
            no = int(n[:-4])
            try:
                t = TableReader(self._fs, self._path(n), no, self._cache)
            except CorruptionError:
                log.warning("repair: ignoring unreadable table %s", n)
                continue
            state.levels[0][no] = TableMeta(no, t.size, t.entries, t.smallest, t.largest)
            state.next_file = max(state.next_file, no + 1)

    # ------------------------------------------------------------------ views

    def _publish_locked(self) -> None:
        self._view = View(self._mem, self._imm, self._vset.levels, self._gfilter)

    # ------------------------------------------------------------------ reads

    def get(self, key: bytes) -> bytes | None:
        """The live value of `key`, or None if absent, deleted or expired."""
        v = self._view
        rec = v.mem_get(key)
        if rec is None:
            imm_get = v.imm_get
            if imm_get is None or (rec := imm_get(key)) is None:
                # Inlined probe of the engine-wide filter: most missing keys stop here.
                h = key_hash(key)
                t = MASK_TABLE
                mask = t[(h >> 28) & 4095] | t[(h >> 40) & 4095] | t[(h >> 52) & 4095]
                if v.gwords[h & v.gmask] & mask != mask:
                    return None
                rec = self._lookup_tables(v, key, h, mask)
                if rec is None:
                    return None
        if not rec[2]:
            return rec[1]
        if rec[2] & TOMBSTONE or rec[3] <= _now_ms():
            return None
        return rec[1]

    def _lookup_tables(self, v: View, key: bytes, h: int, mask: int) -> Rec | None:
        for t in v.l0:
            if t.fwords[h & t.fmask] & mask == mask and t.smallest <= key <= t.largest:
                self._stat_bloom_checks += 1
                rec = t.get(key)
                if rec is not None:
                    return rec
                self._stat_bloom_fp += 1
        for files, bounds in v.levels:
            i = bisect_left(bounds, key)
            if i < len(files):
                t = files[i]
                if t.fwords[h & t.fmask] & mask == mask and key >= t.smallest:
                    self._stat_bloom_checks += 1
                    rec = t.get(key)
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

    def get_version(self, key: bytes) -> Version | None:
        """The newest version of `key`, tombstones and expired values included."""
        rec = self._current_rec(_as_key(key))
        return None if rec is None else to_version(rec)

    def snapshot(self) -> Snapshot:
        """A consistent read view (context manager) with get, get_version, scan, iter_range."""
        self._check_open()
        with self._lock:
            mem = self._mem
            if mem.snap is None or mem.snap_seq != self._seq:
                mem.snap = mem.freeze()
                mem.snap_seq = self._seq
            frozen = mem.snap
            imm = self._imm
            levels = [list(files) for files in self._vset.levels]
            gfilter = self._gfilter
        frozen_imm = None
        if imm is not None:
            with self._imm_lock:
                frozen_imm = imm.as_frozen()
        return Snapshot(View(frozen, frozen_imm, levels, gfilter))

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

    def _check_open(self) -> None:
        if self._closed or self._closing:
            raise EngineClosedError("the storage engine is closed")
        if self._error is not None:
            raise EngineClosedError(f"the storage engine failed: {self._error!r}")

    def put(
        self, key: bytes, value: bytes, *, ts: int | None = None, expires_at_ms: int | None = None
    ) -> bool:
        """Store a value; False when an explicit `ts` loses to the stored version."""
        if ts is not None:
            return self.write(WriteBatch().put(key, value, ts, expires_at_ms))[0]
        seq = self._put_stamped(key, value, expires_at_ms)
        if self._sync_mode:
            if self._synced_seq < seq:
                self._wait_durable(seq)
        elif self._wal.pending_bytes >= self._wal_buffer_bytes:
            self._write_out()
        return True

    def _put_stamped(self, key: bytes, value: bytes, expires_at_ms: int | None) -> int:
        """The hot path: a put stamped by the engine's clock. Returns its sequence number."""
        if type(key) is not bytes or len(key) > MAX_KEY_BYTES:
            key = _as_key(key)
        if type(value) is not bytes:
            value = _as_value(value)
        if expires_at_ms is None:
            flags = exp = 0
        else:
            flags, exp = EXPIRES, expires_at_ms
        if self._degraded and not self._threads:
            self._retry_space()
        with self._lock:
            if self._closing or self._error is not None:
                self._check_open()
            if self._degraded:
                self._refuse_if_full_locked()
            # Stamps come from a block reserved from the HLC, valid within one wall millisecond,
            # so most puts skip the clock's own lock and arithmetic.
            ms = _time_ns() // 1_000_000
            ts = self._stamp_next
            if ms != self._stamp_ms or ts >= self._stamp_end:
                ts = self._reserve_stamps(ms)
            self._stamp_next = ts + 1
            seq = self._seq = self._seq + 1
            wal = self._wal
            wal.pending.append((seq, flags, ts, exp, key, value))
            wal.pending_bytes += len(key) + len(value) + 45
            mem = self._mem
            data = mem.data
            old = data.get(key)
            data[key] = (ts, value, flags, exp)
            if old is None:
                mem._unsorted.append(key)
                mem.size += len(key) + len(value) + 64
            else:
                mem.size += len(value) - len(old[1])
            if mem.size >= self._mem_limit:
                self._rotate_locked()
            return seq

    def _reserve_stamps(self, ms: int) -> int:
        """Take a block of timestamps from the HLC; returns the first (caller holds `_lock`)."""
        first = self.hlc.now()
        self._stamp_end = self.hlc.observe(first + _STAMP_BLOCK)
        self._stamp_ms = ms
        return first

    def _stamp(self) -> int:
        ms = _time_ns() // 1_000_000
        ts = self._stamp_next
        if ms != self._stamp_ms or ts >= self._stamp_end:
            ts = self._reserve_stamps(ms)
        self._stamp_next = ts + 1
        return ts

    def delete(self, key: bytes, *, ts: int | None = None) -> bool:
        """Write a tombstone; False when an explicit `ts` loses to the stored version."""
        return self.write(WriteBatch().delete(key, ts))[0]

    def write(self, batch: WriteBatch) -> list[bool]:
        """Apply a batch atomically (one WAL record); per op, whether it was applied."""
        results, seq = self._apply_batch(batch)
        self._after_write(seq)
        return results

    def _after_write(self, seq: int) -> None:
        if self._durability == "sync":
            if self._synced_seq < seq:
                self._wait_durable(seq)
        elif self._wal.pending_bytes >= self._opts.wal_buffer_bytes:
            self._write_out()

    def _apply_batch(self, batch: WriteBatch) -> tuple[list[bool], int]:
        ops = [
            (tomb, _as_key(key), _as_value(value), ts, exp)
            for tomb, key, value, ts, exp in batch.ops
        ]
        results: list[bool] = []
        accepted: list[tuple[bytes, Rec]] = []
        if self._degraded and not self._threads:
            self._retry_space()
        with self._lock:
            self._check_open()
            if self._degraded:
                self._refuse_if_full_locked()
            mem = self._mem
            for tomb, key, value, ts, exp in ops:
                if ts is None:
                    ts = self._stamp()
                else:
                    if not 0 <= ts < 1 << 64:
                        raise ValueError("ts must be an unsigned 64-bit integer")
                    cur = self._current_rec(key)
                    if cur is not None and not newer(make_rec(ts, value, tomb, exp), cur):
                        results.append(False)
                        continue
                    self.hlc.observe(ts)
                    self._stamp_end = 0  # later stamps must come after this one
                rec = make_rec(ts, value, tomb, exp)
                mem.apply(key, rec)
                accepted.append((key, rec))
                results.append(True)
            if not accepted:
                return results, self._seq
            seq = self._seq = self._seq + 1
            encoded = encode_batch(seq, accepted)
            wal = self._wal
            wal.pending.append(encoded)
            wal.pending_bytes += len(encoded)
            if mem.size >= self._mem_limit:
                self._rotate_locked()
        return results, seq

    async def write_async(self, batch: WriteBatch) -> list[bool]:
        """`write` for the event loop: returns once durable, never blocking the loop on fsync."""
        results, seq = self._apply_batch(batch)
        await self._durable_async(seq)
        return results

    async def put_async(
        self, key: bytes, value: bytes, *, ts: int | None = None, expires_at_ms: int | None = None
    ) -> bool:
        if ts is not None:
            return (await self.write_async(WriteBatch().put(key, value, ts, expires_at_ms)))[0]
        await self._durable_async(self._put_stamped(key, value, expires_at_ms))
        return True

    async def delete_async(self, key: bytes, *, ts: int | None = None) -> bool:
        return (await self.write_async(WriteBatch().delete(key, ts)))[0]

    async def _durable_async(self, seq: int) -> None:
        if self._durability != "sync":
            if self._wal.pending_bytes >= self._opts.wal_buffer_bytes:
                self._sync_wake.set()
            return
        if self._synced_seq >= seq:
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            if self._synced_seq >= seq:
                return
            self._check_open()
            waiters = self._async_waiters
            waiters.append((seq, loop, fut))
            # Only the first waiter since the syncer last took the list needs to wake it.
            wake = len(waiters) == 1
        if wake:
            self._sync_wake.set()
        await fut

    # ------------------------------------------------------------------ durability

    def _wait_durable(self, seq: int) -> None:
        """Group commit for threads: the first waiter fsyncs for everyone queued behind it."""
        with self._sync_lock:
            if self._synced_seq >= seq:
                return
            if self._error is not None:
                self._check_open()
            self._do_sync(fsync=True)

    def _write_out(self) -> None:
        with self._sync_lock:
            self._do_sync(fsync=False)

    def _do_sync(self, *, fsync: bool) -> None:
        """Write out buffered frames (and fsync them); caller holds `_sync_lock`."""
        with self._lock:
            full = self._full
            chunks: list[tuple[WalWriter, list]] = []
            if full is None:
                retired = self._retired
                self._retired = []
                chunks = [(w, w.take()) for w in retired]
                current = self._wal
                chunks.append((current, current.take()))
            target = self._seq
            waiters: list = []
            if (fsync or full is not None) and self._async_waiters:
                waiters = self._async_waiters
                self._async_waiters = []
        ordered = self._durability != "none"
        exc: BaseException | None = None
        if full is not None:
            # Nothing is written while the disk is full; whoever waits hears why.
            exc = DiskFullError(str(full))
        frames = [(w, encode_items(items) if items else b"") for w, items in chunks]
        done = 0  # frames[:done] are written (and synced, if asked)
        try:
            for w, data in frames:
                if data:
                    w.file.write(data)
                    w.written += len(data)
                    if ordered:
                        w.unsynced.append(data)
                    else:
                        w.synced = w.written
                if w is not frames[-1][0]:
                    # An older log is durable before a newer one gets a byte, so a crash can
                    # never keep a newer write while losing an older one.
                    if ordered and w.written:
                        w.file.sync()
                    w.synced = w.written
                    w.unsynced = []
                    w.file.close()
                elif fsync and w.written:
                    w.file.sync()
                    w.synced = w.written
                    w.unsynced = []
                done += 1
        except BaseException as e:  # noqa: BLE001 - every writer must hear about it
            if isinstance(e, OSError) and is_disk_full(e):
                exc = self._wal_failed(frames, done, e)
            else:
                exc = e
                self._fail(e)
        if fsync and exc is None and target > self._synced_seq:
            self._synced_seq = target
        if waiters:
            by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
            for _, loop, fut in waiters:
                by_loop.setdefault(loop, []).append(fut)
            for loop, futs in by_loop.items():
                try:
                    loop.call_soon_threadsafe(_resolve, futs, exc)
                except RuntimeError:  # the loop was closed meanwhile
                    pass
        if isinstance(exc, DiskFullError):
            raise exc
        if exc is not None:
            raise StorageError(f"WAL write failed: {exc!r}") from exc

    # ------------------------------------------------------------------ disk full

    def _wal_failed(
        self, frames: list[tuple[WalWriter, bytes]], done: int, exc: OSError
    ) -> DiskFullError:
        """A WAL write or fsync found the disk full (caller holds `_sync_lock`).

        Every frame not yet durable is kept for a fresh WAL file, each file of this round
        (and any log a writer opened meanwhile) is cut back to its last durable frame and never
        appended to again, and writes are refused until the fresh file holds those frames.
        Whoever waited for them hears DiskFullError: none of them was acknowledged.
        """
        redo: list[bytes] = []
        for i, (w, data) in enumerate(frames):
            redo.extend(w.unsynced)
            if data and i >= done and (not w.unsynced or w.unsynced[-1] is not data):
                redo.append(data)
            w.unsynced = []
            w.written = w.synced
        # Older logs of this round that were written, fsynced and closed are whole.
        broken = [w for i, (w, _) in enumerate(frames) if i >= done or i == len(frames) - 1]
        with self._lock:
            # Writes applied after this round took its items (and logs a freeze opened).
            for w in [*self._retired, self._wal]:
                late = w.take()
                if late:
                    redo.append(encode_items(late))
                if w not in broken:
                    broken.append(w)
            self._retired = []
            self._redo.extend(redo)
            self._broken.extend(broken)
            self._wal = WalWriter(None, 0)
            path = frames[-1][0].file_no if frames else 0
            err = self._enter_full_locked(
                f"WAL {_log_name(path)}: {exc.strerror or exc}; writes refused until space is freed"
            )
        try:
            self._cut_broken()
        except OSError as cut:
            log.warning("could not cut the WAL back yet (retrying): %s", cut)
        return err

    def _enter_full_locked(self, reason: str) -> DiskFullError:
        if self._full is None:
            self._full = DiskFullError(f"disk full: {reason}")
            self._full_since = time.time()
            self._stat_disk_full_events += 1
            self._update_degraded_locked()
            self._sync_wake.set()  # the syncer retries from now on
            log.error("storage in %s is out of space: %s", self._dir, reason)
        return DiskFullError(str(self._full))

    def _note_blocked(self, job: str, exc: BaseException | None) -> None:
        """The flush or compaction thread found the disk full (`exc`), or has room again."""
        with self._lock:
            if job == "flush":
                was, self._flush_blocked = self._flush_blocked, exc
            else:
                was, self._compaction_blocked = self._compaction_blocked, exc
            self._update_degraded_locked()
        if exc is not None and was is None:
            log.error("%s found the disk full, retrying with backoff: %s", job, exc)
        elif exc is None and was is not None:
            log.warning("%s succeeded again after a full disk", job)

    def _update_degraded_locked(self) -> None:
        self._degraded = (
            self._full is not None
            or self._flush_blocked is not None
            or self._compaction_blocked is not None
        )

    def _refuse_if_full_locked(self) -> None:
        """Refuse a write before it is applied while the disk is full, or while it would have
        to wait for a flush (or, with L0 at its stop, a compaction) that found no room."""
        reason = None
        if self._full is not None:
            reason = str(self._full)
        elif (
            self._flush_blocked is not None
            and self._imm is not None
            and self._mem.size >= self._mem_limit
        ):
            reason = f"disk full: memtable flush failed ({self._flush_blocked})"
        elif (
            self._compaction_blocked is not None
            and len(self._vset.levels[0]) >= self._opts.l0_stop_writes_trigger
        ):
            reason = f"disk full: compaction failed ({self._compaction_blocked})"
        if reason is not None:
            self._stat_disk_full_refusals += 1
            raise DiskFullError(reason)

    def _cut_broken(self) -> None:
        """Cut each broken WAL file back to its last durable frame and close it (caller holds
        `_sync_lock`); a file left with a torn frame would end the replay of every later log."""
        while self._broken:
            w = self._broken[0]
            if w.file is not None:
                w.file.truncate(w.synced)
                w.file.close()
            self._broken.pop(0)

    def _recover_space(self) -> bool:
        """One attempt to leave the disk-full state (caller holds `_sync_lock`); True once
        writes are accepted again. A disk still full just leaves things as they were."""
        if self._full is None:
            return True
        try:
            self._cut_broken()
            self._finish_open()
        except (OSError, DiskFullError) as exc:
            if not is_disk_full(exc):
                self._fail(exc)
                raise StorageError(f"recovering from a full disk failed: {exc!r}") from exc
            log.debug("still no room in %s: %s", self._dir, exc)
            return False
        with self._lock:
            # Every write applied so far is in a durable frame now: none came in while full.
            self._synced_seq = max(self._synced_seq, self._seq)
            self._full = None
            self._opened_full = False
            self._update_degraded_locked()
            self._cv.notify_all()
        log.warning(
            "storage in %s has room again after %.1f s: writes resume",
            self._dir,
            time.time() - self._full_since,
        )
        self._sync_wake.set()
        self._compact_event.set()
        return True

    def _retry_space(self) -> None:
        """From a writer of an engine without background threads: try to leave the disk-full
        state, at most every `_SPACE_RETRY_S`."""
        if self._full is None or time.monotonic() < self._next_space_check:
            return
        if not self._sync_lock.acquire(blocking=False):
            return
        try:
            self._next_space_check = time.monotonic() + _SPACE_RETRY_S
            self._recover_space()
        finally:
            self._sync_lock.release()

    def disk_status(self) -> dict[str, Any]:
        """Whether writes are refused for lack of space, since when and why (for health)."""
        full = self._full
        reason = str(full) if full is not None else None
        if reason is None and self._flush_blocked is not None:
            reason = f"memtable flush failed: {self._flush_blocked}"
        if reason is None and self._compaction_blocked is not None:
            reason = f"compaction failed: {self._compaction_blocked}"
        return {
            "disk_full": full is not None,
            "read_only": full is not None,
            "opened_full": self._opened_full,
            "disk_full_since": self._full_since if full is not None else None,
            "disk_full_reason": reason,
            "flush_blocked": self._flush_blocked is not None,
            "compaction_blocked": self._compaction_blocked is not None,
            "disk_full_events": self._stat_disk_full_events,
            "disk_full_refused_writes": self._stat_disk_full_refusals,
        }

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
            log.error("storage engine failed: %r", exc)
        with self._lock:
            self._cv.notify_all()

    def _sync_loop(self) -> None:
        periodic = self._durability == "periodic"
        timeout = self._opts.periodic_ms / 1000 if periodic else None
        fsync = self._durability != "none"
        while not self._closing:
            self._sync_wake.wait(_SPACE_RETRY_S if self._full is not None else timeout)
            self._sync_wake.clear()
            if self._closing or self._error is not None:
                break
            try:
                with self._sync_lock:
                    if self._full is not None:
                        self._recover_space()
                    self._do_sync(fsync=fsync)
            except DiskFullError:
                continue
            except StorageError:
                break

    # ------------------------------------------------------------------ flush

    def _rotate_locked(self) -> None:
        """Freeze the full memtable, stalling while a previous flush (or a full L0) is pending.

        Caller holds `_lock`. Without background threads the memtable just keeps growing until
        `flush()` is called.
        """
        if not self._threads:
            if self._imm is None:
                self._freeze_locked()
            return
        stop = self._opts.l0_stop_writes_trigger
        while self._imm is not None or len(self._vset.levels[0]) >= stop:
            self._check_open()
            blocked = self._flush_blocked if self._imm is not None else None
            if len(self._vset.levels[0]) >= stop:
                blocked = blocked or self._compaction_blocked
            if blocked is not None:
                # The flush or compaction it waits for found no room: this write stays
                # unacknowledged (later ones are refused before they are applied).
                self._stat_disk_full_refusals += 1
                raise DiskFullError(f"disk full: {blocked}")
            self._cv.wait(0.5)
        try:
            self._freeze_locked()
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            # No room for the next log: keep filling this memtable; the WAL write that
            # follows finds the disk full too.
            log.warning("could not start a new WAL (disk full): %s", exc)

    def _freeze_locked(self) -> None:
        """Make the memtable immutable and start a new WAL; caller holds `_lock`."""
        wal_no = self._vset.new_file_no_locked()
        f = self._fs.create(self._path(_log_name(wal_no)))
        try:
            self._fs.fsync_dir(self._dir)
        except BaseException:
            f.close()
            raise
        self._retired.append(self._wal)
        self._wal = WalWriter(f, wal_no)
        self._imm = self._mem
        self._imm_cutoff = wal_no
        self._imm_seq = self._seq
        self._mem = Memtable()
        self._publish_locked()
        self._cv.notify_all()

    def _flush_loop(self) -> None:
        backoff = 0.0
        while True:
            with self._lock:
                while self._imm is None and not self._closing:
                    self._cv.wait()
                if backoff and not self._closing:
                    self._cv.wait(backoff)
                if self._closing:
                    return
            try:
                self._flush_imm()
            except BaseException as e:  # noqa: BLE001
                if self._closing:  # a flush cut short by close is redone from the WAL
                    return
                if not is_disk_full(e):
                    self._fail(e)
                    return
                # The memtable stays frozen (and in the WAL): try again, less and less often.
                self._note_blocked("flush", e)
                backoff = min(max(backoff * 2, _SPACE_RETRY_S), _MAX_BACKOFF_S)
                continue
            if self._flush_blocked is not None:
                self._note_blocked("flush", None)
                backoff = 0.0

    def _flush_imm(self) -> None:
        with self._flush_lock:
            with self._lock:
                imm, cutoff, last_seq = self._imm, self._imm_cutoff, self._imm_seq
            if imm is not None:
                self._flush_table(imm, cutoff, last_seq)
        if imm is not None:
            # Installed and unpublished: free it here in chunks, not in one GIL-holding go.
            imm.release()

    def _flush_table(self, imm: Memtable, cutoff: int, last_seq: int) -> None:
        reader = None
        contrib = None  # the new table's key hashes as a filter, for the engine-wide filter
        if len(imm.data):
            no = self._vset.new_file_no()
            p = self._path(table_name(no))
            nwords = self._global_contrib_words(len(imm.data))
            meta, contrib = self._offloaded_flush(imm, no, nwords)
            if meta is None:
                with self._imm_lock:
                    frozen = imm.as_frozen()
                b = TableBuilder(
                    self._fs, p, no, self._opts.block_bytes, self._opts.bloom_bits_per_key
                )
                try:
                    b.add_all(frozen.keys, frozen.data)
                    meta = b.finish(global_words=nwords)
                except BaseException:
                    b.abandon()
                    raise
                contrib = b.global_filter
            try:
                self._fs.fsync_dir(self._dir)
            except OSError:
                self._vset.discard_unlisted([p])
                raise
            reader = TableReader(self._fs, p, no, self._cache)
        edit = VersionEdit(
            log_number=cutoff, last_seq=last_seq, added=[(0, meta)] if reader is not None else []
        )

        def add_to_filter() -> None:
            # Before the table becomes visible: the filter must vouch for its keys.
            if reader is not None and contrib is not None:
                self._filter_add(contrib, reader.entries)

        def flushed() -> None:
            self._imm = None
            self._publish_locked()
            self._stat_flushes += 1
            self._cv.notify_all()

        added = [(0, reader)] if reader is not None else []
        self._vset.log_and_apply(edit, added, before_visible=add_to_filter, on_applied=flushed)
        for name in self._fs.listdir(self._dir):
            if name.endswith(".log") and name[:-4].isdigit() and int(name[:-4]) < cutoff:
                try:
                    self._fs.remove(self._path(name))
                except FileNotFoundError:
                    pass
        self._compact_event.set()

    def _worker_pool(self) -> offload.WorkerPool | None:
        if not self._offload or self._closing:
            return None
        if self._pool is None:
            self._pool = offload.WorkerPool(self._opts.offload_workers)
        return self._pool

    def _offload_failed(self, what: str, exc: BaseException) -> None:
        if self._closing:
            return
        log.warning("offloaded %s failed (%r); running it in-process from now on", what, exc)
        self._offload = False

    def _offloaded_flush(
        self, imm: Memtable, no: int, nwords: int
    ) -> tuple[TableMeta | None, array | None]:
        """Build the table in a worker; (None, None) means: build it here."""
        if imm.size < _OFFLOAD_MIN_BYTES or self._closing:
            return None, None
        pool = self._worker_pool()
        if pool is None:
            return None, None
        # The worker sorts; this thread only pickles small chunks of the (no longer written)
        # dict: one big sort or pickle here would hold the GIL, stalling requests ~100 ms.
        entries = iter(imm.data.items())
        chunks = iter(lambda: list(islice(entries, _FLUSH_CHUNK)), [])
        try:
            meta, raw = pool.call("build_table", self._dir, no, self._opts, nwords, stream=chunks)
        except (offload.WorkerError, OSError, StorageError) as exc:
            if self._closing:
                raise EngineClosedError("flush abandoned: the engine is closing") from exc
            if is_disk_full(exc):
                self._vset.discard_unlisted([self._path(table_name(no))])
                raise DiskFullError(f"disk full: flush worker: {exc}") from exc
            self._offload_failed("flush", exc)
            return None, None
        if meta is None or meta.entries != len(imm.data):
            self._offload_failed(
                "flush",
                ValueError(
                    f"worker table has {meta and meta.entries} entries, memtable {len(imm.data)}"
                ),
            )
            return None, None
        contrib = array("Q")
        contrib.frombytes(raw)
        return meta, contrib

    # ------------------------------------------------------------------ engine-wide filter

    def _global_contrib_words(self, new_keys: int) -> int:
        g = self._gfilter
        if g.ready:
            return g.mask + 1
        total = sum(t.entries for files in self._vset.levels for t in files) + new_keys
        return GlobalFilter.size_for(total)

    def _filter_add(self, contrib: array, keys: int) -> None:
        """Add a new table's key hashes to the engine-wide filter (caller holds the version
        set's install lock, and the table is not visible yet)."""
        gfilter = self._gfilter.with_words(contrib, keys)
        if self._gfilter_pending is not None:
            self._gfilter_pending.append((contrib, keys))
        if gfilter.too_dense():
            self._gfilter_wanted = True
        self._gfilter = gfilter

    def _rebuild_global(self) -> None:
        """Build the engine-wide filter from every table's key hashes (caller holds
        `_compaction_lock`, so no table disappears meanwhile); flushes that land during the
        build add their hashes afterwards."""
        with self._vset.install_lock:
            tables = [t for files in self._vset.levels for t in files]
            total = sum(t.entries for t in tables)
            nwords = GlobalFilter.size_for(total)
            self._gfilter_pending = []
            self._gfilter_wanted = False
        words = None
        try:
            pool = self._worker_pool() if total >= _OFFLOAD_MIN_KEYS else None
            if pool is not None:
                try:
                    raw = pool.call("global_filter", self._dir, [t.file_no for t in tables], nwords)
                    words = array("Q")
                    words.frombytes(raw)
                except (offload.WorkerError, OSError) as exc:
                    if self._closing:
                        raise compaction_mod.CompactionAborted() from exc
                    self._offload_failed("filter build", exc)
            if words is None:
                words = offload.table_filter(tables, nwords)
        except BaseException:
            with self._vset.install_lock:
                self._gfilter_pending = None
            raise
        with self._vset.install_lock:
            g = GlobalFilter(words, total, True)
            for contrib, keys in self._gfilter_pending or []:
                g = g.with_words(contrib, keys)
            self._gfilter_pending = None
            with self._lock:
                self._gfilter = g
                self._publish_locked()

    def _flush_now(self) -> None:
        """Flush what is frozen, then freeze and flush the memtable, in this thread if need be."""
        self._flush_imm()
        with self._lock:
            if len(self._mem) and self._imm is None:
                self._freeze_locked()
        # Whatever was written before this call is now in the immutable memtable (frozen here or
        # by a writer meanwhile), or already in a table.
        self._flush_imm()

    def sync(self) -> None:
        """Write out and fsync the WAL now: every write made so far becomes durable."""
        self._check_open()
        with self._sync_lock:
            self._do_sync(fsync=self._durability != "none")

    def flush(self) -> None:
        """Persist the memtable as an L0 table and wait until it is installed."""
        self._check_open()
        self._write_out()
        self._flush_now()

    # ------------------------------------------------------------------ compaction

    def _stopping(self) -> bool:
        return self._closing

    def _compact_loop(self) -> None:
        backoff = 0.0
        while not self._closing:
            self._compact_event.wait(backoff or 1.0)
            self._compact_event.clear()
            try:
                self._compact_pending()
            except compaction_mod.CompactionAborted:
                return
            except BaseException as e:  # noqa: BLE001
                if self._closing or not is_disk_full(e):
                    self._fail(e)
                    return
                # Inputs stay as they are; the outputs were deleted. Try again later.
                self._note_blocked("compaction", e)
                backoff = min(max(backoff * 2, _SPACE_RETRY_S * 5), _MAX_BACKOFF_S * 2)
                continue
            if self._compaction_blocked is not None:
                self._note_blocked("compaction", None)
                backoff = 0.0

    def _compact_pending(self, *, rate: int | None = None) -> int:
        """Run leveled compactions until no level needs one; returns how many ran.

        The background thread's body; tests without background threads call it directly.
        """
        done = 0
        while not self._closing and self._error is None and self._vset.has_manifest:
            with self._compaction_lock:
                if self._gfilter_wanted:
                    self._rebuild_global()
                with self._lock:
                    c = compaction_mod.pick(self._vset.levels, self._opts, self._pointers)
                if c is None:
                    break
                self._run_compaction(c, rate=rate)
                done += 1
        return done

    def _run_compaction(self, c: compaction_mod.Compaction, *, rate: int | None = None) -> None:
        rate = self._opts.compaction_rate_bytes_per_s if rate is None else rate
        outputs = self._offloaded_compaction(c, rate)
        if outputs is None:
            limiter = compaction_mod.RateLimiter(rate)
            try:
                outputs = compaction_mod.run(
                    c, self._vset.new_builder, self._opts, limiter, self._stopping
                )
            except OSError:
                self._vset.discard_unlisted([self._path(table_name(m.file_no)) for m in c.outputs])
                raise
        paths = [self._path(table_name(m.file_no)) for m in outputs]
        if outputs:
            try:
                self._fs.fsync_dir(self._dir)
            except OSError:
                self._vset.discard_unlisted(paths)
                raise
        readers = [(c.output_level, self._vset.open_table(m.file_no)) for m in outputs]
        edit = VersionEdit(
            added=[(c.output_level, m) for m in outputs],
            removed=[(lvl, t.file_no) for lvl, t in c.inputs],
        )

        def compacted() -> None:
            # The engine-wide filter needs no change: output keys are input keys.
            self._publish_locked()
            self._stat_compactions += 1
            self._stat_compacted_bytes += sum(m.size for m in outputs)
            self._cv.notify_all()

        self._vset.log_and_apply(edit, readers, on_applied=compacted)

    def _offloaded_compaction(
        self, c: compaction_mod.Compaction, rate: int, min_bytes: int = _OFFLOAD_MIN_BYTES
    ) -> list[TableMeta] | None:
        if c.input_bytes < min_bytes:
            return None
        pool = self._worker_pool()
        if pool is None:
            return None
        reserve = c.input_bytes // max(1, self._opts.target_file_bytes) + 4
        numbers = self._vset.reserve_file_nos(reserve)
        opts = dataclasses.replace(self._opts, compaction_rate_bytes_per_s=rate)
        try:
            return pool.call(
                "compact",
                self._dir,
                [(lvl, t.file_no) for lvl, t in c.inputs],
                c.output_level,
                c.bottom,
                opts,
                numbers,
                c.purge,
            )
        except (offload.WorkerError, OSError) as exc:
            if self._closing:
                raise compaction_mod.CompactionAborted() from exc
            if is_disk_full(exc):
                # The worker's finished outputs are unlisted: their room is needed.
                names = set(self._fs.listdir(self._dir))
                self._vset.discard_unlisted(
                    [self._path(table_name(no)) for no in numbers if table_name(no) in names]
                )
                raise DiskFullError(f"disk full: compaction worker: {exc}") from exc
            self._offload_failed("compaction", exc)
            return None

    def _compact_full(self) -> None:
        with self._compaction_lock:
            with self._lock:
                c = compaction_mod.full(self._vset.levels)
            if c is not None:
                self._run_compaction(c, rate=0)

    def compact(self) -> None:
        """Flush, then merge every table into the deepest level; returns when installed.

        Tombstones and expired values older than the grace period are dropped.
        """
        self.flush()
        self._compact_full()

    def purge_range(self, start: bytes, end: bytes | None) -> int:
        """Physically remove every version (values and tombstones) with start <= key < end
        (end None: no upper bound) that was written before this call, whatever its timestamp;
        later writes are kept. Durable when it returns; returns the tables rewritten."""
        return self.purge_ranges([(_as_key(start), None if end is None else _as_key(end))])

    def purge_ranges(self, ranges: list[tuple[bytes, bytes | None]]) -> int:
        """`purge_range` for many ranges at once: one cut and one rewrite of each table."""
        self._check_open()
        return purge_mod.purge(self, ranges)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Write out and fsync the WAL, stop the background threads. Idempotent."""
        if self._closed:
            return
        with self._lock:
            self._closing = True
            self._cv.notify_all()
        self._compact_event.set()
        self._sync_wake.set()
        if self._pool is not None:
            # A running compaction is abandoned (its outputs are unreferenced garbage, removed at
            # the next open); a running flush is also killed: its data is still in the WAL.
            self._pool.close(kill_running=True)
        for t in self._threads:
            t.join()
        self._threads = []
        try:
            with self._sync_lock:
                if self._error is None:
                    self._do_sync(fsync=self._durability != "none")
        except StorageError:
            pass
        finally:
            self._closed = True
            with self._lock:
                waiters = self._async_waiters
                self._async_waiters = []
            for _, loop, fut in waiters:
                try:
                    loop.call_soon_threadsafe(_resolve, [fut], EngineClosedError("closed"))
                except RuntimeError:
                    pass
            for w in [*self._retired, *self._broken]:
                if w.file is not None:
                    w.file.close()
            if self._wal.file is not None:
                self._wal.file.close()
            self._vset.close()
            self._unlock()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ stats

    def approx_key_count(self) -> int:
        v = self._view
        n = len(v.mem.data) + (len(v.imm.data) if v.imm is not None else 0)
        return n + sum(t.entries for files in v.all_levels for t in files)

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
        return {
            "levels": levels,
            "memtable_bytes": v.mem.size,
            "memtable_entries": len(v.mem.data),
            "immutable_memtable_bytes": v.imm.size if v.imm is not None else 0,
            "bloom_false_positive_rate": self._stat_bloom_fp / checks if checks else 0.0,
            "bloom_checks": checks,
            "global_filter_ready": v.gfilter.ready,
            "global_filter_bytes": len(v.gfilter.words) * 8,
            "block_cache_hit_rate": self._cache.hit_rate(),
            "block_cache_bytes": self._cache.used,
            "compaction_backlog_bytes": compaction_mod.backlog_bytes(v.all_levels, self._opts),
            "compactions": self._stat_compactions,
            "compacted_bytes": self._stat_compacted_bytes,
            "flushes": self._stat_flushes,
            "keys_approx": self.approx_key_count(),
            "last_seq": self._seq,
            "synced_seq": self._synced_seq,
            "durability": self._durability,
            **self.disk_status(),
        }

    @property
    def path(self) -> str:
        return self._dir
