"""The engine's public API behaves as other components rely on (gets, LWW, TTL, scans, stats)."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from limedb.hlc import pack
from limedb.storage import (
    CrashableMemFS,
    Engine,
    EngineClosedError,
    EngineOptions,
    Version,
    WriteBatch,
)


def test_put_get_delete_roundtrip_across_flush_and_reopen(open_engine, tmp_path):
    e = open_engine()
    for i in range(3000):
        e.put(b"k%05d" % i, b"v%d" % i)
    e.delete(b"k00007")
    assert e.get(b"k00001") == b"v1"
    assert e.get(b"k00007") is None
    assert e.get(b"missing") is None
    e.close()
    e = open_engine()
    assert e.get(b"k02999") == b"v2999"
    assert e.get(b"k00007") is None
    assert e.stats()["levels"][0]["files"] + e.stats()["levels"][1]["files"] > 0


def test_older_timestamp_is_ignored_and_tombstone_wins_a_tie(open_engine):
    e = open_engine()
    assert e.put(b"k", b"new", ts=pack(2_000))
    assert not e.put(b"k", b"old", ts=pack(1_000))
    assert e.get(b"k") == b"new"
    assert not e.put(b"k", b"lesser", ts=pack(2_000))  # equal ts: the larger value wins
    assert e.get(b"k") == b"new"
    assert e.delete(b"k", ts=pack(2_000))  # equal ts: tombstone wins
    assert e.get(b"k") is None
    assert not e.delete(b"k", ts=pack(2_000))
    assert e.get_version(b"k") == Version(pack(2_000), b"", True, None)
    e.flush()
    assert not e.put(b"k", b"older", ts=pack(1_999))  # still decided against the flushed table
    assert e.put(b"k", b"newer", ts=pack(2_001))
    assert e.get(b"k") == b"newer"


def test_engine_clock_stamps_after_every_timestamp_it_has_stored(open_engine):
    e = open_engine()
    future = pack(2**40)  # far in the future
    e.put(b"a", b"x", ts=future)
    e.put(b"a", b"y")  # stamped by the engine: must win
    assert e.get(b"a") == b"y"
    e.close()
    e = open_engine()
    assert e.get_version(b"a").ts > future
    e.put(b"a", b"z")
    assert e.get(b"a") == b"z"


def test_expired_values_read_as_absent_but_keep_their_version(open_engine):
    e = open_engine()
    e.put(b"gone", b"v", expires_at_ms=1)
    e.put(b"stays", b"v", expires_at_ms=2**50)
    assert e.get(b"gone") is None
    assert e.get(b"stays") == b"v"
    v = e.get_version(b"gone")
    assert v is not None and v.expires_at_ms == 1 and not v.live(2)
    assert e.scan(None, None) == [(b"stays", b"v")]


def test_tables_cached_whole_answer_gets_with_tombstones_and_expiry_over_older_values(
    open_engine,
):
    """A table cached whole answers `get` from its dict of values (block_cache.py), where a
    plain record is its value: a deleted or expiring key there must still hide the value below
    it, and `get_version` still sees the version."""
    e = open_engine(options=dict(background_threads=False))
    keys = [b"k%04d" % i for i in range(400)]
    for k in keys:
        e.put(k, b"old " + k)
    e.compact()  # the old values in the deepest level
    for i, k in enumerate(keys):
        if i % 4 == 0:
            e.delete(k)
        elif i % 4 == 1:
            e.put(k, b"", expires_at_ms=1)  # expired
        elif i % 4 == 2:
            e.put(k, b"new " + k, expires_at_ms=2**50)
    e.flush()  # the new versions in L0, above the old ones
    want = {k: [None, None, b"new " + k, b"old " + k][i % 4] for i, k in enumerate(keys)}
    for _ in range(2):  # the first pass caches every block, and so every table whole
        assert {k: e.get(k) for k in keys} == want
    tables = [t for files in e._view.all_levels for t in files]
    assert len(e._view.l0) >= 1 and len(tables) >= 2
    assert all(t.blocks[-1] is not None for t in tables), "not every table was cached whole"
    assert e.get_version(keys[0]).tombstone and e.get_version(keys[1]).expires_at_ms == 1
    assert e.get_version(keys[3]).value == b"old " + keys[3]
    assert e.get(b"k9999") is None and e.get(b"k0000x") is None


def test_scan_is_ordered_half_open_and_limited_over_all_levels(open_engine):
    e = open_engine()
    keys = [b"%05d" % i for i in range(0, 5000, 3)]
    for k in reversed(keys):
        e.put(k, k + b"!")
    e.flush()
    for k in keys[::2]:
        e.put(k, k + b"?")  # newer versions in the memtable shadow flushed ones
    got = e.scan(b"00100", b"00200")
    want = [k for k in keys if b"00100" <= k < b"00200"]
    assert [k for k, _ in got] == want
    for k, v in got:
        assert v == k + (b"?" if keys.index(k) % 2 == 0 else b"!")
    assert len(e.scan(None, None, limit=7)) == 7
    assert e.scan(b"9", None) == []


def test_iter_range_is_a_snapshot_unaffected_by_later_writes(open_engine):
    e = open_engine()
    for i in range(100):
        e.put(b"%03d" % i, b"a")
    it = e.iter_range(None, None)
    first = next(it)
    for i in range(100):
        e.put(b"%03d" % i, b"b")
    e.delete(b"050")
    rest = list(it)
    assert first[0] == b"000"
    assert [v.value for _, v in [first, *rest]] == [b"a"] * 100
    with e.snapshot() as s:
        e.put(b"050", b"c")
        assert s.get(b"050") is None
        assert s.get_version(b"050").tombstone
    tomb = dict(e.iter_range(b"050", b"051", include_tombstones=True))
    assert tomb[b"050"].value == b"c"


def test_write_batch_applies_every_op_and_reports_each(open_engine):
    e = open_engine()
    e.put(b"x", b"1", ts=pack(5_000))
    res = e.write(
        WriteBatch().put(b"a", b"1").delete(b"b").put(b"x", b"0", ts=pack(4_000)).put(b"c", b"3")
    )
    assert res == [True, True, False, True]
    assert (e.get(b"a"), e.get(b"b"), e.get(b"x"), e.get(b"c")) == (b"1", None, b"1", b"3")


def test_async_writers_share_fsyncs_and_all_become_durable(open_engine, tmp_path):
    e = open_engine()

    async def main():
        return await asyncio.gather(*[e.put_async(b"k%d" % i, b"v") for i in range(500)])

    assert all(asyncio.run(main()))
    st = e.stats()
    assert st["synced_seq"] >= st["last_seq"]
    e.close()
    e = open_engine()
    assert all(e.get(b"k%d" % i) == b"v" for i in range(500))


def test_concurrent_thread_writers_are_all_acknowledged_durably(open_engine):
    e = open_engine()

    def writer(t):
        for i in range(200):
            assert e.put(b"t%d-%d" % (t, i), b"v")

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert e.stats()["synced_seq"] == e.stats()["last_seq"]
    assert e.approx_key_count() >= 3200
    assert len(e.scan(None, None)) == 3200


def test_stats_are_json_serialisable_and_count_levels(open_engine):
    e = open_engine()
    for i in range(2000):
        e.put(b"%d" % i, b"x" * 50)
    e.flush()
    st = json.loads(json.dumps(e.stats()))
    assert sum(lvl["files"] for lvl in st["levels"]) >= 1
    for name in (
        "memtable_bytes",
        "bloom_false_positive_rate",
        "block_cache_hit_rate",
        "compaction_backlog_bytes",
        "keys_approx",
    ):
        assert name in st


def test_close_is_idempotent_and_rejects_later_writes(open_engine):
    e = open_engine()
    e.put(b"a", b"b")
    e.close()
    e.close()
    with pytest.raises(EngineClosedError):
        e.put(b"a", b"c")


def test_periodic_mode_fsyncs_on_its_timer_without_further_writes(open_engine):
    e = open_engine(options=dict(durability="periodic", periodic_ms=20))
    for i in range(100):
        e.put(b"k%d" % i, b"v")
    st = e.stats()
    deadline = time.monotonic() + 10
    while e.stats()["synced_seq"] < st["last_seq"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert e.stats()["synced_seq"] >= st["last_seq"]


def test_sync_mode_acknowledges_only_after_the_wal_is_fsynced():
    fs = CrashableMemFS(seed=1)
    e = Engine.open("/db", EngineOptions(durability="sync"), fs=fs)
    syncs = fs.syncs
    e.put(b"a", b"1")
    assert fs.syncs > syncs
    after = fs.crash(tear=True)
    e.close()
    with Engine.open("/db", EngineOptions(durability="sync"), fs=after) as e2:
        assert e2.get(b"a") == b"1"


def test_write_then_applies_now_and_calls_back_only_once_fsynced():
    """`write_then` (the replica's batched write: no coroutine, no future): the batch is
    visible at once, and its callback runs only after the fsync that makes it survive a
    crash."""
    fs = CrashableMemFS(seed=2)
    e = Engine.open("/db", EngineOptions(durability="sync"), fs=fs)

    async def main():
        syncs = fs.syncs
        heard: list = []
        called = asyncio.Event()

        def durable(results, error):
            heard.append((results, error, fs.syncs))
            called.set()

        e.write_then(WriteBatch().put(b"a", b"1", ts=pack(7_000)).delete(b"b"), durable)
        assert e.get(b"a") == b"1"
        assert heard == []  # not before the syncer's fsync
        await asyncio.wait_for(called.wait(), 10)
        [(results, error, synced_at)] = heard
        assert results == [True, True] and error is None
        assert synced_at > syncs

    asyncio.run(main())
    after = fs.crash(tear=True)
    e.close()
    with Engine.open("/db", EngineOptions(durability="sync"), fs=after) as e2:
        assert e2.get(b"a") == b"1"
