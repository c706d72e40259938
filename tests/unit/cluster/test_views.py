"""The cluster routes serve LimeDB's JSON shapes, with degrees in 0..360 and real liveness."""

import math

import orjson
import pytest
from limedb.cluster.failure import Liveness
from limedb.cluster.membership import MembershipSnapshot, PeerView
from limedb.cluster.ring import TOKEN_SPACE, Ring
from limedb.cluster.views import cluster_state_view, degrees, gossip_view, ring_view

URLS = ["http://node1:8484", "http://node2:8484", "http://node3:8484"]


def peer(node_id, liveness=Liveness.ALIVE, silence=0.4, url=None, phi=0.5, in_ring=True):
    return PeerView(node_id, url or node_id, liveness, phi, silence, 7, 42, "normal", in_ring)


def snapshot(peers=(), ring=None, node_id=URLS[0]):
    return MembershipSnapshot(
        node_id=node_id,
        node_url=node_id,
        ring=ring if ring is not None else Ring(URLS, vnodes=16, epoch=3),
        generation=7,
        heartbeat=99,
        status="normal",
        peers=tuple(peers),
        gossip_interval_s=1.0,
        seeds=(),
    )


def test_ring_view_has_limedb_fields_keyed_by_url():
    view = ring_view(Ring(URLS, vnodes=16, epoch=3), URLS[1])
    assert view["totalNodes"] == 3
    assert view["virtualNodes"] == 48
    assert view["virtualNodesPerNode"] == 16
    assert view["virtualNodeDistribution"] == dict.fromkeys(URLS, 16)
    assert view["currentNode"] == URLS[1]
    assert sorted(view["allNodes"]) == URLS
    assert set(view["ranges"]) == set(URLS) == set(view["rangesDegrees"])
    assert view["ringEpoch"] == 3
    orjson.dumps(view)  # every int fits JSON readers' 64 bits


def test_ring_view_ranges_match_limedb_bounds_and_cover_the_ring():
    ring = Ring(URLS, vnodes=16)
    view = ring_view(ring, URLS[0])
    all_ranges = sorted((r for rs in view["ranges"].values() for r in rs), key=lambda r: r["end"])
    assert [r["end"] for r in all_ranges] == list(ring.tokens)
    for prev, cur in zip(all_ranges, all_ranges[1:] + all_ranges[:1], strict=True):
        assert cur["start"] == (prev["end"] + 1) % TOKEN_SPACE
        assert cur["hash"] == cur["end"]
    assert sum(r["size"] for r in all_ranges) == TOKEN_SPACE


def test_ring_degrees_lie_in_0_to_360_and_sizes_add_up_to_a_full_turn():
    view = ring_view(Ring(URLS, vnodes=64), URLS[0])
    entries = [r for rs in view["rangesDegrees"].values() for r in rs]
    for r in entries:
        assert 0 <= r["startDegrees"] <= 360 and 0 <= r["endDegrees"] <= 360
        assert r["endDegrees"] == degrees(r["endHash"])
    assert sum(r["sizeDegrees"] for r in entries) == pytest.approx(360, abs=0.01 * len(entries))
    assert degrees(0) == 0.0 and degrees(TOKEN_SPACE // 2) == 180.0


def test_a_single_token_ring_reports_one_full_range_that_still_serializes():
    view = ring_view(Ring(["http://solo:8484"], vnodes=0), "http://solo:8484")
    (only,) = view["ranges"]["http://solo:8484"]
    assert only["size"] == TOKEN_SPACE - 1
    (deg,) = view["rangesDegrees"]["http://solo:8484"]
    assert deg["sizeDegrees"] == 360.0
    orjson.dumps(view)


def test_ring_view_keys_stable_ids_by_their_current_urls():
    ring = Ring({"lime-0": "http://10.0.0.1:8484", "lime-1": "http://10.0.0.2:8484"}, vnodes=4)
    view = ring_view(ring, "http://10.0.0.9:8484", {"lime-0": "http://10.0.0.9:8484"})
    assert set(view["ranges"]) == {"http://10.0.0.9:8484", "http://10.0.0.2:8484"}
    assert view["nodeIds"]["http://10.0.0.9:8484"] == "lime-0"


def test_cluster_state_lists_peers_including_self_with_epoch_and_member_states():
    view = cluster_state_view(snapshot([peer(URLS[1]), peer(URLS[2], Liveness.DEAD)]))
    assert view["nodeUrl"] == URLS[0]
    assert sorted(view["peers"]) == URLS
    assert view["totalNodes"] == 3
    assert view["status"] == "active"
    assert view["ringEpoch"] == 3
    liveness = {m["url"]: m["liveness"] for m in view["members"]}
    assert liveness == {URLS[0]: "alive", URLS[1]: "alive", URLS[2]: "dead"}
    assert sum(m["tokenShare"] for m in view["members"]) == pytest.approx(1.0)
    assert [m["self"] for m in view["members"]] == [True, False, False]


def test_gossip_view_of_a_lone_node_is_limedb_standalone():
    view = gossip_view(snapshot(ring=Ring([URLS[0]])), now_s=1_700_000_000.5)
    assert view["status"] == "standalone"
    assert view["total_peers"] == 0
    assert view["cluster_health"] == "N/A"
    assert view["node_heartbeat"] == 99
    assert view["node_url"] == URLS[0]


def test_gossip_statuses_come_from_the_failure_detector():
    peers = [
        peer("http://a", Liveness.ALIVE, silence=0.3),
        peer("http://b", Liveness.SUSPECT, silence=5.2),
        peer("http://c", Liveness.DEAD, silence=30.0, phi=math.inf),
        peer("http://d", Liveness.ALIVE, silence=1.6),
    ]
    view = gossip_view(snapshot(peers), now_s=1_700_000_000.9)
    statuses = {p["url"]: p["status"] for p in view["peer_details"]}
    assert statuses == {
        "http://a": "active",
        "http://b": "stale",
        "http://c": "dead",
        "http://d": "active",
    }
    assert (view["active_peers"], view["stale_peers"], view["dead_peers"]) == (2, 1, 1)
    assert view["total_peers"] == 4
    assert view["cluster_health"] == "degraded"
    assert view["convergence_rate"] == 50.0
    assert view["max_lag"] == 30 and view["average_lag"] == 0.5
    assert view["timestamp"] == 1_700_000_000
    assert view["node_url"] == URLS[0]
    assert {p["heartbeat"] for p in view["peer_details"]} == {42}
    orjson.dumps(view)  # no infinities leak into the JSON


@pytest.mark.parametrize(
    ("states", "health"),
    [
        ([Liveness.ALIVE, Liveness.ALIVE], "healthy"),
        ([Liveness.ALIVE, Liveness.DEAD], "degraded"),
        ([Liveness.DEAD, Liveness.DEAD], "critical"),
        ([Liveness.ALIVE, Liveness.DEAD, Liveness.DEAD], "critical"),
    ],
)
def test_cluster_health_follows_limedb_thresholds(states, health):
    peers = [peer(f"http://p{i}", s) for i, s in enumerate(states)]
    assert gossip_view(snapshot(peers), now_s=0)["cluster_health"] == health
