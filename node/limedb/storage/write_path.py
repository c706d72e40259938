"""The write path: a write is stamped, queued for the WAL and applied to the memtable under the
mutex; a full memtable is frozen (the immutable memtable, flushed in the background) and a new
WAL started. Durability is the syncer's business (group_commit.py): a write is visible as soon
as it is applied, acknowledged only once its WAL frame is durable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from limedb.hlc import HLC

from .batch import WriteBatch
from .context import EngineContext
from .errors import is_disk_full
from .memtable import FrozenMemtable, Memtable
from .record import EXPIRES, Rec, make_rec, newer
from .sstable import MAX_KEY_BYTES
from .version_set import VersionSet
from .wal import SINGLE, WalWriter, encode_batch

log = logging.getLogger("limedb.storage")

# Timestamps reserved from the HLC at a time (valid within one wall millisecond).
_STAMP_BLOCK = 64
_time_ns = time.time_ns
# WAL bytes a queued single put adds besides its key and value (its batch and op headers).
_PUT_HEADER_BYTES = SINGLE.size


def log_name(file_no: int) -> str:
    return f"{file_no:06d}.log"


def as_key(key: Any) -> bytes:
    if type(key) is not bytes:
        if isinstance(key, str):
            raise TypeError("keys are bytes, not str")
        key = bytes(key)
    if len(key) > MAX_KEY_BYTES:
        raise ValueError(f"key of {len(key)} bytes exceeds the {MAX_KEY_BYTES}-byte limit")
    return key


def as_value(value: Any) -> bytes:
    if type(value) is not bytes:
        if isinstance(value, str):
            raise TypeError("values are bytes, not str")
        value = bytes(value)
    return value


class WritePath:
    """The memtable, the immutable memtable being flushed, the WAL files and the sequence."""

    def __init__(
        self,
        ctx: EngineContext,
        versions: VersionSet,
        hlc: HLC,
        mem: Memtable,
        seq: int,
        lookup: Callable[[bytes], Rec | None],
    ) -> None:
        self._ctx = ctx
        self._versions = versions
        self._space = ctx.space
        self._hlc = hlc
        self._lookup = lookup  # the newest stored version of a key
        self._mem_limit = ctx.opts.memtable_bytes
        # From this memtable size on the flusher ships the memtable to a flush worker while it
        # still fills (flush.py); the limit itself when it does not. `_check_at` is the next
        # size at which a write has something to do besides applying itself.
        self.stage_bytes = self._mem_limit
        self._check_at = self._mem_limit
        self._l0_stop = ctx.opts.l0_stop_writes_trigger
        self.mem = mem
        self.imm: Memtable | None = None  # frozen, being flushed
        self.imm_cutoff = 0  # the first WAL file not needed once `imm` is flushed
        self.imm_seq = 0  # the last sequence number in `imm`
        self.imm_lock = threading.Lock()  # a snapshot's frozen view of `imm` vs its flush
        self.wal = WalWriter(None, 0)  # no file until the open has one (see `attach_wal`)
        self.retired: list[WalWriter] = []  # older logs with frames not yet written out
        self.seq = seq
        self._stamp_ms = -1
        self._stamp_next = 0
        self._stamp_end = 0

    # ------------------------------------------------------------------ writes

    def put_stamped(self, key: bytes, value: bytes, expires_at_ms: int | None) -> int:
        """The hot path: a put stamped by the engine's clock. Returns its sequence number."""
        if type(key) is not bytes or len(key) > MAX_KEY_BYTES:
            key = as_key(key)
        if type(value) is not bytes:
            value = as_value(value)
        if expires_at_ms is None:
            flags = exp = 0
        else:
            flags, exp = EXPIRES, expires_at_ms
        ctx = self._ctx
        with ctx.mutex:
            if ctx.closing or ctx.error is not None:
                ctx.check_open()
            if self._space.degraded:
                self.refuse_if_full_locked()
            # Stamps come from a block reserved from the HLC, valid within one wall millisecond,
            # so most puts skip the clock's own lock and arithmetic.
            ms = _time_ns() // 1_000_000
            ts = self._stamp_next
            if ms != self._stamp_ms or ts >= self._stamp_end:
                ts = self._reserve_stamps(ms)
            self._stamp_next = ts + 1
            seq = self.seq = self.seq + 1
            wal = self.wal
            wal.pending.append((seq, flags, ts, exp, key, value))
            wal.pending_bytes += _PUT_HEADER_BYTES + len(key) + len(value)
            mem = self.mem
            mem.apply(key, (ts, value, flags, exp))
            if mem.size >= self._check_at:
                self.size_reached_locked()
            return seq

    def apply_batch(self, batch: WriteBatch) -> tuple[list[bool], int]:
        """Apply a batch as one WAL record; per op whether it was applied, and its sequence."""
        ops = [
            (tomb, as_key(key), as_value(value), ts, exp) for tomb, key, value, ts, exp in batch.ops
        ]
        results: list[bool] = []
        accepted: list[tuple[bytes, Rec]] = []
        with self._ctx.mutex:
            self._ctx.check_open()
            if self._space.degraded:
                self.refuse_if_full_locked()
            mem = self.mem
            for tomb, key, value, ts, exp in ops:
                if ts is None:
                    rec = make_rec(self._stamp(), value, tomb, exp)
                else:
                    if not 0 <= ts < 1 << 64:
                        raise ValueError("ts must be an unsigned 64-bit integer")
                    rec = make_rec(ts, value, tomb, exp)
                    cur = self._lookup(key)
                    if cur is not None and not newer(rec, cur):
                        results.append(False)
                        continue
                    self._hlc.observe(ts)
                    self._stamp_end = 0  # later stamps must come after this one
                mem.apply(key, rec)
                accepted.append((key, rec))
                results.append(True)
            if not accepted:
                return results, self.seq
            seq = self.seq = self.seq + 1
            encoded = encode_batch(seq, accepted)
            wal = self.wal
            wal.pending.append(encoded)
            wal.pending_bytes += len(encoded)
            if mem.size >= self._check_at:
                self.size_reached_locked()
        return results, seq

    def size_reached_locked(self) -> None:
        """The memtable reached `_check_at`: freeze it when full, else wake the flusher to
        start shipping it (caller holds the mutex)."""
        if self.mem.size >= self._mem_limit:
            self.rotate_locked()
        else:
            self._check_at = self._mem_limit
            self._ctx.cv.notify_all()

    def observe_locked(self, ts: int) -> None:
        """Stamps from now on come after `ts` (a version stored by other means than a write,
        e.g. an ingested table); caller holds the mutex."""
        self._hlc.observe(ts)
        self._stamp_end = 0

    def _reserve_stamps(self, ms: int) -> int:
        """Take a block of timestamps from the HLC; returns the first (caller holds the mutex)."""
        first = self._hlc.now()
        self._stamp_end = self._hlc.observe(first + _STAMP_BLOCK)
        self._stamp_ms = ms
        return first

    def _stamp(self) -> int:
        ms = _time_ns() // 1_000_000
        ts = self._stamp_next
        if ms != self._stamp_ms or ts >= self._stamp_end:
            ts = self._reserve_stamps(ms)
        self._stamp_next = ts + 1
        return ts

    def refuse_if_full_locked(self) -> None:
        """Refuse a write before it is applied while the disk is full, or while it would have
        to wait for a flush (or, with L0 at its stop, a compaction) that found no room."""
        space = self._space
        reason = None
        cause: BaseException | None = None
        if space.full is not None:
            reason, cause = str(space.full), space.full
        elif (
            space.flush_blocked is not None
            and self.imm is not None
            and self.mem.size >= self._mem_limit
        ):
            cause = space.flush_blocked
            reason = f"disk full: memtable flush failed ({cause})"
        elif (
            space.compaction_blocked is not None and len(self._versions.levels[0]) >= self._l0_stop
        ):
            cause = space.compaction_blocked
            reason = f"disk full: compaction failed ({cause})"
        if reason is not None:
            raise space.refuse(reason, cause)

    # ------------------------------------------------------------------ memtable rotation

    def rotate_locked(self) -> None:
        """Freeze the full memtable, stalling while a previous flush (or a full L0) is pending.

        Caller holds the mutex. Without background threads the memtable just keeps growing
        until `flush()` is called.
        """
        ctx = self._ctx
        if not ctx.threaded:
            if self.imm is None:
                self.freeze_locked()
            return
        levels = self._versions
        while self.imm is not None or len(levels.levels[0]) >= self._l0_stop:
            ctx.check_open()
            blocked = self._space.flush_blocked if self.imm is not None else None
            if len(levels.levels[0]) >= self._l0_stop:
                blocked = blocked or self._space.compaction_blocked
            if blocked is not None:
                # The flush or compaction it waits for found no room: this write stays
                # unacknowledged (later ones are refused before they are applied).
                raise self._space.refuse(f"disk full: {blocked}", blocked)
            ctx.cv.wait(0.5)
        try:
            self.freeze_locked()
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            # No room for the next log: keep filling this memtable; the WAL write that
            # follows finds the disk full too.
            log.warning("could not start a new WAL, the current one is kept on: %s", exc)

    def freeze_locked(self) -> None:
        """Make the memtable immutable and start a new WAL; caller holds the mutex."""
        ctx = self._ctx
        wal_no = self._versions.new_file_no_locked()
        f = ctx.fs.create(ctx.path(log_name(wal_no)))
        try:
            ctx.fs.fsync_dir(ctx.dir)
        except BaseException:
            f.close()
            raise
        self.retired.append(self.wal)
        self.wal = WalWriter(f, wal_no)
        self.imm = self.mem
        self.imm_cutoff = wal_no
        self.imm_seq = self.seq
        self.mem = Memtable()
        self._check_at = self.stage_bytes
        ctx.publish()
        ctx.cv.notify_all()

    def flushed_locked(self) -> None:
        """The immutable memtable is in a table now (caller holds the mutex)."""
        self.imm = None

    # ------------------------------------------------------------------ WAL files

    def take_queued_locked(self) -> list[tuple[WalWriter, list]]:
        """Every log with the items queued for it, oldest first (caller holds the mutex)."""
        retired, self.retired = self.retired, []
        chunks = [(w, w.take()) for w in retired]
        chunks.append((self.wal, self.wal.take()))
        return chunks

    def detach_logs_locked(self) -> list[WalWriter]:
        """Stop appending to every log (the disk is full): they are returned, and writes queue
        on a log without a file until `attach_wal` (caller holds the mutex)."""
        logs = [*self.retired, self.wal]
        self.retired = []
        self.wal = WalWriter(None, 0)
        return logs

    def attach_wal(self, wal: WalWriter) -> None:
        """Start appending to `wal`, a fresh log (the open's, or one after a full disk)."""
        with self._ctx.mutex:
            self.wal = wal

    def open_logs(self) -> list[WalWriter]:
        return [*self.retired, self.wal]

    # ------------------------------------------------------------------ reads

    def frozen_mem_locked(self) -> FrozenMemtable:
        """A read-only copy of the memtable, shared by snapshots until the next write."""
        mem = self.mem
        if mem.snap is None or mem.snap_seq != self.seq:
            mem.snap = mem.freeze()
            mem.snap_seq = self.seq
        return mem.snap

    def frozen_imm(self, imm: Memtable | None) -> FrozenMemtable | None:
        if imm is None:
            return None
        with self.imm_lock:
            return imm.as_frozen()
