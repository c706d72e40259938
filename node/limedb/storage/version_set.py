"""The version set: the live tables of every level, the MANIFEST recording them, file numbers.

Every change to the file set (a flush adding an L0 table, a compaction or a purge replacing
tables) goes through one operation, `log_and_apply` (LevelDB's `VersionSet::LogAndApply`): the
edit is appended to the MANIFEST and fsynced, and only then, under the engine's mutex, applied
to the in-memory state and the level lists that readers see. Tables an edit removed are deleted
after it is installed, unless a checkpoint has pinned them (then when the last pin goes); tables
of an edit that could not be logged are deleted at once (on a full disk their room is what the
retry needs).
"""

from __future__ import annotations

import posixpath
import threading
from collections.abc import Callable

from .context import EngineContext
from .errors import CorruptionError, DiskFullError
from .manifest import ManifestState, ManifestWriter, VersionEdit, manifest_name, read_current
from .sstable import TableBuilder, TableReader, table_name

Levels = list[list[TableReader]]


class VersionSet:
    """Owns `levels` (L0 newest first, deeper levels by smallest key) and the MANIFEST.

    `mutex` is the engine's mutex: it guards `levels`, `state` and the file-number counter.
    `install_lock` serializes MANIFEST appends and file-set changes; it is taken before the
    mutex, never while holding it.
    """

    def __init__(
        self, ctx: EngineContext, state: ManifestState, levels: Levels, old_manifest: str | None
    ) -> None:
        self._ctx = ctx
        self._fs = ctx.fs
        self._dir = ctx.dir
        self.mutex = ctx.mutex
        self.state = state
        self.levels = levels
        self.install_lock = threading.Lock()
        self._manifest: ManifestWriter | None = None
        self._manifest_broken = False
        self._old_manifest = old_manifest  # replaced by a fresh MANIFEST in `open_manifest`
        # Tables a checkpoint is linking or copying (file number -> pin count), and those of
        # them an edit removed meanwhile (file number -> path): deleted when unpinned.
        self._pins: dict[int, int] = {}
        self._deferred: dict[int, str] = {}

    # ------------------------------------------------------------------ files

    def path(self, name: str) -> str:
        return posixpath.join(self._dir, name)

    def new_file_no(self) -> int:
        with self.mutex:
            return self.new_file_no_locked()

    def new_file_no_locked(self) -> int:
        """The next file number (caller holds the mutex)."""
        no = self.state.next_file
        self.state.next_file += 1
        return no

    def reserve_file_nos(self, count: int) -> list[int]:
        """`count` consecutive file numbers, e.g. for the outputs of a worker process."""
        with self.mutex:
            first = self.state.next_file
            self.state.next_file += count
        return list(range(first, first + count))

    def new_builder(self) -> TableBuilder:
        """A builder for a new table file (the output of a flush, compaction or purge)."""
        no = self.new_file_no()
        return TableBuilder(
            self._fs,
            self.path(table_name(no)),
            no,
            self._ctx.opts.block_bytes,
            self._ctx.opts.bloom_bits_per_key,
        )

    def open_table(self, file_no: int) -> TableReader:
        return TableReader(self._fs, self.path(table_name(file_no)), file_no, self._ctx.cache)

    def discard_unlisted(self, paths: list[str]) -> None:
        """Delete the tables of an edit that was not logged (their room is needed), unless the
        failed edit might still be read back from the MANIFEST."""
        if self._manifest is not None and self._manifest.torn:
            return  # the next open removes them once a fresh MANIFEST does not list them
        for path in paths:
            try:
                self._fs.remove(path)
            except OSError:
                pass

    def pin_locked(self, levels: Levels) -> list[int]:
        """Keep the files of `levels` on disk until `unpin` (caller holds the mutex, so that no
        edit removes one between the caller's look at the levels and the pin)."""
        pinned = [t.file_no for files in levels for t in files]
        for no in pinned:
            self._pins[no] = self._pins.get(no, 0) + 1
        return pinned

    def unpin(self, file_nos: list[int]) -> None:
        """Release pins; tables that an edit removed meanwhile are deleted now."""
        doomed = []
        with self.mutex:
            for no in file_nos:
                left = self._pins.get(no, 0) - 1
                if left > 0:
                    self._pins[no] = left
                    continue
                self._pins.pop(no, None)
                path = self._deferred.pop(no, None)
                if path is not None:
                    doomed.append(path)
        self._remove_tables(doomed)

    def _remove_tables(self, paths: list[str]) -> None:
        for path in paths:
            try:
                self._fs.remove(path)
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------------ MANIFEST

    @property
    def has_manifest(self) -> bool:
        """False only while an engine opened on a full disk has not written its MANIFEST."""
        return self._manifest is not None

    def open_manifest(self) -> None:
        """Start this engine's MANIFEST (a snapshot of the state) and drop the previous one;
        nothing once done, so that an open interrupted by a full disk can retry it."""
        if self._manifest is not None:
            return
        self._manifest = self._create_manifest()
        old, self._old_manifest = self._old_manifest, None
        if old is not None and old != self._manifest.name:
            try:
                self._fs.remove(self.path(old))
            except FileNotFoundError:
                pass

    def _create_manifest(self) -> ManifestWriter:
        no = self.new_file_no()
        try:
            return ManifestWriter(self._fs, self._dir, no, self.state)
        except BaseException:
            # Half written: remove it unless CURRENT already names it (then it is the MANIFEST).
            try:
                if read_current(self._fs, self._dir) != manifest_name(no):
                    self._fs.remove(self.path(manifest_name(no)))
            except (OSError, CorruptionError):
                pass
            raise

    def _append(self, edit: VersionEdit) -> None:
        """Append one edit (caller holds `install_lock`), first replacing a MANIFEST whose
        last append failed by a fresh one: its page cache is not to be trusted any more."""
        if self._manifest is None:  # opened on a full disk, not finished opening yet
            raise DiskFullError("disk full: the engine opened read-only and has no MANIFEST yet")
        if self._manifest_broken:
            old = self._manifest
            self._manifest = self._create_manifest()
            self._manifest_broken = False
            old.close()
            try:
                self._fs.remove(old.path)
            except OSError:
                pass
        try:
            self._manifest.append(edit)
        except OSError:
            self._manifest_broken = True
            raise

    def log_and_apply(
        self,
        edit: VersionEdit,
        added: list[tuple[int, TableReader]],
        *,
        before_visible: Callable[[], None] | None = None,
        on_applied: Callable[[], None] | None = None,
    ) -> None:
        """Log `edit` (adding the tables `added`, removing `edit.removed`), then install it.

        Once the edit is durable, `before_visible` runs (under `install_lock`, readers do not
        see the new tables yet); then, under the mutex, the edit is applied to the state, the
        level lists replaced and `on_applied` called (it publishes the new read view). The
        removed tables' files are deleted last. If the edit cannot be logged, the added
        tables' files are discarded and the error raised: nothing changed. A removed table
        that a checkpoint pinned is deleted by the last `unpin` instead.
        """
        with self.install_lock:
            edit.next_file = self.state.next_file
            try:
                self._append(edit)
            except OSError:
                self.discard_unlisted([t.path for _, t in added])
                raise
            if before_visible is not None:
                before_visible()
            gone = {no for _, no in edit.removed}
            with self.mutex:
                self.state.apply(edit)
                removed = []
                for t in (t for files in self.levels for t in files if t.file_no in gone):
                    if t.file_no in self._pins:
                        self._deferred[t.file_no] = t.path
                    else:
                        removed.append(t.path)
                self.levels = _installed(self.levels, gone, added)
                if on_applied is not None:
                    on_applied()
        self._remove_tables(removed)

    def close(self) -> None:
        if self._manifest is not None:
            self._manifest.close()


def _installed(levels: Levels, gone: set[int], added: list[tuple[int, TableReader]]) -> Levels:
    """New level lists: without the tables numbered in `gone`, with `added`. A new L0 table is
    the newest (first); deeper levels stay ordered by smallest key."""
    out = [[t for t in files if t.file_no not in gone] for files in levels]
    out[0] = [t for lvl, t in added if lvl == 0] + out[0]
    deeper = {lvl for lvl, _ in added if lvl > 0}
    for lvl, t in added:
        if lvl > 0:
            out[lvl].append(t)
    for lvl in deeper:
        out[lvl].sort(key=lambda t: t.smallest)
    return out
