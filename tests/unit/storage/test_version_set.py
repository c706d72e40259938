"""The version set's one "log the edit, then install" operation: a change of the file set is
seen by readers only once the MANIFEST holds it, replaces tables in one step, and an edit the
MANIFEST could not take changes nothing and leaves no table file behind."""

from __future__ import annotations

import errno

import pytest
from limedb.storage import CrashableMemFS, EngineOptions
from limedb.storage.context import EngineContext
from limedb.storage.manifest import ManifestState, VersionEdit, load, read_current
from limedb.storage.sstable import TableMeta, TableReader
from limedb.storage.version_set import VersionSet

DIR = "/db"


def _versions(fs: CrashableMemFS) -> VersionSet:
    opts = EngineOptions(background_threads=False)
    fs.makedirs(DIR)
    ctx = EngineContext(DIR, fs, opts)
    state = ManifestState(opts.max_levels)
    versions = VersionSet(ctx, state, [[] for _ in range(opts.max_levels)], None)
    versions.open_manifest()
    return versions


def _table(versions: VersionSet, keys: list[bytes]) -> tuple[TableMeta, TableReader]:
    b = versions.new_builder()
    b.add_all(keys, {k: (1, b"v", 0, 0) for k in keys})
    meta = b.finish()
    return meta, versions.open_table(meta.file_no)


def _on_disk(fs: CrashableMemFS) -> list[set[int]]:
    """The file numbers per level that the MANIFEST on disk lists."""
    state = load(fs, DIR, read_current(fs, DIR), EngineOptions().max_levels, repair=False)
    return [set(files) for files in state.levels]


def test_an_edit_is_in_the_manifest_before_readers_see_it_and_replaces_tables_at_once():
    fs = CrashableMemFS()
    versions = _versions(fs)
    seen: list[list[set[int]]] = []

    def on_applied() -> None:  # what a reader would be given now, and what a reopen would find
        assert [{t.file_no for t in files} for files in versions.levels] == _on_disk(fs)
        seen.append(_on_disk(fs))

    old_meta, old = _table(versions, [b"a", b"b"])
    versions.log_and_apply(VersionEdit(added=[(0, old_meta)]), [(0, old)], on_applied=on_applied)
    assert versions.levels[0] == [old]
    new_meta, new = _table(versions, [b"a", b"b"])
    edit = VersionEdit(added=[(1, new_meta)], removed=[(0, old.file_no)])
    versions.log_and_apply(edit, [(1, new)], on_applied=on_applied)

    assert versions.levels[0] == [] and versions.levels[1] == [new]
    assert seen[-1][0] == set() and seen[-1][1] == {new.file_no}
    assert not fs.exists(old.path), "a replaced table's file is deleted once the edit is in"
    assert fs.exists(new.path)


def test_an_edit_the_manifest_cannot_take_changes_nothing_and_a_retry_installs_it():
    fs = CrashableMemFS()
    versions = _versions(fs)
    meta, table = _table(versions, [b"k%03d" % i for i in range(100)])
    fs.fill()
    applied: list[bool] = []
    with pytest.raises(OSError) as failed:
        versions.log_and_apply(
            VersionEdit(added=[(0, meta)]), [(0, table)], on_applied=lambda: applied.append(True)
        )
    assert failed.value.errno == errno.ENOSPC
    assert applied == [] and versions.levels[0] == []
    assert _on_disk(fs)[0] == set()
    assert not fs.exists(table.path), "the room of an unlisted table is given back"

    fs.free()
    meta, table = _table(versions, [b"k%03d" % i for i in range(100)])
    broken = read_current(fs, DIR)
    versions.log_and_apply(VersionEdit(added=[(0, meta)]), [(0, table)])
    assert versions.levels[0] == [table]
    assert read_current(fs, DIR) != broken, "a MANIFEST whose append failed is replaced"
    assert _on_disk(fs)[0] == {table.file_no}
