"""Range purge: physically removes every version in key ranges that was written before the call.

Last-writer-wins cannot forget a version (a tombstone would outrank versions the caller must
accept again later), so a purge works below it, in local write order: it takes a cut of the
engine (freezing and flushing the memtable if it holds a key of a range, so that everything
written before the call is in tables and the WAL records behind it are no longer replayed),
then rewrites, without the ranges, the tables of that cut that hold one of their keys, and
installs every rewrite with one MANIFEST edit (a purge rewriting more than a megabyte runs in
an offload worker process, as a compaction does). Writes made after the cut (memtable, and tables
flushed meanwhile) are kept whatever their timestamps. A crash before the edit leaves the
purge undone (its half-written outputs are garbage removed at the next open); after it, done.
Readers switch from the old file set to the new one in a single view swap, so no read sees a
key's newer version purged while an older one below it is still there.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from typing import TYPE_CHECKING

from . import compaction as compaction_mod
from .errors import EngineClosedError
from .manifest import VersionEdit
from .memtable import Memtable
from .offload import OFFLOAD_MIN_BYTES
from .sstable import TableReader

if TYPE_CHECKING:
    from .engine import Engine

Range = tuple[bytes, bytes | None]  # [start, end), end None: to the last key


def normalize(ranges: Iterable[Range]) -> list[Range]:
    """Sorted, disjoint, non-empty ranges (overlapping or touching ones merged)."""
    out: list[list] = []
    for start, end in sorted(ranges, key=lambda r: r[0]):
        if end is not None and end <= start:
            continue
        if out and (out[-1][1] is None or start <= out[-1][1]):
            if out[-1][1] is not None and (end is None or end > out[-1][1]):
                out[-1][1] = end
            continue
        out.append([start, end])
    return [(s, e) for s, e in out]


def _first_after(ranges: list[Range], key: bytes) -> int:
    """Index of the first range that ends after `key` (ranges sorted and disjoint)."""
    i = bisect_right([s for s, _ in ranges], key) - 1
    if i < 0:
        return 0
    end = ranges[i][1]
    return i if end is None or key < end else i + 1


def _mem_holds(mem: Memtable, ranges: list[Range]) -> bool:
    """Whether the memtable has a key in a range (caller holds the engine's write lock)."""
    if not len(mem):
        return False
    keys = mem.sorted_keys()
    for start, end in ranges:
        i = bisect_left(keys, start)
        if i < len(keys) and (end is None or keys[i] < end):
            return True
    return False


def table_holds(t: TableReader, ranges: list[Range]) -> bool:
    """Whether the table has an entry (any version) in one of the ranges."""
    i = _first_after(ranges, t.smallest)
    while i < len(ranges):
        start, end = ranges[i]
        if start > t.largest:
            return False
        if next(t.items(start, end), None) is not None:
            return True
        i += 1
    return False


def _cut(engine: Engine, ranges: list[Range]) -> list[list[TableReader]]:
    """Make every version written before now that lies in a range part of a table; returns the
    file set at that instant (flushes are held off meanwhile, so it has no later data)."""
    with engine._flush_lock:
        while True:
            with engine._lock:
                imm, cutoff, seq = engine._imm, engine._imm_cutoff, engine._imm_seq
                last = imm is None
                if last:
                    if not _mem_holds(engine._mem, ranges):
                        return [list(files) for files in engine._vset.levels]
                    engine._freeze_locked()
                    imm, cutoff, seq = engine._imm, engine._imm_cutoff, engine._imm_seq
            # A memtable frozen before ours (by a writer) holds older writes: flush it too.
            engine._flush_table(imm, cutoff, seq)
            if last:
                with engine._lock:
                    return [list(files) for files in engine._vset.levels]


def plan(levels: list[list[TableReader]], ranges: list[Range]) -> list[compaction_mod.Compaction]:
    """The rewrites that leave the ranges out of `levels`.

    L0 files overlap and their order decides which version wins, so if one holds a purged key
    they all merge into L1 (with the L1 files they overlap), as an L0 compaction would; a file
    of a deeper level is rewritten in place (its outputs stay inside its key span). Nothing is
    garbage-collected on the way: that stays compaction's job.
    """
    jobs = []
    taken: set[int] = set()
    l0 = levels[0]
    if any(table_holds(t, ranges) for t in l0):
        lo = min(t.smallest for t in l0)
        hi = max(t.largest for t in l0)
        below = [t for t in levels[1] if not (t.largest < lo or t.smallest > hi)]
        taken = {t.file_no for t in below}
        inputs = [(0, t) for t in l0] + [(1, t) for t in below]
        jobs.append(compaction_mod.Compaction(1, inputs, False, purge=ranges))
    for lvl in range(1, len(levels)):
        for t in levels[lvl]:
            if t.file_no not in taken and table_holds(t, ranges):
                jobs.append(compaction_mod.Compaction(lvl, [(lvl, t)], False, purge=ranges))
    return jobs


def purge(engine: Engine, ranges: Iterable[Range]) -> int:
    """Remove the ranges' versions written before this call; returns the tables rewritten
    (0: nothing of the ranges was stored). Returns once the result, and every write made
    before the call, is durable."""
    wanted = normalize(ranges)
    with engine._compaction_lock:  # no compaction changes the file set under the rewrite
        engine._check_open()
        # Every earlier write becomes durable first (also for an empty range: the contract
        # holds whatever the ranges): a crash never keeps the purge but loses a write before it.
        with engine._sync_lock:
            engine._do_sync(fsync=engine._durability != "none")
        if not wanted:
            return 0
        jobs = plan(_cut(engine, wanted), wanted)
        if not jobs:
            return 0
        # Background work like a compaction, so held to compaction's output rate.
        rate = engine._opts.compaction_rate_bytes_per_s
        limiter = compaction_mod.RateLimiter(rate)
        # A big purge rewrites in a worker process, like a compaction, so that purging a
        # handed-off range does not hold this process's GIL (and event loop) for seconds; its
        # jobs are often single tables just under the offload threshold, so the total decides.
        big = sum(job.input_bytes for job in jobs) >= OFFLOAD_MIN_BYTES
        try:
            for job in jobs:
                outputs = engine._offloaded_compaction(job, rate, 0) if big else None
                if outputs is None:
                    compaction_mod.run(
                        job, engine._vset.new_builder, engine._opts, limiter, engine._stopping
                    )
                else:
                    job.outputs = outputs
        except compaction_mod.CompactionAborted:
            raise EngineClosedError("purge abandoned: the engine is closing") from None
        _install(engine, jobs)
    return sum(len(job.inputs) for job in jobs)


def _install(engine: Engine, jobs: list[compaction_mod.Compaction]) -> None:
    vset = engine._vset
    if any(job.outputs for job in jobs):
        engine._fs.fsync_dir(engine._dir)
    added = [(job.output_level, vset.open_table(m.file_no)) for job in jobs for m in job.outputs]
    edit = VersionEdit(
        added=[(job.output_level, m) for job in jobs for m in job.outputs],
        removed=[(lvl, t.file_no) for job in jobs for lvl, t in job.inputs],
    )

    def purged() -> None:
        # The engine-wide filter stays valid: the outputs' keys are a subset of the inputs'.
        engine._publish_locked()
        engine._cv.notify_all()

    vset.log_and_apply(edit, added, on_applied=purged)
    engine._compact_event.set()
