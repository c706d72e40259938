"""Recovery at open (LevelDB's `DBImpl::Recover` and `repair.cc`): the file set from the
MANIFEST named by CURRENT, every WAL it still needs replayed into a memtable, garbage removed.

Damage is refused with a `CorruptionError` naming the file and offset; with `repair`, what
cannot be read is dropped instead (a damaged MANIFEST is rebuilt from the readable tables,
all put in L0) and the open flushes (and, after a rebuild, fully compacts) what it recovered,
so the repaired state is self-contained.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from .context import EngineContext
from .errors import CorruptionError
from .manifest import ManifestState, load, read_current
from .memtable import Memtable
from .record import newer
from .sstable import TableMeta, TableReader, table_name
from .version_set import Levels
from .wal import replay
from .write_path import log_name

log = logging.getLogger("limedb.storage")


@dataclass
class Recovered:
    state: ManifestState
    levels: Levels  # L0 newest first, deeper levels by smallest key
    mem: Memtable  # what the WAL files held
    seq: int  # the last sequence number written
    max_ts: int  # the newest timestamp stored anywhere
    manifest: str | None  # the MANIFEST CURRENT named (the open writes a fresh one)
    needs_flush: bool  # a repair dropped or rebuilt something: persist the memtable
    needs_compaction: bool  # tables were rebuilt into L0: settle their order by merging


def recover(ctx: EngineContext, repair: bool) -> Recovered:
    """Read the database in `ctx.dir` (the caller holds its LOCK)."""
    fs, opts = ctx.fs, ctx.opts
    names = fs.listdir(ctx.dir)
    current = read_current(fs, ctx.dir)
    state: ManifestState | None = None
    rebuilt = False
    if current is not None:
        try:
            # Strict even when repairing: a damaged MANIFEST is rebuilt from the tables
            # rather than trusted up to the damage (which could forget live tables).
            state = load(fs, ctx.dir, current, opts.max_levels, repair=False)
        except CorruptionError:
            if not repair:
                raise
            log.warning("MANIFEST unreadable; rebuilding the file set from the tables")
    elif not repair and any(n.endswith(".sst") or n.startswith("MANIFEST-") for n in names):
        raise CorruptionError(ctx.path("CURRENT"), None, "missing, but tables exist")
    if state is None:
        state = ManifestState(opts.max_levels)
        if any(n.endswith(".sst") for n in names):
            rebuilt = True
            _rebuild_state(ctx, state, names)
    levels, dropped = _open_tables(ctx, state, repair)
    _bump_next_file(state, names)
    live_logs = sorted(
        no for no in (int(n[:-4]) for n in names if n.endswith(".log") and n[:-4].isdigit())
        if no >= state.log_number
    )  # fmt: skip
    mem, seq, max_ts, wal_damaged = _replay_logs(ctx, live_logs, state.last_seq, repair)
    state.last_seq = seq
    max_ts = max(max_ts, max((t.max_ts for files in levels for t in files), default=0))
    # Garbage goes first: on a full disk its room is what the new MANIFEST and WAL need.
    keep = {table_name(no) for files in state.levels for no in files}
    keep.update(log_name(no) for no in live_logs)
    if current is not None:
        keep.add(current)
    _remove_garbage(ctx, names, keep)
    return Recovered(
        state=state,
        levels=levels,
        mem=mem,
        seq=seq,
        max_ts=max_ts,
        manifest=current,
        needs_flush=bool(rebuilt or wal_damaged or dropped),
        needs_compaction=rebuilt,
    )


def _rebuild_state(ctx: EngineContext, state: ManifestState, names: list[str]) -> None:
    """Repair: every readable table in the directory becomes an L0 file."""
    for n in names:
        if not n.endswith(".sst") or not n[:-4].isdigit():
            continue
        no = int(n[:-4])
        try:
            t = TableReader(ctx.fs, ctx.path(n), no, ctx.cache)
        except CorruptionError:
            log.warning("repair: ignoring unreadable table %s", n)
            continue
        state.levels[0][no] = TableMeta(no, t.size, t.entries, t.smallest, t.largest)
        state.next_file = max(state.next_file, no + 1)


def _open_tables(
    ctx: EngineContext, state: ManifestState, repair: bool
) -> tuple[Levels, list[tuple[int, int]]]:
    """A reader for every table the state lists; with `repair`, unreadable ones are dropped
    from the state (and returned as (level, file number))."""
    levels: Levels = [[] for _ in range(ctx.opts.max_levels)]
    dropped: list[tuple[int, int]] = []
    for lvl, files in enumerate(state.levels):
        for no in sorted(files):
            p = ctx.path(table_name(no))
            try:
                if not ctx.fs.exists(p):
                    raise CorruptionError(p, None, "table listed in the MANIFEST is missing")
                levels[lvl].append(TableReader(ctx.fs, p, no, ctx.cache))
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
    return levels, dropped


def _bump_next_file(state: ManifestState, names: list[str]) -> None:
    """New files get numbers above every file in the directory, listed or not."""
    max_no = state.next_file
    for n in names:
        stem = n.split(".")[0].removeprefix("MANIFEST-")
        if stem.isdigit():
            max_no = max(max_no, int(stem) + 1)
    state.next_file = max_no


def _replay_logs(
    ctx: EngineContext, live_logs: list[int], seq: int, repair: bool
) -> tuple[Memtable, int, int, bool]:
    """Replay the WAL files the MANIFEST still needs, oldest first: (memtable, last sequence
    number, newest timestamp, whether a log was damaged or torn)."""
    mem = Memtable()
    max_ts = 0
    torn_in: str | None = None
    damaged = False
    for no in live_logs:
        p = ctx.path(log_name(no))
        batches, scan = replay(ctx.fs.read_file(p), p, repair=repair)
        if batches and torn_in is not None:
            if not repair:
                raise CorruptionError(torn_in, None, "log ends early but a later log has records")
            damaged = True
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
            # Flushed at open, so the torn log is never replayed again ahead of newer logs.
            damaged = True
    return mem, seq, max_ts, damaged


def _remove_garbage(ctx: EngineContext, names: list[str], keep: set[str]) -> None:
    """Delete what no MANIFEST or live WAL refers to (half-written tables, old logs)."""
    for n in names:
        if n in ("CURRENT", "LOCK") or n in keep:
            continue
        if n.endswith((".sst", ".log", ".tmp")) or n.startswith("MANIFEST-"):
            try:
                ctx.fs.remove(ctx.path(n))
            except FileNotFoundError:
                pass
