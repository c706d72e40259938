"""Engine.ingest: external tables join the LSM with one MANIFEST edit, without breaking
last-writer-wins (reads resolve by level order, and an external table holds old versions)."""

from __future__ import annotations

import os
import time

import pytest
from limedb.storage import CorruptionError, CrashableMemFS, Engine, EngineOptions, WriteBatch
from limedb.storage.fs import FileSystem, RealFS
from limedb.storage.ingest import decide
from limedb.storage.record import TOMBSTONE, make_rec
from limedb.storage.sstable import TableBuilder

from .conftest import SMALL
from .test_purge_range import _CrashBeforeSync

NO_THREADS = dict(SMALL, background_threads=False)
# Timestamps of the external versions: a minute ago (the engine stamps its writes later, and
# tombstones this recent are kept by compaction).
BASE = (time.time_ns() // 1_000_000 - 60_000) << 16


def _key(i: int) -> bytes:
    return b"k%05d" % i


def _external(path: str, entries: dict[bytes, tuple], fs: FileSystem | None = None) -> str:
    """An SSTable at `path` holding `entries` (key -> Rec), fsynced, as a peer would send it."""
    fs = fs or RealFS()
    b = TableBuilder(fs, path, 0)
    for k in sorted(entries):
        b.add(k, entries[k])
    b.finish()
    fs.fsync_dir(os.path.dirname(path))
    return path


def _val(ts: int, value: bytes) -> tuple:
    return make_rec(ts, value, False, None)


def _tomb(ts: int) -> tuple:
    return make_rec(ts, b"", True, None)


def _stored(e: Engine) -> dict[bytes, tuple]:
    return {k: (v.ts, v.value, v.tombstone) for k, v in e.iter_range(include_tombstones=True)}


def _gets(e: Engine, keys) -> dict[bytes, bytes | None]:
    return {k: e.get(k) for k in keys}


# Keys nobody stores added to an external table: with many of them, the engine's keys in the
# table's span are few enough to be gathered from the engine's side instead of every external
# key looked up one by one (storage/ingest.py); both ways must decide alike.
PADDING = {"key by key": 0, "from the engine's span": 2000}


def _padded(entries: dict[bytes, tuple], padding: int) -> dict[bytes, tuple]:
    return {**entries, **{b"p%05d" % i: _val(BASE, b"pad") for i in range(padding)}}


def _survives_reopen_and_compaction(e, open_engine) -> None:
    """What `e` holds is what it holds after a close and reopen, and after a full compaction."""
    view = _stored(e)
    e.close()
    reopened = open_engine(options=NO_THREADS)
    assert _stored(reopened) == view
    reopened.compact()
    assert _stored(reopened) == view


def test_decide_keeps_only_keys_no_table_holds_and_writes_only_newer_versions():
    old, new = _val(BASE, b"old"), _val(BASE + 5, b"new")
    assert decide(old, None, None) == (True, False)
    assert decide(old, new, None) == (True, False)  # the memtable stays above it
    assert decide(new, old, None) == (True, True)
    assert decide(old, None, new) == (False, False)
    assert decide(new, None, old) == (False, True)
    assert decide(new, _tomb(BASE + 9), old) == (False, False)  # the memtable's is the newest


def test_ingest_into_an_empty_engine_links_the_table_and_survives_reopen(open_engine, tmp_path):
    ext = _external(
        str(tmp_path / "in.sst"), {_key(i): _val(BASE + i, b"v%d" % i) for i in range(300)}
    )
    e = open_engine(options=NO_THREADS)
    res = e.ingest([ext])
    assert (res.tables, res.entries, res.written, res.superseded) == (1, 300, 0, 0)
    linked = tmp_path / "db" / f"{res.file_nos[0]:06d}.sst"
    assert os.stat(linked).st_ino == os.stat(ext).st_ino  # hard-linked, not copied
    assert e.get(_key(7)) == b"v7"
    assert e.get_version(_key(299)).ts == BASE + 299
    os.remove(ext)
    e.close()
    again = open_engine(options=NO_THREADS)
    assert len(again.scan()) == 300 and again.get(_key(150)) == b"v150"


@pytest.mark.parametrize("padding", PADDING.values(), ids=PADDING.keys())
@pytest.mark.parametrize("where", ["memtable", "L0", "deepest level"])
def test_newer_writes_survive_ingest_of_older_versions(open_engine, tmp_path, where, padding):
    e = open_engine(options=NO_THREADS)
    for i in range(0, 100, 2):
        e.put(_key(i), b"newer%d" % i)  # stamped by the engine's clock: after BASE
    e.delete(_key(10))
    if where == "L0":
        e.flush()
    elif where == "deepest level":
        e.compact()
    before = _stored(e)
    older = {_key(i): _val(BASE + i, b"old%d" % i) for i in range(100)}
    older[_key(4)] = _tomb(BASE)
    res = e.ingest([_external(str(tmp_path / "in.sst"), _padded(older, padding))])
    assert res.written == 0 and res.superseded == 50
    got = _stored(e)
    for k, v in before.items():
        assert got[k] == v, k
    assert e.get(_key(4)) == b"newer4" and e.get(_key(10)) is None
    assert e.get(_key(3)) == b"old3"  # keys nobody held come in
    e.flush()
    e.compact()
    assert _stored(e) == got


@pytest.mark.parametrize("padding", PADDING.values(), ids=PADDING.keys())
@pytest.mark.parametrize("where", ["memtable", "L0", "deepest level"])
def test_newer_external_versions_win_over_older_stored_ones(open_engine, tmp_path, where, padding):
    e = open_engine(options=NO_THREADS)
    for i in range(50):
        e.put(_key(i), b"stored%d" % i, ts=BASE + i)
    e.delete(_key(60), ts=BASE)
    if where == "L0":
        e.flush()
    elif where == "deepest level":
        e.compact()
    newer = {_key(i): _val(BASE + 1000 + i, b"ext%d" % i) for i in range(0, 50, 5)}
    newer[_key(7)] = _tomb(BASE + 1000)
    newer[_key(60)] = _val(BASE + 1000, b"revived")
    newer[_key(8)] = _val(BASE + 8, b"stored8")  # the same version: nothing changes
    res = e.ingest([_external(str(tmp_path / "in.sst"), _padded(newer, padding))])
    assert res.written == 12 and res.superseded == 1
    assert e.get(_key(5)) == b"ext5" and e.get(_key(7)) is None and e.get(_key(60)) == b"revived"
    assert e.get(_key(6)) == b"stored6" and e.get(_key(8)) == b"stored8"
    assert e.get_version(_key(7)).tombstone
    _survives_reopen_and_compaction(e, open_engine)


def test_a_table_goes_in_at_the_deepest_level_where_it_overlaps_no_table(open_engine, tmp_path):
    e = open_engine(options=NO_THREADS)
    deepest = e._opts.max_levels - 1
    for i in range(100):
        e.put(_key(i), b"stored", ts=BASE)
    e.compact()  # into L1
    far = {_key(i): _val(BASE, b"far") for i in range(200, 300)}
    assert e.ingest([_external(str(tmp_path / "a.sst"), far)]).levels == [deepest]
    # Between the keys of the deepest level's table (none of them): one level up.
    between = {_key(i) + b"x": _val(BASE, b"between") for i in range(250, 260)}
    assert e.ingest([_external(str(tmp_path / "b.sst"), between)]).levels == [deepest - 1]
    # Nothing there needs a compaction, and every read finds its version.
    assert e._compact_pending() == 0
    assert e.get(_key(5)) == b"stored" and e.get(_key(250)) == b"far"
    assert e.get(_key(251) + b"x") == b"between"
    _survives_reopen_and_compaction(e, open_engine)


def test_a_table_ingested_while_a_compaction_runs_goes_in_at_l0(open_engine, tmp_path):
    e = open_engine(options=NO_THREADS)
    ext = {_key(i): _val(BASE, b"v") for i in range(10)}
    with e._compactor.lock:  # what a running compaction (or purge) holds
        res = e.ingest([_external(str(tmp_path / "a.sst"), ext)])
    assert res.levels == [0] and e.get(_key(3)) == b"v"


def test_a_write_landing_during_the_ingest_is_resolved_by_timestamp(open_engine, tmp_path):
    e = open_engine(options=NO_THREADS)
    ext = {_key(i): _val(BASE + 100, b"ext%d" % i) for i in range(20)}
    path = _external(str(tmp_path / "in.sst"), ext)

    def racing_writes() -> None:  # after the look-ups, before the install
        e.put(_key(1), b"older", ts=BASE + 50)
        e.put(_key(2), b"newer", ts=BASE + 150)
        e.write(WriteBatch().delete(_key(3), BASE + 10))

    e._ingester.before_install = racing_writes
    res = e.ingest([path])
    assert res.written == 2  # keys 1 and 3: the external versions are newer
    assert e.get(_key(1)) == b"ext1" and e.get(_key(2)) == b"newer" and e.get(_key(3)) == b"ext3"
    view = _stored(e)
    e.close()
    reopened = open_engine(options=NO_THREADS)
    assert _stored(reopened) == view
    reopened.flush()
    reopened.compact()
    assert _stored(reopened) == view


def test_the_clock_moves_past_ingested_timestamps(open_engine, tmp_path):
    # As for a write with an explicit timestamp: adopted within the clock's offset bound.
    e = open_engine(options=NO_THREADS)
    future = e.hlc.now() + (200 << 16)
    e.ingest([_external(str(tmp_path / "in.sst"), {_key(1): _val(future, b"ext")})])
    e.put(_key(1), b"local")
    assert e.get(_key(1)) == b"local" and e.get_version(_key(1)).ts > future


def test_a_damaged_table_is_refused_and_changes_nothing(open_engine, tmp_path):
    e = open_engine(options=NO_THREADS)
    e.put(_key(1), b"mine")
    path = _external(str(tmp_path / "in.sst"), {_key(i): _val(BASE, b"x" * 50) for i in range(200)})
    with open(path, "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    before = _stored(e)
    with pytest.raises(CorruptionError):
        e.ingest([path])
    assert _stored(e) == before
    assert sorted(n for n in os.listdir(tmp_path / "db") if n.endswith(".sst")) == []


def _big_external(path: str, n: int) -> str:
    """An external table of `n` keys (over OFFLOAD_MIN_BYTES for n >= 10,000)."""
    return _external(path, {_key(i): _val(BASE + 100, b"ext%d" % i + b"." * 120) for i in range(n)})


def test_a_big_table_is_sorted_out_in_a_low_priority_worker(open_engine, tmp_path):
    e = open_engine(options=dict(SMALL, memtable_bytes=1 << 20))
    for i in range(0, 12_000, 1000):
        e.put(_key(i), b"older", ts=BASE)  # flushed: a table holds these
    e.flush()
    for i in range(500, 12_000, 1000):
        e.put(_key(i), b"newer", ts=BASE + 200)  # in the memtable
    e.put(_key(501), b"older", ts=BASE)
    res = e.ingest([_big_external(str(tmp_path / "in.sst"), 12_000)])
    pool = e._workers.background
    assert pool is not None and pool.pids()  # the plan ran in the background worker
    assert e._workers.enabled  # and did not fail
    assert res.written == 12 + 1 and res.superseded == 12
    assert res.entries == 12_000 - 12  # the keys a table held went through the write path
    assert e.get(_key(1000)).startswith(b"ext1000.") and e.get(_key(1500)) == b"newer"
    assert e.get(_key(501)).startswith(b"ext501.") and e.get(_key(7)).startswith(b"ext7.")
    assert all(e.get(_key(i)) is not None for i in range(0, 12_000, 7))  # the filter has them
    _survives_reopen_and_compaction(e, open_engine)


def test_a_damaged_big_table_is_refused_though_sorted_out_in_a_worker(open_engine, tmp_path):
    e = open_engine(options=dict(SMALL, memtable_bytes=1 << 20))
    e.put(_key(3), b"mine")
    path = _big_external(str(tmp_path / "in.sst"), 12_000)
    with open(path, "r+b") as f:
        f.seek(500_000)
        byte = f.read(1)
        f.seek(500_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CorruptionError):
        e.ingest([path])
    assert e.get(_key(3)) == b"mine" and e.get(_key(4)) is None
    assert e._workers.enabled  # a damaged table is no reason to stop offloading


def test_overlapping_tables_are_refused(open_engine, tmp_path):
    e = open_engine(options=NO_THREADS)
    a = _external(str(tmp_path / "a.sst"), {_key(1): _val(BASE, b"a"), _key(5): _val(BASE, b"a")})
    b = _external(str(tmp_path / "b.sst"), {_key(3): _val(BASE, b"b")})
    with pytest.raises(ValueError):
        e.ingest([a, b])


def test_ingesting_the_same_table_twice_is_harmless(open_engine, tmp_path):
    e = open_engine(options=NO_THREADS)
    path = _external(str(tmp_path / "in.sst"), {_key(i): _val(BASE + i, b"v") for i in range(100)})
    e.ingest([path])
    first = _stored(e)
    res = e.ingest([path])
    assert (res.tables, res.written, res.superseded) == (0, 0, 100)
    assert _stored(e) == first


def _ingest_setup(fs: CrashableMemFS, opts: EngineOptions) -> tuple[Engine, str, dict]:
    e = Engine.open("/db", opts, fs=fs)
    for i in range(0, 200, 3):
        e.put(_key(i), b"stored%d" % i, ts=BASE + 500)  # newer than the external ones
    e.flush()
    for i in range(1, 200, 3):
        e.put(_key(i), b"stale%d" % i, ts=BASE)  # older than the external ones
    fs.makedirs("/in")
    ext = {_key(i): _val(BASE + 100, b"ext%d" % i) for i in range(200)}
    ext[_key(5)] = _tomb(BASE + 100)
    new = {k: (r[0], r[1], bool(r[2] & TOMBSTONE)) for k, r in ext.items()}
    return e, _external("/in/t.sst", ext, fs), new


def test_a_crash_at_any_point_of_an_ingest_leaves_every_key_at_its_old_or_new_version():
    opts = EngineOptions(durability="sync", **NO_THREADS)
    steps = 0
    step = 1
    while True:
        fs = _CrashBeforeSync(step)
        e, path, new = _ingest_setup(fs, opts)
        before = _stored(e)
        fs.crash_at = fs.syncs + step
        try:
            e.ingest([path])
        except OSError:
            pass  # the engine ran on past the crash into a frozen filesystem
        image = fs.image
        e.close()
        if image is None:  # the ingest made fewer fsyncs than `step`: every point was tried
            done = Engine.open("/db", opts, fs=fs.crash())
            after = _stored(done)
            done.close()
            break
        recovered = Engine.open("/db", opts, fs=image)
        got = _stored(recovered)
        recovered.close()
        for k in set(before) | set(got):
            assert got.get(k) in (before.get(k), new[k]), f"crash before fsync {step}: {k!r}"
        steps += 1
        step += 1
    assert steps >= 2
    assert after[_key(0)][1] == b"stored0" and after[_key(1)][1] == b"ext1"
    assert after[_key(2)][1] == b"ext2" and after[_key(5)][2]
