"""Flush: the immutable memtable becomes an L0 table (built here or, when big, in a worker
process), installed through the version set together with the WAL files it makes obsolete.

The flusher thread waits for a frozen memtable; a flush that finds the disk full leaves the
memtable frozen (its writes are still in the WAL) and is retried with backoff.
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Callable
from itertools import islice

from . import offload
from .context import EngineContext
from .engine_filter import EngineFilter
from .errors import DiskFullError, EngineClosedError, StorageError, is_disk_full
from .manifest import VersionEdit
from .memtable import Memtable
from .sstable import TableBuilder, TableMeta, table_name
from .version_set import Levels, VersionSet
from .write_path import WritePath

# Memtable entries per pickled chunk sent to a flush worker: about 1 ms of GIL each.
_FLUSH_CHUNK = 2048
# The longest pause between attempts of a flush that found no room, and the first one.
MAX_BACKOFF_S = 2.0
MIN_BACKOFF_S = 0.1


class Flusher:
    """`lock` is held for a whole flush: a purge holds it to take its cut."""

    def __init__(
        self,
        ctx: EngineContext,
        versions: VersionSet,
        writer: WritePath,
        gfilter: EngineFilter,
        workers: offload.Offloader,
    ) -> None:
        self._ctx = ctx
        self._versions = versions
        self._writer = writer
        self._filter = gfilter
        self._workers = workers
        self._space = ctx.space
        self.lock = threading.Lock()
        self.flushes = 0

    def loop(self) -> None:
        """The flusher thread."""
        ctx = self._ctx
        backoff = 0.0
        while True:
            with ctx.mutex:
                while self._writer.imm is None and not ctx.closing:
                    ctx.cv.wait()
                if backoff and not ctx.closing:
                    ctx.cv.wait(backoff)
                if ctx.closing:
                    return
            try:
                self.flush_imm()
            except BaseException as e:  # noqa: BLE001
                if ctx.closing:  # a flush cut short by close is redone from the WAL
                    return
                if not is_disk_full(e):
                    ctx.fail(e)
                    return
                # The memtable stays frozen (and in the WAL): try again, less and less often.
                self._space.note_blocked("flush", e)
                backoff = min(max(backoff * 2, MIN_BACKOFF_S), MAX_BACKOFF_S)
                continue
            if self._space.flush_blocked is not None:
                self._space.note_blocked("flush", None)
                backoff = 0.0

    def flush_imm(self) -> None:
        """Flush the immutable memtable, if there is one."""
        writer = self._writer
        with self.lock:
            with self._ctx.mutex:
                imm, cutoff, last_seq = writer.imm, writer.imm_cutoff, writer.imm_seq
            if imm is not None:
                self._flush_table(imm, cutoff, last_seq)
        if imm is not None:
            # Installed and unpublished: free it here in chunks, not in one GIL-holding go.
            imm.release()

    def flush_now(self) -> None:
        """Flush what is frozen, then freeze and flush the memtable, in this thread if need be."""
        self.flush_imm()
        with self._ctx.mutex:
            if len(self._writer.mem) and self._writer.imm is None:
                self._writer.freeze_locked()
        # Whatever was written before this call is now in the immutable memtable (frozen here or
        # by a writer meanwhile), or already in a table.
        self.flush_imm()

    def flush_through(
        self,
        holds: Callable[[Memtable], bool],
        at_cut: Callable[[Levels], None] | None = None,
    ) -> Levels:
        """If the memtable `holds` something (asked under the mutex), freeze and flush it with
        every memtable frozen before it; returns the file set at that instant (flushes are held
        off meanwhile, so it has no later data). A range purge's cut, and a checkpoint's.

        `at_cut` is called with that file set under the mutex (before any later edit can
        change it): a checkpoint pins the tables there."""
        writer = self._writer
        with self.lock:
            while True:
                with self._ctx.mutex:
                    imm, cutoff, seq = writer.imm, writer.imm_cutoff, writer.imm_seq
                    last = imm is None
                    if last:
                        if not holds(writer.mem):
                            return self._cut_locked(at_cut)
                        writer.freeze_locked()
                        imm, cutoff, seq = writer.imm, writer.imm_cutoff, writer.imm_seq
                # A memtable frozen before ours (by a writer) holds older writes: flush it too.
                self._flush_table(imm, cutoff, seq)
                if last:
                    with self._ctx.mutex:
                        return self._cut_locked(at_cut)

    def _cut_locked(self, at_cut: Callable[[Levels], None] | None) -> Levels:
        levels = [list(files) for files in self._versions.levels]
        if at_cut is not None:
            at_cut(levels)
        return levels

    def _flush_table(self, imm: Memtable, cutoff: int, last_seq: int) -> None:
        ctx, versions = self._ctx, self._versions
        reader = None
        contrib = None  # the new table's key hashes as a filter, for the engine-wide filter
        if len(imm.data):
            no = versions.new_file_no()
            p = ctx.path(table_name(no))
            nwords = self._filter.words_for_table(len(imm.data))
            meta, contrib = self._offloaded(imm, no, nwords)
            if meta is None:
                meta, contrib = self._build(imm, no, nwords)
            try:
                ctx.fs.fsync_dir(ctx.dir)
            except OSError:
                versions.discard_unlisted([p])
                raise
            reader = versions.open_table(no)
        edit = VersionEdit(
            log_number=cutoff, last_seq=last_seq, added=[(0, meta)] if reader is not None else []
        )
        added = [(0, reader)] if reader is not None else []
        entries = reader.entries if reader is not None else 0

        def add_to_filter() -> None:
            if contrib is not None and entries:
                self._filter.add_table(contrib, entries)

        versions.log_and_apply(edit, added, before_visible=add_to_filter, on_applied=self._done)
        self._remove_logs_before(cutoff)
        ctx.compact_wake.set()

    def _done(self) -> None:
        self._writer.flushed_locked()
        self._ctx.publish()
        self.flushes += 1
        self._ctx.cv.notify_all()

    def _build(self, imm: Memtable, no: int, nwords: int) -> tuple[TableMeta, array | None]:
        ctx = self._ctx
        with self._writer.imm_lock:
            frozen = imm.as_frozen()
        b = TableBuilder(
            ctx.fs, ctx.path(table_name(no)), no, ctx.opts.block_bytes, ctx.opts.bloom_bits_per_key
        )
        try:
            b.add_all(frozen.keys, frozen.data)
            meta = b.finish(global_words=nwords)
        except BaseException:
            b.abandon()
            raise
        return meta, b.global_filter

    def _offloaded(
        self, imm: Memtable, no: int, nwords: int
    ) -> tuple[TableMeta | None, array | None]:
        """Build the table in a worker; (None, None) means: build it here."""
        ctx = self._ctx
        if imm.size < offload.OFFLOAD_MIN_BYTES or ctx.closing:
            return None, None
        pool = self._workers.get()
        if pool is None:
            return None, None
        # The worker sorts; this thread only pickles small chunks of the (no longer written)
        # dict: one big sort or pickle here would hold the GIL, stalling requests ~100 ms.
        entries = iter(imm.data.items())
        chunks = iter(lambda: list(islice(entries, _FLUSH_CHUNK)), [])
        try:
            meta, raw = pool.call("build_table", ctx.dir, no, ctx.opts, nwords, stream=chunks)
        except (offload.WorkerError, OSError, StorageError) as exc:
            if ctx.closing:
                raise EngineClosedError("flush abandoned: the engine is closing") from exc
            if is_disk_full(exc):
                self._versions.discard_unlisted([ctx.path(table_name(no))])
                raise DiskFullError(f"disk full: flush worker: {exc}") from exc
            self._workers.failed("flush", exc)
            return None, None
        if meta is None or meta.entries != len(imm.data):
            got = meta and meta.entries
            self._workers.failed(
                "flush", ValueError(f"worker table has {got} entries, memtable {len(imm.data)}")
            )
            return None, None
        contrib = array("Q")
        contrib.frombytes(raw)
        return meta, contrib

    def _remove_logs_before(self, cutoff: int) -> None:
        fs = self._ctx.fs
        for name in fs.listdir(self._ctx.dir):
            if name.endswith(".log") and name[:-4].isdigit() and int(name[:-4]) < cutoff:
                try:
                    fs.remove(self._ctx.path(name))
                except FileNotFoundError:
                    pass
