"""Damaged files produce a clear error naming the file; a torn WAL tail is recovered silently."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from limedb.storage import CorruptionError, Engine, EngineOptions

BIG_MEMTABLE = EngineOptions(memtable_bytes=64 << 20)


def _files(path: Path, suffix: str) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.name.endswith(suffix) or p.name.startswith(suffix))


def _write(path: Path, n: int, *, flush: bool) -> None:
    with Engine.open(path, BIG_MEMTABLE) as e:
        for i in range(n):
            e.put(b"key%05d" % i, b"value%05d" % i)
        if flush:
            e.flush()


def _flip(p: Path, offset: int) -> None:
    data = bytearray(p.read_bytes())
    data[offset] ^= 0x5A
    p.write_bytes(bytes(data))


def _live_wal(path: Path) -> Path:
    logs = [p for p in _files(path, ".log") if p.stat().st_size > 0]
    assert len(logs) == 1, logs
    return logs[0]


def test_flipped_byte_in_the_middle_of_the_wal_names_the_file_and_offset(tmp_path):
    db = tmp_path / "db"
    _write(db, 200, flush=False)
    wal = _live_wal(db)
    _flip(wal, wal.stat().st_size // 2)
    with pytest.raises(CorruptionError) as err:
        Engine.open(db, BIG_MEMTABLE)
    assert err.value.path == str(wal)
    assert err.value.offset is not None and 0 <= err.value.offset < wal.stat().st_size
    assert wal.name in str(err.value)


def test_repair_opens_a_damaged_wal_keeping_the_records_before_the_damage(tmp_path):
    db = tmp_path / "db"
    _write(db, 200, flush=False)
    wal = _live_wal(db)
    _flip(wal, wal.stat().st_size // 2)
    with Engine.open(db, BIG_MEMTABLE, repair=True) as e:
        assert e.get(b"key00000") == b"value00000"
        kept = len(e.scan(None, None))
        assert 0 < kept < 200
    with Engine.open(db, BIG_MEMTABLE) as e:  # repaired for good: opens without repair
        assert len(e.scan(None, None)) == kept


@pytest.mark.parametrize("cut", [1, 7, 20])
def test_torn_wal_tail_is_recovered_silently(tmp_path, cut):
    db = tmp_path / "db"
    _write(db, 100, flush=False)
    wal = _live_wal(db)
    os.truncate(wal, wal.stat().st_size - cut)
    with Engine.open(db, BIG_MEMTABLE) as e:
        assert e.get(b"key00098") == b"value00098"
        assert e.get(b"key00099") is None  # the torn last record
        e.put(b"after", b"reopen")
    with Engine.open(db, BIG_MEMTABLE) as e:  # the torn log never blocks a later open
        assert e.get(b"after") == b"reopen"
        assert len(e.scan(None, None)) == 100


def test_zero_filled_wal_tail_is_recovered_silently(tmp_path):
    db = tmp_path / "db"
    _write(db, 50, flush=False)
    wal = _live_wal(db)
    with wal.open("ab") as f:
        f.write(bytes(4096))
    with Engine.open(db, BIG_MEMTABLE) as e:
        assert len(e.scan(None, None)) == 50


def test_truncated_sstable_names_the_file(tmp_path):
    db = tmp_path / "db"
    _write(db, 2000, flush=True)
    (table,) = _files(db, ".sst")
    os.truncate(table, table.stat().st_size // 2)
    with pytest.raises(CorruptionError) as err:
        Engine.open(db, BIG_MEMTABLE)
    assert err.value.path == str(table)
    assert table.name in str(err.value)


def test_repair_drops_an_unreadable_sstable_and_opens(tmp_path):
    db = tmp_path / "db"
    _write(db, 2000, flush=True)
    (table,) = _files(db, ".sst")
    os.truncate(table, 10)
    with Engine.open(db, BIG_MEMTABLE, repair=True) as e:
        assert e.scan(None, None) == []
        e.put(b"new", b"data")
    with Engine.open(db, BIG_MEMTABLE) as e:
        assert e.get(b"new") == b"data"


def test_flipped_byte_in_an_sstable_data_block_fails_the_read_naming_the_file(tmp_path):
    db = tmp_path / "db"
    _write(db, 2000, flush=True)
    (table,) = _files(db, ".sst")
    _flip(table, 100)  # inside the first data block
    with Engine.open(db, BIG_MEMTABLE) as e:
        with pytest.raises(CorruptionError) as err:
            e.get(b"key00000")
        assert err.value.path == str(table)
        assert e.get(b"key01999") == b"value01999"  # other blocks still read


def test_bad_manifest_record_names_the_manifest(tmp_path):
    db = tmp_path / "db"
    _write(db, 2000, flush=True)
    (manifest,) = _files(db, "MANIFEST-")
    _flip(manifest, 20)  # inside the first record (the snapshot)
    with pytest.raises(CorruptionError) as err:
        Engine.open(db, BIG_MEMTABLE)
    assert err.value.path == str(manifest)
    assert manifest.name in str(err.value)


def test_repair_rebuilds_a_lost_manifest_from_the_tables(tmp_path):
    db = tmp_path / "db"
    with Engine.open(db, BIG_MEMTABLE) as e:
        for i in range(500):
            e.put(b"key%05d" % i, b"old")
        e.flush()
        for i in range(0, 500, 2):
            e.put(b"key%05d" % i, b"new")
        e.delete(b"key00001")
        e.flush()
    (manifest,) = _files(db, "MANIFEST-")
    _flip(manifest, 20)
    with Engine.open(db, BIG_MEMTABLE, repair=True) as e:
        assert e.get(b"key00000") == b"new"  # newest version wins whatever the file order
        assert e.get(b"key00001") is None
        assert e.get(b"key00003") == b"old"
    with Engine.open(db, BIG_MEMTABLE) as e:
        assert len(e.scan(None, None)) == 499


def test_missing_current_with_tables_present_is_an_error_not_an_empty_database(tmp_path):
    db = tmp_path / "db"
    _write(db, 100, flush=True)
    (db / "CURRENT").unlink()
    with pytest.raises(CorruptionError) as err:
        Engine.open(db, BIG_MEMTABLE)
    assert "CURRENT" in str(err.value)
