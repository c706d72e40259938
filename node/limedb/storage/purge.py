"""Range purge: physically removes every version in key ranges that was written before the call.

Last-writer-wins cannot forget a version (a tombstone would outrank versions the caller must
accept again later), so a purge works below it, in local write order: it takes a cut of the
engine (freezing and flushing the memtable if it holds a key of a range, so that everything
written before the call is in tables and the WAL records behind it are no longer replayed),
then rewrites, without the ranges, the tables of that cut that hold one of their keys, and
installs every rewrite with one MANIFEST edit (a purge rewriting more than a megabyte runs in
the low-priority offload worker process, as a range cut does). Writes made after the cut
(memtable, and tables flushed meanwhile) are kept whatever their timestamps. A crash before the edit leaves the
purge undone (its half-written outputs are garbage removed at the next open); after it, done.
Readers switch from the old file set to the new one in a single view swap, so no read sees a
key's newer version purged while an older one below it is still there.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable

from . import compaction as compaction_mod
from .compactor import Compactor
from .context import EngineContext
from .errors import EngineClosedError
from .flush import Flusher
from .group_commit import LogSyncer
from .manifest import VersionEdit
from .memtable import Memtable
from .offload import OFFLOAD_MIN_BYTES
from .sstable import TableReader
from .version_set import VersionSet

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
    """Whether the memtable has a key in a range (caller holds the engine's mutex)."""
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


class Purger:
    """Runs range purges with the engine's parts: its syncer, flusher, compactor, version set."""

    def __init__(
        self,
        ctx: EngineContext,
        versions: VersionSet,
        syncer: LogSyncer,
        flusher: Flusher,
        compactor: Compactor,
    ) -> None:
        self._ctx = ctx
        self._versions = versions
        self._syncer = syncer
        self._flusher = flusher
        self._compactor = compactor
        self.purged_bytes = 0  # bytes of tables rewritten by purges since the engine opened

    def purge(self, ranges: Iterable[Range]) -> int:
        """Remove the ranges' versions written before this call; returns the tables rewritten
        (0: nothing of the ranges was stored). Returns once the result, and every write made
        before the call, is durable."""
        wanted = normalize(ranges)
        with self._compactor.lock:  # no compaction changes the file set under the rewrite
            self._ctx.check_open()
            # Every earlier write becomes durable first (also for an empty range: the contract
            # holds whatever the ranges): a crash never keeps the purge but loses a write before.
            self._syncer.sync()
            if not wanted:
                return 0
            cut = self._flusher.flush_through(lambda mem: _mem_holds(mem, wanted))
            jobs = plan(cut, wanted)
            if not jobs:
                return 0
            self._rewrite(jobs)
            self._install(jobs)
            self.purged_bytes += sum(job.input_bytes for job in jobs)
        return sum(len(job.inputs) for job in jobs)

    def _rewrite(self, jobs: list[compaction_mod.Compaction]) -> None:
        # Background work like a compaction, so held to compaction's output rate.
        rate = self._ctx.opts.compaction_rate_bytes_per_s
        limiter = compaction_mod.RateLimiter(rate)
        # A big purge rewrites in a worker process, like a compaction, so that purging a
        # handed-off range does not hold this process's GIL (and event loop) for seconds; its
        # jobs are often single tables just under the offload threshold, so the total decides.
        # The low-priority worker's (offload.BACKGROUND_NICE): the old owners of ranges a node
        # took over all purge them at once, right after the transition, and would otherwise
        # take the cores from the client requests they serve meanwhile.
        big = sum(job.input_bytes for job in jobs) >= OFFLOAD_MIN_BYTES
        try:
            for job in jobs:
                run = self._compactor.run_offloaded
                outputs = run(job, rate, 0, background=True) if big else None
                if outputs is None:
                    self._compactor.run_job(job, limiter)
                else:
                    job.outputs = outputs
        except compaction_mod.CompactionAborted:
            raise EngineClosedError("purge abandoned: the engine is closing") from None

    def _install(self, jobs: list[compaction_mod.Compaction]) -> None:
        ctx, versions = self._ctx, self._versions
        if any(job.outputs for job in jobs):
            ctx.fs.fsync_dir(ctx.dir)
        outputs = [(job.output_level, m) for job in jobs for m in job.outputs]
        edit = VersionEdit(
            added=outputs, removed=[(lvl, t.file_no) for job in jobs for lvl, t in job.inputs]
        )

        def purged() -> None:
            # The engine-wide filter stays valid: the outputs' keys are a subset of the inputs'.
            ctx.publish()
            ctx.cv.notify_all()

        added = [(lvl, versions.open_table(m.file_no)) for lvl, m in outputs]
        versions.log_and_apply(edit, added, on_applied=purged)
        ctx.compact_wake.set()
