"""The compactor: runs leveled compactions (compaction.py picks and merges) in the background,
big ones in a worker process, and installs each through the version set. It also rebuilds the
engine-wide filter when that is due, since both must not run while tables disappear.

A compaction that finds the disk full leaves its inputs as they are (its outputs are deleted)
and is retried with backoff.
"""

from __future__ import annotations

import dataclasses
import threading
from array import array

from . import compaction as compaction_mod
from . import offload
from .context import EngineContext
from .engine_filter import EngineFilter
from .errors import is_disk_full, refusal
from .flush import MAX_BACKOFF_S, MIN_BACKOFF_S
from .manifest import VersionEdit
from .sstable import TableMeta, TableReader, table_name
from .version_set import VersionSet

# An engine-wide filter over at least this many keys is built in a worker process.
_OFFLOAD_MIN_KEYS = 50_000


class Compactor:
    """`lock` is held for a whole compaction (or filter rebuild): a purge holds it too."""

    def __init__(
        self,
        ctx: EngineContext,
        versions: VersionSet,
        gfilter: EngineFilter,
        workers: offload.Offloader,
    ) -> None:
        self._ctx = ctx
        self._versions = versions
        self._filter = gfilter
        self._workers = workers
        self._space = ctx.space
        self.lock = threading.Lock()
        self._pointers: dict[int, bytes] = {}
        self.compactions = 0
        self.compacted_bytes = 0

    def stopping(self) -> bool:
        return self._ctx.closing

    def loop(self) -> None:
        """The compactor thread."""
        ctx = self._ctx
        backoff = 0.0
        while not ctx.closing:
            ctx.compact_wake.wait(backoff or 1.0)
            ctx.compact_wake.clear()
            try:
                self.pending()
            except compaction_mod.CompactionAborted:
                return
            except BaseException as e:  # noqa: BLE001
                if ctx.closing or not is_disk_full(e):
                    ctx.fail(e)
                    return
                # Inputs stay as they are; the outputs were deleted. Try again later.
                self._space.note_blocked("compaction", e)
                backoff = min(max(backoff * 2, MIN_BACKOFF_S * 5), MAX_BACKOFF_S * 2)
                continue
            if self._space.compaction_blocked is not None:
                self._space.note_blocked("compaction", None)
                backoff = 0.0

    def pending(self, *, rate: int | None = None) -> int:
        """Run leveled compactions until no level needs one; returns how many ran.

        The background thread's body; tests without background threads call it directly.
        """
        ctx = self._ctx
        done = 0
        while not ctx.closing and ctx.error is None and self._versions.has_manifest:
            with self.lock:
                if self._filter.due():
                    self.rebuild_filter()
                with ctx.mutex:
                    c = compaction_mod.pick(self._versions.levels, ctx.opts, self._pointers)
                if c is None:
                    break
                self._run(c, rate=rate)
                done += 1
        return done

    def full(self) -> None:
        """Merge every table into the deepest level (tombstones past their grace dropped)."""
        with self.lock:
            with self._ctx.mutex:
                c = compaction_mod.full(self._versions.levels)
            if c is not None:
                self._run(c, rate=0)

    def rebuild_filter(self) -> None:
        """Rebuild the engine-wide filter (caller holds `lock`)."""
        self._filter.rebuild(self._filter_words)

    def _filter_words(self, tables: list[TableReader], nwords: int) -> array:
        total = sum(t.entries for t in tables)
        pool = self._workers.get() if total >= _OFFLOAD_MIN_KEYS else None
        if pool is not None:
            try:
                raw = pool.call("global_filter", self._ctx.dir, [t.file_no for t in tables], nwords)
                words = array("Q")
                words.frombytes(raw)
                return words
            except (offload.WorkerError, OSError) as exc:
                if self._ctx.closing:
                    raise compaction_mod.CompactionAborted() from exc
                self._workers.failed("filter build", exc)
        return offload.table_filter(tables, nwords)

    def run_job(self, c: compaction_mod.Compaction, limiter: compaction_mod.RateLimiter) -> None:
        """Write a job's outputs in this process (into `c.outputs`), at the limiter's rate."""
        compaction_mod.run(c, self._versions.new_builder, self._ctx.opts, limiter, self.stopping)

    def _run(self, c: compaction_mod.Compaction, *, rate: int | None = None) -> None:
        ctx, versions = self._ctx, self._versions
        rate = ctx.opts.compaction_rate_bytes_per_s if rate is None else rate
        outputs = self.run_offloaded(c, rate)
        if outputs is None:
            try:
                self.run_job(c, compaction_mod.RateLimiter(rate))
            except OSError:
                versions.discard_unlisted([ctx.path(table_name(m.file_no)) for m in c.outputs])
                raise
            outputs = c.outputs
        if outputs:
            try:
                ctx.fs.fsync_dir(ctx.dir)
            except OSError:
                versions.discard_unlisted([ctx.path(table_name(m.file_no)) for m in outputs])
                raise
        readers = [(c.output_level, versions.open_table(m.file_no)) for m in outputs]
        edit = VersionEdit(
            added=[(c.output_level, m) for m in outputs],
            removed=[(lvl, t.file_no) for lvl, t in c.inputs],
        )
        written = sum(m.size for m in outputs)

        def compacted() -> None:
            # The engine-wide filter needs no change: output keys are input keys.
            ctx.publish()
            self.compactions += 1
            self.compacted_bytes += written
            ctx.cv.notify_all()

        versions.log_and_apply(edit, readers, on_applied=compacted)

    def run_offloaded(
        self,
        c: compaction_mod.Compaction,
        rate: int,
        min_bytes: int = offload.OFFLOAD_MIN_BYTES,
        *,
        background: bool = False,
    ) -> list[TableMeta] | None:
        """Run `c` in a worker process (`background`: the low-priority pool's); None means:
        run it here."""
        if c.input_bytes < min_bytes:
            return None
        pool = self._workers.get(background=background)
        if pool is None:
            return None
        ctx = self._ctx
        reserve = c.input_bytes // max(1, ctx.opts.target_file_bytes) + 4
        numbers = self._versions.reserve_file_nos(reserve)
        opts = dataclasses.replace(ctx.opts, compaction_rate_bytes_per_s=rate)
        inputs = [(lvl, t.file_no) for lvl, t in c.inputs]
        try:
            return pool.call(
                "compact", ctx.dir, inputs, c.output_level, c.bottom, opts, numbers, c.purge
            )
        except (offload.WorkerError, OSError) as exc:
            if ctx.closing:
                raise compaction_mod.CompactionAborted() from exc
            if is_disk_full(exc):
                # The worker's finished outputs are unlisted: their room is needed.
                names = set(ctx.fs.listdir(ctx.dir))
                made = [table_name(no) for no in numbers if table_name(no) in names]
                self._versions.discard_unlisted([ctx.path(n) for n in made])
                raise refusal(f"disk full: compaction worker: {exc}", exc) from exc
            self._workers.failed("compaction", exc)
            return None
