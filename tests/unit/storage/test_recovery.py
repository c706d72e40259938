"""Reopening recovers every write from the WAL and the tables, and cleans up what is obsolete."""

from __future__ import annotations

import time

import pytest
from limedb.storage import Engine, EngineOptions, StorageError


def test_clean_close_in_none_mode_still_keeps_every_write(tmp_path):
    opts = EngineOptions(durability="none", memtable_bytes=64 << 20)
    with Engine.open(tmp_path / "db", opts) as e:
        for i in range(5000):
            e.put(b"k%05d" % i, b"v%d" % i)
    with Engine.open(tmp_path / "db", opts) as e:
        assert len(e.scan(None, None)) == 5000
        assert e.get(b"k04999") == b"v4999"


def test_reopen_replays_unflushed_writes_and_keeps_flushed_ones(tmp_path, open_engine):
    e = open_engine()
    for i in range(3000):
        e.put(b"k%05d" % i, b"flushed")
    e.flush()
    for i in range(0, 3000, 2):
        e.put(b"k%05d" % i, b"in-wal")
    e.delete(b"k00001")
    e.close()
    e = open_engine()
    assert e.get(b"k00000") == b"in-wal"
    assert e.get(b"k00001") is None
    assert e.get(b"k00003") == b"flushed"
    assert len(e.scan(None, None)) == 2999


def test_open_removes_files_no_version_references(tmp_path, open_engine):
    db = tmp_path / "db"
    e = open_engine(db)
    for i in range(3000):
        e.put(b"k%05d" % i, b"x" * 20)
    e.compact()
    e.close()
    (db / "999999.sst").write_bytes(b"leftover of an interrupted compaction")
    (db / "000001.log").write_bytes(b"")  # older than every live log
    (db / "MANIFEST-000002").write_bytes(b"an old manifest")
    (db / "CURRENT.tmp").write_bytes(b"MANIFEST-000002\n")
    e = open_engine(db)
    names = {p.name for p in db.iterdir()}
    assert not {"999999.sst", "000001.log", "MANIFEST-000002", "CURRENT.tmp"} & names
    assert sum(1 for n in names if n.startswith("MANIFEST-")) == 1
    assert len(e.scan(None, None)) == 3000
    e.put(b"after", b"cleanup")  # file numbers keep increasing past the leftovers
    e.flush()
    assert e.get(b"after") == b"cleanup"


def test_many_reopen_cycles_keep_everything_and_sequence_numbers_grow(open_engine):
    last_seq = 0
    for cycle in range(6):
        e = open_engine()
        assert e.stats()["last_seq"] >= last_seq
        for i in range(400):
            e.put(b"c%d-%04d" % (cycle, i), b"v")
        last_seq = e.stats()["last_seq"]
        if cycle % 2:
            e.flush()
        e.close()
    e = open_engine()
    assert len(e.scan(None, None)) == 2400


def test_a_directory_cannot_be_opened_twice_at_once(tmp_path):
    with Engine.open(tmp_path / "db") as e:
        e.put(b"a", b"1")
        with pytest.raises(StorageError, match="already open"):
            Engine.open(tmp_path / "db")
    with Engine.open(tmp_path / "db") as e:  # released by close
        assert e.get(b"a") == b"1"


def test_engine_wide_filter_is_rebuilt_after_open_and_never_hides_a_key(tmp_path):
    from limedb.storage.bloom import key_hash, probe_mask

    opts = EngineOptions(durability="none", memtable_bytes=64 * 1024, compaction_rate_bytes_per_s=0)
    with Engine.open(tmp_path / "db", opts) as e:
        for i in range(20_000):
            e.put(b"key%06d" % i, b"v")
    with Engine.open(tmp_path / "db", opts) as e:
        deadline = time.monotonic() + 30
        while not e.stats()["global_filter_ready"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert e.stats()["global_filter_ready"]
        for i in range(20_000, 30_000):  # flushed after the rebuild: added to the filter
            e.put(b"key%06d" % i, b"v")
        e.flush()
        assert all(e.get(b"key%06d" % i) == b"v" for i in range(30_000))
        v = e._view
        passed = 0
        for i in range(10_000):
            h = key_hash(b"missing%06d" % i)
            m = probe_mask(h)
            passed += v.gwords[h & v.gmask] & m == m
        assert passed < 500  # under 5% of missing keys get past it
