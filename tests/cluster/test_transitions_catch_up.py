"""A node that was down while two transitions took ranges from it (two joins, or a join and a
lower replication factor) drops all of them when it comes back: it learns only the latest ring record, whose moves say nothing of the first
transition, yet afterwards it lists, counts and stores exactly the keys it owns in the final
ring, and every key is on exactly its RF owners."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from limedb.cluster.handed_off import HANDED_OFF_FILE, HandedOff
from limedb.cluster.membership import Membership
from limedb.cluster.ring.keeper import RingKeeper
from limedb.cluster.ring.placement import Ring
from limedb.cluster.ring.record import RingRecord
from limedb.cluster.streaming import RangeStreams
from limedb.cluster.transition_driver import TransitionDriver
from limedb.cluster.transitions import Change, Transition, propose
from limedb.hlc import HLC
from limedb.storage import Engine
from support.cluster import Node, wait_for
from support.history import History
from support.transitions import Fleet, preload

# RF 2: every range the down node held has another live replica to stream from.
ENV = {
    "LIMEDB_VNODES": "16",
    "LIMEDB_CLEANUP_GRACE_MS": "300",
    "LIMEDB_REPLICATION_FACTOR": "2",
}
KEYS = 2000


def _stored_entries(fleet: Fleet, node: Node) -> float:
    """The node's storage entry count (the engine's estimate, from /metrics)."""
    for line in fleet.http.get(f"{node.url}/metrics").text.splitlines():
        if line.startswith("limedb_storage_keys_approx "):
            return float(line.split()[1])
    raise AssertionError("no limedb_storage_keys_approx in /metrics")


def _dead_in_view_of(fleet: Fleet, via: Node, node: Node) -> bool:
    return {m["url"]: m["liveness"] for m in fleet.status(via)["members"]}[node.url] == "dead"


@pytest.mark.cluster
@pytest.mark.parametrize(
    "second, stop",
    [("join", "kill -9"), ("lower RF", "SIGTERM")],
    ids=["join then join, kill -9", "join then RF 1, SIGTERM"],
)
def test_a_node_down_through_two_transitions_drops_the_ranges_both_took_from_it(
    tmp_path: Path, second: str, stop: str
):
    fleet = Fleet(tmp_path, ENV, first_host=180 if second == "join" else 190)
    try:
        history = History()
        a, b, x = fleet.bootstrap(3)
        keys = preload(fleet, history, KEYS)
        first_ring, rf = fleet.ring()
        assert rf == 2
        held = {k for k in keys if x.url in first_ring.replica_urls(k, rf)}
        assert fleet.local_keys(x) == held

        if stop == "kill -9":
            x.kill()
        else:
            x.stop()
        fleet.members.remove(x)
        wait_for(lambda: _dead_in_view_of(fleet, a, x), 30.0, "x to be judged dead")
        d = fleet.start_joiner()
        fleet.join(d)
        if second == "join":
            fleet.join(fleet.start_joiner())
        else:
            fleet.set_rf(1)  # streams nothing; x keeps only the ranges it is first owner of

        # x was a member throughout: both joins took ranges from it, and it missed both.
        middle = Ring({**first_ring.members, d.url: d.url}, first_ring.vnodes, 2)
        lost_in_first = {k for k in held if x.url not in middle.replica_urls(k, rf)}
        final_ring, final_rf = fleet.ring()
        assert final_ring.epoch == 3 and x.url in final_ring
        owned = {k for k in keys if x.url in final_ring.replica_urls(k, final_rf)}
        assert lost_in_first and owned < held, (len(lost_in_first), len(owned), len(held))

        x.start()
        fleet.wait_ready(x)
        fleet.members.append(x)
        fleet.wait_converged()
        wait_for(
            lambda: fleet.local_keys(x) == owned,
            30.0,
            "x to list exactly the keys it owns in the final ring",
            0.2,
        )
        wait_for(
            lambda: _stored_entries(fleet, x) == len(owned),
            30.0,
            "x to purge every range it lost from its storage",
            0.2,
        )
        page = fleet.http.get(f"{x.url}/api/v1/keys", params={"pageSize": 1}).json()
        assert page["total"] == len(owned)
        fleet.check(history)
    finally:
        fleet.stop()


def _finished(state: RingRecord, change: Change, now_ms: int) -> RingRecord:
    """`state` after `change` ran to the end (every target streamed)."""
    t: Transition = propose(state.ring, state.rf, change, now_ms=now_ms, running=state.transition)
    t = t.begin_streaming(now_ms + 1)
    for target, indexes in t.streams().items():
        t = t.record_progress(
            target, index=len(indexes), cursor=None, keys=0, nbytes=0, now_ms=now_ms + 2
        )
    t = t.commit(now_ms + 3).begin_cleanup(now_ms + 4).finish(now_ms + 5)
    return state.with_transition(t)


def test_a_member_hands_off_exactly_what_it_does_not_replicate_once_and_never_mid_transition(
    tmp_path: Path,
):
    members = {f"n{i}": f"http://n{i}" for i in range(1, 4)}
    ring = Ring(members, vnodes=8)
    membership = Membership("n1", members["n1"], ring)
    keeper = RingKeeper(membership, None, RingRecord(ring, 2))
    engine = Engine.open(tmp_path / "db")
    try:
        streams = RangeStreams(engine, HLC(), HandedOff(tmp_path))
        TransitionDriver("n1", keeper, membership, streams, call=None)  # type: ignore[arg-type]
        assert not streams.handed_off  # no transition ever ran: nothing moved

        joined = _finished(keeper.state, Change.join("n4", "http://n4"), 1_000)
        running = propose(joined.ring, joined.rf, Change.join("n5", "http://n5"), now_ms=2_000)
        keeper.adopt(joined.with_transition(running))
        assert not streams.handed_off  # never while a transition runs

        # n1 missed the first join's cleanup (it only learns the second join's record) ...
        latest = _finished(joined, Change.join("n5", "http://n5"), 3_000)
        keeper.adopt(latest)
        final, rf = latest.ring, latest.rf
        rng = random.Random(7)
        tokens = [rng.getrandbits(64) for _ in range(5_000)] + [0, (1 << 64) - 1]
        for token in tokens:
            assert (token in streams.handed_off) == ("n1" not in final.replicas(token, rf))
        assert streams.handed_off.pending() == streams.handed_off.ranges()

        # ... and adopting further records that take nothing more from it rewrites nothing.
        streams.handed_off.purged(streams.handed_off.ranges())
        path = tmp_path / HANDED_OFF_FILE
        before = (path.read_bytes(), path.stat().st_mtime_ns)
        rolled = latest.with_transition(
            propose(final, rf, Change.set_rf(3), now_ms=4_000)
            .begin_streaming(4_001)
            .roll_back("target unreachable", 4_002)
        )
        assert keeper.adopt(rolled)
        assert (path.read_bytes(), path.stat().st_mtime_ns) == before
        assert streams.handed_off.pending() == []
    finally:
        engine.close()
