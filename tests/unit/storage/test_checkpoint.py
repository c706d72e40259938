"""Engine.checkpoint: a point-in-time copy of the tables, taken under writes, that opens as a
database holding every write acknowledged before the call (timestamps, TTLs and tombstones
included), survives a compaction deleting the tables it is placing, and falls back to copies
where hard links are refused."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import uuid
from pathlib import Path

import pytest
from limedb.storage import (
    CrashableMemFS,
    Engine,
    EngineOptions,
    StorageError,
    Version,
    iter_table_entries,
    load_checkpoint,
)
from limedb.storage import checkpoint as checkpoint_mod
from limedb.storage.record import newer
from support.wait import wait_for

from .conftest import SMALL

NO_THREADS = dict(SMALL, background_threads=False)
FAR = 4_000_000_000_000  # an expiry time (ms) decades away


def _stored(e: Engine) -> dict[bytes, Version]:
    return dict(e.iter_range(None, None, include_tombstones=True))


def _fill_mixed(e: Engine, n: int) -> None:
    """Values, values with a TTL, tombstones; spread over a deeper level, L0 and the memtable."""
    for i in range(n):
        e.put(b"k%05d" % i, b"v%05d" % i + b"." * 40)
    e.compact()
    for i in range(0, n, 3):
        e.put(b"k%05d" % i, b"ttl%05d" % i, expires_at_ms=FAR + i)
    e.flush()
    for i in range(0, n, 5):
        e.delete(b"k%05d" % i)
    e.put(b"expired", b"gone", expires_at_ms=1)  # already expired: kept as a version


def _sst_names(path: Path) -> set[str]:
    return {n for n in os.listdir(path) if n.endswith(".sst")}


def _live_table_count(e: Engine) -> int:
    return sum(level["files"] for level in e.stats()["levels"])


def test_checkpoint_opens_as_a_database_with_timestamps_ttls_and_tombstones(open_engine, tmp_path):
    e = open_engine(options=NO_THREADS)
    _fill_mixed(e, 600)
    before = _stored(e)
    dest = tmp_path / "ckpt"

    ckpt = e.checkpoint(dest)

    # The live engine goes on: later writes and a compaction touch neither the checkpoint's
    # tables (hard links of immutable files) nor what it holds.
    e.put(b"k00001", b"after")
    e.delete(b"k00002")
    e.compact()
    assert ckpt.linked and ckpt.tables
    for t in ckpt.tables:
        data = (dest / t.name).read_bytes()
        assert len(data) == t.size and hashlib.sha256(data).hexdigest() == t.sha256
    assert sum(t.entries for t in ckpt.tables) >= len(before)
    assert load_checkpoint(dest) == ckpt
    doc = json.loads((dest / "CHECKPOINT.json").read_text())
    assert doc["format"] == 1 and doc["sstable_format"] == 1
    assert ckpt.max_ts == max(v.ts for v in before.values()) < ckpt.hlc
    restored = open_engine(dest, options=NO_THREADS)
    assert _stored(restored) == before
    assert restored.get_version(b"k00003") == Version(
        before[b"k00003"].ts, b"ttl00003", False, FAR + 3
    )
    assert restored.get_version(b"k00005").tombstone  # type: ignore[union-attr]
    assert restored.get(b"expired") is None and restored.get_version(b"expired") is not None
    assert restored.get(b"k00001") == b"v00001" + b"." * 40


def test_the_table_reader_yields_every_entry_of_a_checkpoint(open_engine, tmp_path):
    e = open_engine(options=NO_THREADS)
    _fill_mixed(e, 300)
    before = _stored(e)
    ckpt = e.checkpoint(tmp_path / "ckpt")

    merged: dict[bytes, Version] = {}
    for t in ckpt.tables:
        for key, v in iter_table_entries(str(tmp_path / "ckpt" / t.name)):
            old = merged.get(key)
            rec = (v.ts, v.value, int(v.tombstone), v.expires_at_ms or 0)
            if old is None or newer(
                rec, (old.ts, old.value, int(old.tombstone), old.expires_at_ms or 0)
            ):
                merged[key] = v
    assert merged == before


def test_checkpoint_under_concurrent_writes_holds_every_write_acknowledged_before_it(
    open_engine, tmp_path
):
    e = open_engine()  # background flushes and compactions run throughout
    history: dict[bytes, list[Version]] = {}
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            i = 0
            while not stop.is_set():
                key = b"w%d-%06d" % (w, i)
                if i % 4 == 1:
                    e.put(key, b"x" * 30, expires_at_ms=FAR + i)
                else:
                    e.put(key, b"y" * 30)
                if i % 5 == 4:
                    e.delete(b"w%d-%06d" % (w, i - 2))
                # This thread is the only writer of its keys: what it reads is what it wrote.
                for k in (key, b"w%d-%06d" % (w, i - 2)) if i % 5 == 4 else (key,):
                    v = e.get_version(k)
                    with lock:
                        history.setdefault(k, []).append(v)  # type: ignore[arg-type]
                i += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    try:
        wait_for(
            lambda: e.stats()["compactions"] >= 1 and len(history) > 2000,
            60,
            lambda: f"a compaction and 2000 keys: {e.stats()['compactions']}, {len(history)}",
        )
        with lock:
            acked = {k: len(vs) for k, vs in history.items()}
        ckpt = e.checkpoint(tmp_path / "ckpt")
        # Writes go on during the checkpoint and after it.
        wait_for(lambda: len(history) > len(acked) + 500, 60, "500 more keys after the checkpoint")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    restored = open_engine(ckpt.dir)
    for key, n in acked.items():
        got = restored.get_version(key)
        # The version acknowledged last before the checkpoint, or one written after it began.
        assert got in history[key][n - 1 :], key
    assert ckpt.last_seq > 0


def test_a_compaction_that_deletes_the_cut_tables_midway_does_not_break_the_checkpoint(
    open_engine, tmp_path, monkeypatch
):
    e = open_engine(options=NO_THREADS)
    _fill_mixed(e, 600)
    e.flush()
    before = _stored(e)
    cut_tables = _sst_names(tmp_path / "db")
    assert len(cut_tables) >= 2
    place = checkpoint_mod.place_table
    compacted: list[set[str]] = []

    def place_then_compact(fs, src, dst, link):  # noqa: ANN001, ANN202
        if not compacted:
            e.put(b"k00007", b"newer")
            e.compact()  # replaces every table of the cut while they are being placed
            compacted.append(_sst_names(tmp_path / "db"))
        return place(fs, src, dst, link)

    monkeypatch.setattr(checkpoint_mod, "place_table", place_then_compact)
    ckpt = e.checkpoint(tmp_path / "ckpt", link=False)

    # The compaction's inputs outlived it only while pinned: kept then, deleted once placed.
    assert cut_tables <= compacted[0]
    assert _sst_names(tmp_path / "db").isdisjoint(cut_tables)
    assert len(_sst_names(tmp_path / "db")) == _live_table_count(e)
    assert {t.name for t in ckpt.tables} == cut_tables
    assert _stored(open_engine(ckpt.dir, options=NO_THREADS)) == before


def test_copy_fallback_when_links_are_not_wanted(open_engine, tmp_path):
    e = open_engine(options=NO_THREADS)
    _fill_mixed(e, 200)
    before = _stored(e)

    ckpt = e.checkpoint(tmp_path / "ckpt", link=False)

    assert not ckpt.linked
    for t in ckpt.tables:
        copy, live = tmp_path / "ckpt" / t.name, tmp_path / "db" / t.name
        assert copy.stat().st_ino != live.stat().st_ino
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == t.sha256
    assert _stored(open_engine(ckpt.dir, options=NO_THREADS)) == before


@pytest.fixture
def other_device_dir(tmp_path) -> Path:
    """A directory on another filesystem than tmp_path (/dev/shm is a tmpfs): os.link fails
    there with EXDEV."""
    path = Path("/dev/shm") / f"limedb-ckpt-{uuid.uuid4().hex}"
    path.mkdir()
    assert path.stat().st_dev != tmp_path.stat().st_dev, "/dev/shm is not another filesystem"
    yield path
    shutil.rmtree(path)


def test_copy_fallback_on_another_filesystem(open_engine, other_device_dir):
    e = open_engine(options=NO_THREADS)
    _fill_mixed(e, 200)
    before = _stored(e)
    dest = other_device_dir / "ckpt"

    ckpt = e.checkpoint(dest)  # links asked for, refused with EXDEV: copied

    assert not ckpt.linked and ckpt.tables
    for t in ckpt.tables:
        assert hashlib.sha256((dest / t.name).read_bytes()).hexdigest() == t.sha256
    assert _stored(open_engine(dest, options=NO_THREADS)) == before


def test_checkpoint_refuses_a_directory_that_is_not_empty(open_engine, tmp_path):
    e = open_engine(options=NO_THREADS)
    e.put(b"a", b"1")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_bytes(b"x")
    with pytest.raises(StorageError, match="not empty"):
        e.checkpoint(tmp_path / "busy")
    with pytest.raises(StorageError, match="CHECKPOINT.json missing"):
        load_checkpoint(tmp_path / "busy")


def test_a_checkpoint_is_durable_once_returned(tmp_path):
    """After a power loss right after the call, the checkpoint still opens with everything."""
    fs = CrashableMemFS(seed=3)
    e = Engine.open("/db", EngineOptions(**NO_THREADS), fs=fs)
    _fill_mixed(e, 300)
    before = _stored(e)
    e.checkpoint("/ckpt")
    e.checkpoint("/ckpt-copy", link=False)
    after = fs.crash()
    e.close()
    for dest in ("/ckpt", "/ckpt-copy"):
        with Engine.open(dest, EngineOptions(**NO_THREADS), fs=after) as restored:
            assert _stored(restored) == before
        assert load_checkpoint(dest, after).tables


def test_an_unchanged_table_keeps_its_address_in_the_next_checkpoint(open_engine, tmp_path):
    e = open_engine(options=NO_THREADS)
    _fill_mixed(e, 200)
    first = e.checkpoint(tmp_path / "one")
    e.put(b"new", b"1")
    second = e.checkpoint(tmp_path / "two")
    shared = {t.name for t in first.tables} & {t.name for t in second.tables}
    assert shared  # the old tables are in both, with the same address
    by_name = {t.name: t.sha256 for t in first.tables}
    assert all(by_name[t.name] == t.sha256 for t in second.tables if t.name in shared)
    assert len(second.tables) == len(first.tables) + 1
