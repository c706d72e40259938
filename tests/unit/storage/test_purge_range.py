"""Engine.purge_range removes exactly a key range's stored versions, durably, in write order."""

from __future__ import annotations

import os
import threading

from limedb.storage import CrashableMemFS, Engine, EngineOptions

from .conftest import SMALL

NO_THREADS = dict(SMALL, background_threads=False)


def _key(i: int) -> bytes:
    return b"k%05d" % i


def _fill(e: Engine, n: int, tag: bytes = b"v") -> None:
    for i in range(n):
        e.put(_key(i), tag + b"%05d" % i + b"." * 40)


def _stored(e: Engine) -> dict[bytes, object]:
    return dict(e.iter_range(None, None, include_tombstones=True))


def _levels_used(e: Engine) -> list[int]:
    return [lvl["level"] for lvl in e.stats()["levels"] if lvl["files"]]


def _table_bytes(path) -> int:
    return sum(os.path.getsize(path / n) for n in os.listdir(path) if n.endswith(".sst"))


def test_purge_removes_exactly_the_range_from_memtable_l0_and_deeper_levels(open_engine):
    e = open_engine(options=NO_THREADS)
    _fill(e, 600, b"old")
    e.compact()  # a deeper level
    for i in range(0, 600, 3):
        e.put(_key(i), b"mid%05d" % i)
    e.flush()  # an L0 table over it
    for i in range(0, 600, 5):
        e.delete(_key(i))  # memtable tombstones
    assert 0 in _levels_used(e) and max(_levels_used(e)) >= 1
    before = _stored(e)

    rewritten = e.purge_range(_key(100), _key(300))

    assert rewritten > 0
    after = _stored(e)
    assert after == {k: v for k, v in before.items() if not _key(100) <= k < _key(300)}
    assert e.get_version(_key(100)) is None and e.get_version(_key(299)) is None
    assert e.get(_key(99)) == before[_key(99)].value  # type: ignore[attr-defined]
    assert e.get_version(_key(300)) == before[_key(300)]


def test_writes_after_the_purge_are_kept_even_with_older_timestamps(open_engine):
    e = open_engine(options=NO_THREADS)
    _fill(e, 200)
    e.flush()
    old_ts = e.get_version(_key(50)).ts  # type: ignore[union-attr]
    e.purge_range(_key(0), _key(100))
    # Streamed back in a later transition: an old timestamp, written after the purge.
    assert e.put(_key(50), b"streamed", ts=old_ts)
    assert e.delete(_key(60), ts=old_ts)
    e.purge_range(_key(150), _key(160))  # another purge elsewhere keeps them too
    e.compact()
    assert e.get(_key(50)) == b"streamed"
    assert e.get_version(_key(60)).tombstone  # type: ignore[union-attr]
    assert e.get_version(_key(51)) is None
    assert len(e.scan(_key(0), _key(100))) == 1


def test_a_range_without_stored_keys_rewrites_nothing(open_engine):
    e = open_engine(options=NO_THREADS)
    _fill(e, 100)
    e.flush()
    files = e.stats()["levels"]
    assert e.purge_range(b"z", None) == 0
    assert e.purge_range(b"a", b"b") == 0
    assert e.stats()["levels"] == files
    assert len(e.scan()) == 100


def test_purge_survives_close_and_reopen(open_engine, tmp_path):
    e = open_engine(tmp_path / "db", options=NO_THREADS)
    _fill(e, 300)
    e.flush()
    for i in range(100, 120):
        e.put(_key(i), b"unflushed")  # only in the WAL and the memtable
    e.purge_range(_key(100), _key(200))
    e.put(_key(150), b"after")
    e.close()
    e = open_engine(tmp_path / "db", options=NO_THREADS)
    assert [k for k, _ in e.scan(_key(100), _key(200))] == [_key(150)]
    assert e.get(_key(150)) == b"after"
    assert len(e.scan()) == 201


def test_purge_reclaims_disk_space(open_engine, tmp_path):
    e = open_engine(tmp_path / "db", options=NO_THREADS)
    _fill(e, 3000)
    e.compact()
    full = _table_bytes(tmp_path / "db")
    e.purge_ranges([(_key(0), _key(1000)), (_key(2000), None)])
    e.compact()
    assert _table_bytes(tmp_path / "db") < full * 0.45
    assert len(e.scan()) == 1000


class _CrashBeforeSync(CrashableMemFS):
    """Takes a crash image just before its `crash_at`-th fsync (of a file or a directory)."""

    crash_at: int | None = None
    image: CrashableMemFS | None = None
    _syncs = 0

    @property
    def syncs(self) -> int:
        return self._syncs

    @syncs.setter
    def syncs(self, value: int) -> None:
        self._syncs = value
        if self.crash_at is not None and value >= self.crash_at and self.image is None:
            self.image = self.crash(tear=True)


def _purge_setup(fs: CrashableMemFS, opts: EngineOptions) -> Engine:
    e = Engine.open("/db", opts, fs=fs)
    _fill(e, 400, b"a")
    e.compact()  # a deeper level
    for i in range(0, 400, 2):
        e.put(_key(i), b"b%05d" % i)  # newer versions in L0 and in the memtable
        if i == 200:
            e.flush()
    return e


def test_a_crash_at_any_point_of_a_purge_leaves_it_done_or_undone_never_half():
    opts = EngineOptions(durability="sync", **NO_THREADS)
    outcomes = []
    step = 1
    while True:
        fs = _CrashBeforeSync(step)
        e = _purge_setup(fs, opts)
        before = _stored(e)
        after = {k: v for k, v in before.items() if not _key(100) <= k < _key(300)}
        fs.crash_at = fs.syncs + step
        try:
            e.purge_range(_key(100), _key(300))
        except OSError:
            pass  # the engine ran on past the crash into a frozen filesystem
        image = fs.image
        e.close()
        if image is None:  # the purge made fewer fsyncs than `step`: every point was tried
            done = Engine.open("/db", opts, fs=fs.crash())
            assert _stored(done) == after
            done.close()
            break
        recovered = Engine.open("/db", opts, fs=image)
        got = _stored(recovered)
        recovered.close()
        assert got in (before, after), f"a crash before fsync {step} of the purge left {got}"
        outcomes.append(got == after)
        step += 1
    # Several durable steps were cut short (WAL, flush, new tables, MANIFEST edit).
    assert len(outcomes) >= 4 and outcomes[0] is False


def test_concurrent_readers_never_see_an_older_version_during_purges(open_engine):
    e = open_engine()
    _fill(e, 2000, b"a")
    e.compact()
    for i in range(2000):
        e.put(_key(i), b"b%05d" % i)  # newer versions above the older ones
    e.flush()
    errors: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            for i in range(0, 2000, 37):
                v = e.get(_key(i))
                if v is not None and not v.startswith(b"b"):
                    errors.append(f"{_key(i)!r} read {v!r}")
                if v is None and not 500 <= i < 1500:
                    errors.append(f"{_key(i)!r} outside the ranges vanished")
            for k, v in e.scan(_key(0), _key(2000)):
                if not v.startswith(b"b"):
                    errors.append(f"scan: {k!r} read {v!r}")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for lo in range(500, 1500, 100):
            e.purge_range(_key(lo), _key(lo + 100))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:5]
    assert e.scan(_key(500), _key(1500)) == []
    assert len(e.scan()) == 1000
