"""Flush: the immutable memtable becomes an L0 table (built here or, when big, in a worker
process), installed through the version set together with the WAL files it makes obsolete.

The flusher thread waits for a frozen memtable; a flush that finds the disk full leaves the
memtable frozen (its writes are still in the WAL) and is retried with backoff.
"""

from __future__ import annotations

import threading
import time
from array import array
from collections.abc import Callable, Iterator
from itertools import islice

from . import offload
from .context import EngineContext
from .engine_filter import EngineFilter
from .errors import EngineClosedError, StorageError, is_disk_full, refusal
from .manifest import VersionEdit
from .memtable import ENTRY_OVERHEAD, Memtable
from .record import Rec
from .sstable import TableBuilder, TableMeta, table_name
from .version_set import Levels, VersionSet
from .write_path import WritePath

# Memtable entries per pickled chunk sent to a flush worker: about 1 ms of GIL each.
_FLUSH_CHUNK = 2048
# While a memtable fills: the most entries in one chunk (a worker catching up), and how often
# the flusher looks for new entries (writers do not wake it per write).
_STAGE_CHUNK_MAX = 8192
STAGE_POLL_S = 0.01
# A memtable that stops growing for this long gives its worker back (its flush then sends it
# whole, as without staging).
STAGE_IDLE_S = 1.0
# The longest pause between attempts of a flush that found no room, and the first one.
MAX_BACKOFF_S = 2.0
MIN_BACKOFF_S = 0.1


class _Staged:
    """A memtable being shipped to a worker while it fills; `entries` (the worker's count of
    its keys) is set once all of it is there, the memtable frozen."""

    __slots__ = ("mem", "worker", "pool", "complete", "entries")

    def __init__(self, mem: Memtable, worker: offload.Worker, pool: offload.WorkerPool) -> None:
        self.mem: Memtable | None = mem
        self.worker = worker
        self.pool = pool
        self.complete = False
        self.entries: int | None = None


