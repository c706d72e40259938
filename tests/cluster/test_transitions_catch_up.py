"""A node that was down while two transitions took ranges from it (two joins, or a join and a
lower replication factor) drops all of them when it comes back: it learns only the latest ring record, whose moves say nothing of the first
transition, yet afterwards it lists, counts and stores exactly the keys it owns in the final
ring, and every key is on exactly its RF owners."""

from __future__ import annotations

from pathlib import Path

import pytest
from limedb.cluster.ring import Ring
from support.cluster import Node, wait_for
from support.history import History
from support.transitions import Fleet, preload

pytestmark = pytest.mark.cluster

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
