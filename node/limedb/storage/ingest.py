"""Ingest of external tables: SSTable files written elsewhere (a range streamed from a peer)
become part of the LSM with one MANIFEST edit, instead of being replayed through the write path.

Reads resolve a key by level order (memtable, then L0 newest first, then deeper levels: the
first version found wins), which equals last-writer-wins only because every write is checked
against the stored version before it is applied. An external table holds versions of any age,
so it cannot simply be put above the existing data. The rule kept here: an ingested table
holds no key that any table of the engine holds, so the level it goes in does not change what
a read finds, only the compaction work that follows. It goes in at the deepest level where it
overlaps no table of that level (as RocksDB's ingest does), when no compaction is running (the
compactor's lock is free, and held to the install: a compaction under way may write outputs
across the gap the table would fill); else as the newest L0 table. Either way below the
memtables. Per key of the external table:
- a table of the engine holds the key: the entry is left out of the ingested table (which is
  then rewritten without it); if the external version is newer than the stored one, it is
  written through the write path (WAL + memtable, the usual last-writer-wins check) instead;
- only a memtable holds it: the entry stays (the memtable is above it, and stays above it
  when flushed: flushes land as newer L0 tables); if the external version is newer, it is
  also written through the write path;
- nobody holds it: the entry stays.
The look-ups go from the engine's side when it holds few keys in the external table's key span
(a joining node holds only the writes made during the transition): those keys are gathered
once, with their newest version in the memtables and in the tables, and the external table is
sorted out against them (storage/ingest_plan.py: only the blocks that may hold one of them are
decoded, every key is hashed once for the engine-wide filter) in a low-priority worker process
when the table is big, so the serving process neither decodes nor hashes it; where the engine
holds more (a node taking over ranges between ranges it already holds), every external key is
looked up, in this process.
Flushes (and range purges) are held off from the look-ups to the install, so no table gains a
key meanwhile; writes are not: the keys they put in a memtable are compared under the mutex,
at the instant the table becomes visible, and where the external version is newer it is
written through the write path after the install.

Crash safety: the table is linked (or copied) into the data directory under a number the
engine reserved, and becomes visible only with its fsynced MANIFEST edit; a crash before the
edit leaves an unreferenced file that the next open deletes, a crash after it the table. The
write-path part comes after the edit: a crash in between leaves those keys at their stored
(older) versions, as they were before the ingest, until the ingest is repeated (re-sending a
table is harmless: every version in it then loses to, or equals, what is stored).
"""

from __future__ import annotations

import posixpath
import threading
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from .block_cache import BlockCache
from .bloom import GlobalFilter, build_words, key_hash, probe_mask
from .checkpoint import place_table
from .context import EngineContext
from .engine_filter import EngineFilter
from .errors import StorageError
from .flush import Flusher
from .ingest_plan import Sorted, decide, sort_out
from .manifest import VersionEdit
from .memtable import FrozenMemtable, Memtable
from .offload import OFFLOAD_MIN_BYTES, Offloader, WorkerError
from .record import EXPIRES, TOMBSTONE, Rec, newer
from .snapshot import View, tables_lookup
from .sstable import TableBuilder, TableMeta, TableReader, table_name
from .version_set import VersionSet
from .write_path import WritePath

# Versions written through the write path per batch (one WAL record each).
_WRITE_BATCH = 512
# The engine's keys in an external table's span are gathered (instead of every external key
# looked up) while they are at most this fraction of the table's entries.
_SPAN_SHARE = 4


@dataclass
class IngestResult:
    """What an ingest did: tables installed (and the entries in them), versions written
    through the write path because they were newer than a stored one, and versions left out
    because what is stored is as new or newer."""

    tables: int = 0
    entries: int = 0
    bytes: int = 0
    written: int = 0
    superseded: int = 0
    file_nos: list[int] = field(default_factory=list)
    levels: list[int] = field(default_factory=list)  # each table's level


__all__ = ["IngestResult", "Ingester", "as_batch_ops", "decide", "fit_level"]


