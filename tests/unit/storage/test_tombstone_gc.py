"""Tombstones and expired values leave the disk only at the bottom level and after the grace."""

from __future__ import annotations

import time
from pathlib import Path

from limedb.storage import Engine, EngineOptions


def _disk_bytes(path: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(path.iterdir()) if p.suffix in (".sst", ".log"))


def _versions(e: Engine) -> dict[bytes, object]:
    return dict(e.iter_range(None, None, include_tombstones=True))


def _fill(e: Engine) -> None:
    for i in range(300):
        e.put(b"live-%04d" % i, b"v" * 30)
    for i in range(100):
        e.put(b"dead-%04d" % i, b"doomed-value")
        # expired a second ago: within a long grace period, past a zero one
        e.put(b"gone-%04d" % i, b"expiring-value", expires_at_ms=time.time_ns() // 10**6 - 1000)
    e.flush()
    for i in range(100):
        e.delete(b"dead-%04d" % i)
    e.flush()


def test_tombstones_and_expired_values_stay_within_the_grace_period(tmp_path):
    db = tmp_path / "db"
    with Engine.open(db, EngineOptions(tombstone_grace_s=3600)) as e:
        _fill(e)
        e.compact()
        versions = _versions(e)
        assert versions[b"dead-0000"].tombstone
        assert not versions[b"gone-0000"].live(time.time_ns() // 10**6)
        assert e.get(b"dead-0000") is None and e.get(b"gone-0000") is None
        assert b"dead-0099" in _disk_bytes(db)


def test_tombstones_and_expired_values_disappear_from_disk_after_the_grace(tmp_path):
    db = tmp_path / "db"
    with Engine.open(db, EngineOptions(tombstone_grace_s=3600)) as e:
        _fill(e)
    with Engine.open(db, EngineOptions(tombstone_grace_s=0)) as e:
        e.compact()
        versions = _versions(e)
        assert not [k for k in versions if not k.startswith(b"live-")]
        assert len(e.scan(None, None)) == 300
    disk = _disk_bytes(db)
    assert b"dead-" not in disk and b"gone-" not in disk and b"doomed-value" not in disk
    assert disk.count(b"live-") >= 300


def test_a_tombstone_above_an_older_value_in_a_deeper_level_is_kept(tmp_path):
    db = tmp_path / "db"
    opts = EngineOptions(
        tombstone_grace_s=0,
        l0_compaction_trigger=2,
        level_base_bytes=1024,
        background_threads=False,
        compaction_rate_bytes_per_s=0,
    )
    with Engine.open(db, opts) as e:
        for i in range(200):
            e.put(b"k%04d" % i, b"original")
        e.compact()  # into L1, which is over its 1 KiB target ...
        e._compact_pending()  # ... so it moves down to L2
        assert e.stats()["levels"][2]["files"] >= 1
        e.delete(b"k0007")
        e.flush()
        e.put(b"k0008", b"newer")
        e.flush()
        assert e._compact_pending() >= 1  # L0 -> L1: not the bottom, the tombstone must stay
        assert e.stats()["levels"][2]["files"] >= 1
        assert _versions(e)[b"k0007"].tombstone
        assert e.get(b"k0007") is None
        assert e.get(b"k0008") == b"newer"
        e.compact()  # now a bottom-level merge: both the tombstone and the value go
        assert b"k0007" not in _versions(e)
        assert e.get(b"k0006") == b"original"
    with Engine.open(db, opts) as e:
        assert e.get(b"k0007") is None
