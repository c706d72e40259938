"""A full disk under the engine: writes are refused cleanly, nothing unacknowledged is
acknowledged, nothing acknowledged is lost, and writes resume once there is room.

The engine runs over `CrashableMemFS` with its disk-full injection: `fill()` leaves a chosen
number of bytes (a write that does not fit is torn: what fits is written, then ENOSPC), and
`failing_syncs` makes the next fsyncs fail with ENOSPC and drop their unsynced bytes, which
read back as zeros after a crash (a failed fsync's page cache is not the disk's content).
"""

from __future__ import annotations

import random
import time

import pytest
from limedb.storage import CrashableMemFS, Engine, EngineOptions
from limedb.storage.errors import DiskFullError, is_disk_full

from .test_crash_model import OPTIONS


def _open(fs: CrashableMemFS, *, threads: bool = False, durability: str = "sync") -> Engine:
    opts = EngineOptions(durability=durability, **{**OPTIONS, "background_threads": threads})
    return Engine.open("/db", opts, fs=fs)


def _write_until_refused(engine: Engine, acked: dict[bytes, bytes], start: int) -> int:
    """Put keys from `start` on until one is refused; returns the refused key's number."""
    for i in range(start, start + 10_000):
        key, value = b"k%05d" % i, b"v%05d-" % i + b"x" * 40
        try:
            engine.put(key, value)
        except DiskFullError:
            return i
        acked[key] = value
    raise AssertionError("the disk never filled up")


def _write_some(engine: Engine, acked: dict[bytes, bytes], count: int = 50) -> None:
    for i in range(count):
        key, value = b"p%05d" % i, b"w%05d-" % i + b"y" * 30
        engine.put(key, value)
        acked[key] = value


def _put_eventually(engine: Engine, key: bytes, value: bytes, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            engine.put(key, value)
            return
        except DiskFullError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _check_survivors(fs: CrashableMemFS, acked: dict[bytes, bytes]) -> Engine:
    after = fs.crash()
    engine = _open(after)
    missing = [k for k, v in acked.items() if engine.get(k) != v]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:3]}"
    return engine


@pytest.mark.parametrize("leave", [0, 37, 500])
def test_wal_write_on_full_disk_is_refused_then_resumes(leave: int) -> None:
    fs = CrashableMemFS(seed=leave)
    engine = _open(fs)
    acked: dict[bytes, bytes] = {}
    _write_some(engine, acked)
    fs.fill(leave)
    refused = _write_until_refused(engine, acked, 1000)
    status = engine.stats()
    assert status["disk_full"] and status["disk_full_events"] == 1
    # Refused at once while full, before being applied; reads go on.
    with pytest.raises(DiskFullError, match="disk full"):
        engine.put(b"more", b"x")
    assert engine.get(b"more") is None
    assert all(engine.get(k) == v for k, v in acked.items())
    assert engine.stats()["disk_full_refused_writes"] >= 1
    fs.free()
    _put_eventually(engine, b"after", b"room")
    acked[b"after"] = b"room"
    assert not engine.stats()["disk_full"]
    engine.put(b"after2", b"room2")
    acked[b"after2"] = b"room2"
    engine.close()
    reopened = _check_survivors(fs, acked)
    # The refused write was never acknowledged, but it was applied and rewritten to the new
    # WAL once there was room: it is there, whole, or not at all.
    got = reopened.get(b"k%05d" % refused)
    assert got in (None, b"v%05d-" % refused + b"x" * 40)
    reopened.close()


def test_failed_fsync_rewrites_the_batch_to_a_fresh_log() -> None:
    fs = CrashableMemFS(seed=7)
    engine = _open(fs)
    acked = {b"a%03d" % i: b"before" for i in range(20)}
    for k, v in acked.items():
        engine.put(k, v)
    fs.failing_syncs = 1
    with pytest.raises(DiskFullError):
        engine.put(b"lost-fsync", b"unacknowledged")
    # The next sync would succeed, but the file the failed fsync was for is never trusted
    # again: writes are refused until the frame is rewritten in a fresh log.
    _put_eventually(engine, b"next", b"durable")
    acked[b"next"] = b"durable"
    for i in range(20):
        engine.put(b"z%03d" % i, b"later")
        acked[b"z%03d" % i] = b"later"
    # Crash without closing: the failed fsync's bytes read back as zeros in the old log.
    reopened = _check_survivors(fs, acked)
    assert reopened.get(b"lost-fsync") == b"unacknowledged"  # rewritten, then durable
    reopened.close()


def test_open_on_a_full_disk_serves_reads_then_takes_writes() -> None:
    fs = CrashableMemFS(seed=3)
    engine = _open(fs)
    acked = {b"r%03d" % i: b"value %d" % i for i in range(200)}
    for k, v in acked.items():
        engine.put(k, v)
    engine.close()
    fs.fill(0)
    engine = _open(fs)
    assert engine.stats()["disk_full"] and engine.stats()["opened_full"]
    assert all(engine.get(k) == v for k, v in acked.items())
    with pytest.raises(DiskFullError):
        engine.put(b"new", b"value")
    with pytest.raises(DiskFullError):
        engine.purge_range(b"r000", b"r010")
    fs.free()
    _put_eventually(engine, b"new", b"value")
    acked[b"new"] = b"value"
    assert not engine.stats()["opened_full"]
    engine.close()
    _check_survivors(fs, acked).close()


