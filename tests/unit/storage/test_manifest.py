"""The MANIFEST and CURRENT (storage/manifest.py): replaying the version edits gives back the
live file set, a torn last edit is ignored while damage before it is refused, and switching to
a new MANIFEST survives a crash at every step."""

from __future__ import annotations

import json
import posixpath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from limedb.storage.errors import CorruptionError
from limedb.storage.fs import CrashableMemFS, RealFS
from limedb.storage.manifest import (
    CURRENT,
    ManifestState,
    ManifestWriter,
    VersionEdit,
    load,
    manifest_name,
    read_current,
)
from limedb.storage.sstable import TableMeta
from limedb.storage.wal import FRAME_BYTES, encode_frame

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LEVELS = 7
DB = "/db"


def table(no: int, lo: bytes = b"a", hi: bytes = b"z") -> TableMeta:
    return TableMeta(no, 1000 + no, 10 * no, lo, hi)


tables = st.builds(
    TableMeta,
    st.integers(1, 10_000),
    st.integers(0, 2**40),
    st.integers(0, 2**32),
    st.binary(max_size=12),
    st.binary(max_size=12),
)
edits = st.builds(
    VersionEdit,
    log_number=st.none() | st.integers(0, 10_000),
    next_file=st.none() | st.integers(0, 10_000),
    last_seq=st.none() | st.integers(0, 2**63),
    added=st.lists(st.tuples(st.integers(0, LEVELS - 1), tables), max_size=4),
    removed=st.lists(st.tuples(st.integers(0, LEVELS - 1), st.integers(1, 10_000)), max_size=4),
)


def replayed(edit_list: list[VersionEdit]) -> ManifestState:
    state = ManifestState(LEVELS)
    for edit in edit_list:
        state.apply(edit)
    return state


def live(state: ManifestState) -> tuple:
    return (state.levels, state.log_number, state.next_file, state.last_seq)


def memfs() -> CrashableMemFS:
    fs = CrashableMemFS(0)
    fs.makedirs(DB)
    return fs


def history() -> list[VersionEdit]:
    """A flush, a second flush and a compaction of both into L1, as the engine logs them."""
    return [
        VersionEdit(log_number=3, next_file=5, last_seq=10, added=[(0, table(4))]),
        VersionEdit(log_number=6, next_file=8, last_seq=25, added=[(0, table(7, b"m", b"q"))]),
        VersionEdit(
            next_file=10,
            added=[(1, table(8, b"a", b"m")), (1, table(9, b"n", b"z"))],
            removed=[(0, 4), (0, 7)],
        ),
    ]


def write_manifest(fs, file_no: int, edit_list: list[VersionEdit]) -> ManifestWriter:
    writer = ManifestWriter(fs, DB, file_no, ManifestState(LEVELS))
    for edit in edit_list:
        writer.append(edit)
    return writer


def frame_offsets(data: bytes) -> list[int]:
    offsets, pos = [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += FRAME_BYTES + int.from_bytes(data[pos : pos + 4], "little")
    return offsets


# ---------------------------------------------------------------------------- edits


@PROPERTY
@given(edits)
def test_a_version_edit_decodes_to_what_was_encoded(edit):
    assert VersionEdit.decode(edit.encode()) == edit


def test_an_edit_is_the_json_object_the_format_document_describes():
    edit = VersionEdit(
        log_number=3, next_file=9, last_seq=40, added=[(1, table(8, b"\x00a", b"\xff"))],
        removed=[(0, 4)],
    )  # fmt: skip
    assert json.loads(edit.encode()) == {
        "log_number": 3,
        "next_file": 9,
        "last_seq": 40,
        "add": [[1, 8, 1008, 80, "0061", "ff"]],
        "remove": [[0, 4]],
    }
    assert json.loads(VersionEdit(added=[(0, table(2))]).encode()).keys() == {"add"}


def test_replaying_a_flush_and_a_compaction_leaves_only_the_compaction_outputs():
    state = replayed(history())
    assert state.levels[0] == {}
    assert sorted(state.levels[1]) == [8, 9]
    assert (state.log_number, state.next_file, state.last_seq) == (6, 10, 25)


@PROPERTY
@given(st.lists(edits, max_size=8))
def test_a_snapshot_of_the_replayed_edits_replays_to_the_same_live_set(edit_list):
    """A new MANIFEST starts with one snapshot record instead of the whole history."""
    state = replayed(edit_list)
    assert live(replayed([state.snapshot_edit()])) == live(state)


@PROPERTY
@given(st.lists(edits, max_size=8))
def test_file_numbers_never_go_back_and_never_collide_with_a_live_table(edit_list):
    state = replayed(edit_list)
    assert state.next_file >= max((e.next_file or 0 for e in edit_list), default=1)
    for files in state.levels:
        assert all(no < state.next_file for no in files)


# ---------------------------------------------------------------------------- files


def test_edits_appended_to_a_real_manifest_load_back_to_the_same_live_set(tmp_path):
    fs, db = RealFS(), str(tmp_path)
    writer = ManifestWriter(fs, db, 11, ManifestState(LEVELS))
    for edit in history():
        writer.append(edit)
    writer.close()
    assert (tmp_path / CURRENT).read_bytes() == b"MANIFEST-000011\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CURRENT", "MANIFEST-000011"]
    name = read_current(fs, db)
    assert name == manifest_name(11)
    assert live(load(fs, db, name, LEVELS, repair=False)) == live(replayed(history()))


