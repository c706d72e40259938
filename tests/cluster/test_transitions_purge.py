"""Cleanup purges handed-off ranges from storage: recorded first, purged in the background,
resumed after a restart, hidden until released, and purged before a release lets the range
stream in again."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
import pytest
from limedb.cluster import streaming
from limedb.cluster.handed_off import HandedOff
from limedb.cluster.keys import MAX_TOKEN, storage_key, token_of
from limedb.cluster.streaming import RangeStreams
from limedb.hlc import HLC
from limedb.storage import Engine, EngineOptions
from support.cluster import Node, wait_for
from support.history import History
from support.transitions import Fleet, preload

HALF = MAX_TOKEN // 2
KEYS = [f"key-{i}".encode() for i in range(300)]
OPTIONS = EngineOptions(memtable_bytes=16 * 1024, l0_compaction_trigger=2)


def _fill(engine: Engine) -> None:
    for i, key in enumerate(KEYS):
        engine.put(storage_key(key), b"v%d" % i, ts=1_000_000 + i)
    engine.flush()


def _low(keys: list[bytes]) -> set[bytes]:
    return {k for k in keys if token_of(k) <= HALF}


def _stored(engine: Engine) -> set[bytes]:
    return {k[8:] for k, _ in engine.iter_range(None, None, include_tombstones=True)}


async def _until(condition, timeout_s: float = 20.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_a_handed_off_range_is_recorded_then_purged_and_stays_hidden_until_released(
    tmp_path: Path,
):
    engine = Engine.open(tmp_path / "db", OPTIONS)
    try:
        _fill(engine)
        streams = RangeStreams(engine, HLC(), HandedOff(tmp_path))

        async def run() -> None:
            streams.hand_off([(0, HALF)])
            assert HandedOff(tmp_path).pending() == [(0, HALF)]  # durable before any purge
            await _until(lambda: not streams.handed_off.pending())
            await streams.stop_purges()

        asyncio.run(run())
        assert _stored(engine) == set(KEYS) - _low(KEYS)
        assert HandedOff(tmp_path).pending() == []
        assert HandedOff(tmp_path).ranges() == [(0, HALF)]
        assert streams.handed_off_keys() == 0
        # A hint replayed after the purge lands in the range: stored, but not this node's key.
        late = sorted(_low(KEYS))[0]
        engine.put(storage_key(late), b"late")
        assert streams.handed_off_keys() == 1
    finally:
        engine.close()


def test_a_journaled_purge_resumes_after_a_restart(tmp_path: Path):
    engine = Engine.open(tmp_path / "db", OPTIONS)
    _fill(engine)
    # Written by a version that only hid ranges: the whole range still needs its purge.
    (tmp_path / "handed_off.json").write_bytes(orjson.dumps([[0, HALF]]))
    engine.close()
    engine = Engine.open(tmp_path / "db", OPTIONS)
    try:
        streams = RangeStreams(engine, HLC(), HandedOff(tmp_path))
        assert streams.handed_off_keys() == len(_low(KEYS))  # hidden, not yet counted as ours

        async def run() -> None:
            streams.resume_purges()
            await _until(lambda: not streams.handed_off.pending())
            await streams.stop_purges()

        asyncio.run(run())
        assert _stored(engine) == set(KEYS) - _low(KEYS)
    finally:
        engine.close()


def test_a_release_purges_stale_copies_first_and_keeps_what_streams_in_after(tmp_path: Path):
    engine = Engine.open(tmp_path / "db", OPTIONS)
    try:
        _fill(engine)
        streams = RangeStreams(engine, HLC(), HandedOff(tmp_path))
        streams._stopped = True  # no background purge: the release alone must purge
        streams.hand_off([(0, HALF)])
        assert _stored(engine) == set(KEYS)
        streamed = sorted(_low(KEYS))[:10]

        async def run() -> None:
            await streams.release([(0, HALF)])
            # The range streams back in, with the same (old) timestamps it had before.
            for key in streamed:
                assert engine.put(storage_key(key), b"back", ts=1_000_000)

        asyncio.run(run())
        assert not streams.handed_off and not streams.handed_off.pending()
        low = {k for k in _stored(engine) if token_of(k) <= HALF}
        assert low == set(streamed)
        assert all(engine.get(storage_key(k)) == b"back" for k in streamed)
    finally:
        engine.close()


def _stored_entries(fleet: Fleet, node: Node) -> float:
    """The node's storage entry count (the engine's estimate, from /metrics)."""
    for line in fleet.http.get(f"{node.url}/metrics").text.splitlines():
        if line.startswith("limedb_storage_keys_approx "):
            return float(line.split()[1])
    raise AssertionError("no limedb_storage_keys_approx in /metrics")


@pytest.mark.cluster
def test_after_a_join_the_old_owners_purge_what_they_handed_off_and_count_only_their_keys(
    tmp_path: Path,
):
    fleet = Fleet(tmp_path, {"LIMEDB_VNODES": "16", "LIMEDB_CLEANUP_GRACE_MS": "300"}, 200)
    try:
        history = History()
        a, b, c = fleet.bootstrap(3)
        keys = preload(fleet, history, 4000)
        assert all(_stored_entries(fleet, n) >= len(keys) for n in (a, b, c))
        d = fleet.start_joiner()
        fleet.join(d)
        fleet.members.append(d)
        fleet.wait_converged()
        owned_by = {node.url: fleet.owned_by(node, keys) for node in (a, b, c)}
        # With RF 3 the fourth node takes some of the old owners' copies away (how
        # much from each depends on where its 16 vnodes fall: node ids carry random ports).
        assert sum(owned_by.values()) < 3 * len(keys), owned_by
        for node in (a, b, c):
            owned = owned_by[node.url]
            wait_for(
                lambda node=node, owned=owned: _stored_entries(fleet, node) == owned,
                30.0,
                f"{node.url} to purge the ranges it handed off",
                0.2,
            )
            page = fleet.http.get(f"{node.url}/api/v1/keys", params={"pageSize": 1}).json()
            assert page["total"] == len(fleet.local_keys(node)) == owned
        fleet.check(history)
    finally:
        fleet.stop()


@pytest.mark.cluster
def test_cleanup_waits_for_every_node_to_drain_not_for_the_grace(tmp_path: Path):
    """Every node confirms (RPC DRAIN) that it routes by the cleanup record and has finished
    the requests it began before, so a join and a leave end without the grace, here ten
    minutes (a node that could not confirm would be waited that long), and lose nothing."""
    env = {"LIMEDB_VNODES": "16", "LIMEDB_CLEANUP_GRACE_MS": "600000"}
    fleet = Fleet(tmp_path, env, 200)
    try:
        history = History()
        a, b, c = fleet.bootstrap(3)
        keys = preload(fleet, history, 2000)
        d = fleet.start_joiner()
        fleet.join(d)
        fleet.leave(b)
        fleet.wait_converged()
        for node in (a, c, d):
            owned = fleet.owned_by(node, keys)
            wait_for(
                lambda node=node, owned=owned: _stored_entries(fleet, node) == owned,
                30.0,
                f"{node.url} to purge the ranges it handed off",
                0.2,
            )
        fleet.check(history)
    finally:
        fleet.stop()


def test_the_purge_rests_between_slices_to_keep_its_pace_and_a_stop_ends_the_rest(
    tmp_path: Path,
):
    engine = Engine.open(tmp_path / "db", OPTIONS)
    try:
        _fill(engine)
        # One byte per second: after its first slice the purge owes a rest of days.
        streams = RangeStreams(engine, HLC(), HandedOff(tmp_path), purge_bytes_per_s=1)

        async def run() -> None:
            streams.hand_off([(0, MAX_TOKEN)])
            await _until(lambda: streams.counters["purge_rest_ms"] > 0)
            # Resting after one slice: the other slices wait, still pending and stored.
            assert streams.counters["purges"] == 1
            assert streams.handed_off.pending()
            assert engine.stats()["purged_bytes"] > 0
            shown = streams.purge_stats()  # what /api/v1/health shows under storage.range_purge
            assert shown["slices_purged"] == 1 and shown["rest_ms"] > 0
            assert shown["ranges_pending"] > 0
            await asyncio.wait_for(streams.stop_purges(), 10)  # not the days of rest

        asyncio.run(run())
        left = {k for k in _stored(engine)}
        assert left and left != set(KEYS)  # one slice purged, the rest left for later
    finally:
        engine.close()

    # Unpaced (0), the next start purges everything left without resting.
    engine = Engine.open(tmp_path / "db", OPTIONS)
    try:
        streams = RangeStreams(engine, HLC(), HandedOff(tmp_path), purge_bytes_per_s=0)

        async def finish() -> None:
            streams.resume_purges()
            await _until(lambda: not streams.handed_off.pending())
            await streams.stop_purges()

        asyncio.run(finish())
        assert _stored(engine) == set()
        assert streams.counters["purge_rest_ms"] == 0
    finally:
        engine.close()


def test_a_store_bigger_than_sixteen_slices_allow_is_purged_in_more_of_them(
    tmp_path: Path, monkeypatch
):
    # Each slice's rewrite holds off compactions: a big store gets slices of a bounded size.
    monkeypatch.setattr(streaming, "PURGE_SLICE_BYTES", 256)
    engine = Engine.open(tmp_path / "db", OPTIONS)
    try:
        _fill(engine)
        stored = sum(level["bytes"] for level in engine.stats()["levels"])
        assert streaming.purge_slice_count(stored) > streaming.PURGE_SLICES
        streams = RangeStreams(engine, HLC(), HandedOff(tmp_path))

        async def run() -> None:
            streams.hand_off([(0, MAX_TOKEN)])
            await _until(lambda: not streams.handed_off.pending())
            await streams.stop_purges()

        asyncio.run(run())
        assert streams.counters["purges"] > streaming.PURGE_SLICES
        assert _stored(engine) == set()
    finally:
        engine.close()