class Flusher:
    """`lock` is held for a whole flush: a purge holds it to take its cut.

    Staging: once the memtable passes `WritePath.stage_bytes`, the staging thread ships its
    entries to a worker of its own as they are written (the worker hashes them into the
    filters meanwhile), so that once it is frozen the worker only has the last few entries to
    receive before sorting and writing the table: a flush then takes about the time of its
    sort and its blocks, not also of shipping and hashing a whole memtable, and writers stall
    less on a memtable that is still being flushed. A staged memtable is built only by the
    flush of that same memtable (`_take_staged`), under `lock` as every flush; staging itself
    writes nothing and reserves no file number. It takes a worker only when one is idle and
    nobody waits for one (a compaction keeps its turn)."""

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
        self.staged_flushes = 0  # of which built from a staged memtable
        # Guarded by the mutex: the stage under way, and the complete one waiting for its flush.
        self._staging: _Staged | None = None
        self._staged: _Staged | None = None
        opts = ctx.opts
        if workers.enabled and opts.memtable_bytes >= 2 * offload.OFFLOAD_MIN_BYTES:
            writer.stage_bytes = max(offload.OFFLOAD_MIN_BYTES, opts.memtable_bytes // 8)

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

    # ------------------------------------------------------------------ staging

    @property
    def staging(self) -> bool:
        """Whether the engine runs `stage_loop` (a thread of its own)."""
        return self._writer.stage_bytes < self._ctx.opts.memtable_bytes

    def stage_loop(self) -> None:
        """The staging thread: ships each memtable that passes `stage_bytes` to a worker."""
        ctx = self._ctx
        while True:
            with ctx.mutex:
                while not ctx.closing and not self._stage_due_locked():
                    ctx.cv.wait()
                if ctx.closing:
                    return
            worker = self._free_worker()
            if worker is not None:
                self._stage(*worker)
            else:
                with ctx.mutex:  # every worker busy (or wanted): look again shortly
                    ctx.cv.wait(STAGE_POLL_S)

    def _stage_due_locked(self) -> bool:
        mem = self._writer.mem
        return mem.size >= self._writer.stage_bytes and not mem.stage_tried

    def _free_worker(self) -> tuple[offload.Worker, offload.WorkerPool] | None:
        pool = self._workers.get()
        if pool is None:
            return None
        try:
            worker = pool.acquire(wait=False)
        except offload.WorkerError:
            return None
        return None if worker is None else (worker, pool)

    def _stage(self, worker: offload.Worker, pool: offload.WorkerPool) -> None:
        """Ship the memtable to `worker` while it fills, until it is frozen (the worker then
        holds all of it for its flush), or give up: the engine closes, the memtable is
        flushed by another thread, or it stops growing. One try per memtable."""
        ctx = self._ctx
        with ctx.mutex:
            mem = self._writer.mem
            mem.stage_tried = True
            st = self._staging = _Staged(mem, worker, pool)
        max_entries = ctx.opts.memtable_bytes // ENTRY_OVERHEAD + 1
        nwords = self._filter.words_for_table(max_entries)
        bits = ctx.opts.bloom_bits_per_key
        count = None
        try:
            count = worker.call("stage", bits, max_entries, nwords, stream=self._chunks(st))
        except (offload.WorkerError, OSError) as exc:
            if not ctx.closing:
                self._workers.failed("flush staging", exc)
        old = None
        with ctx.mutex:
            self._staging = None
            keep = count is not None and st.complete
            if keep:
                st.entries = count
                old, self._staged = self._staged, st  # for the flush of that memtable
            ctx.cv.notify_all()
        if old is not None:  # one no flush took (its memtable was flushed some other way)
            old.mem = None
            old.pool.release(old.worker)
        if not keep:
            st.mem = None
            pool.release(worker)

    def _chunks(self, st: _Staged) -> Iterator[list[tuple[bytes, Rec]]]:
        """The staged memtable's entries in the order written (a key again after each of its
        writes), in chunks as they come; ends with `st.complete` set once the memtable is
        frozen and all of it sent. Never raises: the worker must see the stream's end."""
        ctx, writer, mem = self._ctx, self._writer, st.mem
        assert mem is not None
        sent = seen = 0
        grew = time.monotonic()
        while True:
            with ctx.mutex:
                while True:
                    if ctx.closing:
                        return
                    live = writer.mem is mem
                    if not live and writer.imm is not mem:
                        return  # flushed meanwhile by another thread, without this stage
                    n = len(mem.order)
                    if n - sent >= _FLUSH_CHUNK or (not live and n > sent):
                        break
                    if not live:
                        st.complete = True
                        return
                    now = time.monotonic()
                    if n != seen:
                        seen, grew = n, now
                    elif now - grew > STAGE_IDLE_S:
                        return
                    ctx.cv.wait(STAGE_POLL_S)
                keys = mem.order[sent : sent + _STAGE_CHUNK_MAX]
                chunk = list(zip(keys, map(mem.data.__getitem__, keys), strict=True))
            sent += len(keys)
            yield chunk

    def _take_staged(self, imm: Memtable) -> _Staged | None:
        """The stage holding all of `imm`, if staging got it there (the caller releases its
        worker to the pool); a stage of another memtable that is complete is dropped."""
        with self._ctx.mutex:
            # Being shipped: once frozen, it is there after its last few entries (or given up).
            while self._staging is not None and self._staging.mem is imm:
                self._ctx.cv.wait()
            st = self._staged
            if st is None:
                return None  # never staged, or given up: this flush sends the memtable itself
            self._staged = None
        mem, st.mem = st.mem, None
        if mem is imm and st.entries == len(imm.data):
            return st
        st.pool.release(st.worker)
        return None

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
        staged = self._take_staged(imm)
        pool = self._workers.get()
        if pool is None:
            if staged is not None:
                staged.pool.release(staged.worker)
            return None, None
        if staged is None and (imm.size < offload.OFFLOAD_MIN_BYTES or ctx.closing):
            return None, None
        try:
            if staged is not None:
                try:
                    job = ("build_staged", ctx.dir, no, ctx.opts, nwords, len(imm.data))
                    meta, raw = staged.worker.call(*job)
                    self.staged_flushes += 1
                finally:
                    staged.pool.release(staged.worker)
            else:
                # The worker sorts; this thread only pickles small chunks of the (no longer
                # written) dict: one big sort or pickle here would hold the GIL, stalling
                # requests ~100 ms.
                entries = iter(imm.data.items())
                chunks = iter(lambda: list(islice(entries, _FLUSH_CHUNK)), [])
                job = ("build_table", ctx.dir, no, ctx.opts, nwords, len(imm.data))
                meta, raw = pool.call(*job, stream=chunks)
        except (offload.WorkerError, OSError, StorageError) as exc:
            if ctx.closing:
                raise EngineClosedError("flush abandoned: the engine is closing") from exc
            if is_disk_full(exc):
                self._versions.discard_unlisted([ctx.path(table_name(no))])
                raise refusal(f"disk full: flush worker: {exc}", exc) from exc
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