@PROPERTY
@given(st.lists(edits, min_size=1, max_size=6))
def test_a_manifest_loads_to_the_state_its_edits_replay_to(edit_list):
    fs = memfs()
    write_manifest(fs, 3, edit_list)
    assert live(load(fs, DB, manifest_name(3), LEVELS, repair=False)) == live(replayed(edit_list))


def test_a_torn_last_edit_is_ignored_at_every_cut_point():
    fs = memfs()
    write_manifest(fs, 3, history())
    path = posixpath.join(DB, manifest_name(3))
    full = fs.read_file(path)
    last = frame_offsets(full)[-1]
    before = live(replayed(history()[:-1]))
    for cut in range(last + 1, len(full)):
        fs.create(path).write(full[:cut])
        assert live(load(fs, DB, manifest_name(3), LEVELS, repair=False)) == before, cut


def test_a_damaged_edit_before_the_last_is_refused_naming_the_manifest_and_offset():
    fs = memfs()
    write_manifest(fs, 3, history())
    path = posixpath.join(DB, manifest_name(3))
    second = frame_offsets(fs.read_file(path))[2]
    fs.corrupt(path, second + FRAME_BYTES + 3)
    with pytest.raises(CorruptionError) as err:
        load(fs, DB, manifest_name(3), LEVELS, repair=False)
    assert err.value.path == path and err.value.offset == second
    assert manifest_name(3) in str(err.value)


@pytest.mark.parametrize("damage", ["cut", "flip"])
def test_a_damaged_first_record_is_corruption_never_an_empty_database(damage):
    """The snapshot is fsynced before CURRENT names the file: losing it would forget every
    table, so it is never taken for a torn tail."""
    fs = memfs()
    state = replayed(history())
    ManifestWriter(fs, DB, 12, state)
    path = posixpath.join(DB, manifest_name(12))
    if damage == "cut":
        fs.truncate(path, len(fs.read_file(path)) - 1)
    else:
        fs.corrupt(path, FRAME_BYTES + 1)
    with pytest.raises(CorruptionError, match="first record") as err:
        load(fs, DB, manifest_name(12), LEVELS, repair=False)
    assert err.value.path == path and err.value.offset == 0


def test_an_edit_that_is_not_json_is_refused_and_repair_keeps_the_edits_before_it():
    fs = memfs()
    write_manifest(fs, 3, history()[:1])
    path = posixpath.join(DB, manifest_name(3))
    # A frame whose checksum is right but whose payload is not an edit, then a good edit.
    data = fs.read_file(path) + encode_frame(b"{not json") + encode_frame(history()[1].encode())
    fs.create(path).write(data)
    bad = frame_offsets(fs.read_file(path))[2]
    with pytest.raises(CorruptionError, match="undecodable version edit") as err:
        load(fs, DB, manifest_name(3), LEVELS, repair=False)
    assert err.value.offset == bad
    repaired = load(fs, DB, manifest_name(3), LEVELS, repair=True)
    assert live(repaired) == live(replayed(history()[:1]))


def test_current_is_absent_in_a_new_directory_and_must_name_an_existing_manifest():
    fs = memfs()
    assert read_current(fs, DB) is None
    fs.create(posixpath.join(DB, CURRENT)).write(b"../etc/passwd\n")
    with pytest.raises(CorruptionError, match="does not name a MANIFEST"):
        read_current(fs, DB)
    fs.create(posixpath.join(DB, CURRENT)).write(b"MANIFEST-000042\n")
    name = read_current(fs, DB)
    with pytest.raises(CorruptionError, match="does not exist"):
        load(fs, DB, name, LEVELS, repair=False)


class CrashAt(CrashableMemFS):
    """A CrashableMemFS that loses power just before its `n`-th durable-state operation."""

    def __init__(self, n: int) -> None:
        super().__init__(seed=n)
        self.n = n
        self.ops = 0
        self.after: CrashableMemFS | None = None

    def tick(self) -> None:
        self.ops += 1
        if self.ops == self.n and self.after is None:
            self.after = self.crash(tear=True)

    def create(self, path):
        self.tick()
        return _Ticking(self, super().create(path))

    def rename(self, src, dst):
        self.tick()
        super().rename(src, dst)

    def fsync_dir(self, path):
        self.tick()
        super().fsync_dir(path)


class _Ticking:
    def __init__(self, fs: CrashAt, inner) -> None:
        self.fs, self.inner = fs, inner

    def write(self, data):
        self.fs.tick()
        self.inner.write(data)

    def sync(self):
        self.fs.tick()
        self.inner.sync()

    def close(self):
        self.inner.close()


def test_switching_to_a_new_manifest_survives_a_crash_at_every_step():
    """An engine opening writes a fresh MANIFEST and replaces CURRENT; whenever the power goes,
    CURRENT names a MANIFEST that loads to the same live set, never a missing or empty one."""
    want = live(replayed(history()))
    steps = 0
    n = 0
    while True:
        n += 1
        fs = CrashAt(n=10**9)
        fs.makedirs(DB)
        write_manifest(fs, 3, history()).close()
        fs.n = fs.ops + n  # crash at the n-th operation of the switch
        state = load(fs, DB, read_current(fs, DB), LEVELS, repair=False)
        ManifestWriter(fs, DB, 11, state)
        if fs.after is None:
            break
        steps += 1
        after = fs.after
        name = read_current(after, DB)
        assert name in (manifest_name(3), manifest_name(11)), n
        assert live(load(after, DB, name, LEVELS, repair=False)) == want, (n, name)
    assert steps >= 6, "the switch takes create, write, sync, fsync_dir, rename, fsync_dir..."