def _table_lookup(view: View, key: bytes) -> Rec | None:
    """The version the tables of `view` (not its memtables) resolve `key` to."""
    return tables_lookup(view.gwords, view.gmask, view.l0, view.levels, key)


def _memtable_lookup(view: View, key: bytes) -> Rec | None:
    rec = view.mem.data.get(key)
    if rec is None and view.imm is not None:
        rec = view.imm.data.get(key)
    return rec


@dataclass
class _Plan:
    """One external table, sorted out against the engine."""

    reader: TableReader
    # The filter contribution: the hashes of the kept keys (or of every key: a table holds
    # the left-out ones), as filter words.
    words: array = field(default_factory=lambda: array("Q"))
    dropped: set[bytes] = field(default_factory=set)
    to_write: list[tuple[bytes, Rec]] = field(default_factory=list)
    superseded: int = 0  # versions that lose to (or equal) the stored one
    # Keys whose memtable version the plan compared: a later write there is newer still.
    compared: set[bytes] = field(default_factory=set)

    @property
    def kept(self) -> int:
        return self.reader.entries - len(self.dropped)


class Ingester:
    def __init__(
        self,
        ctx: EngineContext,
        versions: VersionSet,
        writer: WritePath,
        flusher: Flusher,
        gfilter: EngineFilter,
        view: Callable[[], View],
        write: Callable[[list[tuple[bytes, Rec]]], None],
        compaction_lock: threading.Lock,
        workers: Offloader | None = None,
    ) -> None:
        self._ctx = ctx
        self._workers = workers
        self._compaction_lock = compaction_lock
        self._versions = versions
        self._writer = writer
        self._flusher = flusher
        self._filter = gfilter
        self._view = view
        self._write = write
        # Test hook: called between the look-ups and the install (writes may land there).
        self.before_install: Callable[[], None] | None = None

    def ingest(self, paths: list[str]) -> IngestResult:
        """Ingest the tables at `paths` (key ranges must not overlap each other)."""
        ctx = self._ctx
        readers = [TableReader(ctx.fs, p, 0, BlockCache(0)) for p in paths]
        readers.sort(key=lambda t: t.smallest)
        for a, b in zip(readers, readers[1:], strict=False):
            if b.smallest <= a.largest:
                raise ValueError(f"tables to ingest overlap: {a.path} and {b.path}")
        result = IngestResult()
        late: list[tuple[bytes, Rec]] = []
        # Taken before the flusher's lock, as a purge does; never waited for.
        deep = self._compaction_lock.acquire(blocking=False)
        try:
            with self._flusher.lock:  # no flush or purge adds keys to a table from here on
                plans = [self._plan(r) for r in readers]
                if self.before_install is not None:
                    self.before_install()
                added, placed = self._place(plans, deep)
                try:
                    if added:
                        late = self._install(plans, added)
                except BaseException:
                    self._versions.discard_unlisted(placed)
                    raise
        finally:
            if deep:
                self._compaction_lock.release()
        for lvl, t in added:
            result.levels.append(lvl)
            result.tables += 1
            result.entries += t.entries
            result.bytes += t.size
            result.file_nos.append(t.file_no)
        writes = [w for p in plans for w in p.to_write] + late
        self._write_all(writes)
        result.written = len(writes)
        result.superseded = sum(p.superseded for p in plans)
        return result

    def _plan(self, reader: TableReader) -> _Plan:
        """Sort out every key of the external table against the engine (every block's
        checksum is verified): from the engine's keys in the table's span when they are few,
        else key by key."""
        stored = _stored_in_span(self._view(), reader, reader.entries // _SPAN_SHARE)
        if stored is None:
            return self._plan_by_key(reader)
        in_mem, in_tables = stored
        out = self._sort_out(reader, in_mem, in_tables)
        words = array("Q")
        words.frombytes(out.words)
        return _Plan(
            reader,
            words,
            set(out.dropped),
            out.to_write,
            out.superseded,
            compared=set(in_mem),
        )

    def _sort_out(
        self, reader: TableReader, in_mem: dict[bytes, Rec], in_tables: dict[bytes, Rec]
    ) -> Sorted:
        """`ingest_plan.sort_out` of `reader`, in a low-priority worker process when the table
        is big (a worker failing sorts it out here: a damaged table then raises here too)."""
        ctx = self._ctx
        nwords = self._filter.words_for_table(reader.entries)
        pool = None
        if self._workers is not None and reader.size >= OFFLOAD_MIN_BYTES:
            pool = self._workers.get(background=True)
        if pool is not None:
            try:
                return pool.call("ingest_plan", reader.path, nwords, in_mem, in_tables)
            except (WorkerError, OSError) as exc:
                if ctx.closing:
                    raise
                failed: BaseException | None = exc
        else:
            failed = None
        out = sort_out(ctx.fs, reader.path, nwords, in_mem, in_tables)
        if failed is not None and self._workers is not None:
            self._workers.failed("ingest plan", failed)
        return out

    def _plan_by_key(self, reader: TableReader) -> _Plan:
        """Look up every key of the external table in the engine."""
        plan = _Plan(reader)
        kept_hashes: list[int] = []
        current = self._view
        for i in range(reader.nblocks):
            for key, rec in reader.load_block(i).items():
                view = current()
                in_mem, in_tables = _memtable_lookup(view, key), _table_lookup(view, key)
                keep, write = decide(rec, in_mem, in_tables)
                if not write and (in_mem is not None or in_tables is not None):
                    plan.superseded += 1
                if keep:
                    kept_hashes.append(key_hash(key))
                else:
                    plan.dropped.add(key)
                if write:
                    plan.to_write.append((key, rec))
        plan.words = build_words(kept_hashes, self._filter.words_for_table(len(kept_hashes)))
        return plan

    def _place(
        self, plans: list[_Plan], deep: bool
    ) -> tuple[list[tuple[int, TableReader]], list[str]]:
        """Put each table's kept entries in the data directory under a reserved number: the
        external file itself (linked, else copied) when it keeps everything, else a rewrite;
        each with its level (`deep`: the deepest it fits in, else 0)."""
        ctx, versions = self._ctx, self._versions
        added: list[tuple[int, TableReader]] = []
        placed: list[str] = []
        try:
            for plan in plans:
                if not plan.kept:
                    continue
                no = versions.new_file_no()
                dst = ctx.path(table_name(no))
                placed.append(dst)
                if plan.dropped:
                    self._rewrite(plan, no, dst)
                else:
                    place_table(ctx.fs, plan.reader.path, dst, True)
            if placed:
                ctx.fs.fsync_dir(ctx.dir)
            for plan, dst in zip([p for p in plans if p.kept], placed, strict=True):
                no = int(posixpath.basename(dst)[:-4])
                table = versions.open_table(no)
                lvl = fit_level(versions.levels, table) if deep else 0
                added.append((lvl, table))
                if added[-1][1].entries != plan.kept:
                    raise StorageError(f"ingested table {dst} does not hold the kept entries")
        except BaseException:
            versions.discard_unlisted(placed)
            raise
        return added, placed

    def _rewrite(self, plan: _Plan, no: int, dst: str) -> None:
        opts = self._ctx.opts
        b = TableBuilder(self._ctx.fs, dst, no, opts.block_bytes, opts.bloom_bits_per_key)
        try:
            dropped = plan.dropped
            for i in range(plan.reader.nblocks):
                blk = plan.reader.load_block(i)
                keys = [k for k in blk if k not in dropped]
                if keys:
                    b.add_all(keys, blk)
            b.finish()
        except BaseException:
            b.abandon()
            raise

    def _install(
        self, plans: list[_Plan], added: list[tuple[int, TableReader]]
    ) -> list[tuple[bytes, Rec]]:
        """One MANIFEST edit for every table; returns the versions that writes made during the
        ingest left older in a memtable (to be written through the write path)."""
        ctx, writer = self._ctx, self._writer
        kept = [p for p in plans if p.kept]
        metas = [
            (lvl, TableMeta(t.file_no, t.size, t.entries, t.smallest, t.largest))
            for lvl, t in added
        ]
        edit = VersionEdit(added=metas)
        late: list[tuple[bytes, Rec]] = []
        max_ts = max(t.max_ts for _, t in added)

        def add_to_filter() -> None:
            for plan, (_, table) in zip(kept, added, strict=True):
                self._filter.add_table(plan.words, table.entries, ingested=True)

        def applied() -> None:
            # Under the mutex, as the tables become visible: from now on every write is
            # checked against them; the ones that came before are compared here.
            writer.observe_locked(max_ts)
            for plan, (_, table) in zip(kept, added, strict=True):
                pending = {k for k, _ in plan.to_write} | plan.compared
                for mem in (writer.mem, writer.imm):
                    late.extend(_older_in(mem, table, plan.dropped, pending))
            ctx.publish()

        # L0 (ordered by file number on open): no flush is under way, so every later flush
        # gets a higher number than these, and lands above them, as it does now. Deeper: no
        # compaction is under way (the caller holds the compactor's lock).
        newest_first = sorted(added, key=lambda a: a[1].file_no, reverse=True)
        self._versions.log_and_apply(
            edit, newest_first, before_visible=add_to_filter, on_applied=applied
        )
        ctx.compact_wake.set()
        return late

    def _write_all(self, writes: list[tuple[bytes, Rec]]) -> None:
        for i in range(0, len(writes), _WRITE_BATCH):
            self._write(writes[i : i + _WRITE_BATCH])


def fit_level(levels: list[list[TableReader]], table: TableReader) -> int:
    """The deepest level (L1 or below) where `table` overlaps no table, else 0 (the tables of
    one ingest overlap each other nowhere, so they need not be counted)."""
    for lvl in range(len(levels) - 1, 0, -1):
        if not any(
            not (t.largest < table.smallest or t.smallest > table.largest) for t in levels[lvl]
        ):
            return lvl
    return 0


def _stored_in_span(
    view: View, reader: TableReader, limit: int
) -> tuple[dict[bytes, Rec], dict[bytes, Rec]] | None:
    """The newest version, in the memtables and in the tables of `view`, of every key the
    engine holds in `reader`'s key span; None when there are more than `limit` of them."""
    lo, hi = reader.smallest, reader.largest
    in_mem: dict[bytes, Rec] = {}
    for mem in (view.imm, view.mem):  # oldest first: the live memtable's version wins
        if mem is None:
            continue
        data = mem.data
        # list() copies the keys in one step (the writer may add keys meanwhile).
        for key in list(data) if len(in_mem) <= limit else ():
            if lo <= key <= hi:
                rec = data.get(key)
                if rec is not None:
                    in_mem[key] = rec
    if len(in_mem) > limit:
        return None
    in_tables: dict[bytes, Rec] = {}
    tables = View(FrozenMemtable({}, []), None, view.all_levels, GlobalFilter.passthrough())
    for key, rec in tables.iter_recs(lo, hi + b"\0"):
        in_tables[key] = rec
        if len(in_tables) > limit:
            return None
    return in_mem, in_tables


def _older_in(
    mem: Memtable | None, table: TableReader, dropped: set[bytes], pending: set[bytes]
) -> list[tuple[bytes, Rec]]:
    """(key, the table's version) where `mem` holds an older version of a key the table
    holds (keys in `pending` are written anyway, `dropped` ones are not in it)."""
    if mem is None or not mem.data:
        return []
    out = []
    lo, hi, data = table.smallest, table.largest, mem.data
    for key in data:
        if key < lo or key > hi or key in pending or key in dropped:
            continue
        h = key_hash(key)
        if not table.may_contain(h, probe_mask(h)):
            continue
        rec = table.get(key)
        if rec is not None and newer(rec, data[key]):
            out.append((key, rec))
    return out


def as_batch_ops(
    items: list[tuple[bytes, Rec]],
) -> list[tuple[bool, bytes, bytes, int, int | None]]:
    """WriteBatch operations that store exactly these versions."""
    return [
        (bool(flags & TOMBSTONE), key, value, ts, exp if flags & EXPIRES else None)
        for key, (ts, value, flags, exp) in items
    ]
