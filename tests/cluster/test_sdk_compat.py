"""The original LimeDB SDK's calls against a real 3-node cluster, through a small client written
here from the API's shapes (docs/api.md, LimeDB-compatible routes): `replicas(key)`,
`get_full(key).timestamp_micros`, `cluster_state()`, and the gossip view its TUI colours; after
a node leaves it is no longer listed, and a killed node is listed as down."""

from __future__ import annotations

import time
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest
from support.cluster import wait_for
from support.transitions import Fleet

pytestmark = pytest.mark.cluster

ENV = {"LIMEDB_VNODES": "16", "LIMEDB_REPLICATION_FACTOR": "3", "LIMEDB_CLEANUP_GRACE_MS": "300"}


@dataclass(frozen=True)
class FullValue:
    value: str
    node_url: str
    timestamp_micros: int


class LimeSDK:
    """What the original SDK does: plain HTTP calls, shapes read field by field."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10.0)

    def set(self, key: str, value: str) -> None:
        response = self.http.post("/api/v1/set", json={"key": key, "value": value})
        assert (response.status_code, response.text) == (200, "OK")

    def get_full(self, key: str) -> FullValue:
        response = self.http.get(f"/api/v1/get/{quote(key, safe='')}")
        response.raise_for_status()
        body = response.json()
        return FullValue(body["value"], body["nodeUrl"], int(body.get("timestamp_micros", 0)))

    def replicas(self, key: str) -> dict:
        response = self.http.get(f"/api/v1/replicas/{quote(key, safe='')}")
        response.raise_for_status()
        return response.json()

    def cluster_state(self) -> dict:
        return self.http.get("/api/v1/cluster/state").json()

    def ring(self) -> dict:
        return self.http.get("/api/v1/cluster/ring").json()

    def gossip(self) -> dict:
        return self.http.get("/api/v1/cluster/gossip").json()

    def close(self) -> None:
        self.http.close()


def test_sdk_calls_follow_the_ring_through_a_leave_and_a_killed_node(fleet: Fleet):
    a, b, c, d = fleet.bootstrap(4)
    sdk = LimeSDK(a.url)
    try:
        urls = {n.url for n in (a, b, c, d)}
        wait_for(
            lambda: (
                {p["url"] for p in sdk.gossip().get("peer_details", []) if p["status"] == "active"}
                == urls - {a.url}
            ),
            30.0,
            "every peer active",
        )

        # get_full: the timestamp is the write's real time, in microseconds.
        before = time.time_ns() // 1000
        sdk.set("user:1", "alice")
        after = time.time_ns() // 1000
        full = sdk.get_full("user:1")
        assert full.value == "alice"
        assert before - 1000 <= full.timestamp_micros <= after + 1000
        sdk.set("user:1", "bob")
        assert sdk.get_full("user:1").timestamp_micros >= full.timestamp_micros

        # replicas: RF entries in ring order, the first is the primary, all hold the value.
        report = sdk.replicas("user:1")
        assert report["key"] == "user:1"
        assert (report["replication_factor"], report["quorum"]) == (3, 2)
        entries = report["replicas"]
        assert len(entries) == 3 and len({e["node_url"] for e in entries}) == 3
        assert [e["is_primary"] for e in entries] == [True, False, False]
        assert {e["node_url"] for e in entries} <= urls
        assert all(e["has_value"] for e in entries)
        assert [e["is_local"] for e in entries] == [e["node_url"] == a.url for e in entries]
        assert entries[0]["node_url"] == full.node_url  # GET's owner is the primary
        missing = sdk.replicas("never-written")
        assert not any(e["has_value"] for e in missing["replicas"])

        # cluster_state / ring / gossip: four members, every one Normal and active, and the
        # gossip lag in whole heartbeats (0 or 1 for a peer heard from within a round).
        state = sdk.cluster_state()
        assert set(state["peers"]) == urls and state["totalNodes"] == 4
        assert {m["state"] for m in state["members"]} == {"Normal"}
        assert set(sdk.ring()["allNodes"]) == urls
        gossip = sdk.gossip()
        assert gossip["cluster_health"] == "healthy"
        for peer in gossip["peer_details"]:
            assert isinstance(peer["lag"], int) and 0 <= peer["lag"] <= 2, peer
        assert isinstance(gossip["max_lag"], int)

        # d leaves: no route lists it any more, on any node, while it still runs.
        fleet.leave(d, via=a)
        fleet.wait_converged()
        for node in (a, b, c):
            view = LimeSDK(node.url)
            try:
                wait_for(
                    lambda v=view: d.url not in v.cluster_state()["peers"],
                    15.0,
                    f"{node.url} to drop {d.url} from /api/v1/cluster/state",
                )
                state = view.cluster_state()
                assert set(state["peers"]) == urls - {d.url}
                assert d.url not in {m["url"] for m in state["members"]}
                assert set(view.ring()["allNodes"]) == urls - {d.url}
                assert d.url not in view.ring()["virtualNodeDistribution"]
                assert d.url not in {p["url"] for p in view.gossip()["peer_details"]}
            finally:
                view.close()
        assert d.url not in {e["node_url"] for e in sdk.replicas("user:1")["replicas"]}
        # d itself no longer reports itself a Normal member, once it has heard of its removal.
        d_view = LimeSDK(d.url)
        try:
            wait_for(
                lambda: d.url not in {m["url"] for m in d_view.cluster_state()["members"]},
                15.0,
                f"{d.url} to stop listing itself as a member after its leave",
            )
        finally:
            d_view.close()

        # c is killed: still a member, listed as down, the lag grows, health degrades.
        c.kill()

        def c_down() -> dict | None:
            details = {p["url"]: p for p in sdk.gossip()["peer_details"]}
            return details.get(c.url) if details.get(c.url, {}).get("status") == "dead" else None

        down = wait_for(c_down, 30.0, f"{c.url} to be reported dead")
        assert down["lag"] >= 2
        state = sdk.cluster_state()
        assert c.url in state["peers"]
        assert {m["url"]: m["status"] for m in state["members"]}[c.url] == "dead"
        assert sdk.gossip()["cluster_health"] in ("degraded", "critical")
        report = sdk.replicas("user:1")
        by_url = {e["node_url"]: e for e in report["replicas"]}
        if c.url in by_url:
            assert by_url[c.url]["has_value"] is False and by_url[c.url]["answered"] is False
        assert sdk.get_full("user:1").value == "bob"
    finally:
        sdk.close()