def test_background_threads_recover_by_themselves() -> None:
    fs = CrashableMemFS(seed=11)
    engine = _open(fs, threads=True)
    acked: dict[bytes, bytes] = {}
    _write_some(engine, acked)
    fs.fill(100)
    _write_until_refused(engine, acked, 5000)
    assert engine.stats()["disk_full"]
    fs.free()
    # Nobody writes: the syncer notices the room on its own.
    deadline = time.monotonic() + 10
    while engine.stats()["disk_full"]:
        assert time.monotonic() < deadline, "writes did not resume after space was freed"
        time.sleep(0.02)
    engine.put(b"after", b"room")
    acked[b"after"] = b"room"
    engine.close()
    _check_survivors(fs, acked).close()


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("durability", ["sync", "periodic"])
def test_random_fills_frees_flushes_and_crashes_lose_nothing_acknowledged(
    seed: int, durability: str
) -> None:
    """In sync mode every acknowledged write survives a crash; in periodic mode every write
    acknowledged before the last good sync does, or a write made after it replaced it."""
    rng = random.Random(seed)
    fs = CrashableMemFS(seed)
    engine = _open(fs, durability=durability)
    acked: dict[bytes, bytes] = {}  # the newest acknowledged value of each key
    durable: dict[bytes, bytes] = {}  # periodic: the values as of the last good sync
    later: dict[bytes, set[bytes]] = {}  # periodic: values written (or tried) since then

    def synced() -> None:
        durable.clear()
        durable.update(acked)
        later.clear()

    def crash_and_check() -> Engine:
        fs.free()
        fs.failing_syncs = 0
        after = _open(fs.crash())
        if durability == "sync":
            expect, allowed = acked, {}
        else:
            expect, allowed = durable, later
        lost = [
            k
            for k, v in expect.items()
            if after.get(k) != v and after.get(k) not in allowed.get(k, ())
        ]
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:3]}"
        return after

    for step in range(400):
        roll = rng.random()
        if roll < 0.04:
            fs.fill(rng.choice([0, 10, 60, 300, 2000]))
        elif roll < 0.08:
            fs.free()
        elif roll < 0.10:
            fs.failing_syncs = rng.randint(1, 2)
        elif roll < 0.14:
            try:
                engine.flush()
            except Exception as exc:  # noqa: BLE001 - only a full disk may refuse it
                assert is_disk_full(exc), repr(exc)
        elif roll < 0.16:
            try:
                engine.compact()
            except Exception as exc:  # noqa: BLE001
                assert is_disk_full(exc), repr(exc)
        elif roll < 0.18:
            try:
                engine.sync()
                synced()
            except DiskFullError:
                pass
        elif roll < 0.20:
            engine = crash_and_check()
            fs = engine._fs
            acked = {k: v for k in list(acked) if (v := engine.get(k)) is not None}
            synced()
        else:
            key = b"%03d" % rng.randrange(60)
            value = b"s%d-" % step + bytes(rng.randrange(120))
            later.setdefault(key, set()).add(value)
            try:
                engine.put(key, value)
            except DiskFullError:
                # Not acknowledged, but it may still land: the old value is no longer sure.
                acked.pop(key, None)
                durable.pop(key, None)
                continue
            acked[key] = value
    fs.free()
    fs.failing_syncs = 0
    _put_eventually(engine, b"final", b"x")
    acked[b"final"] = b"x"
    engine.sync()
    synced()
    engine.close()
    crash_and_check().close()


def test_flush_and_compaction_back_off_on_a_full_disk_then_catch_up() -> None:
    fs = CrashableMemFS(seed=13)
    engine = _open(fs, threads=True)
    acked: dict[bytes, bytes] = {}
    # Room for the WAL frames that fill the memtable, not for the table its flush writes.
    fs.fill(3000)
    deadline = time.monotonic() + 20
    i = 0
    while not engine.stats()["flush_blocked"]:
        assert time.monotonic() < deadline, f"no flush found the full disk: {engine.stats()}"
        key, value = b"f%05d" % i, b"%05d" % i + b"z" * 45
        i += 1
        try:
            engine.put(key, value)
            acked[key] = value
        except DiskFullError:
            time.sleep(0.01)
    # Backing off, not failed: reads work, and the state says why writes are refused.
    assert all(engine.get(k) == v for k, v in acked.items())
    assert engine.stats()["disk_full_reason"]
    fs.free()
    deadline = time.monotonic() + 20
    while any(engine.stats()[s] for s in ("flush_blocked", "compaction_blocked", "disk_full")):
        assert time.monotonic() < deadline, f"did not catch up: {engine.stats()}"
        time.sleep(0.02)
    for j in range(300):
        engine.put(b"g%05d" % j, b"after")
        acked[b"g%05d" % j] = b"after"
    assert engine.stats()["flushes"] >= 1
    engine.close()
    _check_survivors(fs, acked).close()
