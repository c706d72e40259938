"""A join runs while a member is cut off by the network (alive, but unreachable by its peers;
clients still reach it): the join finishes without it, and after the heal the cut-off node
learns the new ring and hands off what it lost. No acknowledged write is lost, deleted keys
stay deleted, each key is on exactly its RF owners, and each range's owners hold identical
data (Merkle trees from their disks)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from limedb.cluster.ring.placement import Ring
from support.cluster import Workload, wait_for
from support.history import History
from support.netns_nodes import NamespacedFleet, replica_differences
from support.transitions import preload

pytestmark = pytest.mark.faults

ENV = {
    "LIMEDB_VNODES": "16",
    "LIMEDB_CLEANUP_GRACE_MS": "300",
    # Slow enough that the cut happens mid-stream (about 3 MB to move).
    "LIMEDB_STREAM_MB_PER_S": "1",
    "LIMEDB_REQUEST_TIMEOUT_MS": "1000",
}
KEYS, VALUE_BYTES = 1500, 2000


@pytest.fixture
def fleet(netlab, tmp_path) -> Iterator[NamespacedFleet]:
    """The test thread (and its threads) speak from the hub namespace while this is active."""
    with netlab.hub.entered():
        fleet = NamespacedFleet(tmp_path, ENV, netlab)
        try:
            yield fleet
        finally:
            fleet.stop()


def test_join_finishes_while_a_member_is_cut_off_and_it_catches_up_after_heal(netlab, fleet):
    history = History()
    a, b, c = fleet.bootstrap(3)
    preload(fleet, history, KEYS, VALUE_BYTES)
    d = fleet.start_joiner()
    load = Workload(history, [a.url, b.url, c.url], keys=150, threads=3, timeout_s=5.0)
    load.start()
    try:
        with fleet.admin() as client:
            tid = client.join(d.url)["transition"]["id"]
        wait_for(
            lambda: (fleet.status(a)["transition"] or {}).get("fraction", 0) >= 0.1,
            60,
            "the join to stream 10%",
            0.1,
        )
        netlab.partition(c.ns, others=[a.ns, b.ns, d.ns])
        last = fleet.wait_transition(tid, via=a)
        assert last["phase"] == "done", f"the join ended {last['phase']}: {last['reason']}"
        fleet.members.append(d)
        netlab.heal()
        # The cut-off node learns the new ring (and hands off what it lost) by itself.
        wait_for(
            lambda: fleet.status(c)["epoch"] == fleet.status(a)["epoch"],
            60,
            f"{c.url} to learn the new ring",
            0.2,
        )
        fleet.wait_converged()
    finally:
        load.stop()
    # Internal connections that carried requests into the partition are dropped by the RPC
    # client once a request on them times out in silence (and by TCP_USER_TIMEOUT), so after
    # the heal every member reads again within a few seconds, not after the tens of seconds of
    # TCP retransmission backoff a kept connection would wait.
    wait_for(
        lambda: all(
            fleet.http.get(f"{node.url}/v1/kv/{key}").status_code in (200, 404)
            for node in fleet.members
            for key in load.keys
        ),
        10,
        "reads through every member to work again after the heal",
        0.5,
    )
    fleet.check(history)
    status = fleet.status(a)
    members = {m["node_id"]: m["url"] for m in status["members"] if m["state"] != "Left"}
    ring = Ring(members, status["vnodes"], status["epoch"])
    rf = status["replication_factor"]
    for node in fleet.members:
        node.stop()
    assert replica_differences(fleet.members, ring, rf) == []
